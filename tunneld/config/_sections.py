"""The config file's sections: one frozen dataclass per table, one per role.

Each role adds its own section here as it is built; ``config.example.toml`` documents
every key, and a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunneld._address import websocket_base
from tunneld.config._units import ByteSize, Duration, HostPort, parse_host_port

__all__ = [
    "AgentConfig",
    "Config",
    "ControlConfig",
    "DaemonConfig",
    "LogConfig",
    "McpConfig",
    "PluginsConfig",
]

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


def _http_url(value: str) -> None:
    websocket_base(value)  # raises ValueError("expected an http:// or https:// URL")


def _optional_http_url(value: str) -> None:
    if value:
        _http_url(value)


def _region(value: int) -> None:
    if not 0 <= value < 2**31:
        raise ValueError("expected an integer 0..2147483647")


def _resource_urls(values: tuple[str, ...]) -> None:
    for value in values:
        _http_url(value)
        if "#" in value:
            raise ValueError("expected URLs without a fragment")


def _relay_urls(values: tuple[str, ...]) -> None:
    # The coordinator's relay map holds at most 16 relays, ours first.
    if len(values) > 15:
        raise ValueError("expected at most 15 relay URLs")
    for value in values:
        if not value.startswith(("ws://", "wss://")) or len(value) > 512 or "#" in value:
            raise ValueError("expected ws:// or wss:// URLs (at most 512 characters)")


def _queue_depth(value: int) -> None:
    if not 1 <= value <= 4096:
        raise ValueError("expected a number of packets in 1-4096")


def _non_negative_float(value: float) -> None:
    if value < 0:
        raise ValueError("expected a number >= 0")


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """``[control]``: the control plane (``tunneld control``)."""

    listen: HostPort = HostPort("127.0.0.1", 7420)
    stun: bool = True
    stun_listen: HostPort = HostPort("127.0.0.1", 3478)
    data_dir: Path = Path("/var/lib/tunneld/control")
    public_url: str = field(default="", metadata={"check": _optional_http_url})
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
    # OAuth 2.1 authorization server (tunneld.oauth, docs/oauth.md) and browser logins.
    oauth_resources: tuple[str, ...] = field(default=(), metadata={"check": _resource_urls})
    oauth_access_token_ttl: Duration = field(
        default=Duration(3600.0), metadata={"check": _positive_duration}
    )
    oauth_refresh_token_ttl: Duration = field(
        default=Duration(30 * 86400.0), metadata={"check": _positive_duration}
    )
    oauth_registrations_per_hour: float = field(
        default=10.0, metadata={"check": _non_negative_float}
    )
    session_ttl: Duration = field(
        default=Duration(12 * 3600.0), metadata={"check": _positive_duration}
    )
    # Other DERP relays offered to nodes as home relay candidates (ws:// or wss:// URLs).
    relays: tuple[str, ...] = field(default=(), metadata={"check": _relay_urls})
    # Each relay client's sending rate in MiB/s (token bucket, 2 MiB burst); 0: no limit.
    relay_rate_limit: float = field(default=0.0, metadata={"check": _non_negative_float})
    # Packets the relay queues for each receiving client before it drops (announced to
    # nodes, which keep fewer in flight through it). derper's depth is 32.
    relay_queue_packets: int = field(default=96, metadata={"check": _queue_depth})


def _tcp_ports(ports: tuple[int, ...]) -> None:
    if not all(1 <= p <= 65535 for p in ports):
        raise ValueError("expected TCP port numbers in 1-65535")


def _read_size(value: ByteSize) -> None:
    # A read_file answer travels in one agentrpc frame (16 MiB); leave room for the map.
    if not 1 <= value.bytes <= 15 * 2**20:
        raise ValueError('expected a size between 1 and "15MiB"')


def _non_negative_int(value: int) -> None:
    if value < 0:
        raise ValueError("expected a non-negative integer")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """``[agent]``: what ``tunneld agent`` lets callers do on this host.

    Everything is off by default: no file roots, no exec, no writes, no TCP ports.
    """

    # File operations (and exec working directories) are confined to these directories.
    roots: tuple[Path, ...] = ()
    allow_exec: bool = False
    allow_write: bool = False
    allowed_tcp_ports: tuple[int, ...] = field(default=(), metadata={"check": _tcp_ports})
    # Default and maximum time a foreground command may run before its group is killed.
    exec_timeout: Duration = field(default=Duration(300), metadata={"check": _positive_duration})
    max_read_size: ByteSize = field(default=ByteSize(4 * 2**20), metadata={"check": _read_size})
    max_background_processes: int = field(default=16, metadata={"check": _non_negative_int})
    # The overlay node, as in [daemon]: name ("" = the host name), key, control plane and
    # token. An agent token fixes the agent name the coordinator announces.
    name: str = ""
    key_file: Path = Path("/var/lib/tunneld/agent.key")
    control_url: str = field(default="http://127.0.0.1:7420", metadata={"check": _http_url})
    token_file: str = ""
    derp_region: int = field(default=1, metadata={"check": _region})
    udp_listen: HostPort = HostPort("0.0.0.0", 0)
    # Other token sources (at most one of token_file, token_env, token_command).
    token_env: str = ""
    token_command: tuple[str, ...] = ()
    token_command_timeout: Duration = field(
        default=Duration(10.0), metadata={"check": _positive_duration}
    )
    # Read small regular files (<= 64 KiB) on the event loop instead of a worker thread;
    # turn off when the roots are on a network or FUSE file system that can stall.
    inline_reads: bool = True


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
    control_url: str = field(default="http://127.0.0.1:7420", metadata={"check": _http_url})
    token_file: str = ""
    derp_region: int = field(default=1, metadata={"check": _region})
    udp_listen: HostPort = HostPort("0.0.0.0", 0)
    shutdown_grace: Duration = field(default=Duration(5.0), metadata={"check": _non_negative})
    # Other token sources (at most one of token_file, token_env, token_command).
    token_env: str = ""
    token_command: tuple[str, ...] = ()
    token_command_timeout: Duration = field(
        default=Duration(10.0), metadata={"check": _positive_duration}
    )
    # A `tunneld login` file (OAuth refresh token, mode 0600): another token source.
    login_file: str = ""


def _optional_listen(value: str) -> None:
    if value:
        try:
            parse_host_port(value)
        except ValueError:
            raise ValueError('expected HOST:PORT like "127.0.0.1:7421", or "" for none') from None


def _tool_names(names: tuple[str, ...]) -> None:
    from tunneld.mcp import validate_tool_name

    for name in names:
        validate_tool_name(name)


def _request_size(value: ByteSize) -> None:
    if not 1024 <= value.bytes <= 2**30:
        raise ValueError('expected a size between "1KiB" and "1GiB"')


@dataclass(frozen=True, slots=True)
class McpConfig:
    """``[mcp]``: the daemon's MCP server (Streamable HTTP on TCP and at ``/mcp`` on the socket)."""

    # "" serves MCP only on the Unix socket (and through `tunneld mcp`).
    listen: str = field(default="127.0.0.1:7421", metadata={"check": _optional_listen})
    allowed_tools: tuple[str, ...] = field(default=(), metadata={"check": _tool_names})
    instructions: str = ""
    allowed_origins: tuple[str, ...] = ()
    max_request_size: ByteSize = field(
        default=ByteSize(4 * 2**20), metadata={"check": _request_size}
    )
    session_idle_timeout: Duration = field(
        default=Duration(3600.0), metadata={"check": _positive_duration}
    )
    # A file (mode 0600) with one bearer token TCP clients must send; "" = no auth on TCP.
    token_file: str = ""
    # OAuth resource server on the TCP listener (docs/oauth.md): the control plane's
    # issuer URL ("" = off), this endpoint's canonical URL ("" = the bound http URL),
    # the introspection client and its secret file, per-caller agent checks.
    authorization_server: str = field(default="", metadata={"check": _optional_http_url})
    resource: str = field(default="", metadata={"check": _optional_http_url})
    introspection_client_id: str = ""
    introspection_secret_file: str = ""
    introspection_cache: Duration = field(default=Duration(30.0), metadata={"check": _non_negative})
    access_check: bool = True


def _plugin_names(names: tuple[str, ...]) -> None:
    for name in names:
        if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError('expected plugin (entry-point) names like "example"')


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    """``[plugins]``: which tool plugins load, and each one's own ``[plugins.NAME]`` table.

    Every other key of ``[plugins]`` must be a table; it goes to ``tables`` and is
    passed, unchecked, to that plugin's hooks as ``config`` (the plugin validates it).
    """

    enable: tuple[str, ...] = field(default=(), metadata={"check": _plugin_names})
    disable: tuple[str, ...] = field(default=(), metadata={"check": _plugin_names})
    strict: bool = False
    # Filled from the [plugins.NAME] sub-tables, not a key of its own.
    tables: dict[str, dict[str, object]] = field(
        default_factory=dict, metadata={"extra_tables": True}
    )


@dataclass(frozen=True, slots=True)
class Config:
    """The whole config file. Every table is optional; absent tables take their defaults."""

    log: LogConfig = field(default_factory=LogConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    mcp: McpConfig = field(default_factory=McpConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
