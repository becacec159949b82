"""The control plane: coordinator, DERP relay, STUN, users and tokens, storage."""

from __future__ import annotations

from tunneld.control._coordinator import (
    Coordinator,
    CoordinatorSettings,
    CoordinatorStats,
    Principal,
    node_id_for,
)
from tunneld.control._server import (
    ControlServer,
    ControlSetupError,
    RelayFactory,
    ServerInfo,
    StunServe,
    load_or_create_key,
    write_ready_file,
)
from tunneld.control._store import (
    ConflictError,
    Grant,
    NodeRecord,
    NotFoundError,
    SqliteDatabase,
    SqliteStore,
    Store,
    StoreError,
    TokenInfo,
    User,
)
from tunneld.control._tokens import new_token, parse_token

__all__ = [
    "ConflictError",
    "ControlServer",
    "ControlSetupError",
    "Coordinator",
    "CoordinatorSettings",
    "CoordinatorStats",
    "Grant",
    "NodeRecord",
    "NotFoundError",
    "Principal",
    "RelayFactory",
    "ServerInfo",
    "SqliteDatabase",
    "SqliteStore",
    "Store",
    "StoreError",
    "StunServe",
    "TokenInfo",
    "User",
    "default_relay_factory",
    "default_stun_serve",
    "load_or_create_key",
    "new_token",
    "node_id_for",
    "parse_token",
    "write_ready_file",
]


def default_relay_factory() -> RelayFactory | None:
    """The DERP relay to serve at ``/derp`` (None until the relay is built in)."""
    return None


def default_stun_serve() -> StunServe | None:
    """The STUN server to run on ``[control].stun_listen`` (None until built in)."""
    return None
