"""``tunneld exec AGENT -- CMD ...``: run a command on an agent through the daemon."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Final

import trio

from tunneld.agent.client import AgentClient, AgentError, ExecRun
from tunneld.cli._common import CliError, Subparsers
from tunneld.cli._daemon import _add_socket, _api_message, _client
from tunneld.config import parse_duration
from tunneld.daemon._client import ApiError, DaemonUnavailableError, LocalApiClient
from tunneld.proto.agentrpc import Exit, RemoteProtocolError, Stderr, Stdout

__all__ = ["exit_status", "register"]

_CHUNK: Final = 65536


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "exec",
        help="run a command on an agent, streaming its output",
        description=(
            "Run CMD on AGENT (its `rpc` service) through the running daemon. Its stdout"
            " and stderr stream to ours; our stdin is forwarded when it is not a terminal."
            " Exits with the command's exit status (128+N when signal N killed it)."
            " Ctrl-C kills the remote process group."
        ),
    )
    _add_socket(parser)
    parser.add_argument("--cwd", metavar="DIR", default=None, help="working directory there")
    parser.add_argument(
        "--timeout",
        metavar="DURATION",
        type=_duration,
        default=None,
        help="kill the command after this long, e.g. 30s or 5m (capped by the agent)",
    )
    parser.add_argument("agent", metavar="AGENT", help="agent name")
    parser.add_argument("argv", metavar="CMD", nargs=argparse.REMAINDER, help="command and args")
    parser.set_defaults(func=_exec)


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text).seconds
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the timeout must be positive")
    return seconds


def exit_status(exit: Exit) -> int:
    """Our exit status for the remote ``exit``: its code, or 128+N when signal N killed it."""
    if exit.code is not None:
        return exit.code
    if exit.signal is not None:
        return 128 + exit.signal
    return 1


def _exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("no command given: tunneld exec AGENT -- CMD [ARGS...]", exit_status=2)
    forward_stdin = not os.isatty(sys.stdin.fileno())
    try:
        exit = trio.run(
            _exec_async, _client(args), args.agent, argv, args.cwd, args.timeout, forward_stdin
        )
    except DaemonUnavailableError as exc:
        raise CliError(str(exc)) from None
    except ApiError as exc:
        raise CliError(f"exec on {args.agent}: {_api_message(exc)}") from None
    except AgentError as exc:
        raise CliError(f"exec on {args.agent}: {exc.message} ({exc.code})") from None
    except RemoteProtocolError as exc:
        raise CliError(f"exec on {args.agent}: {exc}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise CliError(f"exec on {args.agent}: the connection to the agent broke") from None
    if exit is None:
        return 130  # interrupted twice: we stopped waiting for the remote exit
    if exit.timed_out:
        print(f"tunneld: the command timed out on {args.agent}", file=sys.stderr)
    return exit_status(exit)


async def _write(fd: int, data: bytes) -> None:
    # Plain writes: our output is the user's terminal or a pipe, and a slow reader should
    # slow the remote command down (the agent's stream applies backpressure). The fd may
    # be non-blocking (stdin and stdout can share one open file, and stdin is put in
    # non-blocking mode when we forward it): then wait until it is writable.
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)


async def _exec_async(
    client: LocalApiClient,
    agent: str,
    argv: list[str],
    cwd: str | None,
    time_limit: float | None,
    forward_stdin: bool,
) -> Exit | None:
    """The remote command's ``Exit``, or ``None`` when a second Ctrl-C gave up waiting."""
    stream = await client.dial(agent, "rpc")
    send_lock = trio.Lock()  # the stdin pump and a Ctrl-C both send on the one stream
    failure: BaseException | None = None
    async with AgentClient(stream) as remote:
        run = remote.exec(argv, cwd=cwd, time_limit=time_limit, stream_stdin=forward_stdin)
        # Send the request before the stdin pump may send; no ``async with run``: its exit
        # would wait for the remote exit, which a second Ctrl-C means to stop waiting for.
        await run.__aenter__()
        async with trio.open_nursery() as nursery:
            if forward_stdin:
                nursery.start_soon(_pump_stdin, run, send_lock)
            nursery.start_soon(_cancel_on_signal, run, send_lock, nursery.cancel_scope)
            try:
                async for event in run:
                    if isinstance(event, Stdout):
                        await _write(sys.stdout.fileno(), event.data)
                    elif isinstance(event, Stderr):
                        await _write(sys.stderr.fileno(), event.data)
            except (AgentError, RemoteProtocolError, *_GONE) as exc:
                # Raised outside the nursery, so the caller sees it bare.
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return run.exit


_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


async def _pump_stdin(run: ExecRun, lock: trio.Lock) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        try:
            while data := await stdin.receive_some(_CHUNK):
                async with lock:
                    await run.send_stdin(data)
            async with lock:
                await run.close_stdin()
        except _GONE:
            return  # the stream broke; the main loop reports it


async def _cancel_on_signal(run: ExecRun, lock: trio.Lock, scope: trio.CancelScope) -> None:
    # The first Ctrl-C (or SIGTERM) asks the agent to kill the process group; we still
    # wait for its exit so the status says how it ended. A second one gives up at once.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            break
        try:
            async with lock:
                await run.cancel()
        except _GONE:
            pass
        async for _ in signals:
            scope.cancel()
            return
