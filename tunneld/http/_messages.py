"""Request, Response and HttpError: what handlers receive, return and raise."""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus

from tunneld.http._headers import Headers
from tunneld.http._unix import PeerCredentials

__all__ = [
    "Handler",
    "HttpError",
    "LastChunk",
    "Request",
    "Response",
    "format_sse",
    "status_code_slug",
]


def status_code_slug(status: int) -> str:
    """``404`` -> ``"not_found"``: the default machine-readable error code for a status."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


class HttpError(Exception):
    """Raised by a handler (or by :meth:`Request.json`) to answer with an error response.

    The server turns it into :meth:`Response.error` with the same status, message,
    code and extra headers (e.g. ``Allow`` for 405, ``WWW-Authenticate`` for 401).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.code = code or status_code_slug(status)
        self.headers = list(headers)

    def to_response(self) -> Response:
        """The JSON error response this exception stands for."""
        return Response.error(self.status, self.message, code=self.code, headers=self.headers)


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request with its whole body (bounded by ``HttpLimits.max_body_bytes``).

    ``path`` is percent-decoded; ``target`` is the raw request-target as sent (it may
    hold credentials in the query: never log it). ``peer`` is the remote address (a
    ``(host, port, ...)`` tuple for TCP, the socket's peer name for Unix sockets);
    ``peer_credentials`` is ``PeerCredentials(pid, uid, gid)`` on Linux Unix sockets,
    else ``None``.
    """

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: Headers
    body: bytes
    peer: object
    tls: bool
    path_params: dict[str, str] = field(default_factory=dict)
    peer_credentials: PeerCredentials | None = None
    request_id: str = ""
    http_version: str = "1.1"

    def query_one(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or ``None``."""
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> object:
        """The body parsed as JSON.

        Raises:
            HttpError: 400 when the body is empty, not UTF-8 or not valid JSON; the
                message says which and where (line and column).
        """
        if not self.body:
            raise HttpError(400, "request body is empty; expected a JSON document", code="bad_json")
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(
                400, f"request body is not UTF-8 (byte {exc.start})", code="bad_json"
            ) from None
        try:
            return _json.loads(text)
        except _json.JSONDecodeError as exc:
            raise HttpError(
                400,
                f"request body is not valid JSON: {exc.msg}"
                f" at line {exc.lineno} column {exc.colno}",
                code="bad_json",
            ) from None


Body = bytes | AsyncIterator[bytes]


class LastChunk(bytes):
    """A streamed body's final chunk, yielded as such (``yield LastChunk(data)``).

    The server writes it together with the end of the body, in one write (one wake-up
    of the client instead of two), and closes the iterator instead of asking it for
    more. A body that does not know which chunk is its last just ends as usual.
    """

    __slots__ = ()


@dataclass(slots=True)
class Response:
    """What a handler returns.

    ``body`` as ``bytes`` is sent with ``Content-Length``; an async iterator of bytes
    is streamed as it yields (chunked on HTTP/1.1), for SSE and NDJSON. If the client
    goes away mid-stream the iterator is closed (its ``aclose``) and the task reading
    it is cancelled. ``headers`` must not contain ``Content-Length``/``Transfer-Encoding``
    for streamed bodies; the server sets framing. ``first`` (streamed bodies only):
    bytes of the body known when the response is made, written in one go with the
    head (an SSE priming event); the iterator's chunks follow. ``watch_disconnect=False``
    (streamed bodies only) saves the task that watches for the client going away while
    the iterator waits: a departed client is then noticed at the next write. Only for
    bodies that write at least every few seconds (SSE keepalives) and whose producer
    need not stop at once when nobody reads.
    """

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""
    first: bytes = b""
    watch_disconnect: bool = True

    @classmethod
    def json(
        cls, obj: object, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """``obj`` as compact UTF-8 JSON with ``Content-Type: application/json``."""
        body = _json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return cls(status, [("Content-Type", "application/json"), *headers], body)

    @classmethod
    def text(
        cls, text: str, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """``text`` as ``text/plain; charset=utf-8``."""
        return cls(status, [("Content-Type", "text/plain; charset=utf-8"), *headers], text.encode())

    @classmethod
    def html(
        cls, html: str, status: int = 200, headers: Iterable[tuple[str, str]] = ()
    ) -> Response:
        """``html`` as ``text/html; charset=utf-8``."""
        return cls(status, [("Content-Type", "text/html; charset=utf-8"), *headers], html.encode())

    @classmethod
    def error(
        cls,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """``{"error": {"code": code, "message": message}}``; ``code`` defaults to the
        status phrase as a slug (``404`` -> ``"not_found"``)."""
        return cls.json(
            {"error": {"code": code or status_code_slug(status), "message": message}},
            status=status,
            headers=headers,
        )

    @classmethod
    def stream(
        cls,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str,
        status: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        first: bytes = b"",
        watch_disconnect: bool = True,
    ) -> Response:
        """A streamed body; for SSE use ``content_type="text/event-stream"`` and
        :func:`format_sse`. Adds ``Cache-Control: no-store`` so proxies do not buffer.
        ``first`` goes out with the head; a chunk yielded as :class:`LastChunk` goes
        out with the end of the body."""
        return cls(
            status,
            [("Content-Type", content_type), ("Cache-Control", "no-store"), *headers],
            chunks,
            first,
            watch_disconnect,
        )

    def header(self, name: str) -> str | None:
        """The first value of response header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


def format_sse(
    data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """One Server-Sent Events message (WHATWG HTML §9.2.6), ready to yield from a stream.

    Multi-line ``data`` becomes several ``data:`` lines; ``event``/``id`` must not
    contain line breaks (ValueError), since they would end the field early.
    """
    lines: list[str] = []
    for name, value in (("event", event), ("id", id)):
        if value is not None:
            if "\n" in value or "\r" in value:
                raise ValueError(f"SSE {name} must not contain a line break")
            lines.append(f"{name}: {value}")
    if retry is not None:
        lines.append(f"retry: {int(retry)}")
    lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


Handler = Callable[[Request], Awaitable[Response]]
