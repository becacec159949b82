"""Running commands: foreground execs streamed on an rpc stream, and background processes.

Every command runs in a new session (``start_new_session=True``), so its process group
id is its pid and one ``killpg`` reaches its children and grandchildren. When the
command's leader exits, whatever it left behind in its group is killed too: a foreground
or background exec owns its whole process group, and stray children would otherwise hold
the output pipes open forever. Timeouts and cancellation send SIGTERM to the group, wait
up to the grace period for the leader, then SIGKILL the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tunneld.agent._errors import OperationError, from_os_error
from tunneld.agent._framed import RECEIVE_SIZE, FramedStream
from tunneld.proto.agentrpc import (
    Cancel,
    Error,
    ErrorCode,
    Exit,
    RemoteProtocolError,
    Stderr,
    StdinData,
    StdinEof,
    Stdout,
    decode_client_frame,
)

__all__ = [
    "BackgroundProcess",
    "OutputBuffer",
    "ProcessTable",
    "parse_signal",
    "run_foreground",
    "terminate_group",
]

_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def terminate_group(process: trio.Process, grace: float) -> None:
    """SIGTERM the process group, wait up to ``grace`` s for the leader, SIGKILL the group.

    Runs shielded: it completes even while the caller is being cancelled.
    """
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            _killpg(process.pid, signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        _killpg(process.pid, signal.SIGKILL)
        await process.wait()


def _exit_of(returncode: int | None, timed_out: bool) -> Exit:
    if returncode is None:
        return Exit(None, None, timed_out)
    if returncode < 0:
        return Exit(None, -returncode, timed_out)
    return Exit(returncode, None, timed_out)


async def _open(
    argv: Sequence[str], cwd: Path | None, env: Mapping[str, str], with_stdin: bool
) -> trio.Process:
    try:
        return await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**os.environ, **env},
            start_new_session=True,
        )
    except OSError as exc:
        raise from_os_error(exc, f"exec {argv[0]}") from None


async def _feed(process: trio.Process, data: bytes) -> None:
    assert process.stdin is not None
    with contextlib.suppress(*_GONE):
        await process.stdin.send_all(data)
    with contextlib.suppress(*_GONE):
        await process.stdin.aclose()


async def run_foreground(
    io: FramedStream,
    argv: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    time_limit: float,
    stdin: bytes | None,
    stream_stdin: bool,
    grace: float,
) -> bool:
    """Run ``argv``, streaming ``stdout``/``stderr`` frames and then ``exit`` on ``io``.

    While it runs, client frames are read: ``stdin``/``stdin_eof`` feed the process
    (with ``stream_stdin``), ``cancel`` or the end of the client's stream kills the group.
    Returns whether the stream can carry another request (False when the client went away
    or sent a malformed frame). The process group is dead when this returns, also when the
    caller is cancelled.

    Raises:
        OperationError: the command could not be started (nothing was sent yet).
    """
    process = await _open(argv, cwd, env, stdin is not None or stream_stdin)
    stop = trio.Event()
    state: dict[str, Any] = {"client_gone": False, "protocol_error": None}

    async def pump(source: trio.abc.ReceiveStream | None, kind: type[Stdout | Stderr]) -> None:
        assert source is not None
        async with source:
            while chunk := await source.receive_some(RECEIVE_SIZE):
                if state["client_gone"]:
                    continue  # keep draining so the process never blocks on a full pipe
                try:
                    await io.send(kind(bytes(chunk)))
                except _GONE:
                    state["client_gone"] = True
                    stop.set()

    async def watch_client() -> None:
        while True:
            try:
                payload = await io.receive_payload()
                message = None if payload is None else decode_client_frame(payload)
            except RemoteProtocolError as exc:
                state["protocol_error"] = exc.reason
                stop.set()
                return
            except _GONE:
                message = None
            if message is None:
                state["client_gone"] = True
                stop.set()
                return
            if isinstance(message, Cancel):
                stop.set()
                return
            if isinstance(message, StdinData) and stream_stdin and process.stdin is not None:
                with contextlib.suppress(*_GONE):
                    await process.stdin.send_all(message.data)
            elif isinstance(message, StdinEof) and process.stdin is not None:
                with contextlib.suppress(*_GONE):
                    await process.stdin.aclose()
            elif not isinstance(message, (StdinData, StdinEof)):
                state["protocol_error"] = "exec: only stdin, stdin_eof or cancel while running"
                stop.set()
                return

    timed_out = False
    try:
        async with trio.open_nursery() as outer:
            watcher = trio.CancelScope()

            async def watch() -> None:
                with watcher:
                    await watch_client()

            outer.start_soon(watch)
            async with trio.open_nursery() as inner:
                inner.start_soon(pump, process.stdout, Stdout)
                inner.start_soon(pump, process.stderr, Stderr)
                if stdin is not None:
                    inner.start_soon(_feed, process, stdin)
                with trio.move_on_after(time_limit) as deadline:
                    async with trio.open_nursery() as race:

                        async def leader_exit() -> None:
                            await process.wait()
                            race.cancel_scope.cancel()

                        async def stop_requested() -> None:
                            await stop.wait()
                            race.cancel_scope.cancel()

                        race.start_soon(leader_exit)
                        race.start_soon(stop_requested)
                timed_out = deadline.cancelled_caught
                await terminate_group(process, grace)
            watcher.cancel()
    finally:
        await terminate_group(process, grace)
    if state["client_gone"]:
        return False
    try:
        await io.send(_exit_of(process.returncode, timed_out))
        if state["protocol_error"] is not None:
            await io.send(Error(ErrorCode.INVALID_REQUEST, str(state["protocol_error"])))
            return False
    except _GONE:
        return False
    return True


def parse_signal(value: int | str) -> int:
    """A signal number from ``15``, ``"TERM"`` or ``"SIGTERM"``.

    Raises:
        OperationError: ``invalid_request`` for an unknown name or number.
    """
    if isinstance(value, int):
        try:
            return int(signal.Signals(value))
        except ValueError:
            raise OperationError(ErrorCode.INVALID_REQUEST, f"unknown signal {value}") from None
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise OperationError(ErrorCode.INVALID_REQUEST, f"unknown signal {value!r}") from None


class OutputBuffer:
    """The last ``limit`` bytes of a process's combined output, addressed by absolute offset."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()
        self.start = 0  # absolute offset of _data[0]

    @property
    def end(self) -> int:
        """Total bytes ever written."""
        return self.start + len(self._data)

    def append(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]
            self.start += excess

    def read(self, offset: int, limit: int) -> tuple[int, bytes]:
        """``(actual_offset, data)``; an offset before the kept window starts at its start."""
        actual = max(offset, self.start)
        begin = min(actual - self.start, len(self._data))
        return actual, bytes(self._data[begin : begin + limit])


@dataclass(slots=True)
class BackgroundProcess:
    """One tracked background command."""

    id: str
    argv: tuple[str, ...]
    process: trio.Process
    output: OutputBuffer
    timed_out: bool = False
    finished: trio.Event = field(default_factory=trio.Event)

    def describe(self) -> dict[str, Any]:
        exit_ = _exit_of(self.process.returncode, self.timed_out)
        return {
            "id": self.id,
            "pid": self.process.pid,
            "argv": list(self.argv),
            "running": not self.finished.is_set(),
            "exit_code": exit_.code,
            "signal": exit_.signal,
            "timed_out": self.timed_out,
            "output_size": self.output.end,
        }


class ProcessTable:
    """Background processes of one agent: at most ``max_processes`` tracked at once.

    Starting a process when the table is full evicts the oldest finished one; if all are
    still running it fails with ``too_many_processes``.
    """

    def __init__(self, *, max_processes: int, output_limit: int, grace: float) -> None:
        self.max_processes = max_processes
        self.output_limit = output_limit
        self.grace = grace
        self._processes: dict[str, BackgroundProcess] = {}
        self._next_id = 1

    def _make_room(self) -> None:
        if self.max_processes <= 0:
            raise OperationError(ErrorCode.DENIED, "background processes are disabled")
        while len(self._processes) >= self.max_processes:
            done = [p for p in self._processes.values() if p.finished.is_set()]
            if not done:
                raise OperationError(
                    ErrorCode.TOO_MANY_PROCESSES,
                    f"{len(self._processes)} background processes are running "
                    f"([agent].max_background_processes = {self.max_processes})",
                )
            del self._processes[done[0].id]

    async def start(
        self,
        nursery: trio.Nursery,
        argv: Sequence[str],
        *,
        cwd: Path | None,
        env: Mapping[str, str],
        stdin: bytes | None,
        time_limit: float | None,
    ) -> BackgroundProcess:
        """Start ``argv`` and track it; its runner task lives in ``nursery``.

        Raises:
            OperationError: table full (``too_many_processes``), disabled, or start failed.
        """
        self._make_room()
        process = await _open(argv, cwd, env, stdin is not None)
        ident = f"p{self._next_id}"
        self._next_id += 1
        entry = BackgroundProcess(ident, tuple(argv), process, OutputBuffer(self.output_limit))
        self._processes[ident] = entry
        nursery.start_soon(self._run, entry, stdin, time_limit)
        return entry

    async def _run(
        self, entry: BackgroundProcess, stdin: bytes | None, time_limit: float | None
    ) -> None:
        process = entry.process

        async def pump(source: trio.abc.ReceiveStream | None) -> None:
            assert source is not None
            async with source:
                while chunk := await source.receive_some(RECEIVE_SIZE):
                    entry.output.append(bytes(chunk))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, process.stdout)
                nursery.start_soon(pump, process.stderr)
                if stdin is not None:
                    nursery.start_soon(_feed, process, stdin)
                with trio.move_on_after(
                    time_limit if time_limit is not None else float("inf")
                ) as d:
                    await process.wait()
                entry.timed_out = d.cancelled_caught
                await terminate_group(process, self.grace)
        finally:
            await terminate_group(process, self.grace)
            entry.finished.set()

    def get(self, ident: str) -> BackgroundProcess:
        """Raises ``OperationError(no_such_process)`` for an unknown or evicted id."""
        try:
            return self._processes[ident]
        except KeyError:
            raise OperationError(
                ErrorCode.NO_SUCH_PROCESS, f"no background process {ident!r}"
            ) from None

    def list(self) -> list[dict[str, Any]]:
        """Every tracked process, oldest first."""
        return [p.describe() for p in self._processes.values()]

    def output(self, ident: str, offset: int, limit: int) -> dict[str, Any]:
        """``{id, offset, data, next_offset, dropped, running, exit_code, signal, timed_out}``.

        ``offset`` is the first byte actually returned: larger than asked when older output
        was dropped from the bounded buffer (``dropped`` counts the skipped bytes).
        """
        entry = self.get(ident)
        actual, data = entry.output.read(offset, limit)
        info = entry.describe()
        return {
            "id": ident,
            "offset": actual,
            "data": data,
            "next_offset": actual + len(data),
            "dropped": actual - offset if offset < actual else 0,
            "running": info["running"],
            "exit_code": info["exit_code"],
            "signal": info["signal"],
            "timed_out": entry.timed_out,
        }

    def signal(self, ident: str, sig: int | str) -> dict[str, Any]:
        """Send a signal to the process's group; ``no_such_process`` once it has exited."""
        entry = self.get(ident)
        number = parse_signal(sig)
        if entry.finished.is_set():
            raise OperationError(ErrorCode.NO_SUCH_PROCESS, f"process {ident} has exited")
        _killpg(entry.process.pid, number)
        return {"id": ident, "signal": number}

    async def terminate_all(self) -> None:
        """Kill every running background process (used at shutdown; shielded)."""
        for entry in list(self._processes.values()):
            if not entry.finished.is_set():
                await terminate_group(entry.process, self.grace)
