"""systemd integration: ``sd_notify`` and socket activation, without libsystemd.

``sd_notify(3)``: newline-separated ``KEY=VALUE`` assignments in one datagram to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written
with a leading ``@``). ``sd_listen_fds(3)``: fds 3..3+``$LISTEN_FDS``-1 are ours when
``$LISTEN_PID`` is our pid; ``$LISTEN_FDNAMES`` holds their colon-separated names.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Final

import trio

from tunneld.log import get_logger

__all__ = [
    "SD_LISTEN_FDS_START",
    "ActivatedListener",
    "Notifier",
    "listen_fds",
    "watchdog_interval",
]

log = get_logger(__name__)

SD_LISTEN_FDS_START: Final = 3


def _address(value: str) -> str | bytes:
    # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """Sends ``sd_notify`` messages; every method is a no-op without ``$NOTIFY_SOCKET``.

    Send failures are logged, never raised: the service must not die because the
    manager went away. The socket is sent to without blocking (datagrams are small
    and the manager reads them promptly; a full queue drops the message).
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        target = environ.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = _address(target) if target else None
        self._watchdog = watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens (``$NOTIFY_SOCKET`` was set)."""
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` fields (``notify(READY=1, STATUS="up")``) in one datagram.

        Returns whether a datagram was sent. Values must not contain newlines.
        """
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(f"sd_notify value for {key} must not contain a newline")
            lines.append(f"{key}={text}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and ``STATUS=``): startup is complete."""
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, status: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.notify(STATUS=status)

    def stopping(self) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify(STOPPING=1)

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd ≥ 253 wants it for
        ``Type=notify-reload``); send :meth:`ready` when the reload is done."""
        usec = time_monotonic_usec()
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive ping."""
        return self.notify(WATCHDOG=1)

    async def run_watchdog(
        self, *, task_status: trio.TaskStatus[float | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping ``WATCHDOG=1`` every half of ``$WATCHDOG_USEC`` until cancelled.

        Reports the interval in seconds (None, and returns at once, when the manager
        asked for no watchdog). A stalled trio loop stops the pings, which is the point.
        """
        interval = self._watchdog if self.enabled else None
        task_status.started(interval)
        if interval is None:
            return
        while True:
            self.watchdog()
            await trio.sleep(interval)


def time_monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd's ``MONOTONIC_USEC`` wants (the
    system clock the manager compares against, not trio's clock)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None when no watchdog is wanted
    (unset, not a positive integer, or ``$WATCHDOG_PID`` names another process)."""
    environ = os.environ if env is None else env
    raw = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


@dataclass(frozen=True, slots=True)
class ActivatedListener:
    """One socket passed by the service manager: its fd name and a trio listener."""

    name: str
    listener: trio.SocketListener


def listen_fds(
    env: MutableMapping[str, str] | None = None, *, unset_environment: bool = True
) -> list[ActivatedListener]:
    """The listening stream sockets passed by socket activation, as trio listeners.

    Reads ``$LISTEN_PID``, ``$LISTEN_FDS`` and ``$LISTEN_FDNAMES``; returns [] when
    they are absent or meant for another process. The fds are marked close-on-exec
    and, with ``unset_environment`` (as ``sd_listen_fds(1)`` does), the variables are
    removed so children do not take them for theirs. Names default to ``"unknown"``.

    Raises:
        ValueError: ``$LISTEN_FDS`` is not a non-negative integer, or a passed fd is
            not a listening stream socket (a unit misconfiguration: say so loudly).
    """
    environ: MutableMapping[str, str] = os.environ if env is None else env
    pid = environ.get("LISTEN_PID", "")
    count_text = environ.get("LISTEN_FDS", "")
    names_text = environ.get("LISTEN_FDNAMES", "")
    if unset_environment:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            environ.pop(key, None)
    if not pid or not count_text or pid != str(os.getpid()):
        return []
    try:
        count = int(count_text)
    except ValueError:
        raise ValueError(f"LISTEN_FDS={count_text!r} is not a number") from None
    if count < 0:
        raise ValueError(f"LISTEN_FDS={count_text!r} is negative")
    names = names_text.split(":") if names_text else []
    result: list[ActivatedListener] = []
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        name = names[index] if index < len(names) and names[index] else "unknown"
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise ValueError(f"fd {fd} ({name}) is not a listening stream socket")
        result.append(
            ActivatedListener(name, trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        )
    log.info("systemd.listen_fds", count=count, names=",".join(a.name for a in result))
    return result
