"""``tunneld cp SRC DST``: copy a file to or from an agent through the daemon."""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import h11
import trio

from tunneld.agent.client import AgentClient, AgentError
from tunneld.agent.transfer import (
    DEFAULT_CHUNK_SIZE,
    TransferResult,
    VerifyError,
    download,
    upload,
)
from tunneld.cli._common import CliError, Subparsers
from tunneld.cli._daemon import _add_socket, _api_message, _client
from tunneld.cli._progress import ProgressBar, format_bytes
from tunneld.config import parse_byte_size
from tunneld.daemon._client import ApiError, DaemonUnavailableError, LocalApiClient
from tunneld.proto.agentrpc import MAX_FRAME_SIZE, RemoteProtocolError

__all__ = ["Endpoint", "parse_endpoint", "register"]

_STDIO: Final = "-"
# A chunk travels in one agentrpc frame; leave room for the map around it.
_MAX_CHUNK: Final = MAX_FRAME_SIZE - 65536
_GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One side of a copy: ``agent`` is None for a local path; ``path`` ``-`` is stdio."""

    agent: str | None
    path: str

    def __str__(self) -> str:
        return self.path if self.agent is None else f"{self.agent}:{self.path}"


def parse_endpoint(text: str) -> Endpoint:
    """``AGENT:PATH`` → remote; ``-``, ``/abs``, ``./rel``, ``../x``, ``~x`` or no colon → local.

    As with scp, a local path with a colon must start with ``./`` or ``/``.
    """
    if text == _STDIO or text.startswith(("/", "./", "../", "~")) or ":" not in text:
        return Endpoint(None, os.path.expanduser(text) if text.startswith("~") else text)
    agent, _, path = text.partition(":")
    if not agent:
        raise CliError(f"{text!r}: empty agent name before ':'", exit_status=2)
    return Endpoint(agent, path)


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "cp",
        help="copy a file to or from an agent (resumable, verified by SHA-256)",
        description=(
            "Copy SRC to DST through the running daemon; exactly one of them is AGENT:PATH"
            " (a path on the agent, relative paths from its first root), the other a local"
            " path or - for stdin/stdout. A directory destination gets the source's file"
            " name. The file streams in chunks, so memory stays small whatever its size;"
            " the destination is replaced only after the whole copy's SHA-256 matched the"
            " source's. An interrupted copy leaves .NAME.tunneld-part beside the"
            " destination, which --resume continues after checking its hash. A progress"
            " bar (bytes, rate, ETA) goes to stderr when it is a terminal."
        ),
        epilog="examples: tunneld cp build.tar web1:/srv/ ;"
        " tunneld cp --resume web1:/srv/db.dump . ; tunneld cp web1:app.log - | less",
    )
    _add_socket(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted copy from its partial file when the hashes agree",
    )
    parser.add_argument(
        "-p",
        "--preserve-mode",
        action="store_true",
        help="give the destination the source's permission bits (default: keep the"
        " replaced file's, else 0644 on agents and 0666 minus the umask locally)",
    )
    parser.add_argument(
        "--limit-rate",
        metavar="SIZE",
        type=_size,
        default=None,
        help="at most SIZE bytes per second, e.g. 500KiB or 10MiB",
    )
    parser.add_argument(
        "--chunk-size",
        metavar="SIZE",
        type=_chunk,
        default=DEFAULT_CHUNK_SIZE,
        help=f"bytes per request (default {format_bytes(DEFAULT_CHUNK_SIZE)}; the"
        " agent caps reads at its [agent].max_read_size)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, even on a terminal"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line when done: source, destination, bytes, sha256, resumed_from",
    )
    parser.add_argument("source", metavar="SRC", help="AGENT:PATH, a local path, or -")
    parser.add_argument("destination", metavar="DST", help="AGENT:PATH, a local path, or -")
    parser.set_defaults(func=_cp)


def _size(text: str) -> int:
    try:
        size = parse_byte_size(text).bytes
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError("expected a size > 0")
    return size


def _chunk(text: str) -> int:
    size = _size(text)
    if size > _MAX_CHUNK:
        raise argparse.ArgumentTypeError(f"at most {format_bytes(_MAX_CHUNK)}")
    return size


def _cp(args: argparse.Namespace) -> int:
    source = parse_endpoint(args.source)
    destination = parse_endpoint(args.destination)
    if (source.agent is None) == (destination.agent is None):
        raise CliError(
            "exactly one of SRC and DST must be AGENT:PATH (the other a local path or -)",
            exit_status=2,
        )
    if args.resume and _STDIO in (source.path, destination.path):
        raise CliError("--resume needs a file on both sides, not - (stdin/stdout)", exit_status=2)
    if args.json and destination.path == _STDIO:
        raise CliError("--json would mix with the data written to stdout (DST is -)", 2)
    show = not args.quiet and sys.stderr.isatty() and _tty()
    agent = source.agent or destination.agent
    assert agent is not None
    bar: ProgressBar | None = None

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if show:
            if bar is None:
                bar = ProgressBar(_label(source), sys.stderr)
            bar.update(done, total)

    try:
        result, final = trio.run(_cp_async, _client(args), source, destination, args, progress)
    except KeyboardInterrupt:
        if bar is not None:
            bar.finish()
        print(f"tunneld: interrupted{_resume_hint(source, destination)}", file=sys.stderr)
        return 130
    except DaemonUnavailableError as exc:
        raise CliError(str(exc)) from None
    except ApiError as exc:
        raise CliError(f"cp: agent {agent}: {_api_message(exc)}") from None
    except AgentError as exc:
        raise CliError(f"cp: {agent}: {exc.message} ({exc.code})") from None
    except VerifyError as exc:
        raise CliError(f"cp: verification failed: {exc}") from None
    except RemoteProtocolError as exc:
        raise CliError(f"cp: {agent}: {exc}") from None
    except _GONE:
        raise CliError(f"cp: the connection to agent {agent} broke") from None
    except h11.ProtocolError as exc:
        raise CliError(f"cp: the daemon's answer was cut off or malformed: {exc}") from None
    except OSError as exc:
        where = exc.filename or (source.path if source.agent is None else destination.path)
        raise CliError(f"cp: {where}: {exc.strerror or exc}") from None
    finally:
        if bar is not None:
            bar.finish()
    if args.json:
        record = {
            "source": str(source),
            "destination": final,
            "bytes": result.size,
            "sha256": result.sha256,
            "resumed_from": result.resumed_from,
        }
        print(json.dumps(record, sort_keys=True), flush=True)
    return 0


def _tty() -> bool:
    # Behind a terminal that says it cannot move the cursor, stay quiet.
    return os.environ.get("TERM", "") != "dumb"


def _label(source: Endpoint) -> str:
    name = "stdin" if source.path == _STDIO else posixpath.basename(source.path.rstrip("/"))
    return name[:30] or str(source)[:30]


def _resume_hint(source: Endpoint, destination: Endpoint) -> str:
    if _STDIO in (source.path, destination.path):
        return ""  # a stream cannot be resumed
    return "; the partial file is kept: run the same command with --resume to continue"


async def _cp_async(
    client: LocalApiClient,
    source: Endpoint,
    destination: Endpoint,
    args: argparse.Namespace,
    progress: Callable[[int, int | None], None],
) -> tuple[TransferResult, str]:
    """The result and the destination as finally named (a directory gets the file name)."""
    agent = source.agent or destination.agent
    assert agent is not None
    stream = await client.dial(agent, "rpc")
    async with AgentClient(stream) as remote:
        if destination.agent is not None:
            return await _upload(remote, source, destination, args, progress)
        return await _download(remote, source, destination, args, progress)


async def _upload(
    remote: AgentClient,
    source: Endpoint,
    destination: Endpoint,
    args: argparse.Namespace,
    progress: Callable[[int, int | None], None],
) -> tuple[TransferResult, str]:
    target = destination.path
    local: Path | None = None
    mode = None
    if source.path != _STDIO:
        local = Path(source.path)
        info = await trio.to_thread.run_sync(os.stat, local)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory (cp copies single files)", str(local))
        if args.preserve_mode:
            mode = info.st_mode & 0o7777
    name = None if local is None else local.name
    if target in ("", ".") or target.endswith("/") or await _remote_is_dir(remote, target):
        if name is None:
            raise CliError(
                f"{destination}: is a directory; name the file to write stdin to", exit_status=2
            )
        target = posixpath.join(target, name) if target not in ("", ".") else name
    if local is not None:
        result = await upload(
            remote,
            local,
            target,
            resume=args.resume,
            mode=mode,
            chunk_size=args.chunk_size,
            rate=args.limit_rate,
            progress=progress,
        )
    else:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with stdin:
            result = await upload(
                remote,
                stdin,
                target,
                mode=mode,
                chunk_size=args.chunk_size,
                rate=args.limit_rate,
                progress=progress,
            )
    return result, f"{destination.agent}:{target}"


async def _remote_is_dir(remote: AgentClient, path: str) -> bool:
    try:
        return (await remote.stat(path)).type == "dir"
    except AgentError as exc:
        if exc.code == "not_found":
            return False
        raise


async def _download(
    remote: AgentClient,
    source: Endpoint,
    destination: Endpoint,
    args: argparse.Namespace,
    progress: Callable[[int, int | None], None],
) -> tuple[TransferResult, str]:
    mode = None
    if args.preserve_mode:
        mode = (await remote.stat(source.path)).mode & 0o7777
    if destination.path == _STDIO:
        stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
        async with stdout:
            result = await download(
                remote,
                source.path,
                stdout,
                chunk_size=args.chunk_size,
                rate=args.limit_rate,
                progress=progress,
            )
        return result, _STDIO
    target = Path(destination.path)
    if destination.path.endswith("/") or await trio.Path(target).is_dir():
        name = posixpath.basename(source.path.rstrip("/"))
        if not name:
            raise CliError(f"{source}: name a file to copy", exit_status=2)
        target = target / name
    result = await download(
        remote,
        source.path,
        target,
        resume=args.resume,
        mode=mode,
        chunk_size=args.chunk_size,
        rate=args.limit_rate,
        progress=progress,
    )
    return result, str(target)
