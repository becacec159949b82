"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
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
