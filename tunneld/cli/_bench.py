"""``tunneld bench NAME``: benchmarks with a baseline measured in the same run."""

from __future__ import annotations

import argparse
import json

from tunneld.bench import BENCHMARKS, BenchResult, load_benchmark, render_table
from tunneld.cli._common import Subparsers


def register(sub: Subparsers) -> None:
    listing = "\n".join(f"  {name:<12} {desc}" for name, (_, desc) in sorted(BENCHMARKS.items()))
    bench = sub.add_parser(
        "bench",
        help="run a benchmark (table, or --json)",
        description=(
            "Run a benchmark. Each one measures its own baseline in the same run and "
            "prints ratios against it. `tunneld bench NAME --help` shows its options."
        ),
        epilog=f"benchmarks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("bench_name", metavar="NAME", choices=sorted(BENCHMARKS))
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    bench.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    module = load_benchmark(args.bench_name)
    parser = argparse.ArgumentParser(
        prog=f"tunneld bench {args.bench_name}", description=BENCHMARKS[args.bench_name][1]
    )
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    module.add_arguments(parser)
    options = parser.parse_args(args.bench_args)
    result: BenchResult = module.run(options)
    print(json.dumps(result.rows) if options.json else render_table(result))
    return 0
