"""A tiny ``ping -c COUNT -W WAIT ADDRESS`` for machines without iputils-ping.

Run as root (raw ICMP socket), e.g. ``ip netns exec NS python tests/icmp_ping.py
10.200.0.2 3 2``. Prints ``N packets transmitted, M received`` like ping(8) and exits 0
if any reply came back, 1 otherwise. The kernel builds the IPv4 header and routes the
requests exactly as it does for ping(8).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from tunneld.proto import ipv4


def main(address: str, count: int, wait: float) -> int:
    identifier = os.getpid() & 0xFFFF
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        for sequence in range(1, count + 1):
            request = ipv4.build_icmp_echo(
                ipv4.IcmpEchoKind.REQUEST, identifier, sequence, bytes(56)
            )
            sent_at = time.monotonic()
            sock.sendto(request, (address, 0))
            deadline = sent_at + wait
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data, _ = sock.recvfrom(65535)
                except TimeoutError:
                    break
                try:
                    packet = ipv4.parse_ipv4(data)
                    echo = ipv4.parse_icmp_echo(packet.payload)
                except ipv4.RemoteProtocolError:
                    continue
                if (
                    str(packet.source) == address
                    and echo.kind is ipv4.IcmpEchoKind.REPLY
                    and (echo.identifier, echo.sequence) == (identifier, sequence)
                ):
                    received += 1
                    print(f"reply from {address}: icmp_seq={sequence} ttl={packet.ttl}")
                    break
            if sequence < count:  # one request a second, as ping(8) does
                time.sleep(max(0.0, sent_at + 1.0 - time.monotonic()))
    print(f"{count} packets transmitted, {received} received")
    return 0 if received else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
