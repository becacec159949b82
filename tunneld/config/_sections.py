"""The config file's sections: one frozen dataclass per table, one per role.

Each role adds its own section here as it is built; ``config.example.toml`` documents
every key, and a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Config", "LogConfig"]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "text", "json"]


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: how every role writes its logs."""

    level: LogLevel = "info"
    # "auto": JSON lines under journald (JOURNAL_STREAM set), key=value text otherwise.
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config file. Every table is optional; absent tables take their defaults."""

    log: LogConfig = field(default_factory=LogConfig)
