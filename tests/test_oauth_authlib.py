"""authlib's OAuth 2 client against our authorization server: dynamic registration,
authorization code + PKCE (S256) + resource, refresh with rotation, revocation and
introspection. The browser step (login, consent) is real HTTP with cookies and the
CSRF token read from the page."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import trio
from _control_support import running_server
from _oauth_support import Browser, add_cli_client, add_password_user, hidden_fields, query_of

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # authlib 1.9 warns about its httpx integration
    from authlib.common.security import generate_token
    from authlib.integrations.httpx_client import OAuth2Client
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

REDIRECT = "http://127.0.0.1:51999/oauth/callback"
RESOURCE = "https://daemon.example:7430/mcp"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _browser_consent(browser: Browser, authorization_url: str) -> str:
    """What a user does in the browser: the consent page, Allow; the redirect URL."""
    page = await browser.get(authorization_url)
    assert page.status_code == 200, page.text
    assert "Allow access?" in page.text
    fields = hidden_fields(page.text)
    done = await browser.post_form("/oauth2/authorize", {**fields, "decision": "approve"})
    assert done.status_code == 303, done.text
    location: str = done.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return location


@pytest.mark.parametrize("auth_method", ["none", "client_secret_basic", "client_secret_post"])
async def test_authlib_client_end_to_end(
    nursery: trio.Nursery, tmp_path: Path, auth_method: str
) -> None:
    async with running_server(nursery, tmp_path) as harness:
        base = harness.info.url
        await add_password_user(harness.store, "alice", "alice-pw")
        rs_secret = await add_cli_client(harness.store, "daemon-rs", introspect=True)
        browser = Browser(base)
        assert (await browser.login("alice", "alice-pw")).status_code == 303

        def discover_and_register() -> tuple[dict[str, Any], dict[str, Any]]:
            with OAuth2Client() as anonymous:
                meta = anonymous.request(
                    "GET", base + "/.well-known/oauth-authorization-server", withhold_token=True
                ).json()
                registered = anonymous.request(
                    "POST",
                    meta["registration_endpoint"],
                    json={
                        "client_name": "authlib test host",
                        "redirect_uris": [REDIRECT],
                        "grant_types": ["authorization_code", "refresh_token"],
                        "response_types": ["code"],
                        "token_endpoint_auth_method": auth_method,
                        "scope": "mcp:tools mcp:tools:write",
                    },
                    withhold_token=True,
                )
                assert registered.status_code == 201, registered.text
                return meta, registered.json()

        meta, registration = await trio.to_thread.run_sync(discover_and_register)
        assert (registration.get("client_secret") is None) == (auth_method == "none")
        client = OAuth2Client(
            client_id=registration["client_id"],
            client_secret=registration.get("client_secret"),
            token_endpoint_auth_method=auth_method,
            revocation_endpoint_auth_method=auth_method,
            scope="mcp:tools mcp:tools:write",
            redirect_uri=REDIRECT,
            code_challenge_method="S256",
        )
        try:
            verifier = generate_token(64)
            url, state = client.create_authorization_url(
                meta["authorization_endpoint"], code_verifier=verifier, resource=RESOURCE
            )
            params = query_of(url)
            assert params["code_challenge"] == create_s256_code_challenge(verifier)
            assert params["code_challenge_method"] == "S256"

            callback = await _browser_consent(browser, url)
            returned = query_of(callback)
            assert returned["state"] == state
            assert returned["iss"] == meta["issuer"]  # RFC 9207: check the issuer

            def exchange() -> dict[str, Any]:
                token: dict[str, Any] = client.fetch_token(
                    meta["token_endpoint"],
                    authorization_response=callback,
                    code_verifier=verifier,
                    resource=RESOURCE,
                )
                return token

            token = await trio.to_thread.run_sync(exchange)
            assert token["token_type"] == "Bearer"
            assert token["scope"] == "mcp:tools mcp:tools:write"
            first_refresh = token["refresh_token"]

            def introspect(value: str) -> dict[str, Any]:
                with OAuth2Client(
                    client_id="daemon-rs",
                    client_secret=rs_secret,
                    token_endpoint_auth_method="client_secret_basic",
                ) as rs:
                    answer = rs.introspect_token(meta["introspection_endpoint"], token=value)
                    assert answer.status_code == 200, answer.text
                    result: dict[str, Any] = answer.json()
                    return result

            info = await trio.to_thread.run_sync(introspect, token["access_token"])
            assert info["active"] is True
            assert info["sub"] == "alice"
            assert info["aud"] == RESOURCE

            def rotate() -> dict[str, Any]:
                new: dict[str, Any] = client.refresh_token(
                    meta["token_endpoint"], refresh_token=first_refresh
                )
                return new

            rotated = await trio.to_thread.run_sync(rotate)
            assert rotated["refresh_token"] != first_refresh
            assert rotated["access_token"] != token["access_token"]
            new_info = await trio.to_thread.run_sync(introspect, rotated["access_token"])
            assert new_info["active"] is True
            assert new_info["aud"] == RESOURCE

            def revoke() -> int:
                answer = client.revoke_token(
                    meta["revocation_endpoint"],
                    token=rotated["refresh_token"],
                    token_type_hint="refresh_token",
                )
                return int(answer.status_code)

            assert await trio.to_thread.run_sync(revoke) == 200
            gone = await trio.to_thread.run_sync(introspect, rotated["access_token"])
            assert gone == {"active": False}
        finally:
            await trio.to_thread.run_sync(client.close)
            await browser.aclose()
