"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any, Protocol

from tunneld.config import LogConfig
from tunneld.log import setup_logging

__all__ = ["CliError", "Subparsers", "apply_log_config"]


class CliError(Exception):
    """A usage or environment problem reported as ``tunneld: error: …`` without a traceback."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns (argparse keeps the class private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def apply_log_config(args: argparse.Namespace, log: LogConfig) -> None:
    """Re-install logging from the config's ``[log]``; command-line flags still win."""
    setup_logging(args.log_level or log.level, args.log_format or log.format)


def lazy_handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command handler that imports ``module`` only when the command runs.

    Every ``tunneld`` invocation builds the whole parser; a command module that imports
    its stack (the control server, the overlay) at the top would make every other
    command pay for it — `tunneld dial` runs once per ssh connection.
    """

    def handler(args: argparse.Namespace) -> int:
        run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return run(args)

    return handler
