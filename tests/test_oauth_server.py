"""The authorization server against real HTTP on loopback: one named test per attack
(issue 8's security matrix, AS side) plus the endpoints' normal behaviour."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from _control_support import Harness, running_server
from _oauth_support import (
    Browser,
    OAuthFlow,
    add_cli_client,
    add_password_user,
    hidden_fields,
    pkce_pair,
    query_of,
)

from tunneld.oauth import CSRF_FIELD

REDIRECT = "http://127.0.0.1:51234/callback"
RESOURCE = "http://127.0.0.1:7430/mcp"


@dataclasses.dataclass
class Env:
    harness: Harness
    flow: OAuthFlow
    browser: Browser
    client_id: str

    @property
    def url(self) -> str:
        return self.harness.info.url

    def params(self, **changes: str | None) -> dict[str, str]:
        _, challenge = pkce_pair()
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "mcp:tools",
            "state": "st-1",
        }
        params.update(changes)
        return {k: v for k, v in params.items() if v is not None}


@pytest.fixture
async def env(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Env]:
    async with running_server(nursery, tmp_path) as harness:
        await add_password_user(harness.store, "alice", "alice-pw")
        await add_password_user(harness.store, "bob", "bob-pw")
        browser = Browser(harness.info.url)
        flow = OAuthFlow(harness.info.url, browser)
        try:
            client = await flow.register(REDIRECT)
            login = await browser.login("alice", "alice-pw")
            assert login.status_code == 303
            yield Env(harness, flow, browser, client["client_id"])
        finally:
            await flow.aclose()
            await browser.aclose()


def assert_error_page(answer: httpx.Response, error: str) -> None:
    """Refused on a page: no redirect anywhere, the error code shown."""
    assert answer.status_code == 400, answer.text
    assert "location" not in answer.headers
    assert answer.headers["content-type"].startswith("text/html")
    assert f"<code>{error}</code>" in answer.text


def assert_redirected_error(answer: httpx.Response, error: str, state: str | None = "st-1") -> None:
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT + "?")
    found = query_of(location)
    assert found["error"] == error, found
    assert "code" not in found
    assert found.get("state") == state
    assert "iss" in found


def assert_token_error(answer: httpx.Response, error: str, status: int = 400) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == error, answer.text
    assert answer.headers["cache-control"] == "no-store"


# --- discovery ----------------------------------------------------------------------


async def test_metadata_documents(env: Env) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        doc = (await env.flow.http.get(path)).json()
        assert doc["issuer"] == env.url
        assert doc["authorization_endpoint"] == env.url + "/oauth2/authorize"
        assert doc["token_endpoint"] == env.url + "/oauth2/token"
        assert doc["registration_endpoint"] == env.url + "/oauth2/register"
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert doc["authorization_response_iss_parameter_supported"] is True
        assert doc["response_types_supported"] == ["code"]
        assert "token" not in doc["response_types_supported"]
        assert set(doc["scopes_supported"]) == {"mcp:tools", "mcp:tools:write"}


# --- the happy path -----------------------------------------------------------------


async def test_code_flow_returns_state_and_iss_and_no_store_tokens(env: Env) -> None:
    verifier, challenge = pkce_pair()
    code = await env.flow.code(
        env.client_id, REDIRECT, challenge, state="xyz 1/2", resource=RESOURCE
    )
    answer = await env.flow.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": env.client_id,
            "resource": RESOURCE,
        }
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "mcp:tools"
    assert body["access_token"].startswith("tndat_")
    assert body["refresh_token"].startswith("tndrt_")


async def test_authorize_without_login_sends_to_login_then_back(env: Env) -> None:
    stranger = Browser(env.url)
    try:
        params = env.params()
        answer = await stranger.get("/oauth2/authorize", params=params)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?next=%2Foauth2%2Fauthorize%3F")
        login = await stranger.login(
            "bob", "bob-pw", next_url=query_of(answer.headers["location"])["next"]
        )
        back = login.headers["location"]
        assert back.startswith("/oauth2/authorize?")
        page = await stranger.get(back)
        assert page.status_code == 200
        assert "bob" in page.text
    finally:
        await stranger.aclose()


async def test_deny_redirects_access_denied(env: Env) -> None:
    page = await env.flow.authorize(env.params())
    assert_redirected_error(await env.flow.consent(page, decision="deny"), "access_denied")


# --- the security matrix ------------------------------------------------------------


async def test_attack_consent_post_without_csrf_token(env: Env) -> None:
    fields = hidden_fields((await env.flow.authorize(env.params())).text)
    del fields[CSRF_FIELD]
    answer = await env.browser.post_form("/oauth2/authorize", {**fields, "decision": "approve"})
    assert answer.status_code == 403
    assert "location" not in answer.headers


async def test_attack_consent_post_with_wrong_csrf_token(env: Env) -> None:
    fields = hidden_fields((await env.flow.authorize(env.params())).text)
    # A token from another session (the attacker's own) does not fit the victim's.
    attacker = Browser(env.url)
    try:
        await attacker.login("bob", "bob-pw")
        theirs = hidden_fields((await attacker.get("/oauth2/authorize", params=env.params())).text)
    finally:
        await attacker.aclose()
    for wrong in (theirs[CSRF_FIELD], "x" * 43, ""):
        answer = await env.browser.post_form(
            "/oauth2/authorize", {**fields, CSRF_FIELD: wrong, "decision": "approve"}
        )
        assert answer.status_code == 403, wrong
        assert "location" not in answer.headers


async def test_attack_consent_post_from_another_origin(env: Env) -> None:
    fields = hidden_fields((await env.flow.authorize(env.params())).text)
    answer = await env.browser.post_form(
        "/oauth2/authorize", {**fields, "decision": "approve"}, origin="https://evil.example"
    )
    assert answer.status_code == 403


async def test_attack_consent_page_framing_headers(env: Env) -> None:
    page = await env.flow.authorize(env.params())
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


async def test_attack_authorize_without_code_challenge(env: Env) -> None:
    answer = await env.flow.authorize(env.params(code_challenge=None, code_challenge_method=None))
    assert_redirected_error(answer, "invalid_request")


async def test_attack_authorize_with_plain_pkce(env: Env) -> None:
    verifier, _ = pkce_pair()
    answer = await env.flow.authorize(
        env.params(code_challenge=verifier[:43], code_challenge_method="plain")
    )
    assert_redirected_error(answer, "invalid_request")
    missing_method = await env.flow.authorize(env.params(code_challenge_method=None))
    assert_redirected_error(missing_method, "invalid_request")


@pytest.mark.parametrize("response_type", ["token", "code token", "id_token", "", "none"])
async def test_attack_response_type_token_gets_an_error_page(env: Env, response_type: str) -> None:
    answer = await env.flow.authorize(env.params(response_type=response_type))
    assert_error_page(answer, "unsupported_response_type")
    assert "access_token" not in answer.text


@pytest.mark.parametrize(
    "variant",
    [
        "http://127.0.0.1:51234/callback/evil",  # suffix
        "http://127.0.0.1:51234/callbac",  # prefix
        "http://127.0.0.1:51234/callback?x=1",  # query added
        "http://127.0.0.1:51234/callback#frag",  # fragment
        "http://127.0.0.1:51235/callback",  # port
        "http://127.0.0.1/callback",  # port dropped
        "https://127.0.0.1:51234/callback",  # scheme
        "http://localhost:51234/callback",  # host alias
        "http://127.0.0.1:51234/Callback",  # case
        "http://127.0.0.1:51234/callback/",  # trailing slash
        "http://127.0.0.1:51234/callback/../callback",  # dot segments
        "http://127.0.0.1:51234@evil.example/callback",  # user info trick
        "https://evil.example/callback",
    ],
)
async def test_attack_redirect_uri_variants_get_an_error_page(env: Env, variant: str) -> None:
    answer = await env.flow.authorize(env.params(redirect_uri=variant))
    assert_error_page(answer, "invalid_request")
    assert "evil" not in answer.headers.get("location", "")


async def test_attack_missing_redirect_uri_and_unknown_client_get_error_pages(env: Env) -> None:
    assert_error_page(await env.flow.authorize(env.params(redirect_uri=None)), "invalid_request")
    assert_error_page(await env.flow.authorize(env.params(client_id="nobody")), "invalid_client")
    assert_error_page(await env.flow.authorize(env.params(client_id=None)), "invalid_request")


async def test_attack_consent_post_with_swapped_redirect_uri(env: Env) -> None:
    fields = hidden_fields((await env.flow.authorize(env.params())).text)
    fields["redirect_uri"] = "https://evil.example/callback"
    answer = await env.browser.post_form("/oauth2/authorize", {**fields, "decision": "approve"})
    assert_error_page(answer, "invalid_request")


async def test_attack_repeated_parameters_are_refused(env: Env) -> None:
    params = env.params()
    query = httpx.QueryParams(params).add("redirect_uri", "https://evil.example/cb")
    answer = await env.browser.get("/oauth2/authorize", params=query)
    assert_error_page(answer, "invalid_request")


async def _code(env: Env, **kwargs: str) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    code = await env.flow.code(env.client_id, REDIRECT, challenge, **kwargs)
    return code, verifier


def _exchange(env: Env, code: str, verifier: str | None, **changes: str) -> dict[str, str]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": env.client_id,
    }
    if verifier is not None:
        form["code_verifier"] = verifier
    form.update(changes)
    return form


async def _introspect(env: Env, token: str) -> dict[str, object]:
    secret = getattr(env, "_rs_secret", None)
    if secret is None:
        secret = await add_cli_client(env.harness.store, "rs", introspect=True)
        env._rs_secret = secret  # type: ignore[attr-defined]
    answer = await env.flow.http.post(
        "/oauth2/introspect", data={"token": token}, auth=("rs", str(secret))
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


async def test_attack_code_replay_revokes_the_first_tokens(env: Env) -> None:
    code, verifier = await _code(env)
    first = await env.flow.token(_exchange(env, code, verifier))
    assert first.status_code == 200
    tokens = first.json()
    assert (await _introspect(env, tokens["access_token"]))["active"] is True
    again = await env.flow.token(_exchange(env, code, verifier))
    assert_token_error(again, "invalid_grant")
    assert (await _introspect(env, tokens["access_token"]))["active"] is False
    assert (await _introspect(env, tokens["refresh_token"]))["active"] is False
    refreshed = await env.flow.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": env.client_id,
        }
    )
    assert_token_error(refreshed, "invalid_grant")


async def test_attack_wrong_verifier(env: Env) -> None:
    code, _ = await _code(env)
    other, _ = pkce_pair()
    assert_token_error(await env.flow.token(_exchange(env, code, other)), "invalid_grant")


async def test_attack_missing_verifier(env: Env) -> None:
    code, verifier = await _code(env)
    assert_token_error(await env.flow.token(_exchange(env, code, None)), "invalid_grant")
    # The code got its one try: the right verifier afterwards does not help.
    assert_token_error(await env.flow.token(_exchange(env, code, verifier)), "invalid_grant")


async def test_attack_redirect_uri_mismatch_at_token(env: Env) -> None:
    code, verifier = await _code(env)
    changed = _exchange(env, code, verifier, redirect_uri=REDIRECT + "/other")
    assert_token_error(await env.flow.token(changed), "invalid_grant")
    code, verifier = await _code(env)
    missing = _exchange(env, code, verifier)
    del missing["redirect_uri"]
    assert_token_error(await env.flow.token(missing), "invalid_grant")


async def test_attack_code_used_by_another_client(env: Env) -> None:
    other = await env.flow.register(REDIRECT)
    code, verifier = await _code(env)
    stolen = _exchange(env, code, verifier, client_id=other["client_id"])
    assert_token_error(await env.flow.token(stolen), "invalid_grant")


async def test_attack_rotated_refresh_token_reuse_revokes_the_family(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT)
    rotate = {"grant_type": "refresh_token", "client_id": env.client_id}
    second = await env.flow.token({**rotate, "refresh_token": tokens["refresh_token"]})
    assert second.status_code == 200, second.text
    newer = second.json()
    assert newer["refresh_token"] != tokens["refresh_token"]
    assert (await _introspect(env, newer["access_token"]))["active"] is True
    # The thief replays the old refresh token: refused, and the legitimate holder's
    # newer tokens die with it.
    replay = await env.flow.token({**rotate, "refresh_token": tokens["refresh_token"]})
    assert_token_error(replay, "invalid_grant")
    assert (await _introspect(env, newer["access_token"]))["active"] is False
    assert (await _introspect(env, tokens["access_token"]))["active"] is False
    after = await env.flow.token({**rotate, "refresh_token": newer["refresh_token"]})
    assert_token_error(after, "invalid_grant")


async def test_attack_expired_code(env: Env) -> None:
    oauth = env.harness.server.oauth
    assert oauth is not None
    oauth.settings = dataclasses.replace(oauth.settings, code_ttl=0.0)
    code, verifier = await _code(env)
    assert_token_error(await env.flow.token(_exchange(env, code, verifier)), "invalid_grant")


async def test_attack_scope_beyond_the_client_or_unknown(env: Env) -> None:
    narrow = await env.flow.register(REDIRECT, scope="mcp:tools")
    answer = await env.flow.authorize(
        env.params(client_id=narrow["client_id"], scope="mcp:tools mcp:tools:write")
    )
    assert_redirected_error(answer, "invalid_scope")
    assert_redirected_error(await env.flow.authorize(env.params(scope="admin")), "invalid_scope")


async def test_attack_refresh_cannot_widen_scope_or_change_resource(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=RESOURCE)
    base = {"grant_type": "refresh_token", "client_id": env.client_id}
    wider = await env.flow.token(
        {**base, "refresh_token": tokens["refresh_token"], "scope": "mcp:tools mcp:tools:write"}
    )
    assert_token_error(wider, "invalid_scope")
    other = await env.flow.token(
        {**base, "refresh_token": tokens["refresh_token"], "resource": "https://other.example/mcp"}
    )
    assert_token_error(other, "invalid_target")


async def test_attack_resource_changed_at_token(env: Env) -> None:
    code, verifier = await _code(env, resource=RESOURCE)
    changed = _exchange(env, code, verifier, resource="https://other.example/mcp")
    assert_token_error(await env.flow.token(changed), "invalid_target")


async def test_attack_bad_resource_at_authorize(env: Env) -> None:
    for bad in ("not a uri", "http://evil.example/mcp", "https://x.example/mcp#frag"):
        assert_redirected_error(
            await env.flow.authorize(env.params(resource=bad)), "invalid_target"
        )


async def test_attack_refresh_token_of_another_client(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT)
    other = await env.flow.register(REDIRECT)
    answer = await env.flow.token(
        {
            "grant_type": "refresh_token",
            "client_id": other["client_id"],
            "refresh_token": tokens["refresh_token"],
        }
    )
    assert_token_error(answer, "invalid_grant")


# --- client authentication, revocation, introspection, registration -----------------


async def test_confidential_client_authentication(env: Env) -> None:
    secret = await add_cli_client(env.harness.store, "conf", (REDIRECT,))
    assert secret is not None
    verifier, challenge = pkce_pair()
    code = await env.flow.code("conf", REDIRECT, challenge)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    wrong = await env.flow.token(form, auth=("conf", secret + "x"))
    assert_token_error(wrong, "invalid_client", 401)
    assert "basic" in wrong.headers["www-authenticate"].lower()
    none = await env.flow.token({**form, "client_id": "conf"})
    assert_token_error(none, "invalid_client", 401)
    twice = await env.flow.token({**form, "client_secret": secret}, auth=("conf", secret))
    assert_token_error(twice, "invalid_client", 401)
    # Each failure above stopped before the code was looked at, so it still works.
    ok = await env.flow.token({**form, "client_id": "conf", "client_secret": secret})
    assert ok.status_code == 200, ok.text


async def test_public_client_sending_a_secret_is_refused(env: Env) -> None:
    code, verifier = await _code(env)
    form = {**_exchange(env, code, verifier), "client_secret": "guess"}
    assert_token_error(await env.flow.token(form), "invalid_client", 401)


async def test_unsupported_grant_type_and_bad_forms(env: Env) -> None:
    base = {"client_id": env.client_id}
    assert_token_error(
        await env.flow.token({**base, "grant_type": "password"}), "unsupported_grant_type"
    )
    assert_token_error(
        await env.flow.token({**base, "grant_type": "client_credentials"}), "unsupported_grant_type"
    )
    assert_token_error(await env.flow.token(base), "invalid_request")
    json_body = await env.flow.http.post("/oauth2/token", json={"grant_type": "authorization_code"})
    assert_token_error(json_body, "invalid_request")
    repeated = await env.flow.http.post(
        "/oauth2/token",
        content=f"grant_type=authorization_code&client_id={env.client_id}&client_id=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_token_error(repeated, "invalid_request")


async def test_revocation(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT)
    other = await env.flow.register(REDIRECT)
    # Another client's revocation request is a no-op (200), the token stays active.
    foreign = await env.flow.http.post(
        "/oauth2/revoke", data={"token": tokens["access_token"], "client_id": other["client_id"]}
    )
    assert foreign.status_code == 200
    assert (await _introspect(env, tokens["access_token"]))["active"] is True
    unknown = await env.flow.http.post(
        "/oauth2/revoke", data={"token": "tndat_nonsense", "client_id": env.client_id}
    )
    assert unknown.status_code == 200
    revoked = await env.flow.http.post(
        "/oauth2/revoke",
        data={
            "token": tokens["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": env.client_id,
        },
    )
    assert revoked.status_code == 200
    # Revoking the refresh token ends the grant: its access token too (RFC 7009 2.1).
    assert (await _introspect(env, tokens["access_token"]))["active"] is False
    again = await env.flow.token(
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": env.client_id,
        }
    )
    assert_token_error(again, "invalid_grant")


async def test_introspection_answer_and_authentication(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT, resource=RESOURCE)
    info = await _introspect(env, tokens["access_token"])
    assert info["active"] is True
    assert info["sub"] == "alice"
    assert info["aud"] == RESOURCE
    assert info["scope"] == "mcp:tools"
    assert info["client_id"] == env.client_id
    assert info["token_type"] == "Bearer"
    assert info["iss"] == env.url
    assert (await _introspect(env, "tndat_" + "A" * 43))["active"] is False
    # Not a resource server: a public client, an ordinary confidential one, nobody.
    secret = await add_cli_client(env.harness.store, "plain-conf", (REDIRECT,))
    for auth, data in [
        (None, {"token": tokens["access_token"], "client_id": env.client_id}),
        (("plain-conf", str(secret)), {"token": tokens["access_token"]}),
        (None, {"token": tokens["access_token"]}),
        (("rs", "wrong"), {"token": tokens["access_token"]}),
    ]:
        answer = await env.flow.http.post("/oauth2/introspect", data=data, auth=auth)
        assert_token_error(answer, "invalid_client", 401)
        assert "sub" not in answer.text


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["myapp://cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://x.example/cb#f"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://*.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://x.example/cb"}, "invalid_redirect_uri"),
        ({"redirect_uris": [REDIRECT], "grant_types": ["implicit"]}, "invalid_client_metadata"),
        ({"redirect_uris": [REDIRECT], "response_types": ["token"]}, "invalid_client_metadata"),
        (
            {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"},
            "invalid_client_metadata",
        ),
        ({"redirect_uris": [REDIRECT], "scope": "admin"}, "invalid_client_metadata"),
    ],
)
async def test_registration_refuses_bad_metadata(
    env: Env, metadata: dict[str, object], error: str
) -> None:
    answer = await env.flow.http.post("/oauth2/register", json=metadata)
    assert_token_error(answer, error)


async def test_registration_of_a_confidential_client(env: Env) -> None:
    answer = await env.flow.http.post(
        "/oauth2/register",
        json={
            "redirect_uris": ["https://app.example/cb", "http://[::1]:8080/cb"],
            "client_name": "App\x00",
        },
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["client_secret"].startswith("tndcs_")
    assert body["client_name"] == "App"
    assert answer.headers["cache-control"] == "no-store"


async def test_registration_is_rate_limited_per_source(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with (
        running_server(nursery, tmp_path, oauth_registrations_per_hour=3.0) as harness,
        httpx.AsyncClient(base_url=harness.info.url, timeout=10) as http,
    ):
        body = {"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}
        codes = [(await http.post("/oauth2/register", json=body)).status_code for _ in range(5)]
        assert codes == [201, 201, 201, 429, 429]
        limited = await http.post("/oauth2/register", json=body)
        assert int(limited.headers["retry-after"]) >= 1
        # Other endpoints are not affected.
        assert (await http.get("/.well-known/oauth-authorization-server")).status_code == 200


async def test_registration_off(nursery: trio.Nursery, tmp_path: Path) -> None:
    async with (
        running_server(nursery, tmp_path, oauth_registrations_per_hour=0.0) as harness,
        httpx.AsyncClient(base_url=harness.info.url, timeout=10) as http,
    ):
        answer = await http.post("/oauth2/register", json={"redirect_uris": [REDIRECT]})
        assert answer.status_code == 404
        doc = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert "registration_endpoint" not in doc


async def test_secrets_are_stored_hashed(env: Env) -> None:
    tokens = await env.flow.tokens_for(env.client_id, REDIRECT)

    def read_db() -> bytes:
        data = b""
        for suffix in ("", "-wal"):
            path = Path(str(env.harness.store.db.path) + suffix)
            if path.exists():
                data += path.read_bytes()
        return data

    db_bytes = await trio.to_thread.run_sync(read_db)
    assert db_bytes
    for value in (
        tokens["access_token"],
        tokens["refresh_token"],
        env.browser.client.cookies["tunneld_session"],
    ):
        assert value.encode() not in db_bytes
