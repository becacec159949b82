"""Chunked, resumable uploads and file hashes (blocking; run in a worker thread).

An upload writes ``write_part`` chunks into a *partial file* beside the target,
``.NAME.tunneld-part`` in the same directory (so the final rename is atomic and stays
inside the roots), then ``commit_part`` checks its size and SHA-256, fsyncs it and
renames it over the target. Readers never see a half-written target. A partial file
left by an interrupted upload is what a resumed upload continues: the client compares
``hash_file(partial=True)`` with the same prefix of its own file.

The partial file is opened with ``O_NOFOLLOW``: a symlink planted under that name by a
local process is refused rather than followed out of the roots. Two uploads to the same
target at once share one partial file and spoil each other; ``commit_part``'s hash
check catches that, so the target is never replaced by a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat as stat_module
from pathlib import Path
from typing import Any, Final

from tunneld.agent._errors import OperationError, from_os_error
from tunneld.agent._paths import PathPolicy
from tunneld.proto.agentrpc import ErrorCode

__all__ = ["PART_SUFFIX", "commit_part", "discard_part", "hash_file", "part_path", "write_part"]

PART_SUFFIX: Final = ".tunneld-part"
_HASH_BLOCK: Final = 1 << 20


def part_path(target: Path) -> Path:
    """Where the partial file of ``target`` lives: ``.NAME.tunneld-part`` beside it."""
    return target.with_name(f".{target.name}{PART_SUFFIX}")


def pwrite_all(fd: int, data: bytes, offset: int) -> int:
    """Write all of ``data`` at ``offset`` of ``fd`` (``pwrite`` may write less); the end."""
    view = memoryview(data)
    position = offset
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written
    return position


def _open_part(part: Path, flags: int) -> int:
    return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def write_part(policy: PathPolicy, path: str, offset: int, data: bytes) -> dict[str, Any]:
    """Write ``data`` at ``offset`` of ``path``'s partial file; ``{size}`` afterwards.

    Offset 0 starts (or restarts) the partial file; any other offset must be at most its
    current size, and whatever lay past ``offset + len(data)`` is cut off, so the partial
    file always holds exactly the bytes sent so far.

    Raises:
        OperationError: ``invalid_request`` for an offset past the end; the OS error's
            code otherwise (``not_found`` when the directory does not exist).
    """
    target = policy.resolve(path)
    what = f"write_part {path}"
    if target.is_dir():
        raise OperationError(ErrorCode.IS_A_DIRECTORY, f"{what}: Is a directory")
    part = part_path(target)
    try:
        fd = _open_part(part, os.O_WRONLY | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            if offset > size:
                raise OperationError(
                    ErrorCode.INVALID_REQUEST,
                    f"{what}: offset {offset} is past the end of the partial file ({size} bytes)",
                )
            os.ftruncate(fd, pwrite_all(fd, data, offset))
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_os_error(exc, what) from None
    return {"size": offset + len(data)}


def _hash_fd(fd: int, length: int | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    remaining = length
    hashed = 0
    while remaining is None or remaining > 0:
        want = _HASH_BLOCK if remaining is None else min(_HASH_BLOCK, remaining)
        block = os.read(fd, want)
        if not block:
            break
        digest.update(block)
        hashed += len(block)
        if remaining is not None:
            remaining -= len(block)
    return digest.hexdigest(), hashed


def commit_part(
    policy: PathPolicy, path: str, size: int, sha256: str, mode: int | None
) -> dict[str, Any]:
    """Verify ``path``'s partial file (``size`` bytes, ``sha256``) and rename it over ``path``.

    The mode is ``mode``, else the replaced file's, else 0o644. Returns ``{size, mode,
    sha256}``. A partial file that fails the check is removed: resuming it would fail again.

    Raises:
        OperationError: ``verify_failed`` (size or hash differ), ``not_found`` (no partial
            file: nothing was uploaded, or it was committed already), the OS error's code.
    """
    target = policy.resolve(path)
    what = f"commit_part {path}"
    part = part_path(target)
    try:
        if target.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        if mode is None:
            try:
                mode = stat_module.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                mode = 0o644
        try:
            fd = _open_part(part, os.O_RDWR)
        except FileNotFoundError:
            raise OperationError(
                ErrorCode.NOT_FOUND, f"{what}: no partial upload (write_part first)"
            ) from None
        try:
            actual_size = os.fstat(fd).st_size
            problem = None
            if actual_size != size:
                problem = f"the partial file has {actual_size} bytes, expected {size}"
            else:
                actual, _ = _hash_fd(fd, None)
                if actual != sha256:
                    problem = f"sha256 of the partial file is {actual}, expected {sha256}"
            if problem is not None:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                raise OperationError(ErrorCode.VERIFY_FAILED, f"{what}: {problem}")
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, target)
    except OSError as exc:
        raise from_os_error(exc, what) from None
    return {"size": size, "mode": mode, "sha256": sha256}


def discard_part(policy: PathPolicy, path: str) -> dict[str, Any]:
    """Remove ``path``'s partial file; ``{removed: bool}`` says whether there was one."""
    target = policy.resolve(path)
    try:
        os.unlink(part_path(target))
    except FileNotFoundError:
        return {"removed": False}
    except OSError as exc:
        raise from_os_error(exc, f"discard_part {path}") from None
    return {"removed": True}


def hash_file(policy: PathPolicy, path: str, length: int | None, partial: bool) -> dict[str, Any]:
    """``{sha256, length, size}``: the hash of the first ``length`` bytes (all if None).

    ``length`` in the answer is how many bytes were hashed (less than asked when the
    file is shorter); ``size`` is the file's size. ``partial`` hashes the partial file
    of an upload instead of ``path`` itself.

    Raises:
        OperationError: ``not_found`` (no such file, or no partial file), the OS error's code.
    """
    target = policy.resolve(path)
    what = f"hash_file {path}" + (" (partial upload)" if partial else "")
    try:
        if partial:
            fd = _open_part(part_path(target), os.O_RDONLY)
        else:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise IsADirectoryError(21, "Is a directory")
            digest, hashed = _hash_fd(fd, length)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_os_error(exc, what) from None
    return {"sha256": digest, "length": hashed, "size": st.st_size}
