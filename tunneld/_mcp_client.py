"""A lean MCP client over Streamable HTTP (HTTP/1.1 on trio), for ``tunneld demo`` and benchmarks.

It speaks the 2025-11-25 revision: ``initialize`` (the server mints a session),
``notifications/initialized``, then requests in that session; answers come as one JSON
body or as an SSE stream, whichever the server picks. Connections are kept alive and
pooled, so concurrent requests each get their own connection and sequential ones reuse
them. Server-to-client requests (sampling, elicitation) are not answered: the tools this
client calls never ask.

It is not a general-purpose SDK: hosts use the official SDKs (tests run those as real
peers). It exists so the demo needs nothing beyond tunneld's own dependencies, and so a
benchmark drives two servers with exactly the same client, at a low cost per request
(its HTTP codec is :mod:`tunneld._http1_client`, not h11: see there why).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import trio

from tunneld._http1_client import Head, ResponseError, ResponseReader, request_head
from tunneld.http import DirectSocketStream

__all__ = ["PROTOCOL_VERSION", "McpClientError", "McpHttpClient"]

PROTOCOL_VERSION: Final = "2025-11-25"
_MAX_BODY: Final = 16 * 1024 * 1024
_MAX_IDLE_CONNECTIONS: Final = 256
_DELETE_TIMEOUT: Final = 3.0
_CLIENT_INFO: Final = {"name": "tunneld", "version": "0"}


class McpClientError(Exception):
    """The server refused a request: an HTTP error status or a JSON-RPC error.

    ``status`` is the HTTP status (200 for a JSON-RPC error in a 200 answer), ``code``
    the JSON-RPC error code if there was one.
    """

    def __init__(self, message: str, *, status: int = 0, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class _SseData:
    """The ``data`` of each Server-Sent Event in a stream (WHATWG HTML §9.2.6), fed in chunks.

    Lines end in CRLF, LF or CR (a CR at a chunk's end waits for the next chunk, in case
    an LF follows); ``:`` lines are comments; an event is dispatched at a blank line if
    it had data. Event names and ids are not needed here and are skipped.
    """

    def __init__(self) -> None:
        self._partial = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        data = self._partial + chunk
        hold = b""
        if data.endswith(b"\r"):
            data, hold = data[:-1], b"\r"
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._partial = lines.pop() + hold
        if len(self._partial) > _MAX_BODY:
            raise McpClientError("an SSE line is too long")
        events: list[str] = []
        for line in lines:
            if not line:
                # An event whose data is empty (a priming event) is not dispatched.
                if joined := "\n".join(self._data):
                    events.append(joined)
                self._data = []
                continue
            name, _, value = line.partition(b":")
            if name == b"data":
                self._data.append(value.removeprefix(b" ").decode("utf-8", "replace"))
        return events

    def end(self) -> list[str]:
        """The stream ended: a CR held back at the very end was a line end after all."""
        if self._partial.endswith(b"\r"):
            return self.feed(b"\n")
        return []


class _StaleConnectionError(Exception):
    """The connection broke before the server answered anything."""


@dataclass(slots=True)
class _Connection:
    stream: DirectSocketStream
    reader: ResponseReader

    async def head(self) -> Head:
        while (head := self.reader.read_head()) is None:
            self.reader.feed(bytes(await self.stream.receive_some(65536)))
        return head

    async def body(self) -> bytes:
        """The next piece of the body, ``b""`` at its end."""
        while (data := self.reader.read_body()) is None:
            self.reader.feed(bytes(await self.stream.receive_some(65536)))
        return data


class McpHttpClient:
    """One MCP session with the server at ``url`` (``http://HOST:PORT/PATH``).

    ``token``: sent as ``Authorization: Bearer``. Use as an async context manager, or
    call :meth:`initialize` then :meth:`aclose`. Safe to use from many tasks at once.
    """

    def __init__(self, url: str, *, token: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"expected http://HOST:PORT/PATH, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path or "/"
        self.authority = parts.netloc
        self.token = token
        # Checked here, once (ValueError): the head is rendered by hand.
        auth = [("Authorization", f"Bearer {token}")] if token is not None else []
        request_head("POST", self.path, self.authority, auth, 0)
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.server_info: dict[str, Any] = {}
        self._idle: list[_Connection] = []
        self._next_id = 0

    async def __aenter__(self) -> McpHttpClient:
        await self.initialize()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def initialize(self) -> dict[str, Any]:
        """Open the session; returns the ``initialize`` result.

        Raises:
            McpClientError: the server refused (the message has its status and error).
            OSError: nothing listens at the URL.
        """
        result = await self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": _CLIENT_INFO,
            },
        )
        version = str(result.get("protocolVersion") or PROTOCOL_VERSION)
        _check_header("MCP-Protocol-Version", version)
        self.protocol_version = version
        info = result.get("serverInfo")
        self.server_info = info if isinstance(info, dict) else {}
        await self.notify("notifications/initialized")
        return result

    async def list_tools(self) -> list[dict[str, Any]]:
        """Every tool the server offers (follows ``nextCursor`` pages)."""
        tools: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        for _ in range(1000):  # bounded: a server that pages forever is broken
            result = await self.request("tools/list", params)
            tools.extend(t for t in result.get("tools") or [] if isinstance(t, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                break
            params = {"cursor": cursor}
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The ``tools/call`` result (``content``, ``structuredContent``, ``isError``)."""
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one JSON-RPC request and return its ``result``.

        Raises:
            McpClientError: an HTTP error status, a JSON-RPC error, or no answer.
            OSError, trio.BrokenResourceError: the connection failed.
        """
        self._next_id += 1
        request_id = self._next_id
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        answers = await self._post(message)
        for answer in answers:
            if answer.get("id") == request_id and "method" not in answer:
                error = answer.get("error")
                if isinstance(error, dict):
                    raise McpClientError(
                        f"{method}: {error.get('message')} (JSON-RPC {error.get('code')})",
                        status=200,
                        code=error.get("code") if isinstance(error.get("code"), int) else None,
                    )
                result = answer.get("result")
                if not isinstance(result, dict):
                    raise McpClientError(f"{method}: the answer has no result object")
                return result
        raise McpClientError(f"{method}: the server sent no answer")

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a notification (the server answers 202 with no body)."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params:
            message["params"] = params
        await self._post(message)

    async def aclose(self) -> None:
        """End the session (DELETE, bounded) and close the pooled connections."""
        try:
            if self.session_id is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(_DELETE_TIMEOUT):
                    try:
                        await self._exchange("DELETE", b"", self._headers())
                    except (OSError, trio.BrokenResourceError, McpClientError, ValueError):
                        pass  # the server is gone or forgot us: the session is over anyway
                self.session_id = None
        finally:
            idle, self._idle = self._idle, []
            for connection in idle:
                await connection.stream.aclose()

    # -- HTTP ------------------------------------------------------------------

    def _headers(self) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        if self.token is not None:
            headers.append(("Authorization", f"Bearer {self.token}"))
        if self.session_id is not None:
            headers.append(("Mcp-Session-Id", self.session_id))
        if self.protocol_version is not None:
            headers.append(("MCP-Protocol-Version", self.protocol_version))
        return headers

    async def _post(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        body = json.dumps(message, separators=(",", ":")).encode()
        headers = [
            *self._headers(),
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
        ]
        return await self._exchange("POST", body, headers)

    async def _exchange(
        self, method: str, body: bytes, headers: list[tuple[str, str]]
    ) -> list[dict[str, Any]]:
        # A pooled connection the server closed while idle (keep-alive timeout) fails
        # before any answer: then, and only then, the request goes again on a new one.
        for pooled in (bool(self._idle), False):
            if pooled:
                connection = self._idle.pop()
            else:
                # Socket calls the kernel completes at once take no scheduler round.
                stream = DirectSocketStream.take_over(
                    await trio.open_tcp_stream(self.host, self.port)
                )
                connection = _Connection(stream, ResponseReader())
            reusable = False
            try:
                answers, reusable = await self._send_and_read(connection, method, body, headers)
                return answers
            except _StaleConnectionError:
                if pooled:
                    continue
                raise McpClientError(
                    f"{method} {self.path}: the server closed the connection"
                ) from None
            finally:
                if reusable and len(self._idle) < _MAX_IDLE_CONNECTIONS:
                    self._idle.append(connection)
                else:
                    with trio.CancelScope(shield=True):
                        await connection.stream.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_and_read(
        self,
        connection: _Connection,
        method: str,
        body: bytes,
        headers: list[tuple[str, str]],
    ) -> tuple[list[dict[str, Any]], bool]:
        # Every value was checked when the client got it (__init__, _check_header).
        data = request_head(method, self.path, self.authority, headers, len(body), checked=True)
        data += body
        try:
            await connection.stream.send_all(data)
            response = await connection.head()
        except (trio.BrokenResourceError, ResponseError):
            raise _StaleConnectionError from None
        response_headers = response.headers
        media = response_headers.get("content-type", "").split(";", 1)[0].strip().lower()
        raw = bytearray()
        answers: list[dict[str, Any]] = []
        decoder = _SseData() if media == "text/event-stream" else None
        try:
            while chunk := await connection.body():
                if decoder is not None:
                    for payload in decoder.feed(chunk):
                        if payload.strip():
                            answers.append(_json_object(payload))
                else:
                    raw += chunk
                    if len(raw) > _MAX_BODY:
                        raise McpClientError(f"{method} {self.path}: the answer is too large")
        except ResponseError as exc:
            raise McpClientError(f"{method} {self.path}: the answer broke off: {exc}") from None
        if decoder is not None:
            answers.extend(_json_object(p) for p in decoder.end() if p.strip())
        if "mcp-session-id" in response_headers:
            session_id = response_headers["mcp-session-id"]
            _check_header("Mcp-Session-Id", session_id)
            self.session_id = session_id
        if media == "application/json" and raw:
            parsed = json.loads(raw)
            if isinstance(parsed, dict) and response.status < 400:
                answers.append(parsed)
            elif isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
                raise McpClientError(
                    f"{method} {self.path}: HTTP {response.status}: {error.get('message')}",
                    status=response.status,
                    code=error.get("code") if isinstance(error.get("code"), int) else None,
                )
        if response.status >= 400:
            text = bytes(raw[:300]).decode(errors="replace")
            raise McpClientError(
                f"{method} {self.path}: HTTP {response.status}: {text}".rstrip(": "),
                status=response.status,
            )
        return answers, response.keep_alive and connection.reader.idle


def _check_header(name: str, value: str) -> None:
    """Raises McpClientError when the server gave a value we cannot send back."""
    try:
        request_head("POST", "/", "x", [(name, value)], 0)
    except (ValueError, UnicodeError):
        raise McpClientError(f"the server sent an unusable {name}: {value[:40]!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    parsed = json.loads(text)
    if not isinstance(parsed, dict):
        raise McpClientError("the server sent a JSON-RPC message that is not an object")
    return parsed
