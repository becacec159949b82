"""``AgentServices``: the rpc and tcp-forward services an agent serves on incoming streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tunneld.agent._errors import OperationError
from tunneld.agent._exec import ProcessTable, run_foreground
from tunneld.agent._files import (
    edit_file,
    list_dir,
    read_file,
    read_small_file,
    stat_path,
    write_file,
)
from tunneld.agent._framed import RECEIVE_SIZE, FramedStream
from tunneld.agent._parts import commit_part, discard_part, hash_file, write_part
from tunneld.agent._paths import PathPolicy
from tunneld.agent._ports import check_port
from tunneld.config import AgentConfig
from tunneld.log import get_logger
from tunneld.proto.agentrpc import (
    Cancel,
    CheckPortRequest,
    CommitPartRequest,
    DiscardPartRequest,
    EditFileRequest,
    Error,
    ErrorCode,
    ExecRequest,
    HashFileRequest,
    ListDirRequest,
    ProcessListRequest,
    ProcessOutputRequest,
    ProcessSignalRequest,
    ReadFileRequest,
    RemoteProtocolError,
    Request,
    Result,
    StatRequest,
    StdinData,
    StdinEof,
    WriteFileRequest,
    WritePartRequest,
    decode_client_frame,
    encode,
)

__all__ = ["DEFAULT_KILL_GRACE", "DEFAULT_OUTPUT_LIMIT", "AgentServices", "parse_service"]

log = get_logger(__name__)

DEFAULT_KILL_GRACE = 2.0
DEFAULT_OUTPUT_LIMIT = 1 << 20
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


def parse_service(service: str) -> tuple[str, int | None]:
    """``"rpc"`` → ``("rpc", None)``, ``"tcp:22"`` → ``("tcp", 22)``.

    Raises:
        OperationError: ``unknown_service`` for anything else (ports must be 1-65535,
            written in plain decimal).
    """
    if service == "rpc":
        return "rpc", None
    kind, sep, port = service.partition(":")
    if kind == "tcp" and sep and port.isascii() and port.isdigit() and len(port) <= 5:
        number = int(port)
        if 1 <= number <= 65535 and str(number) == port:
            return "tcp", number
    raise OperationError(
        ErrorCode.UNKNOWN_SERVICE, f"unknown service {service[:64]!r} (known: rpc, tcp:PORT)"
    )


async def _send_error_and_close(stream: trio.abc.Stream, error: Error) -> None:
    try:
        await stream.send_all(encode(error))
    except _GONE:
        pass
    finally:
        await stream.aclose()


class AgentServices:
    """The services of one agent, as configured by ``[agent]``.

    Start ``serve`` with ``nursery.start`` before dispatching streams: it owns the
    background processes and kills them when cancelled. Streams are handled by
    ``dispatch(service, stream)`` (or ``serve_rpc``/``serve_tcp_forward`` directly), each
    in its own task; a failing request or stream never affects another.

    Args:
        config: the ``[agent]`` section.
        kill_grace: seconds between SIGTERM and SIGKILL when a command is stopped.
        output_limit: bytes of combined output kept per background process.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        kill_grace: float = DEFAULT_KILL_GRACE,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        self.config = config
        self.paths = PathPolicy(config.roots)
        self.kill_grace = kill_grace
        self.processes = ProcessTable(
            max_processes=config.max_background_processes,
            output_limit=output_limit,
            grace=kill_grace,
        )
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled, hosting background processes; kills them all on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.processes.terminate_all()

    # ------------------------------------------------------------------ dispatching

    def check_service(self, service: str) -> Error | None:
        """``None`` if ``dispatch`` would serve ``service``, else the ``error`` it would send.

        Lets an overlay refuse a stream open before accepting it.
        """
        try:
            kind, port = parse_service(service)
        except OperationError as exc:
            return Error(exc.code, exc.message)
        if kind == "tcp" and port not in self.config.allowed_tcp_ports:
            return Error(ErrorCode.DENIED, f"tcp:{port}: port not in [agent].allowed_tcp_ports")
        return None

    async def dispatch(self, service: str, stream: trio.abc.HalfCloseableStream) -> None:
        """Serve ``stream`` as ``service`` (``"rpc"`` or ``"tcp:PORT"``); closes it at the end.

        A refused service gets one agentrpc ``error`` frame (``unknown_service`` or
        ``denied``) and the stream is closed.
        """
        refusal = self.check_service(service)
        if refusal is not None:
            log.info("agent.service_refused", service=service[:64], code=refusal.code)
            await _send_error_and_close(stream, refusal)
            return
        kind, port = parse_service(service)
        if kind == "rpc":
            await self.serve_rpc(stream)
        else:
            assert port is not None
            await self.serve_tcp_forward(stream, port)

    # ------------------------------------------------------------------ tcp forward

    async def serve_tcp_forward(self, stream: trio.abc.HalfCloseableStream, port: int) -> None:
        """Connect to 127.0.0.1:``port`` and pipe bytes both ways, passing half-closes on.

        Refuses (one ``error`` frame, then close) a port not in ``allowed_tcp_ports``
        (``denied``) or one nothing listens on (``connect_failed``). Returns when both
        directions have ended or either side broke; both streams are closed by then.
        """
        if port not in self.config.allowed_tcp_ports:
            await _send_error_and_close(
                stream,
                Error(ErrorCode.DENIED, f"tcp:{port}: port not in [agent].allowed_tcp_ports"),
            )
            return
        try:
            target = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError as exc:
            await _send_error_and_close(
                stream,
                Error(ErrorCode.CONNECT_FAILED, f"tcp:{port}: {exc.strerror or exc}"),
            )
            return
        log.debug("agent.tcp_forward", port=port)
        async with stream, target, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, stream, target, nursery.cancel_scope)
            nursery.start_soon(_pipe, target, stream, nursery.cancel_scope)

    # ------------------------------------------------------------------ rpc

    async def serve_rpc(self, stream: trio.abc.Stream) -> None:
        """Serve agentrpc requests on ``stream`` one after another until the client ends it.

        Each request gets its answer (an ``error`` frame when it fails); the stream then
        takes the next request. A framing error (oversized or truncated frame) gets an
        ``invalid_request`` error and the stream is closed, since it cannot be
        resynchronised. Closes ``stream`` on return. Cancellation kills a running
        foreground command's process group.
        """
        if hasattr(stream, "no_delay"):
            # Every frame we send is a whole answer (or output chunk): out at once, not
            # held back for more (MuxStream.no_delay); a client may keep the stream for
            # its next request, so no FIN would end the wait.
            stream.no_delay = True
        io = FramedStream(stream)
        try:
            while True:
                try:
                    payload = await io.receive_payload()
                except RemoteProtocolError as exc:
                    await io.send(Error(ErrorCode.INVALID_REQUEST, exc.reason))
                    return
                if payload is None:
                    return
                try:
                    message = decode_client_frame(payload)
                except RemoteProtocolError as exc:
                    await io.send(Error(ErrorCode.INVALID_REQUEST, exc.reason))
                    continue
                if isinstance(message, (StdinData, StdinEof, Cancel)):
                    continue  # arrived after its exec ended (they race with exit); harmless
                if not await self._handle(io, message):
                    return
        except _GONE:
            return
        finally:
            await stream.aclose()

    async def _handle(self, io: FramedStream, request: Request) -> bool:
        """Answer one request; returns whether the stream can take another."""
        try:
            if isinstance(request, ExecRequest):
                return await self._exec(io, request)
            value = await self._simple(request)
        except OperationError as exc:
            await io.send_then_receive(Error(exc.code, exc.message))
            return True
        except _GONE:
            raise
        except Exception as exc:  # a bug must not take the agent (or this stream) down
            log.exception("agent.request_failed", op=type(request).__name__)
            await io.send(Error(ErrorCode.INTERNAL, f"{type(request).__name__}: {exc}"))
            return True
        # serve_rpc reads the next request at once.
        await io.send_then_receive(Result(value))
        return True

    def _require(self, allowed: bool, key: str, what: str) -> None:
        if not allowed:
            raise OperationError(ErrorCode.DENIED, f"{what}: disabled by [agent].{key}")

    async def _simple(self, request: Request) -> dict[str, Any]:
        paths = self.paths
        match request:
            case ReadFileRequest(path, offset, limit):
                max_read = self.config.max_read_size.bytes
                if self.config.inline_reads:
                    # Small regular files: on the loop (see tunneld.agent._files).
                    small = read_small_file(paths, path, offset, limit, max_read)
                    if small is not None:
                        return small
                return await trio.to_thread.run_sync(
                    read_file, paths, path, offset, limit, max_read
                )
            case WriteFileRequest(path, data, mode):
                self._require(self.config.allow_write, "allow_write", f"write_file {path}")
                return await trio.to_thread.run_sync(write_file, paths, path, data, mode)
            case EditFileRequest(path, edits):
                self._require(self.config.allow_write, "allow_write", f"edit_file {path}")
                return await trio.to_thread.run_sync(edit_file, paths, path, edits)
            case WritePartRequest(path, offset, data):
                self._require(self.config.allow_write, "allow_write", f"write_part {path}")
                return await trio.to_thread.run_sync(write_part, paths, path, offset, data)
            case CommitPartRequest(path, size, sha256, mode):
                self._require(self.config.allow_write, "allow_write", f"commit_part {path}")
                return await trio.to_thread.run_sync(commit_part, paths, path, size, sha256, mode)
            case DiscardPartRequest(path):
                self._require(self.config.allow_write, "allow_write", f"discard_part {path}")
                return await trio.to_thread.run_sync(discard_part, paths, path)
            case HashFileRequest(path, length, partial):
                return await trio.to_thread.run_sync(hash_file, paths, path, length, partial)
            case ListDirRequest(path):
                return await trio.to_thread.run_sync(list_dir, paths, path)
            case StatRequest(path):
                return await trio.to_thread.run_sync(stat_path, paths, path)
            case ProcessListRequest():
                self._require(self.config.allow_exec, "allow_exec", "process_list")
                return {"processes": self.processes.list()}
            case ProcessOutputRequest(ident, offset, limit):
                self._require(self.config.allow_exec, "allow_exec", "process_output")
                max_read = self.config.max_read_size.bytes
                cap = max_read if limit is None else min(limit, max_read)
                return self.processes.output(ident, offset, cap)
            case ProcessSignalRequest(ident, sig):
                self._require(self.config.allow_exec, "allow_exec", "process_signal")
                return self.processes.signal(ident, sig)
            case CheckPortRequest(port):
                # Reveals nothing a caller could not learn already: with exec it could run
                # `ss -ltn`, and an allowed port it could simply connect to.
                if not (self.config.allow_exec or port in self.config.allowed_tcp_ports):
                    raise OperationError(
                        ErrorCode.DENIED,
                        f"check_port {port}: needs [agent].allow_exec or the port in "
                        "[agent].allowed_tcp_ports",
                    )
                return await trio.to_thread.run_sync(check_port, port)
        raise OperationError(ErrorCode.INVALID_REQUEST, f"unsupported request {request!r}")

    def _cwd(self, cwd: str | None) -> Path | None:
        if cwd is None:
            return self.paths.default_cwd()
        target = self.paths.resolve(cwd)
        if not target.is_dir():
            raise OperationError(ErrorCode.NOT_A_DIRECTORY, f"exec: cwd {cwd} is not a directory")
        return target

    async def _exec(self, io: FramedStream, request: ExecRequest) -> bool:
        argv = request.argv if request.argv is not None else ("/bin/sh", "-c", request.shell or "")
        what = f"exec {argv[0]}"
        self._require(self.config.allow_exec, "allow_exec", what)
        cwd = self._cwd(request.cwd)
        limit = self.config.exec_timeout.seconds
        if request.background:
            if self._nursery is None:
                raise OperationError(
                    ErrorCode.INTERNAL, "background processes need AgentServices.serve running"
                )
            entry = await self.processes.start(
                self._nursery,
                argv,
                cwd=cwd,
                env=request.env,
                stdin=request.stdin,
                time_limit=request.timeout,
            )
            log.info("agent.exec_background", id=entry.id, pid=entry.process.pid)
            await io.send(Result({"id": entry.id, "pid": entry.process.pid}))
            return True
        time_limit = limit if request.timeout is None else min(request.timeout, limit)
        log.info("agent.exec", program=argv[0], time_limit=time_limit)
        return await run_foreground(
            io,
            argv,
            cwd=cwd,
            env=request.env,
            time_limit=time_limit,
            stdin=request.stdin,
            stream_stdin=request.stream_stdin,
            grace=self.kill_grace,
        )


async def _pipe(
    source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, both: trio.CancelScope
) -> None:
    """Copy until EOF, then half-close ``sink``; a broken side ends both directions."""
    try:
        while data := await source.receive_some(RECEIVE_SIZE):
            await sink.send_all(data)
        if isinstance(sink, trio.abc.HalfCloseableStream):
            await sink.send_eof()
        else:
            await sink.aclose()
    except (*_GONE, OSError):
        both.cancel()
