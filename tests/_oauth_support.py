"""Helpers for the OAuth tests: a cookie-keeping browser over real HTTP, password users."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import httpx
import nacl.pwhash
import trio

from tunneld.control import SqliteStore
from tunneld.control._tokens import hash_password

WAIT = 10.0

_HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


async def add_password_user(
    store: SqliteStore, name: str, password: str, *, cheap: bool = True
) -> None:
    """A user with a password. ``cheap``: argon2id at its minimum cost (the hash string
    carries its parameters, so verification takes the production code path, only
    faster); else what `tunneld control user add` stores."""
    if cheap:
        hashed = nacl.pwhash.argon2id.str(
            password.encode(),
            opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
            memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
        ).decode()
    else:
        hashed = await trio.to_thread.run_sync(hash_password, password)
    await store.add_user(name, hashed, time.time())


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden inputs of an HTML page (our pages write them in one fixed shape)."""
    return {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page)}


class Browser:
    """What a browser does with our pages: keeps cookies, never follows redirects
    on its own, reads hidden form fields and posts forms with its Origin."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url, follow_redirects=False, timeout=WAIT
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(url, **kwargs)

    async def post_form(
        self, url: str, data: dict[str, str], *, origin: str | None = "self", **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if origin == "self":
            headers["Origin"] = self.base_url
        elif origin is not None:
            headers["Origin"] = origin
        return await self.client.post(url, data=data, headers=headers, **kwargs)

    async def login(self, user: str, password: str, next_url: str = "/") -> httpx.Response:
        page = await self.get("/login", params={"next": next_url})
        assert page.status_code == 200, page.text
        fields = hidden_fields(page.text)
        return await self.post_form("/login", {**fields, "username": user, "password": password})


def pkce_pair() -> tuple[str, str]:
    """A fresh ``(code_verifier, S256 code_challenge)``."""
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query_of(location: str) -> dict[str, str]:
    """The query parameters of a redirect ``Location`` (each given once)."""
    from urllib.parse import parse_qs, urlsplit

    parsed = parse_qs(urlsplit(location).query, keep_blank_values=True)
    assert all(len(v) == 1 for v in parsed.values()), parsed
    return {k: v[0] for k, v in parsed.items()}


class OAuthFlow:
    """The browser half of the authorization code flow against a real control server."""

    def __init__(self, base_url: str, browser: Browser) -> None:
        self.base_url = base_url.rstrip("/")
        self.browser = browser
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=WAIT)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def register(self, redirect_uri: str, **metadata: Any) -> dict[str, Any]:
        body = {
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "test host",
            **metadata,
        }
        answer = await self.http.post("/oauth2/register", json=body)
        assert answer.status_code == 201, answer.text
        result: dict[str, Any] = answer.json()
        return result

    async def authorize(self, params: dict[str, str]) -> httpx.Response:
        return await self.browser.get("/oauth2/authorize", params=params)

    async def consent(self, page: httpx.Response, decision: str = "approve") -> httpx.Response:
        assert page.status_code == 200, page.text
        fields = hidden_fields(page.text)
        return await self.browser.post_form("/oauth2/authorize", {**fields, "decision": decision})

    async def code(
        self,
        client_id: str,
        redirect_uri: str,
        challenge: str,
        *,
        scope: str = "mcp:tools",
        resource: str | None = None,
        state: str | None = None,
    ) -> str:
        """Authorize and consent; the code from the redirect."""
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": scope,
        }
        if resource is not None:
            params["resource"] = resource
        if state is not None:
            params["state"] = state
        done = await self.consent(await self.authorize(params))
        assert done.status_code == 303, done.text
        location = done.headers["location"]
        assert location.startswith(redirect_uri), location
        found = query_of(location)
        assert found["iss"] == self.base_url
        assert found.get("state") == state
        return found["code"]

    async def token(self, form: dict[str, str], **kwargs: Any) -> httpx.Response:
        return await self.http.post("/oauth2/token", data=form, **kwargs)

    async def tokens_for(
        self,
        client_id: str,
        redirect_uri: str,
        *,
        scope: str = "mcp:tools",
        resource: str | None = None,
    ) -> dict[str, Any]:
        verifier, challenge = pkce_pair()
        code = await self.code(client_id, redirect_uri, challenge, scope=scope, resource=resource)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": client_id,
        }
        if resource is not None:
            form["resource"] = resource
        answer = await self.token(form)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


async def add_cli_client(
    store: SqliteStore,
    client_id: str,
    redirect_uris: tuple[str, ...] = (),
    *,
    confidential: bool = True,
    introspect: bool = False,
    scope: tuple[str, ...] = ("mcp:tools", "mcp:tools:write"),
) -> str | None:
    """A client as `tunneld control client add` makes it; its secret (None if public)."""
    from tunneld.oauth._secret import new_secret, secret_hash
    from tunneld.oauth._storage import Client, add_client

    secret = new_secret("client") if confidential else None
    client = Client(
        id=client_id,
        name=client_id,
        redirect_uris=redirect_uris,
        auth_method="client_secret_basic" if confidential else "none",
        scope=scope,
        introspect=introspect,
        origin="cli",
        created_at=time.time(),
        secret_hash=None if secret is None else secret_hash("client", secret),
    )
    await store.run(add_client, store.db, client)
    return secret
