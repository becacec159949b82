"""``tunneld bench throughput``: one overlay stream's bulk MB/s, direct and over the relay.

Two overlay nodes and a control server (coordinator, DERP relay) on loopback; one
stream carries ``--mb`` megabytes to a counting sink that answers at EOF. ``direct``:
both nodes announce their loopback UDP address and the transfer starts once the direct
path is validated and its path MTU search is done (a few round trips on loopback).
``relay``: neither announces any endpoint
(``OverlayConfig(endpoints=())``, no STUN), so every packet goes through DERP.

Layout (``--layout``): ``processes`` (the default) runs the control server, the agent
and the client each in its own process (``tunneld.bench._overlay_peer``), as they run
in real deployments; ``one-process`` runs all three on this process's trio thread
(sender, receiver and relay then share one core: a lower bound, kept for comparison).

The ceiling, measured in the same run and per path: the same number of bytes as
WireGuard transport packets of the size that path carries (one mux datagram plus our
header: 63 KiB + 17 over the relay; on the direct path the datagram size path MTU
discovery settled on, read from the client node's status after the transfer: up to
65,455 + 17 on loopback, 1,200 + 17 before discovery), each encrypted, sent and
received over real loopback UDP and decrypted between a ``WireGuardCore`` pair,
without the mux or trio, in this process on one thread. Each path's fraction is
against the ceiling of its own packets: bigger packets amortize per-packet work, so a
small-packet ceiling would flatter a path that sends big ones (it could even exceed 1).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from tunneld.bench import BenchResult, stop_peer_process
from tunneld.bench._overlay_peer import AGENT, control_plane, datagram_size, node, transfer
from tunneld.control import RelayLimits
from tunneld.keys import generate_private_key
from tunneld.net.overlay import HEADER_SIZE, RELAY_DATAGRAM_SIZE
from tunneld.proto.noise import DataReceived, WireGuardCore

__all__ = ["add_arguments", "run"]

_WALL0 = 1_700_000_000.0
# A peer process: ready lines (imports, control server, node start) and the whole
# transfer are bounded; the processes bound themselves too (--max-seconds).
_READY_WAIT = 60.0
_PEER_MAX_SECONDS = 300.0
_LAYOUTS = ("processes", "one-process", "both")
MIB = 1024 * 1024
# The ceiling is measured at least this many times (before and after the transfers)
# and its median reported: on a shared machine one sample can catch a busy moment.
_CEILING_SAMPLES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mb",
        type=float,
        default=256.0,
        help=(
            "megabytes over the direct path (default 256: about a second at full speed, so"
            " the congestion controller's start-up is a small part of a bulk transfer)"
        ),
    )
    parser.add_argument(
        "--relay-mb",
        type=float,
        default=128.0,
        help="megabytes over the relay (default 128)",
    )
    parser.add_argument(
        "--relay-rate-mib",
        type=float,
        default=None,
        help="the relay's per-client rate limit in MiB/s, as [control] relay_rate_limit "
        "(default: the relay's default, none)",
    )
    parser.add_argument(
        "--direct-datagram",
        type=int,
        default=0,
        help="cap the direct path's mux datagram size (path MTU discovery stops there; "
        "1200: no discovery, as before it existed; default: the overlay's own cap)",
    )
    parser.add_argument(
        "--paths",
        default="direct,relay",
        help="comma-separated paths to measure: direct, relay or both (default "
        "direct,relay); each row's ceiling is still its own packet size's",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="transfers per path, each with fresh node processes; the row is the one "
        "with the median MB/s (default 3: one run moves with what else the machine "
        "does by a third either way)",
    )
    parser.add_argument(
        "--layout",
        choices=_LAYOUTS,
        default="processes",
        help="control, agent and client each in its own process (default), all in this "
        "one process, or both layouts in turn",
    )


class _Peer:
    """One ``tunneld.bench._overlay_peer`` process: JSON lines out, settings in."""

    def __init__(self, role: str, process: trio.Process) -> None:
        self.role = role
        self.process = process
        self._buffer = b""

    async def tell(self, settings: dict[str, object]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(settings).encode() + b"\n")

    async def line(self) -> dict[str, object]:
        """The next JSON line the process prints.

        Raises:
            RuntimeError: it exited first (its stderr, inherited, says why).
        """
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"bench {self.role} process exited without an answer")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        assert isinstance(message, dict)
        return message


@asynccontextmanager
async def _peer(role: str, *options: str) -> AsyncIterator[_Peer]:
    """Start a peer process; on exit close its stdin (it exits) and reap it."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "tunneld.bench._overlay_peer",
            role,
            "--max-seconds",
            str(_PEER_MAX_SECONDS),
            *options,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield _Peer(role, process)
    finally:
        await stop_peer_process(process, 10.0)


_PATHS = ("direct", "relay")
_ROLES = ("control", "agent", "client")
# One measurement: MB/s, the mux datagram size the path used at the end, and (layout
# processes, on Linux) each role's (user, system) CPU seconds during the transfer.
Cpu = dict[str, tuple[float, float]]
Measured = tuple[float, int, Cpu | None]
Measure = Callable[[bool, int], Awaitable[Measured]]


def _cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of process ``pid`` so far (None without ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # utime and stime: fields 14 and 15 of stat(5), the 12th and 13th after "(comm)".
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _cpu_all(pids: dict[str, int]) -> dict[str, tuple[float, float]] | None:
    times = {role: _cpu_seconds(pid) for role, pid in pids.items()}
    if any(t is None for t in times.values()):
        return None
    return {role: t for role, t in times.items() if t is not None}


@asynccontextmanager
async def _processes(relay_rate_mib: float | None, direct_datagram: int) -> AsyncIterator[Measure]:
    """Yields ``measure(direct, size) -> MB/s`` with the control server, the agent and
    the client in three processes (a fresh agent and client per measurement)."""
    options = () if relay_rate_mib is None else ("--relay-rate-mib", str(relay_rate_mib))
    async with _peer("control", *options) as control:
        with trio.fail_after(_READY_WAIT):
            plane = await control.line()
        urls = {
            "coordinate_url": plane["coordinate_url"],
            "derp_url": plane["derp_url"],
            "max_direct_datagram": direct_datagram,
        }

        async def measure(direct: bool, size: int) -> Measured:
            async with _peer("agent") as agent, _peer("client") as client:
                await agent.tell({**urls, "token": plane["agent_token"], "direct": direct})
                with trio.fail_after(_READY_WAIT):
                    await agent.line()
                await client.tell(
                    {**urls, "token": plane["client_token"], "direct": direct, "size": size}
                )
                pids = {
                    "control": control.process.pid,
                    "agent": agent.process.pid,
                    "client": client.process.pid,
                }
                with trio.fail_after(_PEER_MAX_SECONDS + _READY_WAIT):
                    await client.line()  # {"started": true}: the clock starts
                    before = _cpu_all(pids)
                    result = await client.line()
                    after = _cpu_all(pids)
            seconds, datagram = result["seconds"], result["datagram_size"]
            assert isinstance(seconds, float)
            assert isinstance(datagram, int)
            if result["bytes"] != size:
                raise RuntimeError(f"the client reports {result['bytes']} bytes, expected {size}")
            cpu = None
            if before is not None and after is not None:
                cpu = {
                    role: (after[role][0] - before[role][0], after[role][1] - before[role][1])
                    for role in _ROLES
                }
            return size / seconds / 1e6, datagram, cpu

        yield measure


@asynccontextmanager
async def _one_process(
    relay_rate_mib: float | None, direct_datagram: int
) -> AsyncIterator[Measure]:
    """Yields ``measure(direct, size) -> MB/s`` with the control server and both nodes
    on this trio thread."""
    async with control_plane(relay_rate_mib) as plane:
        urls = {
            "coordinate_url": plane["coordinate_url"],
            "derp_url": plane["derp_url"],
            "max_direct_datagram": direct_datagram,
        }

        async def measure(direct: bool, size: int) -> Measured:
            agent = node(
                {**urls, "token": plane["agent_token"], "direct": direct},
                AGENT,
                sink_streams=True,
            )
            client = node(
                {**urls, "token": plane["client_token"], "direct": direct},
                "bench-client",
                sink_streams=False,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(agent.serve)
                await nursery.start(client.serve)
                seconds = await transfer(client, direct=direct, size=size)
                datagram = datagram_size(client)
                nursery.cancel_scope.cancel()
            return size / seconds / 1e6, datagram, None

        yield measure


# path -> (MB/s, its packet bytes, CPU seconds per role or None, every run's MB/s)
Rates = dict[str, tuple[float, int, Cpu | None, list[float]]]


async def _rates(
    layout: str,
    paths: tuple[str, ...],
    sizes: tuple[int, int],
    relay_rate_mib: float | None,
    direct_datagram: int,
    repeat: int,
    ceiling: Callable[[int], None],
) -> Rates:
    """``{path: (MB/s, packet bytes, CPU, runs)}`` in ``layout``, from the median of
    ``repeat`` transfers; ``ceiling(packet bytes)`` samples a path's ceiling after
    each of its transfers (while the nodes' processes are idle)."""
    layouts = {"processes": _processes, "one-process": _one_process}
    rates: Rates = {}
    async with layouts[layout](relay_rate_mib, direct_datagram) as measure:
        for path, direct, size in (("direct", True, sizes[0]), ("relay", False, sizes[1])):
            if path not in paths:
                continue
            runs = []
            for _ in range(repeat):
                runs.append(await measure(direct, size))
                ceiling(runs[-1][1] + HEADER_SIZE)
            runs.sort(key=_rate)
            rate, datagram, cpu = runs[(len(runs) - 1) // 2]  # the median (lower of two)
            rates[path] = (rate, datagram + HEADER_SIZE, cpu, [run[0] for run in runs])
    return rates


def _rate(measured: Measured) -> float:
    return measured[0]


def _ceiling(size: int, packet: int) -> float:
    """MB/s of WireGuard payload bytes: encrypt, loopback UDP send/recv, decrypt."""
    a = WireGuardCore(generate_private_key())
    b = WireGuardCore(generate_private_key())
    a.add_peer(b.public_key)
    b.add_peer(a.public_key)
    wall = _WALL0 + 10.0
    a.initiate(b.public_key, 10.0, wall)
    for _ in range(2):
        for out in a.datagrams_to_send(10.0):
            b.receive_datagram(out.data, b"a", 10.0, wall)
        for out in b.datagrams_to_send(10.0):
            a.receive_datagram(out.data, b"b", 10.0, wall)
    while a.next_event() is not None or b.next_event() is not None:
        pass
    peer = b.public_key
    payload = os.urandom(packet)
    count = max(1, size // packet)
    batch = 64  # stay well inside the receive buffer: loss would flatter the ceiling
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
    ):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5.0)
        target = rx.getsockname()
        received = 0
        start = time.perf_counter()
        done = 0
        while done < count:
            n = min(batch, count - done)
            for _ in range(n):
                a.send(peer, payload, 11.0, wall)
            for out in a.datagrams_to_send(11.0):
                tx.sendto(out.data, target)
            for _ in range(n):
                data = rx.recv(65536)
                b.receive_datagram(data, b"a", 11.0, wall)
                while (event := b.next_event()) is not None:
                    if isinstance(event, DataReceived):
                        received += len(event.payload)
            done += n
        elapsed = time.perf_counter() - start
    if received < count * packet:
        raise RuntimeError(f"ceiling: received {received} of {count * packet} payload bytes")
    return count * packet / elapsed / 1e6


def _paths(text: str) -> tuple[str, ...]:
    paths = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in paths if p not in _PATHS]
    if unknown or not paths:
        raise SystemExit(f"--paths: expected a comma-separated subset of direct,relay: {text!r}")
    return paths


def run(args: argparse.Namespace) -> BenchResult:
    paths = _paths(args.paths)
    if args.repeat < 1:
        raise SystemExit(f"--repeat: expected at least 1 transfer per path, got {args.repeat}")
    direct_size = int(args.mb * 1e6)
    relay_size = int(args.relay_mb * 1e6)
    # Ceiling samples by packet bytes: one after every transfer (one run of the
    # ceiling moved by a third either way with the machine, as a transfer does). The
    # relay's packet size is known up front; the direct path's only once a transfer
    # is over (path MTU discovery picks it). Topped up to _CEILING_SAMPLES at the end.
    ceilings: dict[int, list[float]] = {}

    def sample(packet: int) -> None:
        ceilings.setdefault(packet, []).append(_ceiling(direct_size, packet))

    if "relay" in paths:
        sample(RELAY_DATAGRAM_SIZE + HEADER_SIZE)
    layouts = ["processes", "one-process"] if args.layout == "both" else [args.layout]
    measured = []
    for layout in layouts:
        rates = trio.run(
            _rates,
            layout,
            paths,
            (direct_size, relay_size),
            args.relay_rate_mib,
            args.direct_datagram,
            args.repeat,
            sample,
        )
        measured.append((layout, rates))
    for packet, samples in ceilings.items():
        while len(samples) < _CEILING_SAMPLES:
            samples.append(_ceiling(direct_size, packet))
    ceiling = {packet: statistics.median(samples) for packet, samples in ceilings.items()}
    rows: list[dict[str, object]] = []
    cpu_notes: list[str] = []
    for layout, rates in measured:
        for path, size in (("direct", direct_size), ("relay", relay_size)):
            if path not in rates:
                continue
            rate, packet, cpu, runs = rates[path]
            row: dict[str, object] = {
                "path": path,
                "layout": layout,
                "mb": size / 1e6,
                "packet_bytes": packet,
                "mb_per_s": rate,
                "ceiling_mb_per_s": ceiling[packet],
                "fraction": rate / ceiling[packet],
                "cpu_ms_per_mb": None,
                "runs_mb_per_s": runs,
            }
            if cpu is not None:
                ms = 1000 / (size / 1e6)
                per_mb = {role: sum(cpu[role]) * ms for role in _ROLES}
                row["cpu_ms_per_mb"] = sum(per_mb.values())
                row.update({f"cpu_ms_per_mb_{role}": per_mb[role] for role in _ROLES})
                cpu_notes.append(
                    f"{path}: "
                    + ", ".join(
                        f"{role} {per_mb[role]:.2f} ({cpu[role][1] * ms:.2f} system)"
                        for role in _ROLES
                    )
                    + " ms/MB, i.e. "
                    + ", ".join(f"{role} {per_mb[role] * rate / 10:.0f}%" for role in _ROLES)
                    + " of a core"
                )
            rows.append(row)
    limit = (
        RelayLimits().bytes_per_second if args.relay_rate_mib is None else args.relay_rate_mib * MIB
    )
    relay_ceiling = ceiling.get(RELAY_DATAGRAM_SIZE + HEADER_SIZE)
    if limit and relay_ceiling:
        relay_note = (
            f"relay rate limit: {limit / MIB:g} MiB/s per client (the relay's token bucket; "
            "the node keeps under 90% of it), i.e. at most "
            f"{0.9 * limit / 1e6 / relay_ceiling:.2f} of the "
            "relay's ceiling; "
            "--relay-rate-mib 0 lifts it."
        )
    elif limit:
        relay_note = f"relay rate limit: {limit / MIB:g} MiB/s per client."
    else:
        relay_note = "relay rate limit: none (--relay-rate-mib 0)."
    return BenchResult(
        title="overlay throughput: one stream between two overlay nodes on loopback",
        columns=[
            "path",
            "layout",
            "mb",
            "packet_bytes",
            "mb_per_s",
            "ceiling_mb_per_s",
            "fraction",
            "cpu_ms_per_mb",
        ],
        rows=rows,
        notes=[
            "mb_per_s: stream bytes from the first send to the sink's answer after EOF; the"
            " defaults (--mb 256, --relay-mb 128) last about a second per path, so the"
            " congestion controller's start-up is a small part (at 8 MB it was most of it)."
            f" Each row is the median of --repeat {args.repeat} transfers, each with fresh"
            " agent and client processes (runs_mb_per_s lists them all): "
            + "; ".join(
                f"{layout} {path} {', '.join(f'{run:.0f}' for run in rates[path][3])} MB/s"
                for layout, rates in measured
                for path in rates
            )
            + ".",
            "ceiling: per path, WireGuard payloads of that path's packet_bytes (one mux "
            "datagram plus our header): encrypt + loopback UDP send/recv + decrypt, one "
            "thread, no mux, no trio; the median of the samples taken before (relay) and "
            "after each transfer: "
            + "; ".join(
                f"{packet} B {', '.join(f'{c:.3g}' for c in samples)} MB/s"
                for packet, samples in ceilings.items()
            )
            + ".",
            "direct: the clock starts once the path is validated and its path MTU search "
            "is done (set-up, like the validation). "
            "direct packet_bytes: the mux datagram size the direct path used at the end of "
            "the transfer (path MTU discovery's result, from the client node's status) plus "
            "our header; the ceiling is measured at that same size, so bigger datagrams "
            "count only for what they save us beyond what they save the ceiling.",
            "relay: no endpoints announced, every packet through the control server's DERP relay.",
            relay_note,
            "layout processes: control server (coordinator + DERP relay), agent node (sink) "
            "and client node (sender) each in its own process, as deployed; the bench "
            "process only waits.",
            "layout one-process: all three on one trio thread (one core for sender, "
            "receiver and relay).",
            "cpu_ms_per_mb (layout processes, Linux): CPU milliseconds (user + system, "
            "from /proc/PID/stat) the control server, agent and client processes spent "
            "per MB while the clock ran, summed; it moves less with other load than "
            "mb_per_s. Per process: "
            + ("; ".join(cpu_notes) if cpu_notes else "not measured")
            + ".",
            f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end "
            "(other processes' load lowers mb_per_s and the ceiling alike, but not equally).",
        ],
    )
