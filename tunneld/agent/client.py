"""``AgentClient``: the calling side of an agent ``rpc`` stream.

>>> async with AgentClient(stream) as agent:
...     async with agent.exec(["make", "test"]) as run:
...         async for event in run:       # Stdout / Stderr chunks, then one Exit
...             ...
...     text = (await agent.read_file("notes.txt")).data

One request at a time per client (the stream carries them in order); open more streams
for concurrency. Error responses raise ``AgentError`` with the stable code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import trio

from tunneld.agent._framed import FramedStream
from tunneld.proto.agentrpc import (
    Cancel,
    CheckPortRequest,
    CommitPartRequest,
    DiscardPartRequest,
    EditFileRequest,
    Error,
    ExecRequest,
    Exit,
    FileEdit,
    HashFileRequest,
    ListDirRequest,
    ProcessListRequest,
    ProcessOutputRequest,
    ProcessSignalRequest,
    ReadFileRequest,
    RemoteProtocolError,
    Request,
    Response,
    Result,
    StatRequest,
    Stderr,
    StdinData,
    StdinEof,
    Stdout,
    WriteFileRequest,
    WritePartRequest,
    decode_response,
)

__all__ = [
    "AgentClient",
    "AgentError",
    "DirEntry",
    "ExecOutput",
    "ExecRun",
    "FileHash",
    "FileStat",
    "PortStatus",
    "ReadResult",
]


# The frames that answer a request in full, after which it is no longer pending: a
# call's ``result`` or ``error``, an exec's ``exit`` or ``error``. Any other frame
# (``stdout``/``stderr`` or one out of place) leaves it pending.
_CALL_ENDS: Final = (Result, Error)
_EXEC_ENDS: Final = (Exit, Error)


class AgentError(Exception):
    """The agent answered ``error{code, message}``; ``code`` is an ``ErrorCode`` value."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ReadResult:
    """A slice of a file: ``data`` from ``offset``; ``size`` is the whole file's size."""

    data: bytes
    offset: int
    size: int
    eof: bool


@dataclass(frozen=True, slots=True)
class FileHash:
    """SHA-256 (hex) of the first ``length`` bytes of a file whose size is ``size``."""

    sha256: str
    length: int
    size: int


@dataclass(frozen=True, slots=True)
class FileStat:
    """``type`` is ``file``, ``dir``, ``symlink`` or ``other``; ``mode`` the permission bits."""

    path: str
    type: str
    size: int
    mode: int
    mtime: float


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry (a symlink is reported as ``symlink``, not followed)."""

    name: str
    type: str
    size: int
    mode: int
    mtime: float


@dataclass(frozen=True, slots=True)
class PortStatus:
    """Whether a TCP ``port`` has a listener on the agent host, and on which local addresses.

    ``method`` is ``"proc"`` (the kernel's socket tables: every address) or ``"connect"``
    (loopback connect attempts, on hosts without ``/proc``).
    """

    port: int
    listening: bool
    addresses: tuple[str, ...]
    method: str


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """Everything a finished command printed, and how it ended."""

    stdout: bytes
    stderr: bytes
    exit: Exit


def _field(value: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    item = value.get(key)
    if isinstance(item, bool) and kind is not bool:
        item = None
    if not isinstance(item, kind):
        raise RemoteProtocolError(f"result: field {key!r} missing or of the wrong type")
    return item


class ExecRun:
    """One foreground command on the stream: iterate for ``Stdout``/``Stderr`` then ``Exit``.

    Use as ``async with``: leaving the block early (without an exception) sends ``cancel``
    (the agent kills the process group) and reads up to the ``exit`` so the stream can
    take the next request. ``exit`` holds the ``Exit`` once it arrived.
    """

    def __init__(self, client: AgentClient, request: ExecRequest) -> None:
        self._client = client
        self._request = request
        self._started = False
        self._failed = False
        self.exit: Exit | None = None

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            self._client._pending = True
            await self._client._io.send(self._request)

    async def send_stdin(self, data: bytes) -> None:
        """Feed the command's stdin (needs ``stream_stdin=True``)."""
        await self._start()
        await self._client._io.send(StdinData(data))

    async def close_stdin(self) -> None:
        """Close the command's stdin (needs ``stream_stdin=True``)."""
        await self._start()
        await self._client._io.send(StdinEof())

    async def cancel(self) -> None:
        """Ask the agent to kill the command; the iteration then ends with its ``Exit``."""
        await self._start()
        if self.exit is None:
            await self._client._io.send(Cancel())

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Stdout | Stderr | Exit:
        if self.exit is not None:
            raise StopAsyncIteration
        await self._start()
        response = await self._client._receive(_EXEC_ENDS)
        if isinstance(response, Error):
            self._failed = True  # the command never started, or the agent gave up on it
            raise AgentError(response.code, response.message)
        if isinstance(response, Exit):
            self.exit = response
            return response
        if isinstance(response, (Stdout, Stderr)):
            return response
        raise RemoteProtocolError(f"exec: unexpected {type(response).__name__} frame")

    async def __aenter__(self) -> Self:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After another exception (a broken stream, cancellation) the stream's state is
        # unknown; the caller closes it, which makes the agent kill the command.
        if self.exit is not None or self._failed or exc_type is not None:
            return
        await self.cancel()
        async for _ in self:
            pass


class AgentClient:
    """Typed calls over one agent ``rpc`` stream; ``aclose`` (or ``async with``) closes it.

    Every call raises ``AgentError`` for an error answer, ``RemoteProtocolError`` for a
    malformed one or a stream that ended early, and what the stream raises if it broke.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._io = FramedStream(stream)
        # A request is out whose last answer frame has not been read: set before a
        # request is sent, cleared by ``_receive`` once its ``result``/``error``/``exit``
        # is read. A call interrupted in between (cancelled, broken, malformed) leaves
        # it set.
        self._pending = False

    @property
    def stream(self) -> trio.abc.Stream:
        """The stream the client speaks on."""
        return self._io.stream

    @property
    def idle(self) -> bool:
        """No request is unanswered and no byte is buffered past the last answer: the
        stream sits between requests, so another client may take it over (the daemon
        reuses idle rpc streams, :class:`tunneld.daemon.RpcStreamPool`)."""
        return not self._pending and self._io.idle

    async def aclose(self) -> None:
        """Close the stream (a running foreground command on it is killed by the agent)."""
        await self._io.stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _receive(self, ends: tuple[type[Response], ...]) -> Response:
        """The next answer frame; one of the types in ``ends`` ends the pending request."""
        payload = await self._io.receive_payload()
        if payload is None:
            raise RemoteProtocolError("the agent closed the stream before answering")
        response = decode_response(payload)
        if isinstance(response, ends):
            self._pending = False
        return response

    async def _call(self, request: Request) -> Mapping[str, Any]:
        self._pending = True
        await self._io.send_then_receive(request)
        response = await self._receive(_CALL_ENDS)
        if isinstance(response, Error):
            raise AgentError(response.code, response.message)
        if not isinstance(response, Result):
            raise RemoteProtocolError(f"expected a result, got {type(response).__name__}")
        return response.value

    # ------------------------------------------------------------------ exec

    def exec(
        self,
        argv: Sequence[str] | None = None,
        *,
        shell: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        time_limit: float | None = None,
        stdin: bytes | None = None,
        stream_stdin: bool = False,
    ) -> ExecRun:
        """A foreground command (``argv``, or ``shell`` for ``/bin/sh -c``); see ``ExecRun``.

        ``time_limit`` (seconds) is capped by the agent's ``[agent].exec_timeout``.
        """
        request = ExecRequest(
            tuple(argv) if argv is not None else None,
            shell,
            cwd,
            dict(env or {}),
            time_limit,
            stdin,
            stream_stdin,
            False,
        )
        return ExecRun(self, request)

    async def run(
        self,
        argv: Sequence[str] | None = None,
        *,
        shell: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        time_limit: float | None = None,
        stdin: bytes | None = None,
    ) -> ExecOutput:
        """Run a command to completion and collect its output."""
        out: list[bytes] = []
        err: list[bytes] = []
        async with self.exec(
            argv, shell=shell, cwd=cwd, env=env, time_limit=time_limit, stdin=stdin
        ) as run:
            async for event in run:
                if isinstance(event, Stdout):
                    out.append(event.data)
                elif isinstance(event, Stderr):
                    err.append(event.data)
        assert run.exit is not None
        return ExecOutput(b"".join(out), b"".join(err), run.exit)

    async def start_background(
        self,
        argv: Sequence[str] | None = None,
        *,
        shell: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        time_limit: float | None = None,
        stdin: bytes | None = None,
    ) -> str:
        """Start a background command; returns its id for the ``process_*`` calls."""
        request = ExecRequest(
            tuple(argv) if argv is not None else None,
            shell,
            cwd,
            dict(env or {}),
            time_limit,
            stdin,
            False,
            True,
        )
        value = await self._call(request)
        return str(_field(value, "id", str))

    async def process_list(self) -> list[dict[str, Any]]:
        """The agent's background processes (``id, pid, argv, running, exit_code, ...``)."""
        value = await self._call(ProcessListRequest())
        items = _field(value, "processes", list)
        return [dict(p) for p in items if isinstance(p, dict)]

    async def process_output(
        self, ident: str, offset: int = 0, limit: int | None = None
    ) -> dict[str, Any]:
        """Combined output from ``offset``: ``{data, offset, next_offset, dropped, ...}``."""
        value = await self._call(ProcessOutputRequest(ident, offset, limit))
        _field(value, "data", bytes)
        return dict(value)

    async def process_signal(self, ident: str, signal: int | str) -> None:
        """Send ``signal`` (number or name) to the background process's group."""
        await self._call(ProcessSignalRequest(ident, signal))

    # ------------------------------------------------------------------ files

    async def read_file(self, path: str, offset: int = 0, limit: int | None = None) -> ReadResult:
        """Up to ``limit`` bytes (and at most the agent's max read size) from ``offset``."""
        value = await self._call(ReadFileRequest(path, offset, limit))
        return ReadResult(
            _field(value, "data", bytes),
            _field(value, "offset", int),
            _field(value, "size", int),
            _field(value, "eof", bool),
        )

    async def write_file(self, path: str, data: bytes, mode: int | None = None) -> None:
        """Replace ``path`` atomically (``mode`` defaults to the old file's, else 0o644)."""
        await self._call(WriteFileRequest(path, data, mode))

    async def edit_file(self, path: str, edits: Sequence[FileEdit | tuple[str, str]]) -> int:
        """Apply exact, unique search/replace edits (all or nothing); returns the new size."""
        items = tuple(e if isinstance(e, FileEdit) else FileEdit(*e) for e in edits)
        value = await self._call(EditFileRequest(path, items))
        return int(_field(value, "size", int))

    async def list_dir(self, path: str) -> list[DirEntry]:
        """The directory's entries, sorted by name."""
        value = await self._call(ListDirRequest(path))
        entries = []
        for item in _field(value, "entries", list):
            if not isinstance(item, dict):
                raise RemoteProtocolError("list_dir: an entry is not a map")
            entries.append(
                DirEntry(
                    _field(item, "name", str),
                    _field(item, "type", str),
                    _field(item, "size", int),
                    _field(item, "mode", int),
                    float(_field(item, "mtime", (int, float))),
                )
            )
        return entries

    async def stat(self, path: str) -> FileStat:
        """Type, size, mode and mtime of ``path`` (symlinks resolved within the roots)."""
        value = await self._call(StatRequest(path))
        return FileStat(
            _field(value, "path", str),
            _field(value, "type", str),
            _field(value, "size", int),
            _field(value, "mode", int),
            float(_field(value, "mtime", (int, float))),
        )

    # ------------------------------------------------------------------ chunked uploads

    async def write_part(self, path: str, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` of ``path``'s partial upload; returns its new size.

        Offset 0 starts a new partial file; a larger offset must be at most its size.
        Nothing replaces ``path`` until :meth:`commit_part`.
        """
        value = await self._call(WritePartRequest(path, offset, data))
        return int(_field(value, "size", int))

    async def commit_part(self, path: str, size: int, sha256: str, mode: int | None = None) -> None:
        """Verify the partial upload (``size`` bytes, ``sha256`` hex) and rename it over ``path``.

        Raises:
            AgentError: ``verify_failed`` when the size or hash differ (the partial file is
                then removed), ``not_found`` when there is no partial upload.
        """
        await self._call(CommitPartRequest(path, size, sha256, mode))

    async def discard_part(self, path: str) -> bool:
        """Remove ``path``'s partial upload; whether there was one."""
        value = await self._call(DiscardPartRequest(path))
        return bool(_field(value, "removed", bool))

    async def hash_file(
        self, path: str, length: int | None = None, *, partial: bool = False
    ) -> FileHash:
        """SHA-256 of the first ``length`` bytes of ``path`` (whole file if None), or of
        its partial upload with ``partial=True``."""
        value = await self._call(HashFileRequest(path, length, partial))
        return FileHash(
            _field(value, "sha256", str), _field(value, "length", int), _field(value, "size", int)
        )

    # ------------------------------------------------------------------ host

    async def check_port(self, port: int) -> PortStatus:
        """Is something listening on TCP ``port`` on the agent host? (needs ``allow_exec``
        or the port in ``allowed_tcp_ports``; an agent too old to know the request answers
        ``invalid_request``)."""
        value = await self._call(CheckPortRequest(port))
        addresses = _field(value, "addresses", list)
        if not all(isinstance(a, str) for a in addresses):
            raise RemoteProtocolError("check_port: an address is not a string")
        return PortStatus(
            _field(value, "port", int),
            _field(value, "listening", bool),
            tuple(addresses),
            _field(value, "method", str),
        )
