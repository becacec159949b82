"""``tunneld bench mux``: goodput on the simulated link, and pure-core throughput.

Two measurements, each with its baseline from the same run:

* goodput of one bulk stream over the deterministic link simulator at 0%, 1% and 5%
  loss with 10 ms and 50 ms RTT, as a fraction of the link rate (the baseline), for
  each congestion controller (the default first; NewReno as the RFC 9002 reference);
* in-process pure-core throughput (two cores handing datagrams to each other, no
  link) against the cost of ChaCha20-Poly1305 encrypt + decrypt of exactly the
  packets that run produced (the ceiling a WireGuard transport would impose).
"""

from __future__ import annotations

import argparse
import math
import random
import time

from tunneld.bench import BenchResult
from tunneld.proto.mux import Connection, MuxConfig, Path, StreamOpened
from tunneld.proto.mux._config import CONGESTION_CONTROLLERS
from tunneld.proto.mux._sim import Link, LinkConfig, Simulation

__all__ = ["add_arguments", "run"]

_PATH = Path("bench")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--link-mbps", type=float, default=10.0, help="simulated link rate (default 10 Mbit/s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="simulated seconds per goodput run"
    )
    parser.add_argument(
        "--core-mb", type=float, default=24.0, help="megabytes moved in the pure-core runs"
    )
    parser.add_argument("--seed", type=int, default=1, help="link simulator seed")


def _goodput(
    loss: float, rtt: float, rate: float, seconds: float, seed: int, cc: str
) -> dict[str, object]:
    config = MuxConfig(idle_timeout=3600.0, congestion_control=cc)
    a = Connection(is_initiator=True, config=config, path=_PATH)
    b = Connection(is_initiator=False, config=config, path=_PATH)
    rng = random.Random(seed)
    # One bandwidth-delay product of queue, a common router sizing.
    queue = max(int(rate * rtt), 16 * config.max_datagram_size)
    link = LinkConfig(loss=loss, delay=rtt / 2, bandwidth=rate, queue_limit=queue)
    sim = Simulation(a, b)
    sim.add_path(_PATH, Link(link, random.Random(rng.random())), Link(link, rng))
    stream_id = a.open_stream("bench")
    chunk = bytes(256 * 1024)
    received = 0
    peer_stream: list[int] = []

    def app() -> bool:
        nonlocal received
        while a.send_stream_data(stream_id, chunk) == len(chunk):
            pass
        while (event := b.next_event()) is not None:
            if isinstance(event, StreamOpened):
                peer_stream.append(event.stream_id)
        if peer_stream:
            while data := b.read_stream(peer_stream[0], 1 << 22)[0]:
                received += len(data)
        return False

    sim.run(seconds, app)
    stats = sim.links[_PATH][0].stats
    # Mathis et al. (1997): Reno-style AIMD under random loss p averages about
    # MSS / RTT * sqrt(3 / 2p); the reference point for the lossy rows.
    mathis = (
        min(1.0, config.max_datagram_size / rtt * math.sqrt(1.5 / loss) / rate) if loss else 1.0
    )
    return {
        "test": "sim goodput",
        "cc": cc,
        "loss": loss,
        "rtt_ms": round(rtt * 1000),
        "link_mbps": round(rate * 8 / 1e6, 3),
        "goodput_mbps": round(received * 8 / seconds / 1e6, 3),
        "goodput_fraction": round(received / (rate * seconds), 4),
        "wire_overhead": round(stats.bytes_delivered / max(received, 1) - 1, 4),
        "reno_bound": round(mathis, 3),
    }


def _core_pass(megabytes: float) -> tuple[float, int, list[bytes]]:
    """Move ``megabytes`` a -> b through two cores; (seconds, bytes, packets sent)."""
    config = MuxConfig(idle_timeout=3600.0, max_congestion_window=64 * 1024 * 1024)
    a = Connection(is_initiator=True, config=config, path=_PATH)
    b = Connection(is_initiator=False, config=config, path=_PATH)
    total = int(megabytes * 1024 * 1024)
    chunk = bytes(1024 * 1024)
    stream_id = a.open_stream("bench")
    packets: list[bytes] = []
    written = received = 0
    now = 0.0
    peer: int | None = None
    started = time.perf_counter()
    while received < total:
        now += 0.0002
        while written < total:
            accepted = a.send_stream_data(stream_id, chunk[: total - written])
            written += accepted
            if accepted == 0:
                break
        for conn in (a, b):
            timer = conn.get_timer()
            if timer is not None and timer <= now:
                conn.handle_timer(now)
        for data, path in a.datagrams_to_send(now, 1000):
            packets.append(data)
            b.receive_datagram(data, path, now)
        if peer is None:
            while (event := b.next_event()) is not None:
                if isinstance(event, StreamOpened):
                    peer = event.stream_id
        if peer is not None:
            while data := b.read_stream(peer, 1 << 24)[0]:
                received += len(data)
        for data, path in b.datagrams_to_send(now, 1000):
            packets.append(data)
            a.receive_datagram(data, path, now)
    return time.perf_counter() - started, received, packets


def _pure_core(megabytes: float) -> dict[str, object]:
    from nacl.bindings import (
        crypto_aead_chacha20poly1305_ietf_decrypt,
        crypto_aead_chacha20poly1305_ietf_encrypt,
    )

    # Best of three for both sides of the comparison, interleaved, so neither noise
    # nor a change of machine load over the run favours one side.
    key = bytes(range(32))
    core_seconds = crypto_seconds = math.inf
    for _ in range(3):
        seconds, received, packets = _core_pass(megabytes / 3)
        core_seconds = min(core_seconds, seconds)
        started = time.perf_counter()
        for counter, packet in enumerate(packets):
            nonce = counter.to_bytes(12, "little")
            sealed = crypto_aead_chacha20poly1305_ietf_encrypt(packet, None, nonce, key)
            crypto_aead_chacha20poly1305_ietf_decrypt(sealed, None, nonce, key)
        crypto_seconds = min(crypto_seconds, time.perf_counter() - started)
    mb = received / 1e6
    return {
        "test": "pure core",
        "cc": MuxConfig().congestion_control,
        "loss": None,
        "rtt_ms": None,
        "goodput_fraction": None,
        "packets": len(packets),
        "mb_per_s": round(mb / core_seconds, 1),
        "ceiling_mb_per_s": round(mb / crypto_seconds, 1),
        "fraction_of_ceiling": round(crypto_seconds / core_seconds, 3),
    }


def run(args: argparse.Namespace) -> BenchResult:
    """Run the goodput grid and the pure-core comparison (about a minute)."""
    rate = args.link_mbps * 1e6 / 8
    rows: list[dict[str, object]] = []
    default = MuxConfig().congestion_control
    controllers = [default, *(cc for cc in CONGESTION_CONTROLLERS if cc != default)]
    for cc in controllers:
        for rtt in (0.010, 0.050):
            for loss in (0.0, 0.01, 0.05):
                rows.append(_goodput(loss, rtt, rate, args.seconds, args.seed, cc))
    rows.append(_pure_core(args.core_mb))
    return BenchResult(
        title=f"mux: goodput on a simulated {args.link_mbps:g} Mbit/s link; pure-core throughput",
        columns=[
            "test",
            "cc",
            "loss",
            "rtt_ms",
            "goodput_mbps",
            "goodput_fraction",
            "reno_bound",
            "wire_overhead",
            "mb_per_s",
            "ceiling_mb_per_s",
            "fraction_of_ceiling",
        ],
        rows=rows,
        notes=[
            "goodput_fraction: application bytes read / (link rate x simulated time), "
            "slow start included; queue = 1 BDP; loss on both directions.",
            "wire_overhead: bytes on the link beyond the goodput (headers, ACKs, resends).",
            "reno_bound: the Mathis model's ceiling for NewReno under that random loss, "
            "as a fraction of the link rate.",
            f"cc: the congestion controller (MuxConfig.congestion_control; {default} is the "
            "default, newreno the RFC 9002 reference); pure core uses the default.",
            "ceiling: ChaCha20-Poly1305 encrypt+decrypt (libsodium) of the same packets.",
        ],
    )
