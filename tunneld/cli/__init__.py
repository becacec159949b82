"""The ``tunneld`` command line: one parser, one module per command group."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from tunneld import __version__
from tunneld.cli import _agent, _bench, _control, _cp, _daemon, _debug, _demo, _exec, _keys, _login
from tunneld.cli._common import CliError
from tunneld.config import ConfigError
from tunneld.keys import BadKeyError
from tunneld.log import setup_logging

__all__ = ["CliError", "build_parser", "main"]

# What ends an interactive command or a server: never left blocked (see ``main``).
_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

# Each module adds its subcommands; order here is the order in --help.
_COMMAND_MODULES = (_demo, _control, _agent, _daemon, _exec, _keys, _debug, _bench, _cp, _login)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``tunneld`` argument parser (also used by docs tests)."""
    parser = argparse.ArgumentParser(
        prog="tunneld",
        description=(
            "One long-lived, WireGuard-compatible encrypted overlay, shared by local "
            "programs and MCP tool calls to reach remote agents."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tunneld {__version__}")
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=None,
        help="log verbosity (default: [log].level from the config, else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("auto", "text", "json"),
        default=None,
        help="key=value text or JSON lines; auto picks JSON under journald (default: auto)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    # A blocked signal is inherited across fork and exec (a parent that spawned us from a
    # thread with SIGINT masked): Ctrl-C and SIGTERM would then stay pending, unseen, and
    # `tunneld cp` ran to the end instead of stopping with 130. Ignored signals (nohup, a
    # background job) are left ignored on purpose: that is the caller's choice.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    parser = build_parser()
    args = parser.parse_args(argv)
    # Interactive commands default to quiet logs; servers default to info.
    setup_logging(
        args.log_level or getattr(args, "default_log_level", "info"), args.log_format or "auto"
    )
    try:
        status: int = args.func(args)
    except (CliError, ConfigError, BadKeyError) as exc:
        print(f"tunneld: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 1)
    except KeyboardInterrupt:
        return 130
    return status
