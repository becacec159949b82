"""The config file's sections: one frozen dataclass per table, one per role.

Each role adds its own section here as it is built; ``config.example.toml`` documents
every key, and a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunneld.config._units import Duration, HostPort

__all__ = ["Config", "ControlConfig", "DaemonConfig", "LogConfig"]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "text", "json"]


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: how every role writes its logs."""

    level: LogLevel = "info"
    # "auto": JSON lines under journald (JOURNAL_STREAM set), key=value text otherwise.
    format: LogFormat = "auto"


def _non_negative(value: Duration) -> None:
    if value.seconds < 0:
        raise ValueError("expected a duration >= 0")


def _positive_duration(value: Duration) -> None:
    if value.seconds <= 0:
        raise ValueError("expected a duration > 0")


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError("expected a number > 0")


def _region(value: int) -> None:
    if not 0 <= value < 2**31:
        raise ValueError("expected an integer 0..2147483647")


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """``[control]``: the control plane (``tunneld control``)."""

    listen: HostPort = HostPort("127.0.0.1", 7420)
    stun: bool = True
    stun_listen: HostPort = HostPort("127.0.0.1", 3478)
    data_dir: Path = Path("/var/lib/tunneld/control")
    public_url: str = ""
    # Paths given as strings: "" means unset (TOML has no null).
    tls_cert: str = ""
    tls_key: str = ""
    derp_key_file: str = ""
    derp_region: int = field(default=1, metadata={"check": _region})
    lost_grace: Duration = field(default=Duration(30.0), metadata={"check": _non_negative})
    revocation_poll: Duration = field(default=Duration(1.0), metadata={"check": _positive_duration})
    update_rate: float = field(default=20.0, metadata={"check": _positive})
    update_burst: float = field(default=200.0, metadata={"check": _positive})
    shutdown_grace: Duration = field(default=Duration(5.0), metadata={"check": _non_negative})


def _socket_mode(value: int) -> None:
    if not 0 <= value <= 0o777:
        raise ValueError("expected a permission mode 0..0o777, e.g. 0o660")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """``[daemon]``: the daemon (``tunneld run``): its local API and tunnel table."""

    # "" means the default: /run/tunneld/tunneld.sock for root, else
    # $XDG_RUNTIME_DIR/tunneld.sock (a user instance).
    socket: str = ""
    socket_group: str = "tunneld"
    socket_mode: int = field(default=0o660, metadata={"check": _socket_mode})
    idle_timeout: Duration = field(default=Duration(300.0), metadata={"check": _non_negative})
    connect_timeout: Duration = field(
        default=Duration(15.0), metadata={"check": _positive_duration}
    )
    # The overlay node: our name ("" = the host name), key, control plane and token.
    name: str = ""
    key_file: Path = Path("/var/lib/tunneld/daemon.key")
    control_url: str = "http://127.0.0.1:7420"
    token_file: str = ""
    derp_region: int = field(default=1, metadata={"check": _region})
    udp_listen: HostPort = HostPort("0.0.0.0", 0)
    shutdown_grace: Duration = field(default=Duration(5.0), metadata={"check": _non_negative})


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config file. Every table is optional; absent tables take their defaults."""

    log: LogConfig = field(default_factory=LogConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
