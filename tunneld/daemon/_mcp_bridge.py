"""``tunneld mcp``: a stdio MCP server that forwards to the daemon's ``/mcp`` (Unix socket).

Stdio-only MCP hosts start ``tunneld mcp`` as a subprocess; every tool call then rides
the daemon's one overlay instead of each host building its own tunnel.

The MCP stdio transport is newline-delimited JSON-RPC on stdin/stdout. Each message
read from stdin becomes one Streamable HTTP POST to the daemon within one MCP session
(``Mcp-Session-Id`` from the ``initialize`` answer, ``MCP-Protocol-Version`` from its
result). What comes back, as a JSON body or an SSE stream (responses, notifications,
server→client requests), is written to stdout, one message per line; so is what the
session's GET stream carries (``notifications/tools/list_changed``...). On stdin EOF
the bridge ends the session with DELETE and exits.

Requests run concurrently (a long tool call does not hold up a ``ping`` or a
``notifications/cancelled``); the POSTs are sent in stdin order.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import h11
import trio

from tunneld.daemon._client import DaemonUnavailableError, LocalApiClient
from tunneld.log import get_logger

__all__ = ["McpBridge", "SseDecoder", "SseEvent"]

log = get_logger(__name__)

_MAX_LINE: Final = 16 * 1024 * 1024
_MAX_BODY: Final = 64 * 1024 * 1024
_GET_RETRY_MAX: Final = 5.0
_DELETE_TIMEOUT: Final = 3.0
# After stdin ends, how long answers still in flight may take before we exit anyway.
_EOF_GRACE: Final = 10.0
_ACCEPT_POST: Final = "application/json, text/event-stream"
_LINE_END: Final = re.compile(rb"[\r\n]")

# JSON-RPC error codes (JSON-RPC 2.0 §5.1) the bridge answers with itself.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
INTERNAL_ERROR: Final = -32603


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched Server-Sent Event (WHATWG HTML §9.2.6)."""

    data: str
    event: str = "message"
    id: str | None = None


@dataclass(slots=True)
class SseDecoder:
    """Sans-IO SSE parser: ``feed(bytes)`` returns the events those bytes completed.

    Lines end in CRLF, LF or CR; ``:`` lines are comments; an event is dispatched at a
    blank line and only if it had data (per the spec). ``last_event_id`` keeps the
    latest ``id`` for resumption.
    """

    max_event_bytes: int = _MAX_BODY
    last_event_id: str | None = None
    _buffer: bytearray = field(default_factory=bytearray)
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _pending_cr: bool = False
    _scanned: int = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse ``chunk``; raises ``ValueError`` if one event exceeds ``max_event_bytes``."""
        events: list[SseEvent] = []
        data = bytes(chunk)
        if self._pending_cr and data.startswith(b"\n"):
            data = data[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        buffer = self._buffer
        buffer += data
        # Each byte is searched once: ``_scanned`` bytes of the buffer hold no line end,
        # and the lines found are cut off in one go at the end.
        start = 0
        while (found := _LINE_END.search(buffer, self._scanned)) is not None:
            cut = found.start()
            end = cut + 1
            if buffer[cut] == 0x0D:
                if end < len(buffer):
                    if buffer[end] == 0x0A:
                        end += 1
                else:
                    self._pending_cr = True
            line = bytes(buffer[start:cut])
            start = self._scanned = end
            event = self._line(line.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        del buffer[:start]
        self._scanned = len(buffer)
        if len(self._buffer) + sum(len(d) for d in self._data) > self.max_event_bytes:
            raise ValueError("SSE event too large")
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SseEvent("\n".join(self._data), self._event or "message", self.last_event_id)
            self._data = []
            self._event = ""
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        return None


class _HttpAnswer:
    """A response being read: status, headers, then the body chunk by chunk."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection, response: h11.Response):
        self.stream = stream
        self.conn = conn
        self.status = response.status_code
        self.headers = {k.decode().lower(): v.decode() for k, v in response.headers}

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await _next_event(self.conn, self.stream)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def body(self) -> bytes:
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) > _MAX_BODY:
                raise ValueError("response too large")
        return bytes(body)

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(bytes(await stream.receive_some(65536)))
    return event


def _error(request_id: object, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class McpBridge:
    """Forward MCP between ``receive_line``/``send_line`` (stdio) and the daemon's socket.

    ``path`` is the daemon's local API socket; ``endpoint`` its MCP path. After
    stdin ends, requests still in flight get ``eof_grace`` seconds to be answered.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        endpoint: str = "/mcp",
        send_line: Callable[[bytes], Any] | None = None,
        eof_grace: float = _EOF_GRACE,
    ) -> None:
        self.client = LocalApiClient(path)
        self.endpoint = endpoint
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._out_lock = trio.Lock()
        self._stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        self._send_line = send_line
        self._get_started = False
        self.eof_grace = eof_grace
        self._scope: trio.CancelScope | None = None
        self._inflight = 0
        self._settled = trio.Event()

    async def check(self) -> None:
        """Connect once to the socket, to fail fast with a clear message.

        Raises:
            DaemonUnavailableError: nothing answers on the socket (message says what to do).
        """
        stream = await self.client._connect()
        await stream.aclose()

    async def run(self, stdin: trio.abc.ReceiveStream) -> None:
        """Forward until ``stdin`` ends (or stdout closes); then DELETE the session.

        Cancellation stops it.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                buffer = bytearray()
                # After "message too long", the rest of that line is dropped up to its
                # newline: its tail is no message of its own.
                skipping = False
                while True:
                    chunk = await stdin.receive_some(65536)
                    if not chunk:
                        break
                    buffer += chunk
                    while (newline := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:newline]).strip()
                        del buffer[: newline + 1]
                        if skipping:
                            skipping = False
                        elif line:
                            await self._message(line, nursery)
                    if len(buffer) > _MAX_LINE or (skipping and buffer):
                        if not skipping:
                            await self._write(_error(None, PARSE_ERROR, "message too long"))
                        skipping = True
                        buffer.clear()
                if buffer.strip():
                    await self._message(bytes(buffer).strip(), nursery)
                # stdin is done: nothing more will be asked. Answers still on their way
                # get a short grace (a piped script reads them); a host that closed
                # stdin to stop us does not wait for more.
                with trio.move_on_after(self.eof_grace):
                    while self._inflight:
                        await self._settled.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(_DELETE_TIMEOUT):
                await self._delete_session()
            await self._stdout.aclose()

    async def _message(self, line: bytes, nursery: trio.Nursery) -> None:
        try:
            message = json.loads(line)
        except ValueError as exc:
            await self._write(_error(None, PARSE_ERROR, f"invalid JSON on stdin: {exc}"))
            return
        if not isinstance(message, dict):
            await self._write(
                _error(None, INVALID_REQUEST, "expected one JSON-RPC object per line (no batches)")
            )
            return
        is_request = "method" in message and "id" in message
        if message.get("method") == "initialize":
            # Everything else needs the session this answer creates: wait for it.
            await self._post(message, initialize=True)
            return
        if not is_request:
            # Notifications and answers to server requests: 202, quickly.
            await self._post(message)
            if message.get("method") == "notifications/initialized" and not self._get_started:
                self._get_started = True
                nursery.start_soon(self._listen)
            return
        sent = trio.Event()
        nursery.start_soon(self._post_request, message, sent)
        await sent.wait()  # POSTs leave in stdin order

    async def _post_request(self, message: dict[str, Any], sent: trio.Event) -> None:
        self._inflight += 1
        try:
            await self._post(message, sent=sent)
        finally:
            self._inflight -= 1
            self._settled.set()
            self._settled = trio.Event()

    def _headers(self, accept: str) -> list[tuple[str, str]]:
        headers = [("Host", "localhost"), ("Accept", accept), ("Connection", "close")]
        if self.session_id is not None:
            headers.append(("Mcp-Session-Id", self.session_id))
        if self.protocol_version is not None:
            headers.append(("MCP-Protocol-Version", self.protocol_version))
        return headers

    async def _open(
        self,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        sent: trio.Event | None = None,
    ) -> _HttpAnswer:
        """Send one request on a new connection; the answer once its head has arrived.

        ``sent`` is set once the request is on the wire, or when sending it failed.
        """
        try:
            stream = await self.client._connect()
        except BaseException:
            if sent is not None:
                sent.set()
            raise
        try:
            conn = h11.Connection(h11.CLIENT)
            all_headers = [*headers, ("Content-Length", str(len(body)))]
            if body:
                all_headers.append(("Content-Type", "application/json"))
            request = h11.Request(method=method, target=self.endpoint, headers=all_headers)
            try:
                await stream.send_all(
                    conn.send(request)
                    + conn.send(h11.Data(data=body))
                    + conn.send(h11.EndOfMessage())
                )
            finally:
                if sent is not None:
                    sent.set()
            while True:
                event = await _next_event(conn, stream)
                if isinstance(event, h11.Response):
                    return _HttpAnswer(stream, conn, event)
                if isinstance(event, h11.ConnectionClosed):
                    raise trio.BrokenResourceError("the daemon closed the connection")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def _post(
        self,
        message: dict[str, Any],
        *,
        initialize: bool = False,
        sent: trio.Event | None = None,
    ) -> None:
        request_id = message.get("id") if "method" in message else None
        body = json.dumps(message, separators=(",", ":")).encode()
        try:
            answer = await self._open("POST", self._headers(_ACCEPT_POST), body, sent)
        except (OSError, trio.BrokenResourceError, DaemonUnavailableError, h11.ProtocolError) as e:
            if request_id is not None:
                await self._write(_error(request_id, INTERNAL_ERROR, f"daemon unreachable: {e}"))
            log.warning("mcp_bridge.post_failed", error=str(e))
            return
        async with answer.stream:
            if initialize and answer.status == 200:
                self.session_id = answer.headers.get("mcp-session-id", self.session_id)
            if answer.status == 202:
                return
            if answer.status >= 400:
                await self._http_error(answer, request_id)
                return
            try:
                if answer.media_type == "text/event-stream":
                    await self._forward_sse(answer, initialize=initialize)
                else:
                    await self._forward_json(await answer.body(), initialize=initialize)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError, ValueError) as exc:
                if request_id is not None:
                    await self._write(
                        _error(request_id, INTERNAL_ERROR, f"the daemon's answer broke off: {exc}")
                    )

    async def _http_error(self, answer: _HttpAnswer, request_id: object) -> None:
        body = await answer.body()
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and "error" in decoded and "jsonrpc" in decoded:
            if request_id is not None:
                decoded["id"] = request_id
                await self._write(decoded)
            return
        if request_id is not None:
            text = body.decode("utf-8", "replace").strip()[:300]
            hint = " (the MCP session expired: restart the host's MCP connection)"
            message = f"the daemon answered HTTP {answer.status}: {text}"
            await self._write(
                _error(request_id, INTERNAL_ERROR, message + (hint if answer.status == 404 else ""))
            )
        else:
            log.warning("mcp_bridge.http_error", status=answer.status)

    async def _forward_json(self, body: bytes, *, initialize: bool = False) -> None:
        if not body.strip():
            return
        try:
            message = json.loads(body)
        except ValueError:
            log.warning("mcp_bridge.bad_json_from_daemon", size=len(body))
            return
        if initialize:
            self._note_version(message)
        await self._write(message)

    async def _forward_sse(
        self,
        answer: _HttpAnswer,
        *,
        initialize: bool = False,
        decoder: SseDecoder | None = None,
    ) -> None:
        """Write each message event of ``answer`` to stdout.

        Raises:
            ValueError: an event exceeds the decoder's bound.
            OSError, trio.BrokenResourceError, h11.ProtocolError: the answer broke off.
        """
        decoder = SseDecoder() if decoder is None else decoder
        async for chunk in answer.chunks():
            for event in decoder.feed(chunk):
                if event.event == "message" and event.data.strip():
                    await self._forward_json(event.data.encode(), initialize=initialize)

    def _note_version(self, message: object) -> None:
        if isinstance(message, dict):
            result = message.get("result")
            if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                self.protocol_version = result["protocolVersion"]

    async def _listen(self) -> None:
        """The session's GET stream: server notifications and requests outside any POST."""
        last_event_id: str | None = None
        delay = 0.1
        while True:
            headers = self._headers("text/event-stream")
            if last_event_id is not None:
                headers.append(("Last-Event-ID", last_event_id))
            try:
                answer = await self._open("GET", headers)
            except (OSError, trio.BrokenResourceError, DaemonUnavailableError) as exc:
                log.info("mcp_bridge.get_failed", error=str(exc))
            else:
                async with answer.stream:
                    if answer.status == 405:
                        return  # the server offers no GET stream
                    if answer.status >= 400:
                        log.info("mcp_bridge.get_refused", status=answer.status)
                        if answer.status in (400, 404):
                            return  # no (longer a) session
                    else:
                        delay = 0.1
                        # A fresh decoder per connection: a half-read event of a broken
                        # stream must not run into the next one; only the id carries over.
                        decoder = SseDecoder(last_event_id=last_event_id)
                        try:
                            await self._forward_sse(answer, decoder=decoder)
                        except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                            pass
                        except ValueError as exc:
                            log.warning("mcp_bridge.get_event_refused", error=str(exc))
                        last_event_id = decoder.last_event_id
            await trio.sleep(delay)
            delay = min(delay * 2, _GET_RETRY_MAX)

    async def _delete_session(self) -> None:
        if self.session_id is None:
            return
        try:
            answer = await self._open("DELETE", self._headers("application/json"))
            async with answer.stream:
                await answer.body()
        except (OSError, trio.BrokenResourceError, DaemonUnavailableError, h11.ProtocolError):
            pass

    async def _write(self, message: object) -> None:
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._out_lock:
            if self._send_line is not None:
                self._send_line(line)
                return
            try:
                await self._stdout.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                # The host closed our stdout: nobody reads answers any more; wind down.
                log.info("mcp_bridge.stdout_closed")
                if self._scope is not None:
                    self._scope.cancel()
