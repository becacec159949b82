"""Shared helpers for the tunneld.http tests: start a server, talk raw HTTP to it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
from hypothesis import strategies as st

from tunneld.http import HttpLimits, HttpServer, Router

# A client read that never completes fails the test instead of hanging it.
CLIENT_TIMEOUT = 5.0


async def start_server(
    nursery: trio.Nursery, router: Router, **kwargs: object
) -> tuple[HttpServer, int]:
    """Serve ``router`` on 127.0.0.1 with a free port; returns the server and port."""
    server = HttpServer(router, **kwargs)  # type: ignore[arg-type]
    _host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    return server, port


def small_limits(**overrides: float) -> HttpLimits:
    """Limits small enough that timeout tests take a fraction of a second."""
    values: dict[str, float] = {
        "max_request_head_bytes": 4096,
        "max_headers": 20,
        "max_body_bytes": 1024,
        "head_timeout": 0.5,
        "body_timeout": 0.5,
        "keepalive_timeout": 0.5,
        "write_timeout": 1.0,
    }
    values.update(overrides)
    return HttpLimits(**values)  # type: ignore[arg-type]


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class RawClient:
    """A byte-level HTTP/1.1 client over a real socket, to say exactly what we send."""

    stream: trio.abc.Stream
    buffer: bytearray = field(default_factory=bytearray)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        with trio.fail_after(CLIENT_TIMEOUT):
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
        self.buffer += data
        return bool(data)

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not await self._fill():
                raise EOFError(f"closed before {marker!r}; got {bytes(self.buffer)!r}")
        index = self.buffer.index(marker) + len(marker)
        data = bytes(self.buffer[:index])
        del self.buffer[:index]
        return data

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(f"closed after {len(self.buffer)} of {size} bytes")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        head = (await self.read_until(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")[:-2]
        _version, status, *reason = status_line.split(" ", 2)
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        return int(status), (reason[0] if reason else ""), headers

    async def read_chunk(self) -> bytes:
        """One chunk of a chunked body (b"" for the last chunk, trailers consumed)."""
        size_line = await self.read_until(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            await self.read_until(b"\r\n")
            return b""
        data = await self.read_exactly(size)
        await self.read_exactly(2)
        return data

    async def read_response(self, *, head_request: bool = False) -> RawResponse:
        status, reason, headers = await self.read_head()
        response = RawResponse(status, reason, headers, b"")
        length = response.header("content-length")
        if head_request or status in (204, 304) or status < 200:
            return response
        if response.header("transfer-encoding") == "chunked":
            body = bytearray()
            while chunk := await self.read_chunk():
                body += chunk
            response.body = bytes(body)
        elif length is not None:
            response.body = await self.read_exactly(int(length))
        else:
            response.body = await self.read_to_eof()
        return response

    async def read_to_eof(self) -> bytes:
        while await self._fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def is_closed(self) -> bool:
        """True if the server closed the connection (EOF or reset) with nothing pending."""
        return not self.buffer and not await self._fill()

    async def aclose(self) -> None:
        await self.stream.aclose()


def request_bytes(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body and not any(k.lower() == "transfer-encoding" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RecordingHandler(logging.Handler):
    """Keeps tunneld log records so tests can assert on access-log fields."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[dict[str, object]]:
        return [
            dict(getattr(r, "tunneld_fields", {})) for r in self.records if r.getMessage() == name
        ]


class capture_http_log:
    """``with capture_http_log() as logs:`` records tunneld.http log records."""

    def __enter__(self) -> RecordingHandler:
        self.logger = logging.getLogger("tunneld.http")
        self.handler = RecordingHandler()
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)
        return self.handler

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], inserts: Sequence[bytes]) -> bytes:
    """One of ``seeds`` after 1-4 byte-level edits: bit flips, insertions (random bytes or
    one of ``inserts``), deletions, truncation and replaced bytes."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "replace"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[position:position] = draw(
                st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(inserts))
            )
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[position:]
        elif kind == "replace" and data:
            data[position] = draw(st.integers(0, 255))
    return bytes(data)
