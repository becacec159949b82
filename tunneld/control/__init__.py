"""The control plane: coordinator, DERP relay, STUN, users and tokens, storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunneld._lazy import lazy_exports

if TYPE_CHECKING:
    from tunneld.control._coordinator import (
        Coordinator,
        CoordinatorSettings,
        CoordinatorStats,
        Principal,
        node_id_for,
    )
    from tunneld.control._defaults import default_relay_factory, default_stun_serve, relay_limits
    from tunneld.control._derp_relay import DerpRelay, RelayLimits, RelayStats
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
    from tunneld.control._stun import StunStats, serve_stun
    from tunneld.control._tasks import TaskValidationError, task_json, validate_task
    from tunneld.control._tokens import new_token, parse_token

__all__ = [
    "ConflictError",
    "ControlServer",
    "ControlSetupError",
    "Coordinator",
    "CoordinatorSettings",
    "CoordinatorStats",
    "DerpRelay",
    "Grant",
    "NodeRecord",
    "NotFoundError",
    "Principal",
    "RelayFactory",
    "RelayLimits",
    "RelayStats",
    "ServerInfo",
    "SqliteDatabase",
    "SqliteStore",
    "Store",
    "StoreError",
    "StunServe",
    "StunStats",
    "TaskValidationError",
    "TokenInfo",
    "User",
    "default_relay_factory",
    "default_stun_serve",
    "load_or_create_key",
    "new_token",
    "node_id_for",
    "parse_token",
    "relay_limits",
    "serve_stun",
    "task_json",
    "validate_task",
    "write_ready_file",
]

_EXPORTS = {
    "ConflictError": "_store",
    "ControlServer": "_server",
    "ControlSetupError": "_server",
    "Coordinator": "_coordinator",
    "CoordinatorSettings": "_coordinator",
    "CoordinatorStats": "_coordinator",
    "DerpRelay": "_derp_relay",
    "Grant": "_store",
    "NodeRecord": "_store",
    "NotFoundError": "_store",
    "Principal": "_coordinator",
    "RelayFactory": "_server",
    "RelayLimits": "_derp_relay",
    "RelayStats": "_derp_relay",
    "ServerInfo": "_server",
    "SqliteDatabase": "_store",
    "SqliteStore": "_store",
    "Store": "_store",
    "StoreError": "_store",
    "StunServe": "_server",
    "StunStats": "_stun",
    "TaskValidationError": "_tasks",
    "TokenInfo": "_store",
    "User": "_store",
    "default_relay_factory": "_defaults",
    "default_stun_serve": "_defaults",
    "load_or_create_key": "_server",
    "new_token": "_tokens",
    "node_id_for": "_coordinator",
    "parse_token": "_tokens",
    "relay_limits": "_defaults",
    "serve_stun": "_stun",
    "task_json": "_tasks",
    "validate_task": "_tasks",
    "write_ready_file": "_server",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
