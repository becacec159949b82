"""The authorization request (RFC 6749 section 4.1.1, OAuth 2.1, RFC 7636, RFC 8707):
validation shared by the consent page and the consent POST, PKCE, the response URI.

Which failures redirect and which do not is the heart of it (OAuth 2.1 section
4.1.2.1): an unknown client or a redirect URI that is not exactly a registered one
is shown to the user on an error page and never redirected (open redirector); so is
any ``response_type`` but ``code`` (an implicit-grant request must never produce a
redirect). Every other problem goes back to the client's verified redirect URI.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tunneld.oauth._clients import is_loopback_host
from tunneld.oauth._settings import DEFAULT_SCOPE, SCOPES, OAuthSettings
from tunneld.oauth._storage import Client

__all__ = [
    "AuthorizationRequest",
    "AuthorizeError",
    "pkce_matches",
    "resource_problem",
    "response_uri",
    "validate_authorization_request",
    "verifier_well_formed",
]

# RFC 7636 section 4.2: BASE64URL(SHA256(verifier)) is always 43 characters.
_S256_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
# RFC 7636 section 4.1: 43..128 unreserved characters.
_VERIFIER: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_MAX_STATE: Final = 1024


class AuthorizeError(Exception):
    """A refused authorization request.

    ``redirect_uri`` is None when the error must be shown on a page (unknown client,
    bad redirect URI, unsupported response type); else the client's verified URI to
    send ``error`` (with ``state``) to.
    """

    def __init__(
        self,
        error: str,
        description: str,
        *,
        redirect_uri: str | None = None,
        state: str | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A valid request: what the consent page shows and the code will carry."""

    client: Client
    redirect_uri: str
    scope: tuple[str, ...]
    resource: str | None
    code_challenge: str
    state: str | None

    def form_fields(self) -> list[tuple[str, str]]:
        """The request as hidden consent-form fields (re-validated on POST)."""
        fields = [
            ("response_type", "code"),
            ("client_id", self.client.id),
            ("redirect_uri", self.redirect_uri),
            ("scope", " ".join(self.scope)),
            ("code_challenge", self.code_challenge),
            ("code_challenge_method", "S256"),
        ]
        if self.resource is not None:
            fields.append(("resource", self.resource))
        if self.state is not None:
            fields.append(("state", self.state))
        return fields


def resource_problem(resource: str, settings: OAuthSettings) -> str | None:
    """Why ``resource`` is not an acceptable RFC 8707 resource indicator, or None."""
    if settings.resources:
        if resource in settings.resources:
            return None
        return "this authorization server does not issue tokens for that resource"
    try:
        parts = urllib.parse.urlsplit(resource)
    except ValueError:
        return "resource must be an absolute URI"
    if not parts.scheme or not parts.netloc:
        return "resource must be an absolute URI"
    if "#" in resource:
        return "resource must not have a fragment (RFC 8707 section 2)"
    if parts.scheme == "https" or (
        parts.scheme == "http" and is_loopback_host(parts.hostname or "")
    ):
        return None
    return "resource must be an https URL (or http on loopback)"


def validate_authorization_request(
    params: Mapping[str, str], client: Client | None, settings: OAuthSettings
) -> AuthorizationRequest:
    """Check an authorization request against its client (looked up by the caller).

    Raises:
        AuthorizeError: see the module docstring for which errors redirect.
    """
    if client is None:
        missing = "client_id" not in params
        raise AuthorizeError(
            "invalid_request" if missing else "invalid_client",
            "client_id is missing" if missing else "unknown client_id",
        )
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None:
        raise AuthorizeError("invalid_request", "redirect_uri is required")
    # Exact string comparison (RFC 9700 section 4.1.3): no prefix, port or query play.
    if redirect_uri not in client.redirect_uris:
        raise AuthorizeError(
            "invalid_request", "redirect_uri is not one registered for this client"
        )
    response_type = params.get("response_type")
    if response_type != "code":
        raise AuthorizeError(
            "unsupported_response_type",
            "only response_type=code is supported (no implicit grant)"
            if response_type
            else "response_type is required (only code is supported)",
        )
    state = params.get("state")
    if state is not None and len(state) > _MAX_STATE:
        raise AuthorizeError("invalid_request", "state is too long", redirect_uri=redirect_uri)

    def refuse(error: str, description: str) -> AuthorizeError:
        return AuthorizeError(error, description, redirect_uri=redirect_uri, state=state)

    if "request" in params:
        raise refuse("request_not_supported", "request objects are not supported")
    if "request_uri" in params:
        raise refuse("request_uri_not_supported", "request_uri is not supported")
    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None:
        raise refuse("invalid_request", "code_challenge is required (PKCE, S256)")
    if method != "S256":
        # RFC 7636 section 4.4.1; plain offers nothing against a leaked request.
        raise refuse("invalid_request", "code_challenge_method must be S256")
    if _S256_CHALLENGE.fullmatch(challenge) is None:
        raise refuse("invalid_request", "code_challenge is not a base64url SHA-256 (43 chars)")
    requested = params.get("scope")
    scope = tuple(dict.fromkeys(requested.split())) if requested else DEFAULT_SCOPE
    unknown = [s for s in scope if s not in SCOPES]
    if unknown:
        raise refuse("invalid_scope", f"unknown scope {' '.join(unknown)[:100]}")
    outside = [s for s in scope if s not in client.scope]
    if outside:
        raise refuse("invalid_scope", f"this client may not ask for {' '.join(outside)}")
    if not scope:
        raise refuse("invalid_scope", "no scope requested")
    resource = params.get("resource")
    if resource is not None:
        problem = resource_problem(resource, settings)
        if problem is not None:
            raise refuse("invalid_target", problem)
    return AuthorizationRequest(client, redirect_uri, scope, resource, challenge, state)


def response_uri(redirect_uri: str, params: Mapping[str, str]) -> str:
    """``redirect_uri`` with ``params`` added to its query (keeping what it had)."""
    parts = urllib.parse.urlsplit(redirect_uri)
    extra = urllib.parse.urlencode(list(params.items()))
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def verifier_well_formed(verifier: str) -> bool:
    """43..128 unreserved characters (RFC 7636 section 4.1)."""
    return _VERIFIER.fullmatch(verifier) is not None


def pkce_matches(verifier: str, challenge: str) -> bool:
    """Whether ``BASE64URL(SHA256(verifier)) == challenge`` (constant time)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return hmac.compare_digest(computed, challenge.encode("ascii"))
