"""Clients: redirect-URI rules, RFC 7591 registration metadata, client authentication."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tunneld.oauth._settings import SCOPES
from tunneld.oauth._storage import AuthMethod

__all__ = [
    "AUTH_METHODS",
    "ClientCredentials",
    "RegistrationError",
    "RegistrationRequest",
    "client_credentials",
    "is_loopback_host",
    "parse_basic_auth",
    "parse_registration",
    "redirect_uri_problem",
]

AUTH_METHODS: Final[tuple[AuthMethod, ...]] = ("none", "client_secret_basic", "client_secret_post")
_MAX_URI: Final = 2000
_MAX_REDIRECT_URIS: Final = 10
_MAX_NAME: Final = 100


class RegistrationError(ValueError):
    """Bad client metadata; ``error`` is the RFC 7591 section 3.2.2 code."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def is_loopback_host(host: str) -> bool:
    """``localhost``, or an IPv4/IPv6 loopback address literal."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be registered as a redirect URI, or None if it can.

    Absolute ``https`` URLs, or ``http`` to a loopback host (RFC 8252 section 7.3;
    OAuth 2.1 section 2.3.1), without a fragment or user info. Matching is exact
    later (RFC 9700 section 4.1.3), so no wildcards either.
    """
    if len(uri) > _MAX_URI:
        return f"longer than {_MAX_URI} characters"
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in uri):
        return "contains a space or control character"
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    del port
    if parts.fragment or uri.endswith("#"):
        return "must not have a fragment (RFC 6749 section 3.1.2)"
    if parts.username is not None or parts.password is not None:
        return "must not contain user info"
    host = parts.hostname or ""
    if not host:
        return "must be an absolute URL with a host"
    if "*" in uri:
        return "must not contain wildcards"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(host):
        return None
    if parts.scheme == "http":
        return "http is only allowed for loopback hosts (127.0.0.1, [::1], localhost)"
    return f"scheme {parts.scheme!r} is not allowed: use https, or http on loopback"


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """Validated RFC 7591 client metadata."""

    redirect_uris: tuple[str, ...]
    auth_method: AuthMethod
    name: str
    scope: tuple[str, ...]
    grant_types: tuple[str, ...]


def _string_list(value: object, field: str, error: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistrationError(error, f"{field} must be a list of strings")
    return tuple(value)


def parse_registration(body: object) -> RegistrationRequest:
    """Validate a registration request's JSON object (RFC 7591 section 2).

    Defaults: ``token_endpoint_auth_method`` ``client_secret_basic``, ``grant_types``
    ``["authorization_code"]``, ``response_types`` ``["code"]``, ``scope`` all
    supported scopes. Unknown members are ignored (section 2).

    Raises:
        RegistrationError: ``invalid_redirect_uri`` or ``invalid_client_metadata``.
    """
    if not isinstance(body, dict):
        raise RegistrationError("invalid_client_metadata", "the body must be a JSON object")
    if "redirect_uris" not in body:
        raise RegistrationError("invalid_redirect_uri", "redirect_uris is required")
    uris = _string_list(body["redirect_uris"], "redirect_uris", "invalid_redirect_uri")
    if not uris:
        raise RegistrationError("invalid_redirect_uri", "redirect_uris must not be empty")
    if len(uris) > _MAX_REDIRECT_URIS:
        raise RegistrationError(
            "invalid_redirect_uri", f"at most {_MAX_REDIRECT_URIS} redirect_uris"
        )
    for uri in uris:
        problem = redirect_uri_problem(uri)
        if problem is not None:
            raise RegistrationError(
                "invalid_redirect_uri", f"redirect URI {uri[:200]!r}: {problem}"
            )
    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise RegistrationError(
            "invalid_client_metadata",
            f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}",
        )
    grants = _string_list(
        body.get("grant_types", ["authorization_code"]), "grant_types", "invalid_client_metadata"
    )
    bad = [g for g in grants if g not in ("authorization_code", "refresh_token")]
    if bad or "authorization_code" not in grants:
        raise RegistrationError(
            "invalid_client_metadata",
            "grant_types must include authorization_code and may add refresh_token only",
        )
    responses = _string_list(
        body.get("response_types", ["code"]), "response_types", "invalid_client_metadata"
    )
    if list(responses) != ["code"]:
        raise RegistrationError("invalid_client_metadata", 'response_types must be ["code"]')
    scope_text = body.get("scope", " ".join(SCOPES))
    if not isinstance(scope_text, str):
        raise RegistrationError("invalid_client_metadata", "scope must be a string")
    scope = tuple(dict.fromkeys(scope_text.split()))
    unknown = [s for s in scope if s not in SCOPES]
    if unknown or not scope:
        raise RegistrationError(
            "invalid_client_metadata",
            f"scope must be some of {' '.join(SCOPES)} (unknown: {' '.join(unknown)[:100]})",
        )
    name = body.get("client_name", "")
    if not isinstance(name, str):
        raise RegistrationError("invalid_client_metadata", "client_name must be a string")
    name = "".join(c for c in name if c.isprintable())[:_MAX_NAME].strip() or "unnamed client"
    return RegistrationRequest(uris, method, name, scope, tuple(dict.fromkeys(grants)))


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """How a request at the token, revocation or introspection endpoint says who it is."""

    client_id: str
    secret: str | None
    method: AuthMethod


def parse_basic_auth(header: str) -> tuple[str, str] | None:
    """``(client_id, client_secret)`` of an ``Authorization: Basic`` value, or None.

    Both parts are form-urlencoded before base64 (RFC 6749 section 2.3.1).
    """
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    try:
        return (
            urllib.parse.unquote_plus(user, errors="strict"),
            urllib.parse.unquote_plus(password, errors="strict"),
        )
    except UnicodeDecodeError:
        return None


def client_credentials(
    authorization: str | None, form: Mapping[str, str]
) -> ClientCredentials | str:
    """The credentials a token-endpoint style request presents, or why they are invalid.

    Basic auth, ``client_secret`` in the body, or a bare ``client_id`` (public client).
    Using two methods at once is refused (RFC 6749 section 2.3).
    """
    body_id = form.get("client_id")
    body_secret = form.get("client_secret")
    if authorization is not None and authorization.strip().lower().startswith("basic"):
        parsed = parse_basic_auth(authorization)
        if parsed is None:
            return "malformed Basic authorization header"
        if body_secret is not None:
            return "client authenticated twice (Basic and client_secret)"
        if body_id is not None and body_id != parsed[0]:
            return "client_id differs from the Basic authorization user"
        return ClientCredentials(parsed[0], parsed[1], "client_secret_basic")
    if body_id is None:
        return "client authentication is missing (client_id)"
    if body_secret is not None:
        return ClientCredentials(body_id, body_secret, "client_secret_post")
    return ClientCredentials(body_id, None, "none")
