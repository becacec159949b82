"""Streaming file copies to and from an agent, resumable and verified by SHA-256.

>>> async with AgentClient(stream) as agent:
...     result = await upload(agent, Path("big.iso"), "/srv/big.iso", resume=True)
...     result = await download(agent, "/srv/log.txt", Path("log.txt"))

Memory stays bounded by ``chunk_size`` whatever the file size: one chunk is read,
hashed and sent (or received, hashed and written) at a time.

*Uploads* write chunks into the agent's partial file (``write_part``) and finish with
``commit_part``, which checks the size and SHA-256 before renaming it over the target.
*Downloads* write ``.NAME.tunneld-part`` beside the local destination, compare the
running hash with the agent's ``hash_file`` of the whole source, then rename it into
place. With ``resume`` an existing partial file is continued when the agent's hash of
it (upload) or of the same prefix of the source (download) equals the local one;
otherwise the copy starts over. ``-`` style streams (stdin/stdout) are copied but can
neither be resumed nor replaced atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat as stat_module
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from tunneld.agent._parts import PART_SUFFIX, part_path, pwrite_all
from tunneld.agent.client import AgentClient, AgentError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LOCAL_PART_SUFFIX",
    "Progress",
    "TransferResult",
    "VerifyError",
    "download",
    "local_part_path",
    "upload",
]

DEFAULT_CHUNK_SIZE: Final = 1 << 20
# Local partial files are named like the agent's (both sides resume the same way).
LOCAL_PART_SUFFIX: Final = PART_SUFFIX
_HASH_BLOCK: Final = 1 << 20
# How much unused --limit-rate credit a copy may spend at once, in seconds of the rate.
_PACER_CREDIT: Final = 0.25

# Called with (bytes done, total bytes or None when unknown) after every chunk.
Progress = Callable[[int, int | None], None]


class VerifyError(Exception):
    """The copy's SHA-256 (or size) does not match the source's: the data changed or broke."""


@dataclass(frozen=True, slots=True)
class TransferResult:
    """What was copied: ``size`` bytes with ``sha256``; the first ``resumed_from`` bytes
    were already there (0 when the copy started afresh)."""

    size: int
    sha256: str
    resumed_from: int


def local_part_path(target: Path) -> Path:
    """Where a download into ``target`` keeps its partial file: ``.NAME.tunneld-part``."""
    return part_path(target)


class _Pacer:
    """Holds a copy to ``rate`` bytes/second (no limit when ``rate`` is None).

    Credit left unused (a slow start, a stall) is kept for at most ``_PACER_CREDIT``
    seconds: an average since the start would let a copy that fell behind burst at full
    speed until it caught up.
    """

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.due = trio.current_time()

    async def account(self, size: int) -> None:
        if self.rate is None:
            return
        self.due = max(self.due, trio.current_time() - _PACER_CREDIT) + size / self.rate
        await trio.sleep_until(self.due)


def _hash_prefix(path: Path, length: int) -> tuple[hashlib._Hash, int]:
    """SHA-256 state after the first ``length`` bytes of ``path``, and how many there were."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while done < length:
            block = f.read(min(_HASH_BLOCK, length - done))
            if not block:
                break
            digest.update(block)
            done += len(block)
    return digest, done


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


async def _remote_part_prefix(client: AgentClient, remote: str) -> tuple[str, int] | None:
    try:
        found = await client.hash_file(remote, partial=True)
    except AgentError as exc:
        if exc.code == "not_found":
            return None
        raise
    return found.sha256, found.length


async def upload(
    client: AgentClient,
    source: Path | trio.abc.ReceiveStream,
    remote: str,
    *,
    resume: bool = False,
    mode: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rate: float | None = None,
    progress: Progress | None = None,
) -> TransferResult:
    """Copy ``source`` (a local file, or a stream such as stdin) to ``remote`` on the agent.

    ``remote`` is replaced only once every byte arrived and the agent verified the
    SHA-256; ``mode`` is the permission bits to give it (default: the replaced file's,
    else 0o644). ``rate`` caps bytes/second. With ``resume`` (files only) the agent's
    partial file from an interrupted upload is continued if its hash equals the same
    prefix of ``source``.

    Raises:
        AgentError: the agent refused (``denied``, ``path_outside_roots``, ``not_found``
            for a missing directory, ``verify_failed``, ...).
        OSError: reading ``source`` failed.
        ValueError: ``resume`` with a stream source.
        trio.BrokenResourceError: the stream to the agent broke.

    Cancellation leaves the agent's partial file in place, for ``resume``.
    """
    total: int | None = None
    offset = 0
    digest = hashlib.sha256()
    if isinstance(source, Path):
        total = (await trio.to_thread.run_sync(os.stat, source)).st_size
        if resume:
            found = await _remote_part_prefix(client, remote)
            if found is not None and 0 < found[1] <= total:
                local, length = await trio.to_thread.run_sync(_hash_prefix, source, found[1])
                if length == found[1] and local.hexdigest() == found[0]:
                    digest, offset = local, length
    elif resume:
        raise ValueError("only a file can be resumed, not a stream")
    resumed_from = offset
    pacer = _Pacer(rate)
    if progress is not None:
        progress(offset, total)
    stream: trio.abc.ReceiveStream | None = None if isinstance(source, Path) else source
    first = True
    while True:
        if stream is not None:
            chunk = bytes(await stream.receive_some(chunk_size))
        else:
            assert isinstance(source, Path)
            chunk = await trio.to_thread.run_sync(_read_at, source, offset, chunk_size)
        # The first write starts the partial file even for an empty source; after a
        # resume the partial file already holds everything up to ``offset``.
        if chunk or (first and offset == 0):
            await client.write_part(remote, offset, chunk)
            digest.update(chunk)
            offset += len(chunk)
            if progress is not None:
                progress(offset, total)
            await pacer.account(len(chunk))
        first = False
        if not chunk:
            break
    sha256 = digest.hexdigest()
    await client.commit_part(remote, offset, sha256, mode)
    return TransferResult(offset, sha256, resumed_from)


def _write_at(path: Path, offset: int, data: bytes) -> None:
    # O_NOFOLLOW: a symlink planted under the partial file's name is refused, not followed.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if offset == 0:
            os.ftruncate(fd, 0)
        pwrite_all(fd, data, offset)
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process umask, read without changing it where Linux allows.

    ``os.umask`` can only be read by setting it, and this runs in a worker thread:
    for that moment every other thread's new files would get mode 0o666/0o777.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _finish_local(part: Path, target: Path, mode: int | None) -> None:
    fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if mode is None:
            try:
                mode = stat_module.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~_current_umask()
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, target)


async def download(
    client: AgentClient,
    remote: str,
    target: Path | trio.abc.SendStream,
    *,
    resume: bool = False,
    mode: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    rate: float | None = None,
    progress: Progress | None = None,
) -> TransferResult:
    """Copy ``remote`` on the agent to ``target`` (a local file, or a stream such as stdout).

    A file target is written as ``.NAME.tunneld-part`` beside it and renamed into place
    only after the whole copy's SHA-256 equals the agent's hash of the source; ``mode``
    is its permission bits (default: the replaced file's, else 0o666 minus the umask).
    A stream target gets the bytes as they come; the hash is checked at the end all the
    same. With ``resume`` (files only) an existing partial file is continued if the
    agent's hash of the same prefix of the source equals it.

    Raises:
        AgentError: the agent refused (``not_found``, ``is_a_directory``,
            ``path_outside_roots``, ...).
        VerifyError: the hashes differ (the source changed during the copy); a partial
            file is removed.
        OSError: writing ``target`` failed.
        ValueError: ``resume`` with a stream target.
        trio.BrokenResourceError: the stream to the agent broke.

    Cancellation leaves the local partial file in place, for ``resume``.
    """
    info = await client.stat(remote)
    if info.type == "dir":
        raise AgentError("is_a_directory", f"{remote} is a directory")
    total: int | None = info.size
    offset = 0
    digest = hashlib.sha256()
    part: Path | None = None
    if isinstance(target, Path):
        part = local_part_path(target)
        if resume:
            with contextlib.suppress(FileNotFoundError):
                local, length = await trio.to_thread.run_sync(_hash_prefix, part, 1 << 62)
                if length > 0:
                    theirs = await client.hash_file(remote, length)
                    if theirs.length == length and theirs.sha256 == local.hexdigest():
                        digest, offset = local, length
    elif resume:
        raise ValueError("only a file can be resumed, not a stream")
    resumed_from = offset
    pacer = _Pacer(rate)
    if progress is not None:
        progress(offset, total)
    if part is not None and offset == 0:
        await trio.to_thread.run_sync(_write_at, part, 0, b"")
    sink: trio.abc.SendStream | None = None if isinstance(target, Path) else target
    while True:
        chunk = await client.read_file(remote, offset, chunk_size)
        if chunk.data:
            if part is not None:
                await trio.to_thread.run_sync(_write_at, part, offset, chunk.data)
            else:
                assert sink is not None
                await sink.send_all(chunk.data)
            digest.update(chunk.data)
            offset += len(chunk.data)
        total = max(chunk.size, offset)
        if progress is not None:
            progress(offset, total)
        await pacer.account(len(chunk.data))
        if chunk.eof or not chunk.data:
            break
    sha256 = digest.hexdigest()
    theirs = await client.hash_file(remote)
    if theirs.sha256 != sha256 or theirs.length != offset:
        if part is not None:
            with contextlib.suppress(OSError):
                part.unlink()
        raise VerifyError(
            f"{remote} changed during the copy: received {offset} bytes with sha256"
            f" {sha256}, the agent now has {theirs.length} bytes with sha256 {theirs.sha256}"
        )
    if part is not None:
        assert isinstance(target, Path)
        await trio.to_thread.run_sync(_finish_local, part, target, mode)
    return TransferResult(offset, sha256, resumed_from)
