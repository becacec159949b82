"""``tunneld debug wg-probe``: talk to any standard WireGuard endpoint and report.

Two modes. Initiator (``--endpoint``): handshake, keepalives, and with ``--ping`` ICMP
echo requests inside the tunnel, reporting the handshake RTT, packet counts and echo
replies. Responder (``--listen``): wait for a peer's handshake and answer ICMP echo
requests inside the tunnel, the way a host on the overlay would. Either mode exits 0
only if a handshake completed.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import trio

from tunneld._address import format_host_port
from tunneld.cli._common import CliError, Subparsers
from tunneld.keys import decode_key, encode_key, public_key, read_key_file
from tunneld.log import get_logger
from tunneld.net.wireguard_udp import UdpAddress, WireGuardUdp, WireGuardUdpStats
from tunneld.proto import ipv4
from tunneld.proto.noise import (
    DataReceived,
    HandshakeCompleted,
    HandshakeTimedOut,
    NoiseError,
    WireGuardCore,
)

__all__ = [
    "EchoReplySent",
    "PingReply",
    "ProbeOptions",
    "ProbeReport",
    "probe_initiator",
    "probe_responder",
    "register",
]

log = get_logger(__name__)

_DEFAULT_TIMEOUT_INITIATE = 5.0
_DEFAULT_TIMEOUT_LISTEN = 30.0
# 56 data bytes, like ping(8): an 84-byte IPv4 packet.
_PING_DATA_SIZE = 56


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    """What to probe; built from the command line or directly by tests.

    ``endpoint`` (initiator) or ``listen`` (responder) must be a numeric (host, port).
    ``timeout`` bounds the handshake and each echo reply (initiator) or the whole run
    (responder); ``count`` is pings or keepalives to send (initiator) or echo replies
    after which to stop (responder).
    """

    private_key: bytes
    peer: bytes
    preshared_key: bytes | None = None
    endpoint: UdpAddress | None = None
    listen: UdpAddress | None = None
    address: IPv4Address | None = None
    ping: IPv4Address | None = None
    count: int = 3
    interval: float = 1.0
    timeout: float = _DEFAULT_TIMEOUT_INITIATE


@dataclass(frozen=True, slots=True)
class PingReply:
    """One echo reply matched to a request we sent."""

    sequence: int
    rtt_ms: float
    ttl: int


@dataclass(frozen=True, slots=True)
class EchoReplySent:
    """One echo request we answered (responder mode)."""

    sequence: int
    identifier: int
    source: str


@dataclass(slots=True)
class ProbeReport:
    """The outcome of one probe; ``error`` is None when everything asked for worked."""

    mode: str
    peer: str
    public_key: str
    local: str | None = None
    remote: str | None = None
    handshake_completed: bool = False
    # Initiator: the handshake round trip. Responder: time from listening until done.
    handshake_ms: float | None = None
    stats: WireGuardUdpStats = field(default_factory=WireGuardUdpStats)
    ping_target: str | None = None
    pings_sent: int = 0
    replies: list[PingReply] = field(default_factory=list)
    echo_replies_sent: list[EchoReplySent] = field(default_factory=list)
    other_payloads: int = 0
    error: str | None = None

    @property
    def exit_status(self) -> int:
        """0 only if the handshake completed and no requested check failed."""
        return 0 if self.handshake_completed and self.error is None else 1

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-ready object (``--json``)."""
        result: dict[str, Any] = {
            "ok": self.exit_status == 0,
            "mode": self.mode,
            "peer": self.peer,
            "public_key": self.public_key,
            "local": self.local,
            "remote": self.remote,
            "handshake": {
                "completed": self.handshake_completed,
                # Initiator: initiation sent -> response processed (a round trip).
                # Responder: from listening until the peer confirmed the session.
                ("rtt_ms" if self.mode == "initiate" else "after_ms"): _round(self.handshake_ms),
            },
            "packets": {
                "sent": self.stats.datagrams_sent,
                "received": self.stats.datagrams_received,
                "decrypted": self.stats.transport_decrypted,
                "rejected": self.stats.datagrams_rejected,
                "send_errors": self.stats.send_errors,
            },
            "error": self.error,
        }
        if self.mode == "initiate" and self.ping_target is not None:
            result["ping"] = {
                "target": self.ping_target,
                "sent": self.pings_sent,
                "received": len(self.replies),
                "replies": [
                    {"seq": r.sequence, "rtt_ms": _round(r.rtt_ms), "ttl": r.ttl}
                    for r in self.replies
                ],
            }
        if self.mode == "listen":
            result["echo_replies_sent"] = [
                {"seq": e.sequence, "id": e.identifier, "from": e.source}
                for e in self.echo_replies_sent
            ]
        result["other_payloads"] = self.other_payloads
        return result

    def render_text(self) -> str:
        """The report for a human at a terminal."""
        lines = [f"peer {self.peer}  (we are {self.public_key})"]
        where = self.remote or "?"
        if self.handshake_completed and self.mode == "initiate":
            took = f" in {self.handshake_ms:.2f} ms" if self.handshake_ms is not None else ""
            lines.append(f"handshake with {where} completed{took}  (local {self.local})")
        elif self.handshake_completed:
            after = f" {self.handshake_ms / 1000:.2f} s" if self.handshake_ms is not None else ""
            lines.append(f"handshake from {where} completed{after} after listening on {self.local}")
        else:
            lines.append(f"handshake: not completed  (local {self.local})")
        s = self.stats
        lines.append(
            f"packets: sent {s.datagrams_sent}, received {s.datagrams_received}, "
            f"decrypted {s.transport_decrypted}, rejected {s.datagrams_rejected}"
        )
        if self.mode == "initiate" and self.ping_target is not None:
            lost = self.pings_sent - len(self.replies)
            loss = 100.0 * lost / self.pings_sent if self.pings_sent else 0.0
            lines.append(
                f"ping {self.ping_target}: {self.pings_sent} sent, {len(self.replies)} "
                f"received, {loss:.0f}% loss"
            )
            if self.replies:
                lines.append(f"  {'seq':>5}  {'rtt_ms':>9}  {'ttl':>4}")
                lines.extend(
                    f"  {r.sequence:>5}  {r.rtt_ms:>9.3f}  {r.ttl:>4}" for r in self.replies
                )
        if self.mode == "listen":
            lines.append(f"echo replies sent: {len(self.echo_replies_sent)}")
            lines.extend(
                f"  seq {e.sequence} id {e.identifier} to {e.source}"
                for e in self.echo_replies_sent
            )
        return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _format_address(address: UdpAddress | None) -> str | None:
    if address is None:
        return None
    return format_host_port(*address)


def _new_core(options: ProbeOptions) -> WireGuardCore:
    try:
        core = WireGuardCore(options.private_key)
        core.add_peer(options.peer, preshared_key=options.preshared_key)
    except NoiseError as exc:
        # e.g. a low-order public key, which WireGuard refuses (paper §5.4.2 / RFC 7748).
        raise CliError(f"--peer {encode_key(options.peer)}: not usable: {exc}") from None
    return core


def _new_report(mode: str, options: ProbeOptions) -> ProbeReport:
    return ProbeReport(
        mode=mode,
        peer=encode_key(options.peer),
        public_key=encode_key(public_key(options.private_key)),
    )


def _udp_socket(address: UdpAddress) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return trio.socket.socket(family, socket.SOCK_DGRAM)


async def probe_initiator(options: ProbeOptions) -> ProbeReport:
    """Handshake with ``options.endpoint``, then keepalives or pings; report what happened.

    Never raises for network trouble: timeouts and send errors end up in
    ``report.error``. Cancellation closes the socket and propagates.

    Raises:
        CliError: the local socket cannot be created or bound.
    """
    if options.endpoint is None:
        raise ValueError("probe_initiator needs options.endpoint")
    endpoint = options.endpoint
    report = _new_report("initiate", options)
    report.remote = _format_address(endpoint)
    core = _new_core(options)
    bind: UdpAddress = ("::", 0) if ":" in endpoint[0] else ("0.0.0.0", 0)
    with _udp_socket(endpoint) as sock:
        await _bind(sock, bind)
        driver = WireGuardUdp(core, sock)
        report.stats = driver.stats
        driver.set_endpoint(options.peer, endpoint)
        async with trio.open_nursery() as nursery:
            report.local = _format_address(await nursery.start(driver.serve))
            await _initiator_session(driver, options, report)
            await driver.flush()
            nursery.cancel_scope.cancel()
    return report


async def _initiator_session(
    driver: WireGuardUdp, options: ProbeOptions, report: ProbeReport
) -> None:
    started = trio.current_time()
    log.debug("wg_probe.initiating", endpoint=report.remote, peer=report.peer)
    driver.initiate(options.peer)
    with trio.move_on_after(options.timeout):
        async for event in driver.events:
            if isinstance(event, HandshakeCompleted) and event.peer == options.peer:
                report.handshake_completed = True
                report.handshake_ms = (trio.current_time() - started) * 1000.0
                break
            if isinstance(event, HandshakeTimedOut) and event.peer == options.peer:
                break
    if not report.handshake_completed:
        report.error = _no_handshake_message(report, options.timeout, driver.stats)
        return
    log.debug(
        "wg_probe.handshake_completed", endpoint=report.remote, ms=_round(report.handshake_ms)
    )
    # An empty transport packet confirms the session to the responder (paper §6.5),
    # which may not send data before it has received one from us.
    driver.send(options.peer, b"")
    await driver.flush()
    if options.ping is not None and options.address is not None:
        await _ping(driver, options, options.address, options.ping, report)
    else:
        for _ in range(options.count - 1):
            await trio.sleep(options.interval)
            driver.send(options.peer, b"")
            await driver.flush()
        _count_other_payloads(driver, options.peer, report)


def _no_handshake_message(report: ProbeReport, timeout: float, stats: WireGuardUdpStats) -> str:
    message = (
        f"no handshake response from {report.remote} within {timeout:g}s: is WireGuard "
        f"listening there, with peer {report.public_key} (our public key) configured?"
    )
    if stats.datagrams_rejected:
        message += (
            f" ({stats.datagrams_rejected} reply datagram(s) rejected, last: "
            f"{stats.last_reject_reason}; check --peer and --psk)"
        )
    if stats.last_send_error:
        message += f" (sending failed: {stats.last_send_error})"
    return message


def _count_other_payloads(driver: WireGuardUdp, peer: bytes, report: ProbeReport) -> None:
    while True:
        try:
            event = driver.events.receive_nowait()
        except trio.WouldBlock:
            return
        if isinstance(event, DataReceived) and event.peer == peer:
            report.other_payloads += 1


async def _ping(
    driver: WireGuardUdp,
    options: ProbeOptions,
    source: IPv4Address,
    target: IPv4Address,
    report: ProbeReport,
) -> None:
    report.ping_target = str(target)
    identifier = secrets.randbits(16)
    sent_at: dict[int, float] = {}
    all_answered = trio.Event()
    sending_done = False

    def on_payload(payload: bytes) -> None:
        reply = _match_echo_reply(payload, source, target, identifier)
        if reply is None or reply[0] not in sent_at:
            report.other_payloads += 1
            return
        sequence, ttl = reply
        rtt = (trio.current_time() - sent_at.pop(sequence)) * 1000.0
        report.replies.append(PingReply(sequence=sequence, rtt_ms=rtt, ttl=ttl))
        if sending_done and not sent_at:
            all_answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_deliver_payloads, driver, options.peer, on_payload)
        last_sent = trio.current_time()
        for sequence in range(1, options.count + 1):
            if sequence > 1:
                await trio.sleep(options.interval)
            data = sequence.to_bytes(2, "big") * (_PING_DATA_SIZE // 2)
            echo = ipv4.build_icmp_echo(ipv4.IcmpEchoKind.REQUEST, identifier, sequence, data)
            packet = ipv4.build_ipv4(source, target, ipv4.PROTOCOL_ICMP, echo)
            last_sent = sent_at[sequence] = trio.current_time()
            report.pings_sent += 1
            driver.send(options.peer, packet)
            await driver.flush()
        sending_done = True
        if sent_at:
            with trio.move_on_at(last_sent + options.timeout):
                await all_answered.wait()
        nursery.cancel_scope.cancel()
    report.replies.sort(key=lambda reply: reply.sequence)
    if not report.replies:
        report.error = (
            f"no echo replies from {target} within {options.timeout:g}s of the last request "
            f"(does the peer route {target}, and allow {source} as our address?)"
        )


async def _deliver_payloads(
    driver: WireGuardUdp, peer: bytes, on_payload: Callable[[bytes], None]
) -> None:
    async for event in driver.events:
        if isinstance(event, DataReceived) and event.peer == peer:
            on_payload(event.payload)


def _match_echo_reply(
    payload: bytes, source: IPv4Address, target: IPv4Address, identifier: int
) -> tuple[int, int] | None:
    """(sequence, ttl) if ``payload`` is an echo reply from ``target`` to our request."""
    try:
        packet = ipv4.parse_ipv4(payload)
        if packet.protocol != ipv4.PROTOCOL_ICMP:
            return None
        if packet.source != target or packet.destination != source:
            return None
        echo = ipv4.parse_icmp_echo(packet.payload)
    except ipv4.RemoteProtocolError:
        return None
    if echo.kind is not ipv4.IcmpEchoKind.REPLY or echo.identifier != identifier:
        return None
    return echo.sequence, packet.ttl


async def probe_responder(
    options: ProbeOptions,
    *,
    task_status: trio.TaskStatus[UdpAddress] = trio.TASK_STATUS_IGNORED,
) -> ProbeReport:
    """Listen on ``options.listen``, accept the peer's handshake, answer its pings.

    Reports the bound address through ``task_status.started``. Returns after
    ``options.count`` echo replies or ``options.timeout`` seconds. Never raises for
    network trouble. Cancellation closes the socket and propagates.

    Raises:
        CliError: the socket cannot be bound.
    """
    if options.listen is None:
        raise ValueError("probe_responder needs options.listen")
    report = _new_report("listen", options)
    core = _new_core(options)
    with _udp_socket(options.listen) as sock:
        await _bind(sock, options.listen)
        driver = WireGuardUdp(core, sock)
        report.stats = driver.stats
        async with trio.open_nursery() as nursery:
            local = await nursery.start(driver.serve)
            report.local = _format_address(local)
            log.info("wg_probe.listening", address=report.local, peer=report.peer)
            task_status.started(local)
            started = trio.current_time()
            with trio.move_on_after(options.timeout):
                await _answer_pings(driver, options, report, started)
            await driver.flush()
            nursery.cancel_scope.cancel()
    report.remote = _format_address(driver.endpoint(options.peer))
    if not report.handshake_completed:
        report.error = (
            f"no handshake from peer {report.peer} within {options.timeout:g}s on "
            f"{report.local} (is its endpoint set to this address, with our public key "
            f"{report.public_key}?)"
        )
    return report


async def _answer_pings(
    driver: WireGuardUdp, options: ProbeOptions, report: ProbeReport, started: float
) -> None:
    async for event in driver.events:
        if event.peer != options.peer:
            continue
        if isinstance(event, HandshakeCompleted | DataReceived) and not report.handshake_completed:
            report.handshake_completed = True
            report.handshake_ms = (trio.current_time() - started) * 1000.0
            log.debug("wg_probe.handshake_completed", endpoint=report.local)
        if not isinstance(event, DataReceived):
            continue
        try:
            reply = ipv4.echo_reply_for(event.payload, address=options.address)
        except ipv4.RemoteProtocolError as exc:
            log.debug("wg_probe.bad_inner_packet", reason=str(exc))
            reply = None
        if reply is None:
            report.other_payloads += 1
            continue
        request = ipv4.parse_ipv4(event.payload)
        echo = ipv4.parse_icmp_echo(request.payload)
        driver.send(options.peer, reply)
        await driver.flush()
        report.echo_replies_sent.append(
            EchoReplySent(
                sequence=echo.sequence, identifier=echo.identifier, source=str(request.source)
            )
        )
        if len(report.echo_replies_sent) >= options.count:
            return


async def _bind(sock: trio.socket.SocketType, address: UdpAddress) -> None:
    try:
        await sock.bind(address)
    except OSError as exc:
        raise CliError(
            f"cannot bind UDP {_format_address(address)}: {exc.strerror or exc}"
        ) from None


# ---------------------------------------------------------------------------------------
# Command line


def register(tools: Subparsers) -> None:
    """Add ``wg-probe`` to ``tunneld debug``."""
    parser = tools.add_parser(
        "wg-probe",
        help="handshake and ping with any standard WireGuard endpoint",
        description=(
            "Speak WireGuard to a peer: with --endpoint, perform the handshake, send "
            "keepalives and (with --address and --ping) ICMP echo requests inside the "
            "tunnel; with --listen, wait for the peer's handshake and answer its pings. "
            "Exits 0 only if a handshake completed (and, with --ping, a reply came back)."
        ),
    )
    parser.add_argument(
        "--key", required=True, type=Path, metavar="KEYFILE", help="our private key (mode 0600)"
    )
    parser.add_argument(
        "--peer", required=True, metavar="PUBKEY", help="the peer's public key (base64)"
    )
    parser.add_argument("--psk", type=Path, metavar="FILE", help="preshared key file (0600)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--endpoint", metavar="HOST:PORT", help="initiate a handshake to this address"
    )
    where.add_argument(
        "--listen", metavar="HOST:PORT", help="wait for the peer's handshake on this address"
    )
    parser.add_argument(
        "--address",
        metavar="ADDR/32",
        help="our IPv4 address inside the tunnel (source of pings; pings to it are answered)",
    )
    parser.add_argument(
        "--ping", metavar="IP", help="send ICMP echo requests to IP (needs --address)"
    )
    parser.add_argument(
        "--count",
        type=_positive_int,
        default=3,
        metavar="N",
        help="pings or keepalives to send; with --listen, echo replies before exiting (default 3)",
    )
    parser.add_argument(
        "--interval",
        type=_non_negative_float,
        default=1.0,
        metavar="S",
        help="seconds between pings or keepalives (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help=(
            f"seconds to wait for the handshake and for each reply (default "
            f"{_DEFAULT_TIMEOUT_INITIATE:g}); with --listen, for the whole run (default "
            f"{_DEFAULT_TIMEOUT_LISTEN:g})"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    options = _options_from_args(args)
    if options.listen is not None:
        report = trio.run(probe_responder, options)
    else:
        report = trio.run(probe_initiator, options)
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.render_text())
    if report.error is not None:
        print(f"tunneld: error: {report.error}", file=sys.stderr)
    return report.exit_status


def _options_from_args(args: argparse.Namespace) -> ProbeOptions:
    private_key = read_key_file(args.key)
    peer = decode_key(args.peer, what="--peer public key")
    preshared_key = read_key_file(args.psk, what="preshared key") if args.psk is not None else None
    address: IPv4Address | None = None
    if args.address is not None:
        try:
            interface = ipaddress.ip_interface(args.address)
        except ValueError:
            raise CliError(
                f"--address {args.address!r}: expected an IPv4 address like 10.0.0.2/32"
            ) from None
        if not isinstance(interface, ipaddress.IPv4Interface):
            raise CliError(f"--address {args.address!r}: only IPv4 is supported")
        address = interface.ip
    ping: IPv4Address | None = None
    if args.ping is not None:
        if args.listen is not None:
            raise CliError("--ping works with --endpoint; with --listen the peer pings us")
        if address is None:
            raise CliError("--ping needs --address (our source address inside the tunnel)")
        try:
            ping = IPv4Address(args.ping)
        except ValueError:
            raise CliError(f"--ping {args.ping!r}: expected an IPv4 address") from None
    if args.listen is not None:
        timeout = args.timeout if args.timeout is not None else _DEFAULT_TIMEOUT_LISTEN
        listen = _resolve("--listen", args.listen)
        return ProbeOptions(
            private_key=private_key,
            peer=peer,
            preshared_key=preshared_key,
            listen=listen,
            address=address,
            count=args.count,
            interval=args.interval,
            timeout=timeout,
        )
    return ProbeOptions(
        private_key=private_key,
        peer=peer,
        preshared_key=preshared_key,
        endpoint=_resolve("--endpoint", args.endpoint),
        address=address,
        ping=ping,
        count=args.count,
        interval=args.interval,
        timeout=args.timeout if args.timeout is not None else _DEFAULT_TIMEOUT_INITIATE,
    )


def _split_host_port(option: str, text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise CliError(f"{option} {text!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise CliError(f"{option} {text!r}: write an IPv6 address in brackets, [ADDR]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise CliError(f"{option} {text!r}: port must be a number from 0 to 65535")
    return host, port


def _resolve(option: str, text: str) -> UdpAddress:
    """A numeric (host, port) for HOST:PORT, resolving a name once (UDP, first answer)."""
    host, port = _split_host_port(option, text)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise CliError(f"{option} {text!r}: cannot resolve {host!r}: {exc.strerror}") from None
    family_address = infos[0][4]
    return str(family_address[0]), int(family_address[1])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value
