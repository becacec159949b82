"""The control plane: coordinator, DERP relay, STUN, users and tokens, storage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tunneld.config._sections import ControlConfig
from tunneld.control._coordinator import (
    Coordinator,
    CoordinatorSettings,
    CoordinatorStats,
    Principal,
    node_id_for,
)
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


def relay_limits(config: ControlConfig) -> RelayLimits:
    """The relay's limits with what ``[control]`` sets (``relay_rate_limit``)."""
    return RelayLimits(bytes_per_second=int(config.relay_rate_limit * 1024 * 1024))


def default_relay_factory(limits: RelayLimits | None = None) -> RelayFactory:
    """Builds the DERP relay served at ``/derp`` (``limits``: ``RelayLimits()``)."""

    def build(private_key: bytes, authorize: Callable[[bytes], Awaitable[bool]]) -> DerpRelay:
        return DerpRelay(private_key, authorize=authorize, limits=limits)

    return build


def default_stun_serve() -> StunServe:
    """The STUN server run on ``[control].stun_listen``."""
    return serve_stun
