"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
from typing import Any, Protocol

__all__ = ["CliError", "Subparsers"]


class CliError(Exception):
    """A usage or environment problem reported as ``tunneld: error: …`` without a traceback."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Subparsers(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns (argparse keeps the class private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...
