"""The daemon (``tunneld run``): tunnel table, local API, systemd integration.

The pieces here depend on the overlay only through small protocols
(:class:`TunnelBackend`, a ``StreamOpener``), so the real ``Overlay`` plugs in with a
thin adapter.
"""

from __future__ import annotations

from tunneld.daemon._agents import DaemonAgents, ServiceUnavailableError
from tunneld.daemon._directory import AgentDirectory, AgentListing
from tunneld.daemon._events import EventHub
from tunneld.daemon._local_api import (
    DIAL_PROTOCOL,
    DaemonRunningError,
    LocalApi,
    default_socket_path,
    open_api_listener,
)
from tunneld.daemon._mcp_auth import (
    SCOPE_READ,
    SCOPE_WRITE,
    StaticTokenAuthenticator,
    read_token_file,
)
from tunneld.daemon._overlay_backend import OverlayTunnels
from tunneld.daemon._run import Daemon
from tunneld.daemon._systemd import (
    SD_LISTEN_FDS_START,
    ActivatedListener,
    Notifier,
    listen_fds,
    watchdog_interval,
)
from tunneld.daemon._tunnels import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    AgentOfflineError,
    Lease,
    NotPermittedError,
    TunnelBackend,
    TunnelBackendError,
    TunnelError,
    TunnelInfo,
    TunnelState,
    TunnelTable,
    TunnelTableClosedError,
    UnknownAgentError,
    UnreachableError,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DIAL_PROTOCOL",
    "SCOPE_READ",
    "SCOPE_WRITE",
    "SD_LISTEN_FDS_START",
    "ActivatedListener",
    "AgentDirectory",
    "AgentListing",
    "AgentOfflineError",
    "Daemon",
    "DaemonAgents",
    "DaemonRunningError",
    "EventHub",
    "Lease",
    "LocalApi",
    "NotPermittedError",
    "Notifier",
    "OverlayTunnels",
    "ServiceUnavailableError",
    "StaticTokenAuthenticator",
    "TunnelBackend",
    "TunnelBackendError",
    "TunnelError",
    "TunnelInfo",
    "TunnelState",
    "TunnelTable",
    "TunnelTableClosedError",
    "UnknownAgentError",
    "UnreachableError",
    "default_socket_path",
    "listen_fds",
    "open_api_listener",
    "read_token_file",
    "watchdog_interval",
]
