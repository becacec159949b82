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


async def open_unix_listener(
    path: str | os.PathLike[str], *, mode: int = 0o660, backlog: int = 128
) -> trio.SocketListener:
    """Listen on a Unix stream socket at ``path`` with permissions ``mode``.

    The socket file is created with ``mode`` already in force (the umask is narrowed
    for the ``bind`` call alone), so it never exists with looser permissions; it is
    chmod-ed to exactly ``mode`` afterwards. A stale socket file at ``path`` (left by
    a crashed process) is replaced; any other kind of file there is an error. The file
    is not removed when the listener closes.

    Raises:
        FileExistsError: ``path`` exists and is not a socket.
        OSError: binding or listening failed.
    """
    await trio.lowlevel.checkpoint()
    target = os.fspath(path)
    try:
        existing = os.lstat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise FileExistsError(f"{target} exists and is not a socket")
        os.unlink(target)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file as 0o777 & ~umask; a blocking call with no await in
        # between, so no other task of ours runs while the umask is narrowed.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(target)
        finally:
            os.umask(old_umask)
        os.chmod(target, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
