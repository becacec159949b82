"""Hypothesis fuzzing of the OAuth parsers and validators: they raise only their own
errors, round-trip what they should, and never turn an untrusted redirect URI into a
redirect."""

from __future__ import annotations

import base64
import os
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.oauth import FormError, canonical_resource, parse_cookies, parse_form, safe_next
from tunneld.oauth._authorize import (
    AuthorizationRequest,
    AuthorizeError,
    pkce_matches,
    validate_authorization_request,
)
from tunneld.oauth._clients import (
    RegistrationError,
    parse_basic_auth,
    parse_registration,
    redirect_uri_problem,
)
from tunneld.oauth._settings import OAuthSettings
from tunneld.oauth._storage import Client

CI = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW = settings(max_examples=5_000, deadline=None)

REGISTERED = ("http://127.0.0.1:5000/cb", "https://app.example/cb?x=1")
CLIENT = Client(
    id="c1",
    name="c",
    redirect_uris=REGISTERED,
    auth_method="none",
    scope=("mcp:tools", "mcp:tools:write"),
    introspect=False,
    origin="dynamic",
    created_at=0.0,
)

text = st.text(st.characters(codec="utf-8"), max_size=40)
names = st.sampled_from(
    [
        "response_type",
        "client_id",
        "redirect_uri",
        "code_challenge",
        "code_challenge_method",
        "scope",
        "state",
        "resource",
        "request",
        "request_uri",
        "other",
    ]
)
values = st.one_of(
    text,
    st.sampled_from(
        [
            "code",
            "token",
            "c1",
            "S256",
            "plain",
            *REGISTERED,
            "https://app.example/cb",
            "mcp:tools",
            "mcp:tools mcp:tools:write",
            "A" * 43,
            "https://daemon.example/mcp",
        ]
    ),
)


@CI
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parse_form_raises_only_form_error(data: bytes | str) -> None:
    try:
        parsed = parse_form(data)
    except FormError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


@CI
@given(st.dictionaries(text.filter(bool), text, max_size=10))
def test_parse_form_round_trips(form: dict[str, str]) -> None:
    assert parse_form(urllib.parse.urlencode(form)) == form


@CI
@given(st.text(max_size=300))
def test_parse_cookies_raises_only_form_error(header: str) -> None:
    try:
        cookies = parse_cookies(header)
    except FormError:
        return
    assert all(";" not in name and "=" not in name for name in cookies)


@CI
@given(text, text)
def test_basic_auth_round_trips(user: str, password: str) -> None:
    raw = f"{urllib.parse.quote_plus(user)}:{urllib.parse.quote_plus(password)}"
    header = "Basic " + base64.b64encode(raw.encode()).decode()
    assert parse_basic_auth(header) == (user, password)


@CI
@given(st.text(max_size=200))
def test_parse_basic_auth_never_raises(header: str) -> None:
    parse_basic_auth(header)
    parse_basic_auth("Basic " + header)


@CI
@given(st.one_of(st.text(max_size=100), st.from_regex(r"(https?|ftp|x)://[^#]{0,40}(#.*)?")))
def test_redirect_uri_problem_never_raises(uri: str) -> None:
    problem = redirect_uri_problem(uri)
    if problem is None:
        parts = urllib.parse.urlsplit(uri)
        assert parts.scheme in ("http", "https")
        assert "#" not in uri
        assert parts.hostname


@CI
@given(st.dictionaries(names, values, max_size=11))
def test_authorization_request_validation_never_redirects_to_an_unregistered_uri(
    params: dict[str, str],
) -> None:
    try:
        result = validate_authorization_request(params, CLIENT, OAuthSettings())
    except AuthorizeError as exc:
        error = exc
    else:
        assert isinstance(result, AuthorizationRequest)
        assert result.redirect_uri in REGISTERED
        assert params.get("code_challenge_method") == "S256"
        assert params.get("response_type") == "code"
        return
    if error.redirect_uri is not None:
        assert error.redirect_uri in REGISTERED
        assert params.get("response_type") == "code"


@CI
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "redirect_uris",
                "scope",
                "client_name",
                "token_endpoint_auth_method",
                "grant_types",
                "response_types",
            ]
        ),
        st.one_of(values, st.lists(values, max_size=3), st.integers(), st.none()),
        max_size=6,
    )
)
def test_parse_registration_raises_only_registration_error(body: dict[str, object]) -> None:
    try:
        reg = parse_registration(body)
    except RegistrationError as exc:
        error = exc.error
    else:
        assert all(redirect_uri_problem(u) is None for u in reg.redirect_uris)
        return
    assert error in ("invalid_redirect_uri", "invalid_client_metadata")


@CI
@given(st.text(max_size=100))
def test_safe_next_stays_on_this_server(target: str) -> None:
    result = safe_next(target)
    assert result.startswith("/")
    assert not result.startswith("//")
    assert "\\" not in result
    assert all(ord(c) > 0x20 and ord(c) != 0x7F for c in result)


@CI
@given(st.text(max_size=80))
def test_canonical_resource_raises_only_value_error(url: str) -> None:
    try:
        canonical = canonical_resource(url)
    except ValueError:
        return
    assert not canonical.endswith("/")
    assert canonical_resource(canonical) == canonical


@CI
@given(st.text(max_size=130), st.text(max_size=60))
def test_pkce_matches_never_raises_on_ascii(verifier: str, challenge: str) -> None:
    try:
        verifier.encode("ascii")
        challenge.encode("ascii")
    except UnicodeEncodeError:
        return
    assert pkce_matches(verifier, challenge) in (True, False)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNNELD_SLOW"), reason="long fuzz run: TUNNELD_SLOW=1")
@SLOW
@given(st.dictionaries(names, values, max_size=11))
def test_authorization_request_validation_long(params: dict[str, str]) -> None:
    test_authorization_request_validation_never_redirects_to_an_unregistered_uri.hypothesis.inner_test(  # type: ignore[attr-defined]
        params
    )
