"""One overlay node: UDP socket, home DERP relay, coordinator session, per-peer mux.

See docs/overlay.md. ``Overlay`` is in ``_overlay``, the state and helpers its parts
share in ``_node``; its configuration and status records in ``_config``; the mux
connection-id header in ``_ids``.
"""

from __future__ import annotations

from tunneld.net.overlay._config import LinkState, OverlayConfig, PeerStatus, backoff_delay
from tunneld.net.overlay._ids import HEADER_SIZE, ID_SIZE, ConnectionIds, Verdict
from tunneld.net.overlay._node import (
    RELAY_DATAGRAM_SIZE,
    RELAY_PATH,
    CoordinatorUnavailableError,
    StreamHandler,
    TokenProvider,
)
from tunneld.net.overlay._overlay import Overlay

__all__ = [
    "HEADER_SIZE",
    "ID_SIZE",
    "RELAY_DATAGRAM_SIZE",
    "RELAY_PATH",
    "ConnectionIds",
    "CoordinatorUnavailableError",
    "LinkState",
    "Overlay",
    "OverlayConfig",
    "PeerStatus",
    "StreamHandler",
    "TokenProvider",
    "Verdict",
    "backoff_delay",
]
