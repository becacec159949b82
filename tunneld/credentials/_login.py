"""``tunneld login``: an OAuth authorization-code + PKCE login with a loopback redirect.

RFC 8252 (native apps): we listen on ``127.0.0.1:PORT``, show (and try to open) the
authorization URL, and catch the browser's redirect there. The answer must carry our
``state`` and the control plane's ``iss`` (RFC 9207) before its code is exchanged.
Without ``client_id`` a public client is registered first (RFC 7591) with exactly
that redirect URI. The scope asked for is ``node`` and the resource (RFC 8707) the
control URL, so the tokens are good for the coordinator only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from tunneld.credentials._oauth import LOGIN_SCOPE, LoginRecord
from tunneld.http import HttpServer, Request, Response, Router
from tunneld.log import get_logger

__all__ = ["LoginError", "login", "logout"]

log = get_logger(__name__)

CALLBACK_PATH: Final = "/callback"
_STEP_TIMEOUT: Final = 30.0


class LoginError(Exception):
    """The login did not complete; the message says which step failed and why."""


@dataclass(slots=True)
class _Callback:
    code: str | None = None
    error: str | None = None


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _page(title: str, text: str, status: int = 200) -> Response:
    body = (
        "<!doctype html><meta charset=utf-8><title>tunneld login</title>"
        f"<h1>{title}</h1><p>{text}</p>"
    ).encode()
    return Response(
        status,
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("Referrer-Policy", "no-referrer"),
        ],
        body,
    )


def _json(reply_status: int, body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise LoginError(f"{what}: answered {reply_status} without a JSON object")
    return doc


async def _metadata(control: str) -> dict[str, Any]:
    """The authorization server metadata (RFC 8414) of the control plane at ``control``.

    Raises:
        LoginError: it cannot be reached, or answers without metadata.
    """
    from tunneld.oauth._http_client import HttpClientError, get

    try:
        with trio.fail_after(_STEP_TIMEOUT):
            reply = await get(f"{control}/.well-known/oauth-authorization-server")
    except (HttpClientError, trio.TooSlowError) as exc:
        raise LoginError(
            f"cannot reach the control plane at {control}: {str(exc) or 'timeout'}"
        ) from None
    if reply.status != 200:
        raise LoginError(
            f"{control} has no OAuth authorization server metadata (HTTP {reply.status})"
        )
    return _json(reply.status, reply.body, "authorization server metadata")


async def login(
    control_url: str,
    *,
    client_id: str = "",
    port: int = 0,
    open_browser: Callable[[str], object] | None = None,
    announce: Callable[[str], None] = print,
    browser_timeout: float = 300.0,
) -> LoginRecord:
    """Log in to the control plane at ``control_url`` in a browser; the tokens.

    ``announce(url)`` shows the authorization URL; ``open_browser(url)`` (e.g.
    ``webbrowser.open``) is also tried when given. ``port`` 0 picks a free loopback port
    (it must be one of the client's registered redirect URIs when ``client_id`` is given).

    Raises:
        LoginError: the control plane cannot be reached or refuses a step, the browser
            reported an error, or no valid redirect arrived within ``browser_timeout`` seconds.

    Cancellation: closes the loopback listener; nothing is stored.
    """
    from tunneld.oauth._http_client import HttpClientError, post_form

    control = control_url.rstrip("/")
    meta = await _metadata(control)
    issuer = str(meta.get("issuer", ""))
    if issuer.rstrip("/") != control:
        raise LoginError(
            f"the control plane calls itself {issuer[:200]!r}, not {control!r}: use"
            " --control with its public URL ([control].public_url)"
        )
    scopes = meta.get("scopes_supported", [])
    if isinstance(scopes, list) and LOGIN_SCOPE not in scopes:
        raise LoginError(f"{control} does not offer the {LOGIN_SCOPE!r} scope (too old?)")
    authorize_endpoint = str(meta.get("authorization_endpoint", ""))
    token_endpoint = str(meta.get("token_endpoint", ""))
    if not authorize_endpoint or not token_endpoint:
        raise LoginError(f"{control}'s metadata lacks its authorization or token endpoint")

    result = _Callback()
    arrived = trio.Event()
    state = secrets.token_urlsafe(24)

    async def callback(request: Request) -> Response:
        query = {k: v[0] for k, v in request.query.items() if len(v) == 1}
        if not secrets.compare_digest(query.get("state", "").encode(), state.encode()):
            # Not the answer to our request (a stale tab, another site's redirect).
            return _page(
                "Wrong login attempt", "This is not the login tunneld is waiting for.", 400
            )
        if query.get("iss", "").rstrip("/") != issuer.rstrip("/"):
            result.error = "the answer does not come from the control plane (iss mismatch)"
        elif "error" in query:
            description = query.get("error_description", "")[:200]
            result.error = f"the control plane refused: {query['error'][:64]} {description}".strip()
        elif not query.get("code"):
            result.error = "the answer carries no authorization code"
        else:
            result.code = query["code"]
        arrived.set()
        if result.error is not None:
            return _page("Login failed", "See the terminal for the reason.", 400)
        return _page("Logged in", "tunneld has its login. You can close this window.")

    router = Router()
    router.route("GET", CALLBACK_PATH, callback, max_body_bytes=0)
    server = HttpServer(router)
    # Errors are kept and raised once the listener's nursery has closed, so callers get
    # a LoginError rather than an ExceptionGroup around it.
    failure: LoginError | None = None
    redirect_uri = verifier = ""
    async with trio.open_nursery() as nursery:
        try:
            _host, bound = await nursery.start(server.serve_tcp, "127.0.0.1", port)
        except OSError as exc:
            failure = LoginError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
            bound = 0
        if failure is None:
            redirect_uri = f"http://127.0.0.1:{bound}{CALLBACK_PATH}"
            try:
                client_id, verifier = await _ask_browser(
                    control,
                    meta,
                    client_id,
                    redirect_uri,
                    authorize_endpoint,
                    state,
                    announce,
                    open_browser,
                    browser_timeout,
                    arrived,
                    nursery,
                )
            except LoginError as exc:
                failure = exc
            finally:
                server.shutdown(1.0)
    if failure is not None:
        raise failure
    if result.error is not None or result.code is None:
        raise LoginError(result.error or "no authorization code")
    form = {
        "grant_type": "authorization_code",
        "code": result.code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        "client_id": client_id,
        "resource": control,
    }
    now = time.time()
    try:
        with trio.fail_after(_STEP_TIMEOUT):
            reply = await post_form(token_endpoint, form)
    except (HttpClientError, trio.TooSlowError) as exc:
        raise LoginError(
            f"exchanging the code at {token_endpoint}: {str(exc) or 'timeout'}"
        ) from None
    answer = _json(reply.status, reply.body, "the token endpoint")
    if reply.status != 200:
        raise LoginError(
            f"the token endpoint refused the code: {str(answer.get('error'))[:64]}"
            f" {str(answer.get('error_description', ''))[:200]}".strip()
        )
    if LOGIN_SCOPE not in str(answer.get("scope", LOGIN_SCOPE)).split():
        raise LoginError(f"the control plane did not grant the {LOGIN_SCOPE!r} scope")
    access, refresh = answer.get("access_token"), answer.get("refresh_token")
    if not isinstance(access, str) or not isinstance(refresh, str) or not refresh:
        raise LoginError("the token endpoint gave no refresh token (is the client allowed it?)")
    expires_in = answer.get("expires_in")
    ttl = float(expires_in) if isinstance(expires_in, (int, float)) else 3600.0
    log.info("login.done", control=control, client=client_id)
    return LoginRecord(
        control_url=control,
        issuer=issuer,
        token_endpoint=token_endpoint,
        client_id=client_id,
        refresh_token=refresh,
        access_token=access,
        expires_at=now + ttl,
    )


async def _ask_browser(
    control: str,
    meta: dict[str, Any],
    client_id: str,
    redirect_uri: str,
    authorize_endpoint: str,
    state: str,
    announce: Callable[[str], None],
    open_browser: Callable[[str], object] | None,
    browser_timeout: float,
    arrived: trio.Event,
    nursery: trio.Nursery,
) -> tuple[str, str]:
    """Register if needed, show the authorization URL, wait for the redirect.

    Returns the client id and the PKCE verifier.
    """
    from tunneld.oauth._http_client import post_json

    if not client_id:
        client_id = await _register(control, meta, redirect_uri, post_json)
    verifier, challenge = _pkce()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": LOGIN_SCOPE,
        "resource": control,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    url = f"{authorize_endpoint}?{urllib.parse.urlencode(params)}"
    announce(url)
    if open_browser is not None:
        # In a thread, and abandoned when the login ends: some launchers (a console
        # browser) only return when the browser exits.
        nursery.start_soon(_open_browser, open_browser, url)
    with trio.move_on_after(browser_timeout) as waited:
        await arrived.wait()
    if waited.cancelled_caught:
        raise LoginError(f"no answer from the browser within {browser_timeout:g}s")
    # Let the browser get its "logged in" page before the listener closes.
    await trio.sleep(0.05)
    return client_id, verifier


async def _open_browser(open_browser: Callable[[str], object], url: str) -> None:
    try:
        await trio.to_thread.run_sync(open_browser, url, abandon_on_cancel=True)
    except Exception as exc:  # any launcher failure: the URL is shown anyway
        log.info("login.browser_failed", error=str(exc)[:200])


async def _register(control: str, meta: dict[str, Any], redirect_uri: str, post_json: Any) -> str:
    from tunneld.oauth._http_client import HttpClientError

    endpoint = meta.get("registration_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise LoginError(
            f"{control} does not allow dynamic client registration: ask its operator for a"
            " client (`tunneld control client add`) and pass --client-id"
        )
    body = {
        "client_name": "tunneld login",
        "redirect_uris": [redirect_uri],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "scope": LOGIN_SCOPE,
    }
    try:
        with trio.fail_after(_STEP_TIMEOUT):
            reply = await post_json(endpoint, body)
    except (HttpClientError, trio.TooSlowError) as exc:
        raise LoginError(f"registering a client at {endpoint}: {str(exc) or 'timeout'}") from None
    answer = _json(reply.status, reply.body, "the registration endpoint")
    if reply.status != 201 or not isinstance(answer.get("client_id"), str):
        raise LoginError(
            f"the control plane refused to register a client: {str(answer.get('error'))[:64]}"
            f" {str(answer.get('error_description', ''))[:200]}".strip()
        )
    return str(answer["client_id"])


async def logout(record: LoginRecord) -> None:
    """Revoke ``record``'s grant at its control plane (RFC 7009, the refresh token).

    Revoking the refresh token ends the whole grant: its access tokens stop working and
    the coordinator closes the daemon's session at its next revocation check. The
    revocation endpoint comes from the issuer's metadata (RFC 8414).

    Raises:
        LoginError: the control plane cannot be reached, has no revocation endpoint or
            refuses (the message says which); the grant may still be live then.
    """
    from tunneld.oauth._http_client import HttpClientError, post_form

    issuer = record.issuer.rstrip("/")
    endpoint = (await _metadata(issuer)).get("revocation_endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise LoginError(f"{issuer}'s metadata names no revocation endpoint")
    form = {
        "token": record.refresh_token,
        "token_type_hint": "refresh_token",
        "client_id": record.client_id,
    }
    try:
        with trio.fail_after(_STEP_TIMEOUT):
            answer = await post_form(endpoint, form)
    except (HttpClientError, trio.TooSlowError) as exc:
        raise LoginError(f"revoking at {endpoint}: {str(exc) or 'timeout'}") from None
    if answer.status != 200:
        raise LoginError(f"{endpoint} refused the revocation (HTTP {answer.status})")
    log.info("credentials.logged_out", issuer=issuer)
