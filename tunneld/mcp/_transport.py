"""MCP Streamable HTTP: one endpoint, POST/GET/DELETE, JSON or SSE responses.

Order of checks on every request (MCP 2025-11-25 "Streamable HTTP" and "Security"):
``Host``/``Origin`` (403) → method (405) → ``Accept`` (406) → ``Content-Type`` (415)
→ body (400: -32700 / -32600) → ``Mcp-Session-Id`` (400 missing, 404 unknown) →
``MCP-Protocol-Version`` (400) → authentication (401, from ``authenticate``) →
scopes (403 ``insufficient_scope``). Unknown sessions answer 404 *before* any auth
error so a client learns to re-initialize rather than to re-authenticate.

Requests run as tasks in the server's nursery, not in the HTTP handler task: a
client that disconnects does not cancel a tool call (only ``notifications/cancelled``
does), and the rest of an SSE stream can be fetched with ``Last-Event-ID``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from tunneld.http import HttpError, Request, Response
from tunneld.log import get_logger
from tunneld.mcp._catalog import Catalog
from tunneld.mcp._channel import Channel
from tunneld.mcp._checks import (
    Reject,
    check_accept,
    check_content_type,
    check_version,
    parse_body,
    rpc_error,
)
from tunneld.mcp._events import EventStream, parse_event_id
from tunneld.mcp._guard import ALLOWED_REQUEST_HEADERS, EXPOSED_HEADERS, OriginGuard
from tunneld.mcp._jsonrpc import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    SERVER_BUSY,
    UNSUPPORTED_PROTOCOL_VERSION,
    McpError,
    Notification,
    error_message,
    result_message,
)
from tunneld.mcp._jsonrpc import Request as RpcRequest
from tunneld.mcp._jsonrpc import Response as RpcResponse
from tunneld.mcp._media import accepts, parse_accept
from tunneld.mcp._methods import (
    HANDSHAKE_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    MODERN_VERSIONS,
    Exchange,
    Methods,
)
from tunneld.mcp._registry import AgentAccess, Caller
from tunneld.mcp._session import MAX_INFLIGHT, Session, SessionStore

__all__ = ["SCOPE_READ", "SCOPE_WRITE", "Transport", "TransportOptions"]

log = get_logger(__name__)

ALLOW: Final = "GET, POST, DELETE, OPTIONS"
RETRY_MS: Final = 1000  # SSE reconnection delay announced in priming events
# A tools/call answers with JSON when its result is ready within this long and it has
# sent nothing on its stream by then (no progress, log or server→client request);
# otherwise with SSE (priming event, then its events), as before.
JSON_WINDOW_SECONDS: Final = 1.0
# OAuth scopes a caller needs: reading tools (and resources, prompts), and calling
# tools that write (ToolAnnotations.writes); the write scope includes reading.
SCOPE_READ: Final = "mcp:tools"
SCOPE_WRITE: Final = "mcp:tools:write"
# Requests answered with an SSE stream when the client accepts one: the ones whose
# handlers may send progress, logs or server→client requests while they run.
_STREAMED: Final = frozenset({"tools/call"})
_NAME_PARAM: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# 2026-07-28: the HTTP status that goes with a JSON-RPC error code.
_MODERN_STATUS: Final = {
    -32700: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    -32021: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}


@dataclass(frozen=True, slots=True)
class TransportOptions:
    authenticate: Callable[[Request], Awaitable[Caller]] | None
    resource_metadata_url: str | None
    allowed_origins: Sequence[str]
    allowed_hosts: Sequence[str]
    request_timeout: float = 600.0
    json_window: float = JSON_WINDOW_SECONDS


@dataclass(slots=True)
class _Reply:
    done: trio.Event = field(default_factory=trio.Event)
    message: dict[str, Any] | None = None
    # Streamed requests (tools/call): the POST chose SSE, so the answer goes on the
    # stream; until then an answer with nothing before it on the stream is handed
    # over here instead (``handed_over``), for a JSON response.
    streaming: bool = False
    generation: int = 0
    handed_over: bool = False


class Transport:
    """The HTTP side of the MCP server: one ``handle(request)`` for every method."""

    def __init__(
        self,
        *,
        options: TransportOptions,
        methods: Methods,
        sessions: SessionStore,
        catalog: Callable[[], Catalog],
        agents_for: Callable[[Caller], AgentAccess],
        nursery: Callable[[], trio.Nursery | None],
    ) -> None:
        self.options = options
        self.methods = methods
        self.sessions = sessions
        self.catalog = catalog
        self.agents_for = agents_for
        self._nursery = nursery
        self._guard = OriginGuard(options.allowed_hosts, options.allowed_origins)

    # ---- entry point ----

    async def handle(self, request: Request) -> Response:
        """Answer one HTTP request to the MCP endpoint; never raises except on cancel."""
        origin = request.headers.get("origin")
        try:
            self._check_host_and_origin(request, origin)
            if request.method == "OPTIONS":
                response = self._preflight(origin)
            elif request.method == "POST":
                response = await self._post(request)
            elif request.method == "GET":
                response = await self._get(request)
            elif request.method == "DELETE":
                response = await self._delete(request)
            else:
                response = Response.error(
                    405, f"method {request.method} not allowed", headers=[("Allow", ALLOW)]
                )
        except Reject as reject:
            response = reject.response
        except HttpError as exc:
            response = exc.to_response()
        if origin is not None and self._guard.origin_allowed(origin):
            response.headers.extend(
                [
                    ("Access-Control-Allow-Origin", origin),
                    ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
                    ("Vary", "Origin"),
                ]
            )
        return response

    def _check_host_and_origin(self, request: Request, origin: str | None) -> None:
        # A Unix-socket peer is a local process, not a browser page behind rebound DNS.
        local = request.peer_credentials is not None or isinstance(request.peer, str | bytes)
        if not local and not self._guard.host_allowed(request.headers.get("host")):
            log.warning("mcp.host_refused", host=request.headers.get("host"))
            raise rpc_error(403, INVALID_REQUEST, "Forbidden: Host header not allowed")
        if origin is not None and not self._guard.origin_allowed(origin):
            log.warning("mcp.origin_refused", origin=origin)
            raise rpc_error(403, INVALID_REQUEST, "Forbidden: Origin not allowed")

    def _preflight(self, origin: str | None) -> Response:
        headers = [("Allow", ALLOW)]
        if origin is not None:
            headers += [
                ("Access-Control-Allow-Methods", ALLOW),
                ("Access-Control-Allow-Headers", ALLOWED_REQUEST_HEADERS),
                ("Access-Control-Max-Age", "600"),
            ]
        return Response(204, headers)

    async def _session(self, request: Request) -> tuple[Session, str, Caller]:
        """The request's session, protocol version and caller, checked in that order.

        Raises:
            Reject: no ``Mcp-Session-Id`` (400), a bad version (400), or a session that
                is unknown or another caller's (404, the same answer for both).
            HttpError: from ``authenticate`` (401 and the like).
        """
        session_id = request.headers.get("mcp-session-id")
        if session_id is None:
            raise rpc_error(400, INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required")
        session = self.sessions.get(session_id.strip())
        if session is None:
            raise _session_not_found()
        version = check_version(request)
        caller = await self._authenticate(request)
        if not session.owned_by(caller):
            # A session belongs to whoever initialized it; to anyone else it does not exist.
            raise _session_not_found()
        return session, version, caller

    async def _authenticate(self, request: Request) -> Caller:
        if self.options.authenticate is None:
            creds = request.peer_credentials
            return Caller(
                subject="",
                transport="unix" if creds is not None else "http",
                uid=creds.uid if creds is not None else None,
            )
        return await self.options.authenticate(request)

    def _authorize(self, caller: Caller, catalog: Catalog, message: object) -> None:
        if self.options.authenticate is None or not isinstance(message, RpcRequest):
            return
        method = message.method
        needed: str | None = None
        if method == "tools/call":
            tool = catalog.registry.tools.get(str(message.params.get("name")))
            if tool is not None:
                needed = SCOPE_WRITE if tool.annotations.writes else SCOPE_READ
        elif method in ("tools/list", "completion/complete") or method.startswith(
            ("resources/", "prompts/")
        ):
            needed = SCOPE_READ
        if needed is None:
            return
        # The write scope includes reading.
        granted = caller.scopes
        if needed in granted or (needed == SCOPE_READ and SCOPE_WRITE in granted):
            return
        challenge = f'Bearer error="insufficient_scope", scope="{needed}"'
        if self.options.resource_metadata_url:
            challenge += f', resource_metadata="{self.options.resource_metadata_url}"'
        raise rpc_error(
            403,
            INVALID_REQUEST,
            f"Forbidden: {method} needs scope {needed}",
            id=message.id,
            headers=[("WWW-Authenticate", challenge)],
        )

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        nursery = self._nursery()
        if nursery is None:
            raise rpc_error(503, INTERNAL_ERROR, "MCP server is not running")
        nursery.start_soon(fn, *args)

    # ---- POST ----

    async def _post(self, request: Request) -> Response:
        header_version = (request.headers.get("mcp-protocol-version") or "").strip()
        if header_version in MODERN_VERSIONS:
            return await self._post_modern(request, header_version)
        check_accept(request, json=True, sse=True)
        check_content_type(request)
        message = parse_body(request)
        if isinstance(message, RpcRequest) and message.method == "initialize":
            return await self._initialize(request, message)
        if (
            isinstance(message, RpcRequest)
            and header_version
            and header_version not in HANDSHAKE_VERSIONS
            and isinstance(message.params.get("_meta"), dict)
            and META_PROTOCOL_VERSION in message.params["_meta"]
        ):
            # A stateless-revision request at a version we do not speak: name ours so
            # the client can pick one (2026-07-28 "Version negotiation").
            raise rpc_error(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                f"Unsupported protocol version {header_version!r}",
                id=message.id,
                data={
                    "supported": [*HANDSHAKE_VERSIONS, *MODERN_VERSIONS],
                    "requested": header_version,
                },
            )
        session, version, caller = await self._session(request)
        catalog = self.catalog()
        self._authorize(caller, catalog, message)
        headers = [("Mcp-Session-Id", session.id)]
        if isinstance(message, Notification):
            self._notification(session, message)
            return Response(202, headers)
        if isinstance(message, RpcResponse):
            pending = session.pending.get(message.id)
            if pending is not None:
                pending.result, pending.error = message.result, message.error
                pending.done.set()
            return Response(202, headers)
        if message.id in session.inflight:
            raise rpc_error(
                400, INVALID_REQUEST, f"Request id {message.id!r} is already in use", id=message.id
            )
        if len(session.inflight) >= MAX_INFLIGHT:
            raise rpc_error(
                429,
                SERVER_BUSY,
                f"Too many requests running on this session (at most {MAX_INFLIGHT})",
                id=message.id,
            )
        # Not in the session's table yet: most calls answer with JSON, and a stream
        # whose key the client never saw cannot be resumed. Only one that goes out as
        # SSE is registered (below); with a hundred calls in flight the table's
        # eviction scan walked all of them on every call.
        stream = session.streams.new(register=False) if message.method in _STREAMED else None
        ex = self._exchange(caller, session, version, message, stream, None)
        # Registered before the task starts, so a cancel or a reused id that arrives
        # in between is seen.
        scope = session.inflight[message.id] = trio.CancelScope()
        generation = stream.reader_generation if stream is not None else 0
        reply = _Reply(generation=generation)
        try:
            self._spawn(self._run, ex, catalog, message, stream, reply, scope)
        except Reject:
            del session.inflight[message.id]
            raise
        if stream is not None:
            # A quick call that sent nothing on its stream is answered with JSON (the
            # client accepts both, checked above): one write instead of two, and no
            # SSE framing to parse. Anything on the stream first — progress, a log
            # message, a server→client request, close_stream — or the window passing
            # makes it SSE as before, so such events and resumption still work.
            quick = False
            if self.options.json_window > 0:
                with trio.move_on_after(self.options.json_window):
                    while not reply.done.is_set() and stream.last_seq == 0:
                        if stream.reader_generation != generation:
                            break
                        await stream.wait_changed()
                # A cancelled call (no answer) keeps its old reply: an SSE stream
                # that ends.
                quick = reply.done.is_set() and reply.handed_over
            if not quick:
                reply.streaming = True
                session.streams.register(stream)
                # No disconnect watcher: on these revisions a disconnect cancels nothing
                # (the call runs on, its events wait for Last-Event-ID), so noticing it
                # at the next write (an event, a keepalive within KEEPALIVE_SECONDS, the
                # end) is enough, and a watcher task per call is a good share of a
                # small call.
                return self._sse(
                    stream.read(0, prime=False, generation=generation),
                    headers,
                    first=stream.priming(0, retry_ms=RETRY_MS),
                    watch_disconnect=False,
                )
        if not reply.done.is_set():
            # Not ``wait()`` on an event already set (a quick call's, seen above): that
            # is a schedule point, a task step per call for nothing.
            await reply.done.wait()
        if reply.message is None:  # cancelled by the client: nothing to answer
            return Response(202, headers)
        return Response.json(reply.message, headers=headers)

    def _exchange(
        self,
        caller: Caller,
        session: Session | None,
        version: str,
        message: RpcRequest,
        stream: EventStream | None,
        log_level: str | None,
    ) -> Exchange:
        meta = message.params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if isinstance(token, bool) or not isinstance(token, str | int):
            token = None
        client_caps: Mapping[str, Any] = {}
        if session is not None:
            client_caps = session.client_capabilities
        elif isinstance(meta, dict) and isinstance(meta.get(META_CLIENT_CAPABILITIES), dict):
            client_caps = meta[META_CLIENT_CAPABILITIES]
        channel = Channel(
            session=session,
            stream=stream,
            progress_token=token,
            log_level=log_level,
            related_request=message.id,
            request_timeout=self.options.request_timeout,
        )
        return Exchange(
            caller=caller,
            agents=self.agents_for(caller),
            session=session,
            protocol_version=version,
            channel=channel,
            client_capabilities=client_caps,
        )

    @staticmethod
    def _sse(
        body: AsyncIterator[bytes],
        headers: list[tuple[str, str]],
        *,
        first: bytes = b"",
        watch_disconnect: bool = True,
    ) -> Response:
        # ``first`` (a priming event) is written with the head, in one write.
        return Response.stream(
            body,
            content_type="text/event-stream",
            headers=[*headers, ("X-Accel-Buffering", "no")],
            first=first,
            watch_disconnect=watch_disconnect,
        )

    async def _run(
        self,
        ex: Exchange,
        catalog: Catalog,
        message: RpcRequest,
        stream: EventStream | None,
        reply: _Reply | None,
        scope: trio.CancelScope,
    ) -> None:
        """Serve one request in the server's nursery; deliver to ``stream`` or ``reply``.

        ``scope`` is what ``notifications/cancelled`` (or, stateless, a disconnect)
        cancels; a cancelled request gets no answer.
        """
        session = ex.session
        answer: dict[str, Any] | None = None
        try:
            with scope:
                try:
                    result = await self.methods.dispatch(
                        ex, catalog, message.method, message.params
                    )
                    answer = result_message(message.id, result)
                except McpError as exc:
                    answer = error_message(message.id, exc.code, exc.message, exc.data)
                except Exception:
                    log.exception("mcp.request_failed", method=message.method)
                    answer = error_message(message.id, INTERNAL_ERROR, "Internal error")
            if scope.cancelled_caught:
                log.info("mcp.request_cancelled", method=message.method)
        finally:
            if session is not None and session.inflight.get(message.id) is scope:
                del session.inflight[message.id]
            if stream is not None:
                if answer is not None:
                    if (
                        reply is not None
                        and not reply.streaming
                        and stream.last_seq == 0
                        and stream.reader_generation == reply.generation
                    ):
                        reply.handed_over = True  # the POST may still answer with JSON
                    else:
                        stream.send(answer)
                stream.close()
            if reply is not None:
                reply.message = answer
                reply.done.set()

    def _notification(self, session: Session, message: Notification) -> None:
        if message.method == "notifications/initialized":
            session.initialized = True
        elif message.method == "notifications/cancelled":
            request_id = message.params.get("requestId")
            if isinstance(request_id, str | int) and not isinstance(request_id, bool):
                scope = session.inflight.get(request_id)
                if scope is not None:
                    scope.cancel()
        # Other notifications (progress, roots/list_changed) need no action here.

    async def _initialize(self, request: Request, message: RpcRequest) -> Response:
        params = message.params
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise rpc_error(
                400,
                INVALID_PARAMS,
                "Invalid params: initialize needs a string protocolVersion",
                id=message.id,
            )
        caps = params.get("capabilities", {})
        info = params.get("clientInfo", {})
        if not isinstance(caps, dict) or not isinstance(info, dict):
            raise rpc_error(
                400,
                INVALID_PARAMS,
                "Invalid params: capabilities and clientInfo must be objects",
                id=message.id,
            )
        caller = await self._authenticate(request)
        # Version negotiation: echo a revision we speak, else offer our latest.
        version = requested if requested in HANDSHAKE_VERSIONS else LATEST_HANDSHAKE_VERSION
        catalog = self.catalog()
        result = self.methods.initialize_result(catalog, version)
        session = self.sessions.create(
            owner=(caller.subject, caller.uid),
            protocol_version=version,
            client_capabilities=caps,
            client_info=info,
            capabilities=result["capabilities"],
        )
        if session is None:
            raise rpc_error(503, INTERNAL_ERROR, "Too many MCP sessions; try again later")
        log.info(
            "mcp.session_started",
            protocol=version,
            client=str(info.get("name", ""))[:64],
            sessions=len(self.sessions),
        )
        return Response.json(
            result_message(message.id, result), headers=[("Mcp-Session-Id", session.id)]
        )

    # ---- POST, stateless revision ----

    async def _post_modern(self, request: Request, version: str) -> Response:
        check_accept(request, json=True, sse=False)
        check_content_type(request)
        message = parse_body(request)
        if not isinstance(message, RpcRequest):
            await self._authenticate(request)
            if isinstance(message, Notification):
                # 2026-07-28 defines no client→server notifications over HTTP: acknowledge.
                return Response(202)
            raise rpc_error(
                400,
                INVALID_REQUEST,
                "Invalid Request: this revision has no server-to-client requests to answer",
                id=message.id,
            )
        meta = message.params.get("_meta")
        if not isinstance(meta, dict):
            meta = {}
        missing = [k for k in (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES) if k not in meta]
        if missing:
            raise rpc_error(
                400,
                INVALID_PARAMS,
                f"Invalid params: _meta lacks {', '.join(missing)} (required in {version})",
                id=message.id,
            )
        body_version = meta[META_PROTOCOL_VERSION]
        if not isinstance(body_version, str):
            raise rpc_error(
                400,
                INVALID_PARAMS,
                "Invalid params: protocol version must be a string",
                id=message.id,
            )
        if body_version != version:
            raise rpc_error(
                400,
                HEADER_MISMATCH,
                f"MCP-Protocol-Version header {version!r} disagrees with _meta {body_version!r}",
                id=message.id,
            )
        method_header = request.headers.get("mcp-method")
        if method_header is not None and method_header.strip() != message.method:
            raise rpc_error(
                400, HEADER_MISMATCH, "Mcp-Method header disagrees with the body", id=message.id
            )
        name_header = request.headers.get("mcp-name")
        name_key = _NAME_PARAM.get(message.method)
        if (
            name_header is not None
            and name_key is not None
            and name_header.strip() != message.params.get(name_key)
        ):
            raise rpc_error(
                400, HEADER_MISMATCH, "Mcp-Name header disagrees with the body", id=message.id
            )
        if message.method == "initialize":
            raise rpc_error(
                400,
                INVALID_REQUEST,
                f"Invalid Request: revision {version} has no initialize; use server/discover",
                id=message.id,
            )
        if not isinstance(meta.get(META_CLIENT_INFO, {}), dict):
            raise rpc_error(400, INVALID_PARAMS, "Invalid params: clientInfo must be an object")
        caller = await self._authenticate(request)
        catalog = self.catalog()
        self._authorize(caller, catalog, message)
        level = meta.get(META_LOG_LEVEL)
        log_level = level if isinstance(level, str) else None
        wants_sse = accepts(parse_accept(request.headers.get("accept")), "text", "event-stream")
        stream = EventStream() if wants_sse and message.method in _STREAMED else None
        ex = self._exchange(caller, None, version, message, stream, log_level)
        scope = trio.CancelScope()
        if stream is not None:
            self._spawn(self._run, ex, catalog, message, stream, None, scope)
            return self._sse(_cancel_on_disconnect(stream.read(0, prime=False), stream, scope), [])
        reply = _Reply()
        self._spawn(self._run, ex, catalog, message, None, reply, scope)
        try:
            await reply.done.wait()
        finally:
            # 2026-07-28 cancels a request by closing its response stream.
            if not reply.done.is_set():
                scope.cancel()
        assert reply.message is not None
        status = 200
        error = reply.message.get("error")
        if isinstance(error, dict):
            status = _MODERN_STATUS.get(error.get("code", 0), 200)
        return Response.json(reply.message, status)

    # ---- GET and DELETE ----

    async def _get(self, request: Request) -> Response:
        if (request.headers.get("mcp-protocol-version") or "").strip() in MODERN_VERSIONS:
            raise Reject(
                Response.error(
                    405, "revision 2026-07-28 has no GET stream", headers=[("Allow", "POST")]
                )
            )
        if request.method != "GET":
            raise Reject(Response.error(405, "method not allowed", headers=[("Allow", ALLOW)]))
        check_accept(request, json=False, sse=True)
        session, _, _ = await self._session(request)
        headers = [("Mcp-Session-Id", session.id)]
        last_event_id = request.headers.get("last-event-id")
        if last_event_id is not None:
            parsed = parse_event_id(last_event_id)
            stream = session.streams.get(parsed[0]) if parsed is not None else None
            if parsed is None or stream is None:
                raise rpc_error(
                    400,
                    INVALID_REQUEST,
                    "Bad Request: Last-Event-ID names no stream of this session"
                    " (it ended long ago, or it is not ours)",
                )
            stream.supersede_readers()
            return self._sse(stream.read(parsed[1], prime=False), headers)
        standalone = session.get_standalone()
        # One GET stream per session: a new one replaces an old, perhaps dead, reader.
        standalone.supersede_readers()
        after = standalone.delivered
        return self._sse(
            standalone.read(after, prime=False), headers, first=standalone.priming(after)
        )

    async def _delete(self, request: Request) -> Response:
        session, _, _ = await self._session(request)
        self.sessions.remove(session.id)
        log.info("mcp.session_ended", sessions=len(self.sessions))
        return Response(200)

    # ---- server-initiated ----

    def broadcast(
        self,
        message: Mapping[str, Any],
        *,
        capability: str | None = None,
        subscribed: str | None = None,
    ) -> None:
        """Send ``message`` on the GET stream of every session that was offered
        ``capability`` / subscribed to the resource ``subscribed`` (when given)."""
        for session in self.sessions:
            if capability is not None and capability not in session.capabilities:
                continue
            if subscribed is not None and subscribed not in session.subscriptions:
                continue
            session.get_standalone().send(message)


def _session_not_found() -> Reject:
    return rpc_error(404, -32001, "Session not found (expired or ended): initialize again")


async def _cancel_on_disconnect(
    body: AsyncGenerator[bytes, None], stream: EventStream, scope: trio.CancelScope
) -> AsyncIterator[bytes]:
    try:
        async with aclosing(body):
            async for chunk in body:
                yield chunk
    finally:
        if not stream.closed:
            scope.cancel()
