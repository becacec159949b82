"""File operations (blocking; the services run them in a worker thread).

One exception, :func:`read_small_file`: a read of a small *regular* file is done on the
event loop, because handing it to a worker thread (wake a thread, run, wake the loop
again) costs more than the read. The rule: the path is resolved and ``stat``-ed (no
open); only a regular file of at most :data:`INLINE_READ_MAX` bytes is then opened,
with ``O_NONBLOCK`` so that a file swapped for a FIFO in between cannot block the open,
and checked again with ``fstat`` before one ``pread``. Everything else — directories,
FIFOs, devices, bigger files, any error — returns ``None`` and takes the thread as
before, so errors are still worded by :func:`read_file`. On a local disk such a read is
a page-cache copy (or one small disk read on a cold cache); on a network or FUSE file
system a stat or read can stall, which is why ``[agent] inline_reads = false`` turns
this off for agents serving such roots.

Each returns the ``result`` value map documented in docs/agentrpc.md, or raises
``OperationError``.
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_module
import tempfile
from pathlib import Path
from typing import Any

from tunneld.agent._errors import OperationError, from_os_error
from tunneld.agent._paths import PathPolicy
from tunneld.proto.agentrpc import ErrorCode, FileEdit

__all__ = [
    "INLINE_READ_MAX",
    "edit_file",
    "list_dir",
    "read_file",
    "read_small_file",
    "stat_path",
    "write_file",
]

# Files up to this size are read on the event loop (see the module docstring).
INLINE_READ_MAX = 64 * 1024


def _kind(mode: int) -> str:
    if stat_module.S_ISREG(mode):
        return "file"
    if stat_module.S_ISDIR(mode):
        return "dir"
    if stat_module.S_ISLNK(mode):
        return "symlink"
    return "other"


def _describe(st: os.stat_result) -> dict[str, Any]:
    return {
        "type": _kind(st.st_mode),
        "size": st.st_size,
        "mode": stat_module.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


def _read_result(data: bytes, offset: int, size: int) -> dict[str, Any]:
    """The ``read_file`` result map (docs/agentrpc.md), by either way of reading."""
    return {"data": data, "offset": offset, "size": size, "eof": offset + len(data) >= size}


def _inline_readable(st: os.stat_result) -> bool:
    """Whether the file ``st`` describes may be read on the event loop (module docstring)."""
    return stat_module.S_ISREG(st.st_mode) and st.st_size <= INLINE_READ_MAX


def read_file(
    policy: PathPolicy, path: str, offset: int, limit: int | None, max_read: int
) -> dict[str, Any]:
    """``{data, offset, size, eof}``; at most ``max_read`` bytes (longer reads page)."""
    target = policy.resolve(path)
    want = max_read if limit is None else min(limit, max_read)
    try:
        with open(target, "rb") as f:  # a directory fails here with EISDIR
            size = os.fstat(f.fileno()).st_size
            f.seek(offset)
            data = f.read(want)
    except OSError as exc:
        raise from_os_error(exc, f"read_file {path}") from None
    return _read_result(data, offset, size)


def read_small_file(
    policy: PathPolicy, path: str, offset: int, limit: int | None, max_read: int
) -> dict[str, Any] | None:
    """:func:`read_file`'s answer for a regular file of at most :data:`INLINE_READ_MAX`
    bytes, read without blocking on anything but a local disk; ``None`` for anything
    else (the caller then runs :func:`read_file` in a thread). Never raises for I/O:
    errors are left for :func:`read_file` to report.

    Raises:
        OperationError: ``path_outside_roots`` (from the path policy, as read_file).
    """
    target = policy.resolve_str(path)
    try:
        st = os.stat(target)
    except OSError:
        return None
    if not _inline_readable(st):
        return None
    want = max_read if limit is None else min(limit, max_read)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not _inline_readable(st):
            return None
        size = st.st_size
        data = os.pread(fd, min(want, max(size - offset, 0)), offset) if want else b""
    except OSError:
        return None
    finally:
        os.close(fd)
    return _read_result(data, offset, size)


def _atomic_replace(target: Path, data: bytes, mode: int) -> None:
    """Write a temp file beside ``target``, fsync it, then rename over (POSIX rename is atomic)."""
    if target.is_dir():
        raise IsADirectoryError(21, "Is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_file(policy: PathPolicy, path: str, data: bytes, mode: int | None) -> dict[str, Any]:
    """``{size, mode}``; keeps the existing file's mode when ``mode`` is not given."""
    target = policy.resolve(path)
    try:
        if mode is None:
            try:
                mode = stat_module.S_IMODE(os.stat(target).st_mode)
            except FileNotFoundError:
                mode = 0o644
        _atomic_replace(target, data, mode)
    except OSError as exc:
        raise from_os_error(exc, f"write_file {path}") from None
    return {"size": len(data), "mode": mode}


def edit_file(policy: PathPolicy, path: str, edits: tuple[FileEdit, ...]) -> dict[str, Any]:
    """Apply every edit in order, each to exactly one occurrence; nothing is written on failure.

    Returns ``{size, edits}``.
    """
    target = policy.resolve(path)
    try:
        raw = target.read_bytes()
        mode = stat_module.S_IMODE(os.stat(target).st_mode)
    except OSError as exc:
        raise from_os_error(exc, f"edit_file {path}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OperationError(
            ErrorCode.INVALID_REQUEST, f"edit_file {path}: not UTF-8 text (byte {exc.start})"
        ) from None
    for i, edit in enumerate(edits):
        count = text.count(edit.search)
        if count == 0:
            raise OperationError(
                ErrorCode.SEARCH_NOT_FOUND,
                f"edit_file {path}: edit {i}: search string not found: {_preview(edit.search)}",
            )
        if count > 1:
            raise OperationError(
                ErrorCode.AMBIGUOUS_EDIT,
                f"edit_file {path}: edit {i}: search string occurs {count} times "
                f"(must be unique): {_preview(edit.search)}",
            )
        text = text.replace(edit.search, edit.replace, 1)
    data = text.encode("utf-8")
    try:
        _atomic_replace(target, data, mode)
    except OSError as exc:
        raise from_os_error(exc, f"edit_file {path}") from None
    return {"size": len(data), "edits": len(edits)}


def _preview(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def list_dir(policy: PathPolicy, path: str) -> dict[str, Any]:
    """``{path, entries: [{name, type, size, mode, mtime}]}`` sorted by name."""
    target = policy.resolve(path)
    entries = []
    try:
        with os.scandir(target) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished while listing
                entries.append({"name": entry.name, **_describe(st)})
    except OSError as exc:
        raise from_os_error(exc, f"list_dir {path}") from None
    entries.sort(key=lambda e: str(e["name"]))
    return {"path": str(target), "entries": entries}


def stat_path(policy: PathPolicy, path: str) -> dict[str, Any]:
    """``{path, type, size, mode, mtime}`` of the resolved path."""
    target = policy.resolve(path)
    try:
        st = os.stat(target)
    except OSError as exc:
        raise from_os_error(exc, f"stat {path}") from None
    return {"path": str(target), **_describe(st)}
