"""Resource-server side: BearerAuthenticator and RFC 9728 metadata, against the real
authorization server's introspection endpoint (both on loopback, real HTTP)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from _control_support import Harness, running_server
from _oauth_support import Browser, OAuthFlow, add_cli_client, add_password_user

from tunneld.http import Headers, HttpError, HttpServer, Request, Response, Router
from tunneld.oauth import (
    SCOPE_TOOLS_WRITE,
    BearerAuthenticator,
    ProtectedResourceMetadata,
    canonical_resource,
    resource_metadata_url,
)

REDIRECT = "http://127.0.0.1:51234/callback"


@dataclasses.dataclass
class Env:
    harness: Harness
    flow: OAuthFlow
    client_id: str
    rs_secret: str
    resource: str
    rs_url: str
    authenticator: BearerAuthenticator
    clock: list[float]

    def authenticator_for(self, resource: str, **kwargs: object) -> BearerAuthenticator:
        return BearerAuthenticator(
            self.harness.info.url + "/oauth2/introspect",
            "rs",
            self.rs_secret,
            resource,
            **kwargs,  # type: ignore[arg-type]
        )


async def _serve_rs(
    nursery: trio.Nursery, authenticate: list[BearerAuthenticator], issuer: str
) -> tuple[str, HttpServer]:
    """A stand-in MCP endpoint: metadata, and /mcp answering with the Caller."""
    router = Router()

    async def mcp(request: Request) -> Response:
        caller = await authenticate[0](request)
        if request.query_one("tool") == "destructive" and SCOPE_TOOLS_WRITE not in caller.scopes:
            raise authenticate[0].insufficient_scope(SCOPE_TOOLS_WRITE)
        return Response.json({"subject": caller.subject, "scopes": sorted(caller.scopes)})

    router.route("POST", "/mcp", mcp)
    server = HttpServer(router)
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    url = f"http://{host}:{port}"
    ProtectedResourceMetadata(url + "/mcp", [issuer]).mount(router)
    return url, server


@pytest.fixture
async def env(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Env]:
    async with running_server(nursery, tmp_path) as harness:
        await add_password_user(harness.store, "alice", "alice-pw")
        secret = await add_cli_client(harness.store, "rs", introspect=True)
        assert secret is not None
        holder: list[BearerAuthenticator] = []
        rs_url, rs_server = await _serve_rs(nursery, holder, harness.info.url)
        clock = [0.0]
        authenticator = BearerAuthenticator(
            harness.info.url + "/oauth2/introspect",
            "rs",
            secret,
            rs_url + "/mcp",
            cache_ttl=30.0,
            issuer=harness.info.url,
            clock=lambda: clock[0],
        )
        holder.append(authenticator)
        browser = Browser(harness.info.url)
        flow = OAuthFlow(harness.info.url, browser)
        try:
            client = await flow.register(REDIRECT)
            assert (await browser.login("alice", "alice-pw")).status_code == 303
            yield Env(
                harness,
                flow,
                client["client_id"],
                secret,
                rs_url + "/mcp",
                rs_url,
                authenticator,
                clock,
            )
        finally:
            rs_server.shutdown(0)
            await flow.aclose()
            await browser.aclose()


async def _call(
    env: Env, token: str | None, *, params: dict[str, str] | None = None
) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(env.rs_url + "/mcp", headers=headers, params=params, json={})


def _challenge(answer: httpx.Response) -> str:
    value = answer.headers["www-authenticate"]
    assert value.startswith("Bearer ")
    return value


async def test_protected_resource_metadata(env: Env) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for path in (
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ):
            doc = (await http.get(env.rs_url + path)).json()
            assert doc["resource"] == env.resource
            assert not doc["resource"].endswith("/")
            assert doc["authorization_servers"] == [env.harness.info.url]
            assert doc["bearer_methods_supported"] == ["header"]
    assert (
        resource_metadata_url(env.resource)
        == env.rs_url + "/.well-known/oauth-protected-resource/mcp"
    )


def test_canonical_resource() -> None:
    assert canonical_resource("HTTPS://Host.Example:7430/mcp/") == "https://host.example:7430/mcp"
    for bad in ("ftp://x/mcp", "/mcp", "https://x/mcp#a", "https://x/mcp?a=1"):
        with pytest.raises(ValueError):
            canonical_resource(bad)


async def test_no_token_gets_401_pointing_at_the_metadata(env: Env) -> None:
    answer = await _call(env, None)
    assert answer.status_code == 401
    challenge = _challenge(answer)
    assert f'resource_metadata="{resource_metadata_url(env.resource)}"' in challenge
    assert 'scope="mcp:tools"' in challenge
    assert "error=" not in challenge  # RFC 6750 3.1: no error code without a token


async def test_valid_token_gives_the_caller(env: Env) -> None:
    tokens = await env.flow.tokens_for(
        env.client_id, REDIRECT, scope="mcp:tools mcp:tools:write", resource=env.resource
    )
    answer = await _call(env, tokens["access_token"])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"subject": "alice", "scopes": ["mcp:tools", "mcp:tools:write"]}
    destructive = await _call(env, tokens["access_token"], params={"tool": "destructive"})
    assert destructive.status_code == 200


async def test_attack_insufficient_scope_for_a_destructive_tool(env: Env) -> None:
    tokens = await env.flow.tokens_for(
        env.client_id, REDIRECT, scope="mcp:tools", resource=env.resource
    )
    assert (await _call(env, tokens["access_token"])).status_code == 200
    answer = await _call(env, tokens["access_token"], params={"tool": "destructive"})
    assert answer.status_code == 403
    challenge = _challenge(answer)
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="mcp:tools:write"' in challenge


async def test_attack_token_for_another_resource_used_here(env: Env) -> None:
    tokens = await env.flow.tokens_for(
        env.client_id, REDIRECT, resource="https://other-daemon.example:7430/mcp"
    )
    answer = await _call(env, tokens["access_token"])
    assert answer.status_code == 401
    assert 'error="invalid_token"' in _challenge(answer)
    # A token without any audience is refused too.
    no_audience = await env.flow.tokens_for(env.client_id, REDIRECT)
    assert (await _call(env, no_audience["access_token"])).status_code == 401


async def test_attack_query_string_token(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=env.resource)
    asked = env.authenticator.introspections
    answer = await _call(env, None, params={"access_token": tokens["access_token"]})
    assert answer.status_code == 400
    assert 'error="invalid_request"' in _challenge(answer)
    # Even alongside a good header: refused, and the AS was never asked.
    both = await _call(env, tokens["access_token"], params={"access_token": tokens["access_token"]})
    assert both.status_code == 400
    assert env.authenticator.introspections == asked


async def test_attack_expired_token(env: Env) -> None:
    oauth = env.harness.server.oauth
    assert oauth is not None
    oauth.settings = dataclasses.replace(oauth.settings, access_token_ttl=0.0)
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=env.resource)
    assert (await _call(env, tokens["access_token"])).status_code == 401


async def test_attack_revoked_token_is_refused_once_the_cache_expires(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=env.resource)
    assert (await _call(env, tokens["access_token"])).status_code == 200
    assert env.authenticator.introspections == 1
    assert (await _call(env, tokens["access_token"])).status_code == 200
    assert env.authenticator.introspections == 1  # answered from the cache
    revoked = await env.flow.http.post(
        "/oauth2/revoke", data={"token": tokens["access_token"], "client_id": env.client_id}
    )
    assert revoked.status_code == 200
    env.clock[0] += 31.0  # past cache_ttl
    assert (await _call(env, tokens["access_token"])).status_code == 401
    assert env.authenticator.introspections == 2


async def test_attack_refresh_token_used_as_bearer(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=env.resource)
    assert (await _call(env, tokens["refresh_token"])).status_code == 401


@pytest.mark.parametrize(
    "header",
    [
        "Basic YTpi",
        "Bearer",
        "Bearer a b",
        "Bearer \u00e9t\u00e9",
        "Bearer " + "a" * 5000,
        "Token x",
    ],
)
async def test_malformed_authorization_headers(env: Env, header: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            env.rs_url + "/mcp", headers={"Authorization": header.encode()}, json={}
        )
    assert answer.status_code == 401
    assert env.authenticator.introspections == 0


async def test_wrong_introspection_credentials_or_dead_as_give_503(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=env.resource)
    wrong = BearerAuthenticator(
        env.harness.info.url + "/oauth2/introspect", "rs", "wrong", env.resource
    )
    request = Request(
        "POST", "/mcp", "/mcp", {}, _headers(tokens["access_token"]), b"", None, False
    )
    with pytest.raises(HttpError) as info:
        await wrong(request)
    assert info.value.status == 503
    dead = BearerAuthenticator(
        "http://127.0.0.1:9/oauth2/introspect", "rs", "x", env.resource, timeout=5
    )
    with pytest.raises(HttpError) as info:
        await dead(request)
    assert info.value.status == 503


async def test_other_issuer_is_refused(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=env.resource)
    strict = env.authenticator_for(env.resource, issuer="https://someone-else.example")
    request = Request(
        "POST", "/mcp", "/mcp", {}, _headers(tokens["access_token"]), b"", None, False
    )
    with pytest.raises(HttpError) as info:
        await strict(request)
    assert info.value.status == 401


def _headers(token: str) -> Headers:
    return Headers([("Authorization", f"Bearer {token}")])
