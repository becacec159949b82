"""The overlay's UDP socket, with non-waiting fast paths for the data path.

trio's socket methods cost two scheduler round trips per datagram (a checkpoint
before, a schedule point after, and a fresh address resolution for every
``sendto``). The overlay sends and receives one small datagram at a time from tasks
that already yield elsewhere, so it tries the plain non-blocking call first and only
falls back to trio's waiting call when the kernel says "would block" (or anything
unusual, such as an address the plain call cannot parse).
"""

from __future__ import annotations

import socket
import sys

import trio

__all__ = ["OverlaySocket"]

UdpAddress = tuple[str, int]

# Socket buffers asked for (wireguard-go asks for 7 MiB too): the kernel's default
# (~200 KiB, under 100 full datagrams) overflows at once when a peer's congestion
# window outgrows it, and a bulk transfer then loses packets to our own socket
# rather than to the network. The kernel caps the request at net.core.[rw]mem_max.
SOCKET_BUFFER = 7 << 20

# Linux's <linux/in.h> and <linux/in6.h> (the socket module lacks them): never
# fragment, ignore the kernel's path MTU cache (ICMP "too big" is unauthenticated);
# a datagram bigger than the outgoing link's MTU fails at once with EMSGSIZE.
_IP_MTU_DISCOVER = 10
_IPV6_MTU_DISCOVER = 23
_PMTUDISC_PROBE = 3


def _set_dont_fragment(raw: socket.socket) -> bool:
    """Set don't-fragment (probe mode) on ``raw``; False where we cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        if raw.family == socket.AF_INET6:
            raw.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _PMTUDISC_PROBE)
            try:  # IPv4-mapped destinations of a dual-stack socket too
                raw.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_PROBE)
            except OSError:
                pass
        else:
            raw.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_PROBE)
    except OSError:
        return False
    return True


class OverlaySocket:
    """One bound, non-blocking UDP socket: the stdlib object and its trio wrapper.

    Not shared between tasks for waiting: ``send`` serialises its slow path with a
    lock; ``receive`` must have a single caller (the overlay's reader task).

    ``dont_fragment``: the kernel never fragments our datagrams (Linux); a datagram
    too big for the outgoing link raises ``OSError(EMSGSIZE)`` from the send, which
    the caller must treat as "too big" (path MTU discovery), never as fatal.
    """

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                raw.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            except OSError:
                pass  # keep the default: a smaller buffer only costs more loss
        self.dont_fragment = _set_dont_fragment(raw)
        self.trio = trio.socket.from_stdlib_socket(raw)  # makes ``raw`` non-blocking
        self._send_lock = trio.StrictFIFOLock()

    @classmethod
    async def bind(cls, address: UdpAddress) -> OverlaySocket:
        """A socket bound to ``address`` (host, port; port 0 picks one).

        Raises:
            OSError: the address cannot be bound.
        """
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock = cls(raw)
            await sock.trio.bind(address)
        except BaseException:
            raw.close()
            raise
        return sock

    def getsockname(self) -> UdpAddress:
        name = self.raw.getsockname()
        return str(name[0]), int(name[1])

    def close(self) -> None:
        """Close; a task waiting in ``receive`` gets trio.ClosedResourceError."""
        self.trio.close()

    def send_now(self, data: bytes, address: UdpAddress) -> bool:
        """Send without waiting; False if it must wait (or needs trio's resolution).

        Raises:
            OSError: the send failed for good (e.g. an ICMP error reported late).
        """
        try:
            self.raw.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            return False
        except (socket.gaierror, TypeError):
            return False  # e.g. an IPv4 address on an IPv6 socket: let trio map it
        return True

    async def send(self, data: bytes, address: UdpAddress) -> None:
        """Send ``data`` to ``address``, waiting for buffer room only if needed.

        No checkpoint when the datagram leaves at once: callers yield elsewhere.

        Raises:
            OSError, trio.ClosedResourceError: the datagram could not be sent.
        """
        if self.raw.fileno() < 0:
            raise trio.ClosedResourceError("socket closed")
        if self.send_now(data, address):
            return
        async with self._send_lock:
            await self.trio.sendto(data, address)

    def receive_now(self, size: int) -> tuple[bytes, UdpAddress] | None:
        """A waiting datagram and its source, or None if none is queued.

        Raises:
            OSError: the socket reported an error (e.g. ICMP unreachable).
        """
        try:
            data, address = self.raw.recvfrom(size)
        except (BlockingIOError, InterruptedError):
            return None
        if len(address) == 2:  # IPv4: already (host, port); no new tuple per datagram
            return data, address
        return data, (str(address[0]), int(address[1]))  # IPv6: drop flow info and scope

    async def wait_readable(self) -> None:
        """Until a datagram (or an error) is waiting.

        Raises:
            trio.ClosedResourceError: the socket was closed meanwhile.
        """
        if self.raw.fileno() < 0:
            raise trio.ClosedResourceError("socket closed")
        await trio.lowlevel.wait_readable(self.raw)
