"""Routing: ``(method, path pattern)`` to handlers, WebSocket and raw-upgrade routes."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

import trio
from trio_websocket import WebSocketConnection

from tunneld._http_grammar import TOKEN_PATTERN
from tunneld.http._messages import Handler, Request, Response

__all__ = [
    "KNOWN_METHODS",
    "Authorizer",
    "Dispatch",
    "Router",
    "UpgradeHandler",
    "UpgradeRoute",
    "WebSocketHandler",
    "WebSocketRoute",
    "dispatch",
]

WebSocketHandler = Callable[[Request, WebSocketConnection], Awaitable[None]]
UpgradeHandler = Callable[[Request, trio.abc.Stream], Awaitable[None]]
Authorizer = Callable[[Request], Awaitable[Response | None]]

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# RFC 9110 §5.6.2 token, optionally "/" token (an Upgrade protocol, §7.8).
_PROTOCOL = re.compile(rf"{TOKEN_PATTERN}(?:/{TOKEN_PATTERN})?")


@dataclass(frozen=True, slots=True)
class WebSocketRoute:
    """A WebSocket endpoint: subprotocols in server preference order."""

    handler: WebSocketHandler
    subprotocols: tuple[str, ...]
    require_subprotocol: bool
    authorize: Authorizer | None
    max_message_size: int


@dataclass(frozen=True, slots=True)
class UpgradeRoute:
    """A generic ``Connection: Upgrade`` endpoint handing over the raw stream after 101."""

    protocol: str
    handler: UpgradeHandler
    method: str
    authorize: Authorizer | None


@dataclass(slots=True)
class _Entry:
    pattern: str
    segments: tuple[str, ...]
    params: tuple[str | None, ...]
    handlers: dict[str, Handler] = field(default_factory=dict)
    body_limits: dict[str, int] = field(default_factory=dict)  # by method, when overridden
    websocket: WebSocketRoute | None = None
    upgrades: dict[str, UpgradeRoute] = field(default_factory=dict)  # by lower-case protocol

    def allowed_methods(self) -> list[str]:
        methods = set(self.handlers)
        if self.websocket is not None:
            methods.add("GET")
        methods.update(route.method for route in self.upgrades.values())
        if "GET" in self.handlers:
            methods.add("HEAD")
        methods.add("OPTIONS")
        return sorted(methods)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route entry a path resolved to, with its decoded ``{name}`` parameters."""

    entry: _Entry
    path_params: dict[str, str]


def _split(path: str) -> list[str]:
    return path.split("/")[1:]


class Router:
    """Maps request paths to handlers.

    Patterns are absolute paths whose whole segments may be ``{name}`` placeholders;
    the matched (percent-decoded) text lands in ``Request.path_params``. When several
    patterns match, the one with literal segments earliest wins (``/a/self`` beats
    ``/a/{name}``). An unknown path is 404 (or the fallback handler), a known path with
    the wrong method is 405 with ``Allow``.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._fallback: Handler | None = None
        self._upgrade_prefixes: tuple[bytes, ...] | None = None

    def _entry(self, path: str) -> _Entry:
        if path in self._entries:
            return self._entries[path]
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        segments = tuple(_split(path))
        params: list[str | None] = []
        for segment in segments:
            found = _PARAM.match(segment)
            if found is None and ("{" in segment or "}" in segment):
                raise ValueError(
                    f"route path {path!r}: placeholder must be a whole segment like '{{name}}'"
                )
            params.append(found.group(1) if found else None)
        names = [p for p in params if p is not None]
        if len(names) != len(set(names)):
            raise ValueError(f"route path {path!r} repeats a placeholder name")
        entry = _Entry(path, segments, tuple(params))
        self._entries[path] = entry
        return entry

    def route(
        self, method: str, path: str, handler: Handler, *, max_body_bytes: int | None = None
    ) -> None:
        """Serve ``method`` requests for ``path`` with ``handler``.

        ``max_body_bytes`` overrides ``HttpLimits.max_body_bytes`` for this route (larger
        for uploads, smaller for endpoints that take no body); over it the answer is 413.

        Raises:
            ValueError: malformed pattern, or the method is already routed for it.
        """
        method = method.upper()
        entry = self._entry(path)
        if method in entry.handlers or (method == "GET" and entry.websocket is not None):
            raise ValueError(f"{method} {path} is already routed")
        entry.handlers[method] = handler
        if max_body_bytes is not None:
            entry.body_limits[method] = max_body_bytes

    def websocket(
        self,
        path: str,
        handler: WebSocketHandler,
        *,
        subprotocols: Sequence[str] = (),
        require_subprotocol: bool = False,
        authorize: Authorizer | None = None,
        max_message_size: int = 1024 * 1024,
    ) -> None:
        """Serve WebSocket connections (RFC 6455) on ``path``.

        ``authorize`` runs before the handshake is accepted; returning a Response
        rejects the upgrade with it (e.g. 401). The first of ``subprotocols`` (server
        preference order) that the client offers is negotiated; when none is offered
        and ``require_subprotocol`` is set the request is answered 400. ``handler`` gets
        the request and the open ``trio_websocket.WebSocketConnection``; the connection
        is closed (1000) when it returns, or 1011 if it raises.
        """
        entry = self._entry(path)
        if entry.websocket is not None or "GET" in entry.handlers:
            raise ValueError(f"GET {path} is already routed")
        if require_subprotocol and not subprotocols:
            raise ValueError("require_subprotocol needs at least one subprotocol")
        entry.websocket = WebSocketRoute(
            handler, tuple(subprotocols), require_subprotocol, authorize, max_message_size
        )

    def upgrade(
        self,
        path: str,
        protocol: str,
        handler: UpgradeHandler,
        *,
        method: str = "POST",
        authorize: Authorizer | None = None,
    ) -> None:
        """Serve ``Connection: Upgrade`` / ``Upgrade: <protocol>`` requests (RFC 9110 §7.8).

        The request body is read first (bounded); ``authorize`` may then refuse with a
        Response. Otherwise the server answers ``101 Switching Protocols`` and calls
        ``handler(request, stream)`` with the raw byte stream (bytes the client sent
        after the request are replayed first); the stream is closed when it returns.
        A request to this path without the matching Upgrade header gets 426.
        """
        method = method.upper()
        entry = self._entry(path)
        key = protocol.lower()
        if key in entry.upgrades:
            raise ValueError(f"upgrade {protocol!r} on {path} is already routed")
        entry.upgrades[key] = UpgradeRoute(protocol, handler, method, authorize)
        self._upgrade_prefixes = None

    def upgrade_prefixes(self) -> tuple[bytes, ...]:
        """``b"METHOD /path"`` of every raw-upgrade route on a literal ASCII path (no
        ``{name}``) whose protocol is a token: the requests the server's fast path
        may take (it still routes them with :func:`dispatch`)."""
        prefixes = self._upgrade_prefixes
        if prefixes is None:
            prefixes = self._upgrade_prefixes = tuple(
                f"{route.method} {entry.pattern}".encode("ascii")
                for entry in self._entries.values()
                if entry.pattern.isascii() and not any(entry.params)
                for route in entry.upgrades.values()
                if _PROTOCOL.fullmatch(route.protocol)
            )
        return prefixes

    def mount_fallback(self, handler: Handler) -> None:
        """Serve every path no route matches with ``handler`` (instead of 404)."""
        self._fallback = handler

    @property
    def fallback(self) -> Handler | None:
        """The handler for unmatched paths, if one was mounted."""
        return self._fallback

    def match(self, raw_path: str) -> RouteMatch | None:
        """The best entry for the undecoded ``raw_path``, or ``None``.

        Segments are split before percent-decoding, so ``%2F`` inside a parameter stays
        part of that parameter.
        """
        if "%" not in raw_path:
            # A path that is a literal pattern verbatim: nothing ranks before it (a
            # placeholder segment ranks after a literal one) and no other literal
            # pattern matches it, so a scan would find this one.
            literal = self._entries.get(raw_path)
            if literal is not None and not any(literal.params):
                return RouteMatch(literal, {})
        parts = _split(raw_path)
        best: tuple[tuple[int, ...], RouteMatch] | None = None
        for entry in self._entries.values():
            if len(entry.segments) != len(parts):
                continue
            params: dict[str, str] = {}
            rank: list[int] = []
            for segment, name, part in zip(entry.segments, entry.params, parts, strict=True):
                if name is None:
                    if unquote(part) != segment:
                        break
                    rank.append(0)
                else:
                    if part == "":
                        break
                    params[name] = unquote(part)
                    rank.append(1)
            else:
                key = tuple(rank)
                if best is None or key < best[0]:
                    best = (key, RouteMatch(entry, params))
        return best[1] if best else None


KNOWN_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What to do with one request; exactly one of the four targets is set.

    ``response`` is an answer decided by routing alone (404, 405, 426, 501, OPTIONS).
    """

    path_params: dict[str, str]
    response: Response | None = None
    handler: Handler | None = None
    websocket: WebSocketRoute | None = None
    upgrade: UpgradeRoute | None = None
    max_body_bytes: int | None = None  # the route's own limit, else the server's


def dispatch(
    router: Router, method: str, raw_path: str, connection: list[str], upgrade: list[str]
) -> Dispatch:
    """Route one request by method, undecoded path and its Connection/Upgrade tokens."""
    path = unquote(raw_path, errors="replace")
    if method not in KNOWN_METHODS:
        return Dispatch({}, response=Response.error(501, f"method {method} is not implemented"))
    if raw_path == "*":
        if method == "OPTIONS":
            return Dispatch(
                {}, response=Response(204, [("Allow", ", ".join(sorted(KNOWN_METHODS)))])
            )
        return Dispatch({}, response=Response.error(404, "no route for *"))
    match = router.match(raw_path)
    if match is None:
        if router.fallback is not None:
            return Dispatch({}, handler=router.fallback)
        return Dispatch({}, response=Response.error(404, f"no route for {path}"))
    entry, params = match.entry, match.path_params
    # RFC 9110 §7.8: Upgrade only counts when Connection lists it too.
    wants_upgrade = "upgrade" in connection and bool(upgrade)
    if entry.websocket is not None and method == "GET":
        if wants_upgrade and "websocket" in upgrade:
            return Dispatch(params, websocket=entry.websocket)
        # Another protocol on the same path (e.g. DERP: Upgrade: DERP or WebSocket).
        for token in upgrade if wants_upgrade else ():
            route = entry.upgrades.get(token)
            if route is not None and route.method == method:
                return Dispatch(params, upgrade=route)
        return Dispatch(
            params,
            response=Response.error(
                426,
                "this endpoint only speaks WebSocket",
                headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")],
            ),
        )
    upgrades = [route for route in entry.upgrades.values() if route.method == method]
    if upgrades:
        for token in upgrade if wants_upgrade else ():
            route = entry.upgrades.get(token)
            if route is not None and route.method == method:
                return Dispatch(params, upgrade=route)
        protocols = ", ".join(route.protocol for route in upgrades)
        return Dispatch(
            params,
            response=Response.error(
                426,
                f"this endpoint needs Upgrade: {protocols}",
                headers=[("Upgrade", protocols), ("Connection", "Upgrade")],
            ),
        )
    handler = entry.handlers.get(method)
    if handler is None and method == "HEAD":
        handler = entry.handlers.get("GET")
    if handler is not None:
        limit = entry.body_limits.get(method if method in entry.handlers else "GET")
        return Dispatch(params, handler=handler, max_body_bytes=limit)
    allow = ", ".join(entry.allowed_methods())
    if method == "OPTIONS":
        return Dispatch(params, response=Response(204, [("Allow", allow)]))
    return Dispatch(
        params,
        response=Response.error(
            405, f"method {method} not allowed for {path}", headers=[("Allow", allow)]
        ),
    )
