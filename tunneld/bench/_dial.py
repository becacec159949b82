"""``tunneld bench dial``: a stream through the daemon's warm tunnel vs a fresh overlay per call.

Everything runs on loopback in this process: a control server (coordinator, DERP relay,
STUN), an echo agent, and the daemon serving its local API on a Unix socket.

Shared (what the daemon gives): each call dials ``echo`` through the daemon's socket
(``LocalApiClient.dial``), sends 1 KiB, reads it back and closes; the tunnel stays up
between calls. Per call (what the daemon replaces): each call builds a new overlay node
— a new UDP socket, relay connection, coordinator session and WireGuard handshake —
opens the stream, exchanges the same 1 KiB, closes and tears the node down. The ratio
is per-call / shared.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from tunneld.bench import BenchResult, percentile
from tunneld.bench._control import embedded_control, peer_path
from tunneld.config import DaemonConfig, Duration
from tunneld.control import ServerInfo
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.daemon._client import LocalApiClient
from tunneld.demo import loopback_overlay
from tunneld.net.mux import MuxStream

__all__ = ["add_arguments", "run"]

_PAYLOAD_SIZE = 1024
_AGENT = "bench-agent"
_STEP_TIMEOUT = 30.0
# How long the warm-up waits for the daemon's tunnel to go direct (it does within a
# few probe rounds on loopback); after that the run goes on over the relay and says so.
_DIRECT_TIMEOUT = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tunneld bench dial``."""
    parser.add_argument(
        "--calls", type=int, default=1000, help="calls through the daemon (default 1000)"
    )
    parser.add_argument(
        "--fresh-calls",
        type=int,
        default=100,
        help="calls with a fresh overlay each (default 100; each takes a handshake)",
    )


async def _echo(peer: str, service: str, stream: MuxStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()


async def _exchange(stream: trio.abc.HalfCloseableStream, payload: bytes) -> None:
    await stream.send_all(payload)
    await stream.send_eof()
    received = 0
    while data := await stream.receive_some(65536):
        received += len(data)
    await stream.aclose()
    if received != len(payload):
        raise RuntimeError(f"echo returned {received} bytes, sent {len(payload)}")


async def _shared(client: LocalApiClient, payload: bytes, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        start = trio.current_time()
        with trio.fail_after(_STEP_TIMEOUT):
            await _exchange(await client.dial(_AGENT, "echo"), payload)
        samples.append(trio.current_time() - start)
    return samples


async def _per_call(info: ServerInfo, token: str, payload: bytes, calls: int) -> list[float]:
    samples = []
    for i in range(calls):
        start = trio.current_time()
        node = loopback_overlay(info, f"oneshot-{i}", token)
        with trio.fail_after(_STEP_TIMEOUT):
            async with trio.open_nursery() as nursery:
                await nursery.start(node.serve)
                await node.add_tunnel(_AGENT)
                await _exchange(await node.open_stream(_AGENT, "echo"), payload)
                nursery.cancel_scope.cancel()
        samples.append(trio.current_time() - start)
    return samples


@dataclass(slots=True)
class _Measured:
    shared: list[float]
    per_call: list[float]
    # Process CPU seconds per call (every party runs in this process).
    shared_cpu: float
    per_call_cpu: float
    path: str


async def _measure(
    info: ServerInfo,
    tokens: dict[str, str],
    root: Path,
    payload: bytes,
    args: argparse.Namespace,
) -> _Measured:
    async with trio.open_nursery() as nursery:
        agent = loopback_overlay(info, _AGENT, tokens["agent"], _echo)
        await nursery.start(agent.serve)
        laptop = loopback_overlay(info, "laptop", tokens["user"])
        daemon = Daemon(
            laptop,
            DaemonConfig(socket_group="", idle_timeout=Duration(3600.0)),
            notifier=Notifier({}),
        )
        listener = await open_api_listener(root / "api.sock", mode=0o600)
        await nursery.start(daemon.run, [listener])
        client = LocalApiClient(root / "api.sock")
        # Warm: the first dial sets the tunnel up (coordinator, handshake), then the
        # tunnel goes direct (path probes) as a daemon's long-lived one is. Measured
        # before that, a run was over the relay or direct by luck: the relay path
        # costs a websocket hop through the control server each way, about three
        # times the direct one, and made the shared p50 bimodal from run to run.
        await _shared(client, payload, 3)
        with trio.move_on_after(_DIRECT_TIMEOUT):
            await laptop.wait_direct(_AGENT)
        cpu = time.process_time()
        shared = await _shared(client, payload, args.calls)
        shared_cpu = (time.process_time() - cpu) / args.calls
        path = peer_path(laptop, _AGENT)
        cpu = time.process_time()
        per_call = await _per_call(info, tokens["user"], payload, args.fresh_calls)
        per_call_cpu = (time.process_time() - cpu) / args.fresh_calls
        nursery.cancel_scope.cancel()
    return _Measured(shared, per_call, shared_cpu, per_call_cpu, path)


async def _main(args: argparse.Namespace) -> BenchResult:
    payload = os.urandom(_PAYLOAD_SIZE)
    async with embedded_control(
        "tunneld-bench-dial-", _AGENT, stop_timeout=_STEP_TIMEOUT
    ) as control:
        info, tokens, root = control
        measured = await _measure(info, tokens, root, payload, args)
    shared, per_call = measured.shared, measured.per_call
    row: dict[str, object] = {
        "shared_p50_ms": percentile(shared, 0.5) * 1000,
        "shared_p99_ms": percentile(shared, 0.99) * 1000,
        "per_call_p50_ms": percentile(per_call, 0.5) * 1000,
        "per_call_p99_ms": percentile(per_call, 0.99) * 1000,
        "ratio_p50": percentile(per_call, 0.5) / percentile(shared, 0.5),
        "calls": args.calls,
        "fresh_calls": args.fresh_calls,
        "shared_path": measured.path,
        "shared_cpu_ms": measured.shared_cpu * 1000,
        "per_call_cpu_ms": measured.per_call_cpu * 1000,
    }
    return BenchResult(
        title="dial: open a stream, echo 1 KiB, close — daemon's warm tunnel vs fresh overlay",
        columns=list(row),
        rows=[row],
        notes=[
            "shared: through the daemon's Unix socket on its one warm tunnel (measured"
            " once it is direct; shared_path says what it was at the end); per_call: a"
            " new overlay node (UDP socket, relay, coordinator session, handshake) per"
            " call; ratio_p50 = per_call / shared.",
            "Everything runs in this one process on one trio loop: the control plane,"
            " the echo agent, the daemon and the client (the bench's own dial code for"
            " shared, the fresh node for per_call), so every party's CPU is on the"
            " measured path, as if all shared one core.",
            "shared_cpu_ms / per_call_cpu_ms: this process's CPU time per call over each"
            " loop (all parties, background tasks included). On a loaded machine the"
            " wall-clock p50s stretch with time spent waiting for a core; CPU per call"
            " moves much less, so compare it between runs taken under different load.",
        ],
    )


def run(args: argparse.Namespace) -> BenchResult:
    """Run the benchmark (blocking; starts its own trio run)."""
    if args.calls < 1 or args.fresh_calls < 1:
        raise ValueError("--calls and --fresh-calls must be at least 1")
    return trio.run(_main, args)
