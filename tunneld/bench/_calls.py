"""``tunneld bench calls``: MCP tool calls per second and latency, two pairs in one run.

Pair 1, the daemon's point — **shared** vs **per_call**. A control plane, an agent and
the daemon (``tunneld.daemon.Daemon`` with its plugins and MCP server) run on loopback
in this process, on the client's trio thread. With ``--processes`` they run as
deployed instead: the control plane (``tunneld.bench._overlay_peer control``), the
agent and the daemon (``tunneld.bench._calls_peer``) each in its own process, the
client (the MCP host) in this one. Both modes always get the same layout, so the
comparison stays like for like. On a busy 2-core machine the process layout is slower
at concurrency 1 (a call waits for three processes to be scheduled in turn) and it
needs free cores to gain at 10 and 100, so the default stays one process. Each
process's CPU ms per call goes in the notes: it moves far less with the machine's
load than calls/s. ``shared``: ``tools/call`` of the
workspace plugin's ``read_file`` (a small file) at the daemon's MCP endpoint; every
call holds a lease on the daemon's one warm tunnel to the agent and speaks on an agent
``rpc`` stream over it, one an earlier call left idle when there is one (as the daemon
always does: :class:`tunneld.daemon.RpcStreamPool`), so a call costs no stream set-up
either. ``per_call``: the
same tool, served by the same MCP server code from the same registry, but each call
builds a fresh overlay node — UDP socket, relay connection, coordinator session,
WireGuard handshake — opens its stream, calls and tears the node down, which is
what ``coder exp mcp server`` does per tool call.

Pair 2, the MCP server itself — **our_server** vs **sdk_server**: a trivial ``echo``
tool on ``tunneld.mcp.McpServer`` (trio + h11) and on the official ``mcp`` SDK's
streamable-HTTP server (``MCPServer`` under uvicorn), each in its own process
(``tunneld.bench._calls_server``) so neither shares a core with the client. Each
row's server CPU time per call (from ``/proc``) goes in the notes: on a loaded box it
says more about the servers' cost than calls/s, which move with the load.

One client drives all four: :class:`tunneld._mcp_client.McpHttpClient`, one MCP session
per server, keep-alive connections, ``C`` tasks each making calls back to back until
the row's count is done. ``calls_per_s`` = calls / wall time of the row.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from tunneld._mcp_client import McpClientError, McpHttpClient
from tunneld.agent import AgentServices
from tunneld.bench import BenchResult, percentile, stop_peer_process
from tunneld.bench._calls_peer import FreshOverlayAgents
from tunneld.bench._calls_server import ECHO_TOOL
from tunneld.bench._control import embedded_control, peer_path
from tunneld.config import AgentConfig, DaemonConfig, Duration, McpConfig, PluginsConfig
from tunneld.control import ServerInfo
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.demo import loopback_overlay, wait_joined
from tunneld.http import HttpServer, Router
from tunneld.mcp import McpServer
from tunneld.net.mux import MuxStream
from tunneld.plugins import PluginManager

__all__ = ["add_arguments", "run"]

_AGENT: Final = "bench-agent"
_STEP_TIMEOUT: Final = 60.0
_FILE_TEXT: Final = "a small file the benchmark reads through the overlay\n" * 4
_WARMUP: Final = 20
# How long shared's warm-up waits for the daemon's tunnel to go direct.
_DIRECT_TIMEOUT: Final = 10.0


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,10,100, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be 1 or more")
    return levels


_MODES: Final = ("shared", "per_call", "our_server", "sdk_server")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _modes(text: str) -> frozenset[str]:
    modes = frozenset(m.strip() for m in text.split(",") if m.strip())
    unknown = modes - set(_MODES)
    if unknown or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(sorted(unknown)) or '(none given)'};"
            f" choose from {', '.join(_MODES)}"
        )
    return modes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tunneld bench calls``."""
    parser.add_argument(
        "--calls",
        type=_positive,
        metavar="N",
        default=400,
        help="calls per row for shared, our_server and sdk_server (default 400)",
    )
    parser.add_argument(
        "--per-call-calls",
        type=_positive,
        metavar="N",
        default=30,
        help=(
            "calls per per_call row (default 30; at least the concurrency, so every task"
            " builds an overlay node at once)"
        ),
    )
    parser.add_argument(
        "--per-call-max-concurrency",
        type=_positive,
        metavar="C",
        default=10,
        help=(
            "highest concurrency to run per_call at (default 10: a hundred overlay nodes"
            " joining at once take minutes on a small machine); higher levels are compared"
            " with per_call's best measured rate"
        ),
    )
    parser.add_argument(
        "--concurrency",
        type=_levels,
        metavar="LEVELS",
        default=(1, 10, 100),
        help="comma-separated concurrency levels (default 1,10,100)",
    )
    parser.add_argument(
        "--server-rounds",
        type=_positive,
        metavar="N",
        default=1,
        help=(
            "rounds per level for our_server and sdk_server, the two taking turns each"
            " round; each row is the median round by calls/s (default 1)"
        ),
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help=(
            "shared and per_call: run the control plane, the agent and the daemon each in"
            " its own process, as deployed (default: all in this process on one trio"
            " thread, with the client)"
        ),
    )
    parser.add_argument(
        "--modes",
        type=_modes,
        metavar="MODES",
        default=frozenset(_MODES),
        help="which modes to run (default: all four)",
    )


# -- the load generator --------------------------------------------------------------


async def _drive(
    call: Callable[[], Awaitable[None]], calls: int, concurrency: int
) -> dict[str, float]:
    """``calls`` calls from ``concurrency`` tasks; the row's rate and percentiles."""
    samples: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            began = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - began)

    started = time.perf_counter()
    try:
        with trio.fail_after(_STEP_TIMEOUT + calls):
            async with trio.open_nursery() as nursery:
                for _ in range(min(concurrency, calls)):
                    nursery.start_soon(worker)
    except BaseExceptionGroup as group:
        # One failed call fails the row: report the first reason, not the group.
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        if isinstance(first, Exception):
            raise first from None
        raise
    wall = time.perf_counter() - started
    return {
        "calls_per_s": len(samples) / wall,
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
    }


def _caller(client: McpHttpClient, tool: str, arguments: dict[str, Any]) -> Callable[[], Any]:
    async def call() -> None:
        result = await client.call_tool(tool, arguments)
        if result.get("isError"):
            raise RuntimeError(f"{tool} failed: {result.get('content')}")

    return call


async def _rows(
    mode: str,
    url: str,
    tool: str,
    arguments: dict[str, Any],
    calls_for: Callable[[int], int],
    levels: tuple[int, ...],
    notes: list[str],
    made: list[int] | None = None,
) -> list[dict[str, object]]:
    """One row per concurrency level; a level that fails is a note, not a row.

    ``made`` (if given) gets the number of calls each level made, warm-up included.
    """
    rows: list[dict[str, object]] = []
    async with McpHttpClient(url) as client:
        call = _caller(client, tool, arguments)
        for concurrency in levels:
            try:
                # Warm: connections for this concurrency exist before the clock starts.
                warm = max(concurrency, min(_WARMUP, calls_for(concurrency)))
                await _drive(call, warm, concurrency)
                measured = await _drive(call, calls_for(concurrency), concurrency)
                if made is not None:
                    made.append(warm + calls_for(concurrency))
            except (trio.TooSlowError, RuntimeError, McpClientError, OSError) as exc:
                notes.append(f"{mode} at c={concurrency} failed: {_describe(exc)}")
                continue
            rows.append({"mode": mode, "concurrency": concurrency, **measured})
    return rows


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__


# -- pair 1: the daemon's shared tunnel vs a fresh overlay per call ----------------------


@asynccontextmanager
async def _peer(
    module: str, role: str, settings: Mapping[str, object] | None, *extra: str
) -> AsyncIterator[dict[str, Any]]:
    """Run ``python -m tunneld.bench.MODULE ROLE``; send ``settings`` (one JSON line on
    stdin), yield the JSON line it prints once ready; on exit close its stdin (it stops)
    and wait for it, killing it after 10 s."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", f"tunneld.bench.{module}", role, *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        if settings is not None:
            await process.stdin.send_all(json.dumps(settings).encode() + b"\n")
        line = await _first_line(process.stdout, f"the {role} process exited before it was ready")
        ready: dict[str, Any] = json.loads(line)
        ready["pid"] = process.pid
        yield ready
    finally:
        await stop_peer_process(process, 10.0)


async def _pair_processes(
    args: argparse.Namespace, modes: set[str], notes: list[str]
) -> list[dict[str, object]]:
    """Pair 1 as deployed: control plane, agent and daemon each in their own process."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    rows: list[dict[str, object]] = []
    async with _peer("_overlay_peer", "control", None, "--max-seconds", "3600") as plane:
        urls = {"coordinate_url": plane["coordinate_url"], "derp_url": plane["derp_url"]}
        agent_settings = {**urls, "token": plane["agent_token"], "text": _FILE_TEXT}
        async with _peer("_calls_peer", "agent", agent_settings, "--log-level", level) as agent:
            arguments = {"agent": _AGENT, "path": agent["path"]}
            daemon_settings = {**urls, "token": plane["client_token"], "path": agent["path"]}
            async with _peer(
                "_calls_peer", "daemon", daemon_settings, "--log-level", level
            ) as daemon:
                notes.append(
                    "shared and per_call: the MCP client (this process), the daemon with"
                    " both MCP servers, the agent and the control plane each run in their"
                    " own process, as deployed; shared ran over the"
                    f" {daemon['path']} path."
                )
                pids = {"daemon": daemon["pid"], "agent": agent["pid"], "control": plane["pid"]}
                if "shared" in modes:
                    made: list[int] = []
                    rows += await _costed(
                        "shared",
                        pids,
                        notes,
                        made,
                        _rows(
                            "shared",
                            daemon["shared_url"],
                            "read_file",
                            arguments,
                            lambda c: args.calls,
                            args.concurrency,
                            notes,
                            made,
                        ),
                    )
                if "per_call" in modes:
                    levels = tuple(
                        c for c in args.concurrency if c <= args.per_call_max_concurrency
                    )
                    made = []
                    rows += await _costed(
                        "per_call",
                        pids,
                        notes,
                        made,
                        _rows(
                            "per_call",
                            daemon["per_call_url"],
                            "read_file",
                            arguments,
                            lambda c: max(args.per_call_calls, c),
                            levels,
                            notes,
                            made,
                        ),
                    )
    return rows


async def _costed(
    mode: str,
    pids: Mapping[str, int],
    notes: list[str],
    made: list[int],
    measure: Awaitable[list[dict[str, object]]],
    *,
    here: str = "client",
) -> list[dict[str, object]]:
    """Run ``measure``; note this process's (``here``: what runs in it) and each of
    ``pids``' CPU ms per call over all its rows (warm-up
    included): unlike calls/s, it hardly moves with the machine's load."""
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    client_before = time.process_time()
    rows = await measure
    calls = sum(made)  # filled in by the rows ``measure`` makes
    if not calls:
        return rows
    parts = [f"{here} {(time.process_time() - client_before) / calls * 1000:.2f}"]
    for name, pid in pids.items():
        after, start = _cpu_seconds(pid), before[name]
        if after is not None and start is not None:
            parts.append(f"{name} {(after - start) / calls * 1000:.2f}")
    notes.append(f"{mode} CPU ms per call (all levels, warm-up included): {', '.join(parts)}")
    return rows


async def _pair_overlay(
    args: argparse.Namespace, modes: set[str], notes: list[str]
) -> list[dict[str, object]]:
    if args.processes:
        return await _pair_processes(args, modes, notes)
    async with embedded_control(
        "tunneld-bench-calls-", _AGENT, stop_timeout=_STEP_TIMEOUT
    ) as control:
        info, tokens, root = control
        return await _measure_overlay(args, modes, info, tokens, root, notes)


async def _measure_overlay(
    args: argparse.Namespace,
    modes: set[str],
    info: ServerInfo,
    tokens: dict[str, str],
    root: Path,
    notes: list[str],
) -> list[dict[str, object]]:
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "small.txt").write_text(_FILE_TEXT)
    services = AgentServices(AgentConfig(roots=(workspace,)))

    async def serve_agent(peer_id: str, service: str, stream: MuxStream) -> None:
        await services.dispatch(service, stream)

    arguments = {"agent": _AGENT, "path": str(workspace / "small.txt")}
    plugins = PluginManager(PluginsConfig())
    daemon = Daemon(
        loopback_overlay(info, "bench-laptop", tokens["user"]),
        DaemonConfig(socket_group="", idle_timeout=Duration(3600.0)),
        notifier=Notifier({}),
        mcp=McpConfig(listen="127.0.0.1:0"),
        plugins=plugins,
    )
    rows: list[dict[str, object]] = []
    agent = loopback_overlay(info, _AGENT, tokens["agent"], serve_agent)
    async with trio.open_nursery() as nursery:
        await nursery.start(services.serve)
        await nursery.start(agent.serve)
        listener = await open_api_listener(root / "api.sock", mode=0o600)
        addresses = await nursery.start(
            functools.partial(daemon.run, [listener], handle_signals=False)
        )
        await wait_joined(agent, daemon.overlay)
        if "read_file" not in plugins.registry.tools:
            raise RuntimeError(
                "the workspace plugin is not installed: pip install -e plugins/tunneld-workspace"
            )
        if "shared" in modes:
            # Warm the daemon's tunnel and let it go direct first, as a daemon's
            # long-lived tunnel is: measured straight after the join, the first rows
            # ran partly over the DERP relay (a websocket hop through the control
            # server each way) and shared was slow or not by luck.
            async with McpHttpClient(str(addresses[-1])) as warm:
                await _caller(warm, "read_file", arguments)()
            with trio.move_on_after(_DIRECT_TIMEOUT):
                await daemon.overlay.wait_direct(_AGENT)
            notes.append(
                "shared and per_call: the MCP client, the daemon (or per_call's MCP"
                " server), the agent and the control plane all run in this one process on"
                " one trio loop, so every party's CPU is on the measured path;"
                f" shared ran over the {peer_path(daemon.overlay, _AGENT)} path."
            )
            made: list[int] = []
            rows += await _costed(
                "shared",
                {},
                notes,
                made,
                _rows(
                    "shared",
                    str(addresses[-1]),
                    "read_file",
                    arguments,
                    lambda c: args.calls,
                    args.concurrency,
                    notes,
                    made,
                ),
                here="all parties",
            )
        if "per_call" in modes:
            fresh = McpServer(
                plugins.registry,
                lambda caller: FreshOverlayAgents(info, tokens["user"]),
                plugin_configs=plugins.configs,
            )
            router = Router()
            fresh.mount(router, "/mcp")
            http = HttpServer(router, direct_streams=True)  # as the daemon's MCP listener
            await nursery.start(fresh.run)
            bound = await nursery.start(http.serve_tcp, "127.0.0.1", 0)
            levels = tuple(c for c in args.concurrency if c <= args.per_call_max_concurrency)
            made = []
            rows += await _costed(
                "per_call",
                {},
                notes,
                made,
                _rows(
                    "per_call",
                    f"http://127.0.0.1:{bound[1]}/mcp",
                    "read_file",
                    arguments,
                    lambda c: max(args.per_call_calls, c),
                    levels,
                    notes,
                    made,
                ),
                here="all parties",
            )
        daemon.stop()
        nursery.cancel_scope.cancel()
    return rows


# -- pair 2: our MCP server vs the SDK's --------------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (Linux ``/proc``), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _first_line(stdout: trio.abc.ReceiveStream, gone: str) -> bytes:
    """The first line a peer process prints (its ready message), within ``_STEP_TIMEOUT``;
    ``RuntimeError(gone)`` if it exits first."""
    line = b""
    with trio.fail_after(_STEP_TIMEOUT):
        while not line.endswith(b"\n"):
            chunk = await stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(gone)
            line += chunk
    return line


@asynccontextmanager
async def _server_process(kind: str) -> AsyncIterator[tuple[str, int]]:
    """Start ``tunneld.bench._calls_server KIND``; yields its MCP URL and pid; stops it on exit."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "tunneld.bench._calls_server", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = await _first_line(process.stdout, f"the {kind} MCP server exited before listening")
        yield f"http://127.0.0.1:{int(line)}/mcp", process.pid
    finally:
        await stop_peer_process(process, 5.0)


async def _pair_servers(
    args: argparse.Namespace, modes: set[str], notes: list[str]
) -> list[dict[str, object]]:
    # Both servers run at once and take turns level by level, so a change in the
    # machine's load during the run hits both alike.
    arguments = {"text": "hello"}
    wanted = [(m, k) for m, k in (("our_server", "ours"), ("sdk_server", "sdk")) if m in modes]
    by_mode: dict[str, list[dict[str, object]]] = {mode: [] for mode, _ in wanted}
    # Server CPU per call, from the server process's own CPU time: unlike calls/s it
    # hardly moves with the box's load, so it says which server does less work.
    cpu: dict[str, list[str]] = {mode: [] for mode, _ in wanted}
    async with AsyncExitStack() as stack:
        servers = {mode: await stack.enter_async_context(_server_process(k)) for mode, k in wanted}
        for level in args.concurrency:
            rounds: dict[str, list[tuple[dict[str, object], float | None]]] = {
                mode: [] for mode, _ in wanted
            }
            for _ in range(args.server_rounds):
                for mode, _ in wanted:
                    url, pid = servers[mode]
                    before = _cpu_seconds(pid)
                    rows = await _rows(
                        mode, url, ECHO_TOOL, arguments, lambda c: args.calls, (level,), notes
                    )
                    after = _cpu_seconds(pid)
                    # _rows warms up before measuring: count those calls too.
                    made = args.calls + max(level, min(_WARMUP, args.calls))
                    per_call = None
                    if before is not None and after is not None:
                        per_call = (after - before) / made * 1000
                    rounds[mode] += [(row, per_call) for row in rows]
            for mode, _ in wanted:
                if not rounds[mode]:
                    continue
                # The median round (by calls/s) stands for the level, whole: its rate,
                # its latencies; CPU per call is the median over the rounds.
                ordered = sorted(rounds[mode], key=lambda r: float(r[0]["calls_per_s"]))  # type: ignore[arg-type]
                by_mode[mode].append(ordered[(len(ordered) - 1) // 2][0])
                costs = sorted(c for _, c in rounds[mode] if c is not None)
                if costs:
                    cpu[mode].append(f"c={level} {costs[(len(costs) - 1) // 2]:.2f}")
    if args.server_rounds > 1:
        notes.append(
            f"our_server, sdk_server: each row is the median of {args.server_rounds} rounds"
            " per level, the servers taking turns every round"
        )
    for mode, _ in wanted:
        if cpu[mode]:
            notes.append(f"{mode} CPU ms per call (server process): {', '.join(cpu[mode])}")
    return [row for mode, _ in wanted for row in by_mode[mode]]


# -- the benchmark ----------------------------------------------------------------------


def _rate(rows: list[dict[str, object]], mode: str, level: int | None) -> float | None:
    """``mode``'s calls/s at ``level``, or its best rate at any level (``None``)."""
    rates = [
        float(row["calls_per_s"])  # type: ignore[arg-type]
        for row in rows
        if row["mode"] == mode and (level is None or row["concurrency"] == level)
    ]
    return max(rates) if rates else None


def _ratios(rows: list[dict[str, object]], top: str, bottom: str, levels: tuple[int, ...]) -> str:
    parts = []
    for level in levels:
        a, b = _rate(rows, top, level), _rate(rows, bottom, level)
        if a is not None and b:
            parts.append(f"c={level} {a / b:.1f}x")
        elif a is not None and (best := _rate(rows, bottom, None)):
            parts.append(f"c={level} {a / best:.1f}x (vs {bottom}'s best rate)")
    return ", ".join(parts)


async def _main(args: argparse.Namespace, modes: set[str]) -> BenchResult:
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    if modes & {"shared", "per_call"}:
        rows += await _pair_overlay(args, modes, failures)
    if modes & {"our_server", "sdk_server"}:
        rows += await _pair_servers(args, modes, failures)
    notes = [
        "shared: read_file through the daemon's MCP endpoint on its one warm tunnel (a"
        " lease per call, agent rpc streams reused between calls as the daemon does);"
        " per_call: the same tool and server code, a fresh overlay node (UDP socket, relay,"
        " coordinator session, handshake) and stream per call. our_server / sdk_server: a"
        " trivial echo tool on tunneld.mcp.McpServer vs the mcp SDK's MCPServer under"
        " uvicorn, each in its own process. Same client for all (keep-alive, one session).",
        "Where each runs: the client is this process (one trio thread); each server is"
        " its own process (ours one trio thread, the SDK's one asyncio loop), started"
        " once and measured in turns level by level; all share the machine's cores, so"
        " calls/s move with its load while server CPU ms per call hardly does.",
    ]
    for top, bottom in (("shared", "per_call"), ("our_server", "sdk_server")):
        ratios = _ratios(rows, top, bottom, args.concurrency)
        if ratios:
            notes.append(f"{top} / {bottom} calls/s: {ratios}")
    notes += failures
    return BenchResult(
        title="calls: MCP tools/call per second and latency",
        columns=["mode", "concurrency", "calls_per_s", "p50_ms", "p99_ms"],
        rows=rows,
        notes=notes,
    )


def run(args: argparse.Namespace) -> BenchResult:
    """Run the benchmark (blocking; starts its own trio run).

    Raises:
        RuntimeError: the workspace plugin (shared, per_call) or the ``mcp`` SDK with
            uvicorn (sdk_server) is not installed.
    """
    modes = set(args.modes)
    if "sdk_server" in modes and not all(
        importlib.util.find_spec(name) for name in ("mcp", "uvicorn")
    ):
        raise RuntimeError(
            "sdk_server needs the official MCP SDK and uvicorn: pip install mcp uvicorn"
            " (or leave it out: --modes shared,per_call,our_server)"
        )
    return trio.run(_main, args, modes)
