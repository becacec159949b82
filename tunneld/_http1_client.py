"""A sans-IO HTTP/1.1 client codec for the lean MCP client: requests out, responses in.

:func:`request_head` renders a request head; :class:`ResponseReader` parses responses
from bytes (RFC 9112): status line, header fields, then a body framed by
``Transfer-Encoding: chunked``, ``Content-Length`` or the end of the connection; 1xx
interim responses are skipped. Malformed input raises :class:`ResponseError` and
nothing else; the connection is then unusable.

Why not h11, which the rest of tunneld uses: the lean client's one job is to drive
benchmarks (and the demo) at the lowest cost per request, and parsing every response
through h11's event machinery was most of the client's work per tool call: about one
Python call in ten of a whole call through the daemon, client, server, agent and
overlay together. The server side stays on h11 (tunneld.http).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tunneld._http_grammar import TOKEN, TOKEN_PATTERN

__all__ = ["MAX_HEAD", "Head", "ResponseError", "ResponseReader", "request_head"]

MAX_HEAD: Final = 64 * 1024
"""Bytes a response head (status line and fields) may take."""
_MAX_CHUNK_LINE: Final = 1024
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
# RFC 9110 field-name token; values: visible ASCII, space, tab, obs-text.
_FIELD: Final = re.compile(
    rb"(" + TOKEN_PATTERN.encode("ascii") + rb"):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*"
)
_SAFE_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_SAFE_TARGET: Final = re.compile(r"[!-~]+")


class ResponseError(Exception):
    """The server's bytes are not an HTTP/1.1 response we can read (what and where)."""


def request_head(
    method: str,
    target: str,
    host: str,
    headers: list[tuple[str, str]],
    body_length: int,
    *,
    checked: bool = False,
) -> bytes:
    """``METHOD target HTTP/1.1`` with ``Host``, ``headers`` and ``Content-Length``.

    ``checked``: the caller already passed these very values through this function
    (a client checks a token or session id once, when it gets it, not per request).

    Raises:
        ValueError: a target, name or value that could split the head (control
            characters, CR/LF); it names the field.
    """
    if not checked:
        if not _SAFE_TARGET.fullmatch(target) or not _SAFE_VALUE.fullmatch(host):
            raise ValueError(f"request target {target!r} has spaces or control characters")
        for name, value in headers:
            if not TOKEN.fullmatch(name) or not _SAFE_VALUE.fullmatch(value):
                raise ValueError(f"header {name!r} has characters not allowed in HTTP")
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{fields}"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode("latin-1")


@dataclass(frozen=True, slots=True)
class Head:
    """A final response's status and fields (names lower-cased; repeats joined by ", ")."""

    status: int
    headers: dict[str, str]
    keep_alive: bool
    """Whether the connection can carry another request once this body is read."""


class ResponseReader:
    """Responses on one connection, one after another: :meth:`read_head`, then
    :meth:`read_body` until it returns ``b""``, then the next :meth:`read_head`.

    Both return ``None`` when they need more bytes (:meth:`feed` them; ``b""`` is the
    end of the connection).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._eof = False
        self._head: Head | None = None
        # Body framing of the current response: bytes left of a Content-Length body or
        # of the current chunk; -1 = until the connection ends.
        self._left = 0
        self._chunked = False
        self._chunk_state = "size"  # size | data | data_end | trailers | done
        self._done = True

    @property
    def idle(self) -> bool:
        """Between responses, with no byte buffered past the last one."""
        return self._done and not self._buffer and not self._eof

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Bytes from the connection; ``b""`` when the server closed it."""
        if not data:
            self._eof = True
        else:
            self._buffer += data

    def read_head(self) -> Head | None:
        """The next final response's head, or ``None`` for more bytes.

        Raises:
            ResponseError: a malformed or oversized head, a head cut off by the end of
                the connection, or a call before the last body was read.
        """
        if not self._done:
            raise ResponseError("read_head before the previous response's body was read")
        while True:
            buffer = self._buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise ResponseError(f"response head over {MAX_HEAD} bytes")
                if self._eof:
                    raise ResponseError(
                        "connection closed before a response"
                        if not buffer
                        else "connection closed inside the response head"
                    )
                return None
            if end > MAX_HEAD:
                raise ResponseError(f"response head over {MAX_HEAD} bytes")
            raw = bytes(buffer[:end])
            del buffer[: end + 4]
            head = self._parse_head(raw)
            if head is not None:
                return head

    def _parse_head(self, raw: bytes) -> Head | None:
        lines = raw.split(b"\r\n")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None:
            raise ResponseError(f"bad status line {lines[0][:80]!r}")
        minor, status = status_line.group(1), int(status_line.group(2))
        headers: dict[str, str] = {}
        for line in lines[1:]:
            field = _FIELD.fullmatch(line)
            if field is None:
                raise ResponseError(f"bad header line {line[:80]!r}")
            name = field.group(1).decode("ascii").lower()
            value = field.group(2).decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            if status == 101:
                raise ResponseError("the server switched protocols (101)")
            return None  # interim: the final response follows
        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = minor == b"1" and "close" not in connection
        self._chunked = False
        self._left = 0
        if status in (204, 304):
            pass
        elif "transfer-encoding" in headers:
            codings = [t.strip().lower() for t in headers["transfer-encoding"].split(",")]
            if codings[-1] != "chunked":
                raise ResponseError(
                    f"unsupported transfer-encoding {headers['transfer-encoding']!r}"
                )
            self._chunked = True
            self._chunk_state = "size"
        elif "content-length" in headers:
            values = {v.strip() for v in headers["content-length"].split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise ResponseError(f"bad content-length {headers['content-length']!r}")
            self._left = int(next(iter(values)))
        else:
            self._left = -1
            keep_alive = False
        self._done = False
        self._head = Head(status, headers, keep_alive)
        return self._head

    def read_body(self) -> bytes | None:
        """The next piece of the current body; ``b""`` once it is all read; ``None``
        for more bytes.

        Raises:
            ResponseError: bad chunk framing, or the connection ended inside the body.
        """
        if self._done:
            return b""
        if self._chunked:
            return self._read_chunked()
        buffer = self._buffer
        if self._left < 0:  # until the connection ends
            if buffer:
                data = bytes(buffer)
                buffer.clear()
                return data
            if self._eof:
                self._done = True
                return b""
            return None
        if self._left == 0:
            self._done = True
            return b""
        if not buffer:
            if self._eof:
                raise ResponseError(f"connection closed with {self._left} body bytes to come")
            return None
        take = min(self._left, len(buffer))
        data = bytes(buffer[:take])
        del buffer[:take]
        self._left -= take
        return data

    def _read_chunked(self) -> bytes | None:
        buffer = self._buffer
        while True:
            if self._chunk_state == "data":
                if not buffer:
                    break
                take = min(self._left, len(buffer))
                data = bytes(buffer[:take])
                del buffer[:take]
                self._left -= take
                if self._left == 0:
                    self._chunk_state = "data_end"
                return data
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > _MAX_CHUNK_LINE:
                    raise ResponseError("chunk framing line too long")
                break
            line = bytes(buffer[:line_end])
            del buffer[: line_end + 2]
            if self._chunk_state == "data_end":
                if line:
                    raise ResponseError("chunk data longer than its size")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size = line.split(b";", 1)[0].strip()
                if (
                    not size
                    or len(size) > 16
                    or not all(c in b"0123456789abcdefABCDEF" for c in size)
                ):
                    raise ResponseError(f"bad chunk size line {line[:40]!r}")
                self._left = int(size, 16)
                self._chunk_state = "data" if self._left else "trailers"
            elif not line:  # the blank line after the trailers ends the body
                self._done = True
                return b""
        if self._eof:
            raise ResponseError("connection closed inside a chunked body")
        return None
