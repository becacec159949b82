"""Is anything listening on a TCP port of this host? (the ``check_port`` request)

On Linux the kernel's socket tables (``/proc/net/tcp`` and ``/proc/net/tcp6``) answer
without side effects: connecting to find out would consume an accept of a
single-connection server and shows up in its logs. Elsewhere (no ``/proc``) a short
connect to the loopback addresses is the fallback, which sees only loopback listeners.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

__all__ = ["check_port", "listening_addresses", "parse_proc_net_tcp"]

_LISTEN: Final = "0A"  # TCP_LISTEN in include/net/tcp_states.h, as /proc prints it
_CONNECT_TIMEOUT: Final = 1.0
_PROC_NET: Final = Path("/proc/net")


def _address(hex_address: str, byteorder: str) -> str | None:
    # Each 32-bit word of the address is printed as a host-order integer in hex.
    if len(hex_address) not in (8, 32):
        return None
    try:
        raw = bytes.fromhex(hex_address)
    except ValueError:
        return None
    if byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def parse_proc_net_tcp(
    lines: Iterable[str], port: int, byteorder: str = sys.byteorder
) -> list[str]:
    """The local addresses of sockets in LISTEN state on ``port`` in a ``/proc/net/tcp*`` table.

    Malformed lines are skipped (the header line is one of them); never raises.
    """
    found: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[3] != _LISTEN:
            continue
        address, sep, hex_port = fields[1].rpartition(":")
        if not sep or len(hex_port) != 4:
            continue
        try:
            local_port = int(hex_port, 16)
        except ValueError:
            continue
        if local_port != port:
            continue
        text = _address(address, byteorder)
        if text is not None and text not in found:
            found.append(text)
    return found


def listening_addresses(port: int, proc_net: Path = _PROC_NET) -> list[str] | None:
    """Addresses with a TCP listener on ``port``, from the kernel tables; ``None`` without them."""
    tables = [proc_net / "tcp", proc_net / "tcp6"]
    if not any(t.exists() for t in tables):
        return None
    found: list[str] = []
    for table in tables:
        try:
            with open(table, encoding="ascii", errors="replace") as f:
                found += [a for a in parse_proc_net_tcp(f, port) if a not in found]
        except OSError:
            continue  # tcp6 is absent when IPv6 is disabled
    return found


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def check_port(port: int, proc_net: Path = _PROC_NET) -> dict[str, Any]:
    """``{port, listening, addresses, method}`` for TCP ``port`` (blocking; run in a thread).

    ``method`` is ``"proc"`` (kernel tables, every local address) or ``"connect"``
    (loopback connect attempts, where there is no ``/proc``).
    """
    addresses = listening_addresses(port, proc_net)
    method = "proc"
    if addresses is None:
        method = "connect"
        addresses = [host for host in ("127.0.0.1", "::1") if _connects(host, port)]
    return {"port": port, "listening": bool(addresses), "addresses": addresses, "method": method}
