"""A stream socket as a trio stream that calls the kernel directly when it is ready.

``trio.SocketStream`` makes every operation a full checkpoint: a cancellation check
before, a schedule point after even when the kernel had the bytes or the room at
once, each behind two context managers. A ``tunneld dial`` moves a few small pieces
each way over a Unix socket between tasks that yield elsewhere anyway (the mux
stream on the other side of the daemon's pipe does; so does whatever feeds the
client), so those schedule points were a scheduler round each on a dial's critical
path (``tunneld bench dial``). This stream tries the plain non-blocking call first
and waits through trio (``wait_readable``/``wait_writable``) only when the kernel
says it would block, like the overlay's UDP socket (tunneld/net/overlay/_udp.py).

Every operation is still a cancellation point, and after ``ready_streak`` operations
in a row that did not wait (16 by default) it takes a schedule point, so a peer that
is always ready cannot keep other tasks from running. With ``ready_streak=1`` every
operation is a full checkpoint, as trio's streams are (the conformance tests use it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Sequence
from typing import Final

import trio

__all__ = ["DirectSocketStream", "raise_notsent_lowat"]

_DEFAULT_RECEIVE: Final = 65536
# Buffers per sendmsg call, under every system's IOV_MAX (1024 on Linux).
_MAX_IOV: Final = 512
_READY_STREAK: Final = 16
# As trio.SocketStream: these mean our side closed the socket.
_CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class DirectSocketStream(trio.abc.HalfCloseableStream):
    """A connected ``SOCK_STREAM`` socket (Unix or TCP) as a half-closeable trio stream.

    Takes ownership of ``sock`` (made non-blocking; closed by :meth:`aclose`).
    Semantics are trio's (``trio.testing.check_half_closeable_stream`` passes):
    one task at a time per direction, ``send_eof`` idempotent, errors of the peer's
    making are ``trio.BrokenResourceError``, use after close is
    ``trio.ClosedResourceError``. Unlike ``trio.SocketStream``, an operation the kernel
    completes at once is a schedule point only once per ``ready_streak`` of them (see
    the module docstring).

    Raises:
        ValueError: ``sock`` is not a stream socket, or ``ready_streak`` < 1.
    """

    def __init__(self, sock: socket.socket, *, ready_streak: int = _READY_STREAK) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("DirectSocketStream needs a SOCK_STREAM socket")
        if ready_streak < 1:
            raise ValueError("ready_streak must be at least 1")
        sock.setblocking(False)
        self.socket = sock
        self._ready_streak = ready_streak
        self._receiving = False
        self._sending = False
        self._eof_sent = False
        self._streak = 0

    @classmethod
    def take_over(cls, stream: trio.SocketStream) -> DirectSocketStream:
        """The socket of ``stream``, moved into a new DirectSocketStream.

        ``stream`` is left closed (its aclose is then a no-op), so whoever owned it
        may still close it; the returned stream owns the connection.
        """
        trio_socket = stream.socket
        family, kind = trio_socket.family, trio_socket.type
        fd = trio_socket.detach()
        try:
            sock = socket.socket(family, kind, fileno=fd)
        except BaseException:
            os.close(fd)  # the fd is ours alone now: never leak it
            raise
        return cls(sock)

    async def _after_ready(self) -> None:
        # A schedule point once per ready_streak calls the kernel completed at once.
        self._streak += 1
        if self._streak >= self._ready_streak:
            self._streak = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes the peer sent (at most ``max_bytes``), ``b""`` at its EOF.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: this stream was closed (also while waiting).
            trio.BrokenResourceError: the connection broke (e.g. reset).
        """
        size = _DEFAULT_RECEIVE if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            sock = self.socket
            while True:
                if sock.fileno() < 0:
                    raise trio.ClosedResourceError("this socket was already closed")
                try:
                    data = sock.recv(size)
                except (BlockingIOError, InterruptedError):
                    self._streak = 0
                    await trio.lowlevel.wait_readable(sock)
                    continue
                except OSError as exc:
                    raise _stream_error(exc) from exc
                await self._after_ready()
                return data
        finally:
            self._receiving = False

    def _claim_sending(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True

    async def _send_socket(self) -> socket.socket:
        """The socket to send on, after the cancellation point every send starts with."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        return self.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting for buffer room only when there is none.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: closed, or after :meth:`send_eof`.
            trio.BrokenResourceError: the connection broke (e.g. the peer left).
        """
        self._claim_sending()
        try:
            sock = await self._send_socket()
            with memoryview(data) as view:
                sent = 0
                while True:
                    if sock.fileno() < 0:
                        raise trio.ClosedResourceError("this socket was already closed")
                    if sent >= len(view):
                        break
                    try:
                        sent += sock.send(view[sent:])
                    except (BlockingIOError, InterruptedError):
                        self._streak = 0
                        await trio.lowlevel.wait_writable(sock)
                    except OSError as exc:
                        raise _stream_error(exc) from exc
            await self._after_ready()
        finally:
            self._sending = False

    async def send_all_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Send ``parts`` one after another as one stream of bytes, gathered by the
        kernel (``sendmsg``) instead of joined into one copy first.

        A relay's batch of 64 KiB packets plus their frame headers cost a join as
        big as the batch per write. Same errors and checkpoints as :meth:`send_all`.
        """
        self._claim_sending()
        try:
            sock = await self._send_socket()
            pending = [part for part in parts if len(part)]
            first = 0  # pending[first:] is still to send
            while first < len(pending):
                if sock.fileno() < 0:
                    raise trio.ClosedResourceError("this socket was already closed")
                try:
                    sent = sock.sendmsg(pending[first : first + _MAX_IOV])
                except (BlockingIOError, InterruptedError):
                    self._streak = 0
                    await trio.lowlevel.wait_writable(sock)
                    continue
                except OSError as exc:
                    raise _stream_error(exc) from exc
                while sent and sent >= len(pending[first]):
                    sent -= len(pending[first])
                    first += 1
                if sent:
                    pending[first] = memoryview(pending[first])[sent:]
            await self._after_ready()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Until the socket has room to send (or is broken).

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            if self.socket.fileno() < 0:
                raise trio.ClosedResourceError("this socket was already closed")
            self._streak = 0
            await trio.lowlevel.wait_writable(self.socket)
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF; receiving goes on. Idempotent.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the connection broke.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.socket.fileno() < 0:
                raise trio.ClosedResourceError("this socket was already closed")
            if not self._eof_sent:
                self._eof_sent = True
                try:
                    self.socket.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    raise _stream_error(exc) from exc
            await self._after_ready()
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Close the socket (at once, even if cancelled: then it raises Cancelled
        after closing); tasks waiting on it get trio.ClosedResourceError. Idempotent."""
        if self.socket.fileno() >= 0:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._after_ready()


def raise_notsent_lowat(stream: trio.abc.Stream, size: int) -> None:
    """Let the kernel take ``size`` unsent bytes per write on ``stream`` (a whole batch).

    trio sets TCP_NOTSENT_LOWAT to 16 KiB on every SocketStream: a send then stops
    once 16 KiB wait unsent, so a 64 KiB relayed packet (or a 256 KiB batch) went out
    in several sends with a wait for the peer to drain between them, and the peer
    read it in as many small pieces (a loopback micro-benchmark: 1.3x fewer bytes per
    read on the receiving side and 1.3x the MB/s with the mark at 256 KiB). The
    caller must bound what it queues some other way (a DERP connection: by each
    sender's mux window and the relay's per-client queue). ``stream`` may wrap its
    socket (``transport_stream``, ``transport``). Best effort: a stream without a TCP
    socket under it (or a platform without the option) is left as it is.
    """
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    while option is not None:
        # trio.SocketStream (a trio socket) or DirectSocketStream (a stdlib one).
        sock = getattr(stream, "socket", None)
        if isinstance(sock, socket.socket | trio.socket.SocketType):
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, option, size)
            return
        inner = getattr(stream, "transport_stream", None) or getattr(stream, "transport", None)
        if not isinstance(inner, trio.abc.Stream):
            return
        stream = inner
