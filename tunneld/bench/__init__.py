"""Benchmarks run by ``tunneld bench NAME``.

Every benchmark measures its baseline in the same run and reports ratios against
it, so numbers from different machines compare. A benchmark is a module with
``add_arguments(parser)`` and ``run(args) -> BenchResult``; list it in ``BENCHMARKS``
with a one-line description. Rows are plain dicts, printed as a table or, with ``--json``, as a JSON
list.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

import trio

__all__ = [
    "BENCHMARKS",
    "BenchResult",
    "load_benchmark",
    "percentile",
    "render_table",
    "stop_peer_process",
]

# name -> (module, one-line description); modules are imported only when run, so one
# benchmark's dependencies never slow the CLI or another benchmark.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "derp": (
        "tunneld.bench._derp",
        "DERP relay round trips and streaming vs a WebSocket echo",
    ),
    "http": (
        "tunneld.bench._http",
        "tunneld.http: keep-alive requests/s and WebSocket echo vs raw loopback baselines",
    ),
    "noise": (
        "tunneld.bench._noise",
        "WireGuard core: handshakes/s and transport MB/s vs raw AEAD",
    ),
    "mux": ("tunneld.bench._mux", "mux streams: simulated-link goodput, pure-core vs AEAD"),
    "dial": ("tunneld.bench._dial", "stream open + 1 KiB + close: daemon tunnel vs fresh overlay"),
    "throughput": (
        "tunneld.bench._throughput",
        "overlay stream MB/s, direct UDP and relay, vs WireGuard + loopback UDP ceiling",
    ),
    "calls": (
        "tunneld.bench._calls",
        "MCP tool calls/s: daemon's shared tunnel vs fresh overlay per call; ours vs SDK server",
    ),
}


@dataclass
class BenchResult:
    """What a benchmark reports: a title, ordered columns and one dict per row."""

    title: str
    columns: Sequence[str]
    rows: list[dict[str, object]]
    notes: list[str] = field(default_factory=list)


def load_benchmark(name: str) -> ModuleType:
    """Import the module of benchmark ``name``; raises KeyError for an unknown one."""
    return importlib.import_module(BENCHMARKS[name][0])


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) of ``samples`` with linear interpolation."""
    if len(samples) == 1:
        return samples[0]
    cuts = statistics.quantiles(samples, n=1000, method="inclusive")
    index = min(max(round(fraction * 1000) - 1, 0), len(cuts) - 1)
    return cuts[index]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def render_table(result: BenchResult) -> str:
    """The result as an aligned plain-text table with its title and notes."""
    header = list(result.columns)
    body = [[_cell(row.get(col)) for col in header] for row in result.rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)
    ]
    lines = [result.title, ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body)
    if result.notes:
        lines.append("")
        lines.extend(result.notes)
    return "\n".join(lines)


async def stop_peer_process(process: trio.Process, grace: float) -> None:
    """End a benchmark's peer process: close its stdin (a peer exits when stdin closes),
    wait up to ``grace`` seconds, then kill it. Shielded: it runs in ``finally`` blocks,
    also when the benchmark is being cancelled."""
    with trio.CancelScope(shield=True):
        if process.stdin is not None:
            await process.stdin.aclose()
        with trio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
