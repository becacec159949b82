"""Drives WireGuardCore over a real UDP socket against wireguard-go (run inside a netns).

Usage: python _noise_interop_driver.py ROLE OUR_PRIVATE_HEX PEER_PUBLIC_HEX OUR_PORT PEER_PORT
ROLE is ``initiator`` (we ping 10.200.0.1 through the tunnel and wait for the echo
reply), ``rekey`` (the same, then a second handshake after RekeyTimeout and a second
ping under the new keys) or ``responder`` (wireguard-go starts the handshake for a
ping to 10.200.0.2; we answer the echo request). Prints READY once bound, then one
JSON line with what happened.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

from tunneld.proto.noise import (
    DataReceived,
    HandshakeCompleted,
    RemoteProtocolError,
    WireGuardCore,
)

OURS = bytes([10, 200, 0, 2])
THEIRS = bytes([10, 200, 0, 1])


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: bytes, dst: bytes, payload: bytes, ident: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, 64, 1, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def icmp_echo(kind: int, ident: int, seq: int, body: bytes) -> bytes:
    msg = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + body
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def main() -> None:
    role, ours_hex, peer_hex, our_port, peer_port = sys.argv[1:6]
    peer = bytes.fromhex(peer_hex)
    core = WireGuardCore(bytes.fromhex(ours_hex))
    core.add_peer(peer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", int(our_port)))
    sock.settimeout(0.05)
    print("READY", flush=True)
    peer_addr = ("127.0.0.1", int(peer_port))
    result: dict[str, object] = {"events": [], "rejected": []}
    events: list[str] = result["events"]  # type: ignore[assignment]
    start = time.monotonic()

    def flush() -> None:
        for out in core.datagrams_to_send(time.monotonic()):
            sock.sendto(out.data, peer_addr)

    def ping(seq: int) -> None:
        echo = icmp_echo(8, 0x1234, seq, b"tunneld-interop-ping")
        core.send(peer, ipv4(OURS, THEIRS, echo, 7), time.monotonic(), time.time())

    if role in ("initiator", "rekey"):
        ping(1)
    replied = False
    replies: list[int] = []
    result["replies"] = replies
    handshakes = 0
    rekey_at: float | None = None
    while time.monotonic() - start < 15.0:
        if rekey_at is not None and time.monotonic() >= rekey_at:
            core.initiate(peer, time.monotonic(), time.time())
            rekey_at = None
        flush()
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            timer = core.get_timer()
            if timer is not None and timer <= time.monotonic():
                core.handle_timer(time.monotonic(), time.time())
            continue
        try:
            core.receive_datagram(data, b"peer", time.monotonic(), time.time())
        except RemoteProtocolError as exc:
            result["rejected"].append(exc.reason)  # type: ignore[attr-defined]
        while (event := core.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                events.append(f"handshake initiator={event.initiator}")
                handshakes += 1
                if role == "rekey" and handshakes == 2:
                    ping(2)
            elif isinstance(event, DataReceived):
                packet = event.payload
                icmp = packet[20:]
                events.append(f"data icmp type {icmp[0]} from {packet[12:16].hex()}")
                if role in ("initiator", "rekey") and icmp[0] == 0:
                    ident, seq = struct.unpack("!HH", icmp[4:8])
                    if ident == 0x1234:
                        replies.append(seq)
                    if role == "rekey" and seq == 1:
                        # wireguard-go, like us, refuses a new initiation within
                        # RekeyTimeout (5 s) of the last one.
                        rekey_at = start + 5.2
                if role == "responder" and icmp[0] == 8 and not replied:
                    length = struct.unpack("!H", packet[2:4])[0]
                    request = packet[20:length]
                    reply = icmp_echo(0, *struct.unpack("!HH", request[4:8]), request[8:])
                    core.send(peer, ipv4(OURS, THEIRS, reply, 9), time.monotonic(), time.time())
                    replied = True
        if (role == "initiator" and 1 in replies) or (role == "rekey" and 2 in replies):
            result["ok"] = True
            break
        if role == "responder" and replied:
            flush()
            time.sleep(0.5)  # let the keepalive/timers settle before exiting
            result["ok"] = True
            break
    flush()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
