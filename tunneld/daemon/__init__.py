"""The daemon (``tunneld run``): tunnel table, local API, systemd integration.

The pieces here depend on the overlay only through small protocols
(:class:`TunnelBackend`, a ``StreamOpener``), so the real ``Overlay`` plugs in with a
thin adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunneld._lazy import lazy_exports

if TYPE_CHECKING:
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
    from tunneld.daemon._rpc_pool import RpcStreamPool
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
    "RpcStreamPool",
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

_EXPORTS = {
    "ActivatedListener": "_systemd",
    "AgentDirectory": "_directory",
    "AgentListing": "_directory",
    "AgentOfflineError": "_tunnels",
    "DEFAULT_CONNECT_TIMEOUT": "_tunnels",
    "DEFAULT_IDLE_TIMEOUT": "_tunnels",
    "DIAL_PROTOCOL": "_local_api",
    "Daemon": "_run",
    "DaemonAgents": "_agents",
    "DaemonRunningError": "_local_api",
    "EventHub": "_events",
    "Lease": "_tunnels",
    "LocalApi": "_local_api",
    "NotPermittedError": "_tunnels",
    "Notifier": "_systemd",
    "OverlayTunnels": "_overlay_backend",
    "SCOPE_READ": "_mcp_auth",
    "SCOPE_WRITE": "_mcp_auth",
    "SD_LISTEN_FDS_START": "_systemd",
    "ServiceUnavailableError": "_agents",
    "StaticTokenAuthenticator": "_mcp_auth",
    "TunnelBackend": "_tunnels",
    "TunnelBackendError": "_tunnels",
    "TunnelError": "_tunnels",
    "TunnelInfo": "_tunnels",
    "TunnelState": "_tunnels",
    "TunnelTable": "_tunnels",
    "TunnelTableClosedError": "_tunnels",
    "UnknownAgentError": "_tunnels",
    "UnreachableError": "_tunnels",
    "default_socket_path": "_local_api",
    "listen_fds": "_systemd",
    "open_api_listener": "_local_api",
    "read_token_file": "_mcp_auth",
    "watchdog_interval": "_systemd",
    "RpcStreamPool": "_rpc_pool",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
