"""Unix-socket listeners and peer credentials (SO_PEERCRED) for the local API."""

from __future__ import annotations

import os
import socket
import stat
import struct
from typing import NamedTuple

import trio

__all__ = ["PeerCredentials", "open_unix_listener", "peer_credentials"]

_UCRED: struct.Struct = struct.Struct("3i")


class PeerCredentials(NamedTuple):
    """The process at the other end of a Unix socket, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: trio.socket.SocketType | socket.socket) -> PeerCredentials | None:
    """``SO_PEERCRED`` of a connected Unix socket (Linux), or None where unsupported."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
    except OSError:
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def _temporary_name(target: str) -> str:
    directory = os.path.dirname(os.path.abspath(target))
    return os.path.join(directory, f".{os.path.basename(target)}.{os.getpid()}.tmp")


async def open_unix_listener(
    path: str | os.PathLike[str], *, mode: int = 0o660, backlog: int = 128
) -> trio.SocketListener:
    """Listen on a Unix stream socket at ``path`` with permissions ``mode``.

    The socket is bound under a temporary name in the same directory, chmod-ed, then
    renamed into place, so it never exists at ``path`` with looser permissions. A stale
    socket file at ``path`` is replaced; any other kind of file there is an error.

    Raises:
        FileExistsError: ``path`` exists and is not a socket.
        OSError: binding or listening failed.
    """
    target = os.fspath(path)
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISSOCK(existing.st_mode):
        raise FileExistsError(f"{target} exists and is not a socket")
    temporary = _temporary_name(target)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        await sock.bind(temporary)
        try:
            os.chmod(temporary, mode)
            os.replace(temporary, target)
        except BaseException:
            os.unlink(temporary)
            raise
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
