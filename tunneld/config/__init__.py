"""Configuration: TOML files loaded into frozen dataclasses, with errors that say where.

>>> load_config(Path("/etc/tunneld/config.toml")).log.level
'info'
"""

from __future__ import annotations

from pathlib import Path

from tunneld.config._load import ConfigError, from_mapping, read_toml
from tunneld.config._sections import (
    AgentConfig,
    Config,
    DaemonConfig,
    LogConfig,
    McpConfig,
    PluginsConfig,
)
from tunneld.config._units import (
    ByteSize,
    Duration,
    HostPort,
    format_duration,
    parse_byte_size,
    parse_duration,
    parse_host_port,
)

__all__ = [
    "AgentConfig",
    "ByteSize",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "Duration",
    "HostPort",
    "LogConfig",
    "McpConfig",
    "PluginsConfig",
    "format_duration",
    "from_mapping",
    "load_config",
    "parse_byte_size",
    "parse_duration",
    "parse_host_port",
]


def load_config(path: Path | None) -> Config:
    """Load ``path`` (or the defaults when ``None``).

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown key, wrong type or bad
            value; the message names the file, the key path and what was expected.
    """
    if path is None:
        return Config()
    return from_mapping(Config, read_toml(path), source=str(path))
