"""Resource-server building blocks for the daemon's MCP endpoint.

:class:`BearerAuthenticator` is McpServer's ``authenticate`` callable: it takes the
bearer token from the ``Authorization`` header only (RFC 6750 section 2.1; a token
in the query string is refused, never looked at), validates it by RFC 7662
introspection at the control plane (answers cached briefly), and requires the
token's audience to be this MCP endpoint's canonical URL (RFC 8707; a token minted
for another resource must not work here). :class:`ProtectedResourceMetadata` serves
the RFC 9728 document clients discover the authorization server from.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from tunneld.http import HttpError, Request, Response, Router
from tunneld.log import get_logger
from tunneld.mcp import Caller
from tunneld.oauth._http_client import HttpClientError, post_form
from tunneld.oauth._metadata import protected_resource_metadata
from tunneld.oauth._settings import SCOPE_TOOLS, SCOPES

__all__ = [
    "BearerAuthenticator",
    "ProtectedResourceMetadata",
    "canonical_resource",
    "resource_metadata_url",
]

log = get_logger(__name__)

_WELL_KNOWN: Final = "/.well-known/oauth-protected-resource"
_MAX_TOKEN: Final = 4096
_MAX_CACHE: Final = 10_000
# RFC 6750 section 2.1 b64token: what may follow "Bearer ".
_TOKEN68: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def canonical_resource(url: str) -> str:
    """``url`` as an MCP canonical server URI: lower-case scheme and host, no fragment,
    no trailing slash (MCP authorization, "Canonical Server URI").

    Raises:
        ValueError: not an absolute http(s) URL, or it has a fragment or query.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an absolute http(s) URL, got {url!r}")
    if parts.fragment or "#" in url:
        raise ValueError(f"a resource URL must not have a fragment: {url!r}")
    if parts.query:
        raise ValueError(f"a resource URL must not have a query: {url!r}")
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, "", ""))


def resource_metadata_url(resource: str) -> str:
    """Where RFC 9728 metadata for ``resource`` lives: the well-known path inserted
    between host and path (section 3.1), ``https://h/.well-known/oauth-protected-resource/mcp``."""
    parts = urllib.parse.urlsplit(resource)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, _WELL_KNOWN + parts.path.rstrip("/"), "", "")
    )


def _quote(value: str) -> str:
    # RFC 9110 quoted-string: escape backslash and double quote; drop control characters.
    cleaned = "".join(c for c in value if c.isprintable())
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class _Cached:
    until: float  # trio clock
    caller: Caller | None
    reason: str
    expires_at: float  # wall clock: the token's exp (inf when absent)


class BearerAuthenticator:
    """``await authenticator(request)`` → :class:`~tunneld.mcp.Caller`, or raises
    :class:`~tunneld.http.HttpError` (401/400 with ``WWW-Authenticate``, 503 when the
    authorization server cannot be asked).

    ``introspection_url``, ``client_id``/``client_secret``: the control plane's
    ``/oauth2/introspect`` and a client allowed to use it (``tunneld control client add
    NAME --introspect``). ``resource``: this endpoint's canonical URL (the tokens'
    required audience; a callable when it is known only once the listener is bound,
    read per request). ``cache_ttl``: how long an answer is reused (never past the
    token's ``exp``); a revoked token keeps working here for at most that long.
    ``issuer``: when set, the introspection answer's ``iss`` must equal it.
    """

    def __init__(
        self,
        introspection_url: str,
        client_id: str,
        client_secret: str,
        resource: str | Callable[[], str],
        *,
        cache_ttl: float = 30.0,
        issuer: str | None = None,
        scopes: Sequence[str] = SCOPES,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = trio.current_time,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.introspection_url = introspection_url
        self._resource = resource if callable(resource) else canonical_resource(resource)
        self.cache_ttl = cache_ttl
        self.issuer = issuer
        self.scopes = tuple(scopes)
        self.timeout = timeout
        self._auth = "Basic " + base64.b64encode(
            f"{urllib.parse.quote(client_id, safe='')}:"
            f"{urllib.parse.quote(client_secret, safe='')}".encode()
        ).decode("ascii")
        self._ssl = ssl_context
        self._clock = clock
        self._wall = wall_clock
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self.introspections = 0  # how many times the AS was asked (for tests/metrics)

    @property
    def resource(self) -> str:
        """The canonical URL tokens must be minted for."""
        value = self._resource
        return canonical_resource(value()) if callable(value) else value

    @property
    def metadata_url(self) -> str:
        """This resource's RFC 9728 metadata URL (path-inserted form)."""
        return resource_metadata_url(self.resource)

    # --- errors -----------------------------------------------------------------------

    def challenge(
        self, error: str | None = None, description: str | None = None, scope: str | None = None
    ) -> str:
        """A ``WWW-Authenticate: Bearer`` value pointing at the RFC 9728 metadata."""
        params = [
            f"resource_metadata={_quote(self.metadata_url)}",
            f"scope={_quote(scope or SCOPE_TOOLS)}",
        ]
        if error is not None:
            params.append(f"error={_quote(error)}")
        if description is not None:
            params.append(f"error_description={_quote(description)}")
        return "Bearer " + ", ".join(params)

    def unauthorized(self, description: str, *, error: str | None = "invalid_token") -> HttpError:
        """401 with a challenge (no ``error`` when the request simply had no token)."""
        return HttpError(
            401,
            description,
            code=error or "unauthorized",
            headers=[("WWW-Authenticate", self.challenge(error, description if error else None))],
        )

    def insufficient_scope(self, scope: str, description: str | None = None) -> HttpError:
        """403 ``insufficient_scope`` naming the ``scope`` needed (RFC 6750 section 3.1)."""
        text = description or f"this needs the {scope} scope"
        return HttpError(
            403,
            text,
            code="insufficient_scope",
            headers=[("WWW-Authenticate", self.challenge("insufficient_scope", text, scope))],
        )

    # --- authenticate -----------------------------------------------------------------

    async def __call__(self, request: Request) -> Caller:
        """Authenticate ``request``; see the class docstring."""
        if "access_token" in request.query:
            # RFC 6750 section 2.3 is not supported (tokens leak through logs and
            # Referer); the token is not even looked at.
            raise HttpError(
                400,
                "send the access token in the Authorization header, not the query string",
                code="invalid_request",
                headers=[
                    (
                        "WWW-Authenticate",
                        self.challenge("invalid_request", "token in the query string"),
                    )
                ],
            )
        header = request.headers.get("authorization")
        if header is None:
            raise self.unauthorized("a bearer token is required", error=None)
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer":
            raise self.unauthorized("a bearer token is required", error=None)
        if not token or len(token) > _MAX_TOKEN or not set(token) <= _TOKEN68:
            raise self.unauthorized("malformed bearer token")
        caller, reason = await self._check(token)
        if caller is None:
            raise self.unauthorized(reason)
        return caller

    async def _check(self, token: str) -> tuple[Caller | None, str]:
        key = hashlib.sha256(token.encode("ascii")).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached.until and self._wall() < cached.expires_at:
            self._cache.move_to_end(key)
            return cached.caller, cached.reason
        caller, reason, expires_at = await self._introspect(token)
        self._cache[key] = _Cached(now + self.cache_ttl, caller, reason, expires_at)
        self._cache.move_to_end(key)
        while len(self._cache) > _MAX_CACHE:
            self._cache.popitem(last=False)
        return caller, reason

    async def _introspect(self, token: str) -> tuple[Caller | None, str, float]:
        self.introspections += 1
        reply = None
        with trio.move_on_after(self.timeout):
            try:
                reply = await post_form(
                    self.introspection_url,
                    {"token": token, "token_type_hint": "access_token"},
                    headers=[("Authorization", self._auth)],
                    ssl_context=self._ssl,
                )
            except HttpClientError as exc:
                log.warning("oauth.introspection_failed", error=str(exc))
        if reply is None or reply.status != 200:
            if reply is not None:
                log.warning("oauth.introspection_refused", status=reply.status)
            # Not the caller's fault: no 401 (it would send the host to log in again).
            raise HttpError(
                503, "the authorization server cannot check tokens right now", code="unavailable"
            )
        try:
            answer = json.loads(reply.body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise HttpError(503, "the authorization server answered garbage", code="unavailable")
        return self._judge(answer)

    def _judge(self, answer: dict[str, object]) -> tuple[Caller | None, str, float]:
        inf = float("inf")
        if answer.get("active") is not True:
            return None, "the token is not active (unknown, expired or revoked)", inf
        token_type = answer.get("token_type")
        if token_type is not None and str(token_type).lower() != "bearer":
            return None, "not an access token", inf
        exp = answer.get("exp")
        expires_at = float(exp) if isinstance(exp, int | float) else inf
        if self._wall() >= expires_at:
            return None, "the token has expired", inf
        if self.issuer is not None and answer.get("iss") != self.issuer:
            return None, "the token comes from another issuer", inf
        audience = answer.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.resource not in audiences:
            return None, f"the token is not for this resource ({self.resource})", inf
        subject = answer.get("sub") or answer.get("username")
        if not isinstance(subject, str) or not subject:
            return None, "the token has no subject", inf
        scope = answer.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        return Caller(subject=subject, scopes=scopes, transport="http"), "", expires_at


class ProtectedResourceMetadata:
    """RFC 9728 metadata for one MCP endpoint.

    ``resource`` is the canonical MCP URL (``https://host:7430/mcp``), or a callable
    returning it once the listener is bound; ``authorization_servers`` the issuer(s)
    (the control plane's public URL).
    """

    def __init__(
        self,
        resource: str | Callable[[], str],
        authorization_servers: Sequence[str],
        scopes: Sequence[str] = SCOPES,
        *,
        path: str = "/mcp",
    ) -> None:
        self._resource = resource if callable(resource) else canonical_resource(resource)
        self.authorization_servers = [a.rstrip("/") for a in authorization_servers]
        self.scopes = tuple(scopes)
        self._path = (
            urllib.parse.urlsplit(self._resource).path if isinstance(self._resource, str) else path
        )

    @property
    def resource(self) -> str:
        """The canonical URL (resolved now when given as a callable)."""
        value = self._resource
        return canonical_resource(value()) if callable(value) else value

    @property
    def document(self) -> dict[str, object]:
        """The RFC 9728 JSON document."""
        return protected_resource_metadata(self.resource, self.authorization_servers, self.scopes)

    def paths(self) -> list[str]:
        """``/.well-known/oauth-protected-resource`` and the path-inserted variant
        (``path``, the MCP endpoint's path, when the resource is a callable)."""
        path = self._path.rstrip("/")
        return [_WELL_KNOWN] + ([_WELL_KNOWN + path] if path else [])

    def mount(self, router: Router) -> None:
        """Route ``GET`` on both :meth:`paths`."""
        for path in self.paths():
            router.route("GET", path, self.handle, max_body_bytes=0)

    async def handle(self, request: Request) -> Response:
        """The JSON document (cacheable for 5 minutes, readable cross-origin)."""
        return Response.json(
            self.document,
            headers=[("Cache-Control", "max-age=300"), ("Access-Control-Allow-Origin", "*")],
        )
