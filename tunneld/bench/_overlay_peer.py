"""One process of ``tunneld bench throughput``: the control plane, the agent or the client.

``python -m tunneld.bench._overlay_peer control|agent|client`` runs one role in its own
process, as real deployments do (the control server, an agent and a client node never
share a process, let alone one trio thread):

* ``control`` — a control server (coordinator and DERP relay) on loopback with a fresh
  SQLite store in a temporary directory; prints one JSON line ``{"coordinate_url",
  "derp_url", "agent_token", "client_token"}`` once it serves. ``--relay-rate-mib R``
  sets the relay's per-client rate limit (0: none; default: the relay's own default).
* ``agent`` — an overlay node named ``bench-agent`` whose streams go to a counting sink
  (it answers the byte count at EOF); prints ``{"udp": "HOST:PORT"}`` once it runs.
* ``client`` — an overlay node that opens one stream to ``bench-agent``'s sink (after
  the direct path is validated and its path MTU search is done, for ``direct``),
  prints ``{"started": true}`` just before its first send, sends ``size`` bytes, sends
  EOF and waits for the count; prints ``{"seconds": S, "bytes": N, "datagram_size": D}`` (first
  send to the answer; D: the mux datagram size the peer's path used at the end, as the
  client's status says: what path MTU discovery found on a direct path).

``agent`` and ``client`` read their settings as one JSON line on stdin
(``coordinate_url``, ``derp_url``, ``token``, ``direct``, optionally
``max_direct_datagram``, and ``size`` for the client):
tokens never go on a command line. Every role exits when its stdin closes (the
benchmark holds the pipe; if it dies the peers go too), the client also once it has
printed its result, and every role after ``--max-seconds`` (default 300) at the latest.

With ``TUNNELD_BENCH_PROFILE=DIR`` each process writes a cProfile dump of its trio run
to ``DIR/ROLE-PID.prof`` (for finding the hot path; not used by the benchmark itself).
With ``TUNNELD_BENCH_TRACE=DIR`` the client writes ``DIR/client-PID.jsonl``: every 5 ms
its mux's congestion window, bytes in flight, RTT estimates, flow-control credit and
send buffer (``t``, ``cwnd``, ``in_flight``, ``srtt``, ``latest_rtt``, ``min_rtt``,
``relay_dropped``, ``send_buffered``, ``conn_credit``, ``stream_credit``, ``unsent``), and the
control role writes ``DIR/control-PID.json`` with the relay's counters at exit (for
finding where a transfer waits; not used by the benchmark itself).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio

from tunneld.config import Duration, HostPort
from tunneld.config._sections import ControlConfig
from tunneld.control import (
    ControlServer,
    DerpRelay,
    RelayFactory,
    RelayLimits,
    SqliteStore,
    default_relay_factory,
    default_stun_serve,
    new_token,
)
from tunneld.keys import generate_private_key
from tunneld.log import setup_logging
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import LinkState, Overlay, OverlayConfig, PeerStatus

__all__ = [
    "AGENT",
    "CHUNK",
    "control_plane",
    "datagram_size",
    "main",
    "node",
    "sink",
    "transfer",
]

AGENT = "bench-agent"
CHUNK = 64 * 1024
# Peer discovery, the handshake and (direct) path validation, each bounded.
SETUP_WAIT = 30.0


async def sink(peer: str, service: str, stream: MuxStream) -> None:
    """Count a stream's bytes; at EOF answer the count (ASCII) and close."""
    total = 0
    while data := await stream.receive_some(CHUNK):
        total += len(data)
    await stream.send_all(str(total).encode())
    await stream.send_eof()


def node(settings: dict[str, object], name: str, *, sink_streams: bool) -> Overlay:
    """A loopback overlay node; ``direct`` False announces no endpoint (relay only)."""
    token = str(settings["token"])

    async def provide() -> str:
        return token

    config = OverlayConfig(
        name=name,
        private_key=generate_private_key(),
        coordinate_url=str(settings["coordinate_url"]),
        derp_url=str(settings["derp_url"]),
        udp_host="127.0.0.1",
        endpoints=None if settings["direct"] else (),
        stun=None,
    )
    largest = settings.get("max_direct_datagram")
    if isinstance(largest, int) and largest > 0:
        # --direct-datagram: a cap on path MTU discovery (its base size: none at all).
        config = replace(
            config,
            max_direct_datagram=largest,
            pmtu_discovery=largest > config.mux.max_datagram_size,
        )
    return Overlay(config, provide, on_stream=sink if sink_streams else None)


async def transfer(
    client: Overlay, *, direct: bool, size: int, on_start: Callable[[], None] | None = None
) -> float:
    """Seconds for ``size`` bytes through one stream to the agent's sink, from the first
    send to the sink's answer after EOF (``on_start()`` runs just before the first send).

    Raises:
        TimeoutError: the peer, its stream or the direct path did not come in time.
        RuntimeError: the sink counted another number of bytes.
    """
    await client.add_tunnel(AGENT)
    with trio.fail_after(SETUP_WAIT):
        stream = await client.open_stream(AGENT, "sink")
        if direct:
            await client.wait_direct(AGENT)
            # As the path's validation, its path MTU search (a few round trips on
            # loopback) is set-up, not transfer: the clock starts at the size it found.
            await client.wait_path_mtu(AGENT)
    block = os.urandom(CHUNK)
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    sent = 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        await stream.send_all(piece)
        sent += len(piece)
    await stream.send_eof()
    answer = b""
    while data := await stream.receive_some():
        answer += data
    elapsed = time.perf_counter() - start
    if int(answer) != size:
        raise RuntimeError(f"the sink counted {answer!r} bytes, expected {size}")
    await stream.aclose()
    return elapsed


def _peer_status(client: Overlay) -> PeerStatus:
    peers = client.status()["peers"]
    assert isinstance(peers, list)
    for peer in peers:
        if isinstance(peer, PeerStatus) and peer.name == AGENT:
            return peer
    raise RuntimeError(f"the client has no peer {AGENT!r}")


def datagram_size(client: Overlay) -> int:
    """The mux datagram size ``client`` sends the agent with now (its PeerStatus)."""
    return _peer_status(client).datagram_size


_TRACE_PERIOD = 0.005


async def _trace(client: Overlay, path: Path) -> None:
    """Sample the client's mux to the agent every ``_TRACE_PERIOD`` into ``path``
    (JSON lines) until cancelled. Diagnostics: reads the mux core's loss recovery."""
    start = trio.current_time()
    with path.open("w") as out:
        while True:
            await trio.sleep(_TRACE_PERIOD)
            # The agent is the client's only peer.
            link = next(iter(client._peers.values()), None)
            if link is None:
                continue
            core = link.mux.core
            recovery = core._recovery
            streams = list(core._streams.values())
            stream = streams[-1] if streams else None
            sample: dict[str, object] = {
                "t": round(trio.current_time() - start, 4),
                "cwnd": recovery.cwnd,
                "in_flight": recovery.bytes_in_flight,
                "srtt": round(recovery.smoothed_rtt * 1000, 3),
                "latest_rtt": round(recovery.latest_rtt * 1000, 3),
                "min_rtt": round(recovery.min_rtt * 1000, 3),
                "relay_dropped": client.relay_dropped,
                "send_buffered": core.send_buffered,
                "conn_credit": core._max_data_remote - core._data_sent,
            }
            if stream is not None:
                sample["stream_credit"] = stream.max_data_remote - stream.next_new
                sample["unsent"] = stream.send_end - stream.next_new
            out.write(json.dumps(sample) + "\n")


def _trace_dir() -> Path | None:
    found = os.environ.get("TUNNELD_BENCH_TRACE")
    return Path(found) if found else None


def _say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# stdin is read with os.read on fd 0, not sys.stdin.buffer: a thread abandoned while
# blocked in BufferedReader.read holds the reader's lock, and the interpreter's shutdown
# then dies on it ("Fatal Python error: _enter_buffered_busy").
def _read_until_eof() -> None:
    while os.read(0, 4096):
        pass


def _read_line() -> bytes:
    """One line from fd 0 (the benchmark writes one settings line, then nothing)."""
    line = b""
    while b"\n" not in line:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        line += chunk
    return line


async def _stdin_closed() -> None:
    await trio.to_thread.run_sync(_read_until_eof, abandon_on_cancel=True)


async def _cancel_when_stdin_closes(scope: trio.CancelScope) -> None:
    await _stdin_closed()
    scope.cancel()


async def _settings() -> dict[str, object]:
    line = await trio.to_thread.run_sync(_read_line, abandon_on_cancel=True)
    try:
        settings = json.loads(line)
    except ValueError as exc:
        raise SystemExit(f"stdin: expected one JSON line of settings: {exc}") from None
    if not isinstance(settings, dict):
        raise SystemExit("stdin: the settings line must be a JSON object")
    return settings


def relay_factory(rate_mib: float | None) -> RelayFactory:
    """The default relay, or (``rate_mib`` given) one whose per-client token bucket
    allows ``rate_mib`` MiB/s (0: no limit); every other limit stays the default."""
    if rate_mib is None:
        return default_relay_factory()
    limits = RelayLimits(bytes_per_second=int(rate_mib * 1024 * 1024))

    def build(private_key: bytes, authorize: Callable[[bytes], Awaitable[bool]]) -> DerpRelay:
        return DerpRelay(private_key, authorize=authorize, limits=limits)

    return build


@asynccontextmanager
async def control_plane(
    relay_rate_mib: float | None = None,
    *,
    on_stop: Callable[[ControlServer], None] | None = None,
) -> AsyncIterator[dict[str, str]]:
    """A control server (coordinator and DERP relay; see ``relay_factory`` for
    ``relay_rate_mib``) on loopback with a user and two tokens; yields
    ``coordinate_url``, ``derp_url``, ``agent_token``, ``client_token``. Shut down
    on exit (``on_stop(server)`` first, e.g. to read its relay's counters)."""
    with tempfile.TemporaryDirectory(prefix="tunneld-bench-") as tmp:
        data_dir = Path(tmp)
        store = await SqliteStore.open(data_dir / "control.db")
        config = replace(
            ControlConfig(),
            listen=HostPort("127.0.0.1", 0),
            stun_listen=HostPort("127.0.0.1", 0),
            data_dir=data_dir,
            shutdown_grace=Duration(0.5),
        )
        server = ControlServer(
            config,
            store,
            relay_factory=relay_factory(relay_rate_mib),
            stun_serve=default_stun_serve(),
        )
        try:
            async with trio.open_nursery() as nursery:
                info = await nursery.start(server.serve)
                now = time.time()
                await store.add_user("bench", None, now)
                agent_token, client_token = new_token(), new_token()
                await store.add_token(
                    agent_token.id, "bench", AGENT, agent_token.secret_hash, now, None
                )
                await store.add_token(
                    client_token.id, "bench", None, client_token.secret_hash, now, None
                )
                yield {
                    "coordinate_url": info.coordinate_url,
                    "derp_url": info.derp_url,
                    "agent_token": agent_token.value,
                    "client_token": client_token.value,
                }
                if on_stop is not None:
                    on_stop(server)
                server.shutdown()
                with trio.move_on_after(5):
                    await server.stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            await store.aclose()


def _write_relay_stats(server: ControlServer) -> None:
    trace = _trace_dir()
    relay = server.relay
    if trace is None or relay is None:
        return
    stats = relay.stats
    (trace / f"control-{os.getpid()}.json").write_text(
        json.dumps(
            {
                "packets_relayed": stats.packets_relayed,
                "bytes_relayed": stats.bytes_relayed,
                "drops": stats.drops,
            }
        )
    )


async def _control(relay_rate_mib: float | None) -> None:
    async with control_plane(relay_rate_mib, on_stop=_write_relay_stats) as plane:
        _say(dict(plane))
        await _stdin_closed()


async def _agent() -> None:
    settings = await _settings()
    agent = node(settings, AGENT, sink_streams=True)
    async with trio.open_nursery() as nursery:
        udp = await nursery.start(agent.serve)
        # Ready once the relay admitted us, i.e. the coordinator has registered our
        # node: a client started earlier would ask for a tunnel to a name the
        # coordinator does not know yet, and wait for it in vain (the bench's
        # "client process exited without an answer" under load).
        with trio.fail_after(SETUP_WAIT):
            while agent.relay_state is not LinkState.CONNECTED:  # noqa: ASYNC110
                await trio.sleep(0.01)
        _say({"udp": f"{udp[0]}:{udp[1]}"})
        await _stdin_closed()
        nursery.cancel_scope.cancel()


async def _client() -> None:
    settings = await _settings()
    size = settings["size"]
    if not isinstance(size, int) or size < 0:
        raise SystemExit("stdin: size must be a non-negative integer")
    client = node(settings, "bench-client", sink_streams=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_stdin_closes, nursery.cancel_scope)
        await nursery.start(client.serve)
        trace = _trace_dir()
        if trace is not None:
            nursery.start_soon(_trace, client, trace / f"client-{os.getpid()}.jsonl")
        # "started": the benchmark samples every process's CPU time from here.
        seconds = await transfer(
            client,
            direct=bool(settings["direct"]),
            size=size,
            on_start=lambda: _say({"started": True}),
        )
        _say({"seconds": seconds, "bytes": size, "datagram_size": datagram_size(client)})
        nursery.cancel_scope.cancel()


ROLES = ("agent", "client", "control")


async def _bounded(args: argparse.Namespace) -> None:
    with trio.move_on_after(args.max_seconds) as scope:
        if args.role == "control":
            await _control(args.relay_rate_mib)
        elif args.role == "agent":
            await _agent()
        else:
            await _client()
    if scope.cancelled_caught:
        raise SystemExit(f"gave up after {args.max_seconds} s")


def main(argv: list[str]) -> int:
    """Run one role until it is done, stdin closes or ``--max-seconds`` pass."""
    parser = argparse.ArgumentParser(prog="python -m tunneld.bench._overlay_peer")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument(
        "--relay-rate-mib",
        type=float,
        default=None,
        help="control: the relay's per-client rate limit in MiB/s (0: none; default: "
        "the relay's default)",
    )
    args = parser.parse_args(argv)
    setup_logging("warning")
    profile_dir = os.environ.get("TUNNELD_BENCH_PROFILE")
    if not profile_dir:
        trio.run(_bounded, args)
        return 0
    import cProfile

    # CPU time, not wall time: on a shared machine other processes' turns would
    # otherwise be charged to whatever function was running when we were preempted.
    profiler = cProfile.Profile(time.process_time)
    try:
        profiler.runcall(trio.run, _bounded, args)
    finally:
        profiler.dump_stats(Path(profile_dir) / f"{args.role}-{os.getpid()}.prof")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
