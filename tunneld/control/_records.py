"""What the control plane stores, as values, and the :class:`Store` interface to it.

Backends (:mod:`tunneld.control._store`: SQLite) implement :class:`Store`; the rest of
the control plane sees only these records and that Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, Protocol, get_args

from tunneld.proto.coord import HomeRelay

__all__ = [
    "TASK_REPORTS_KEPT_PER_USER",
    "ConflictError",
    "Grant",
    "NodeKind",
    "NodeRecord",
    "NotFoundError",
    "Store",
    "StoreError",
    "TaskReport",
    "TaskState",
    "TokenCredentials",
    "TokenInfo",
    "User",
]

NodeKind = Literal["client", "agent"]
TaskState = Literal["working", "complete", "idle", "failure"]
TASK_STATES: Final[tuple[TaskState, ...]] = get_args(TaskState)
# Most task reports one list request returns.
MAX_LIST_LIMIT: Final = 500

# Each user keeps its newest reports only: a chatty agent cannot grow the file forever.
TASK_REPORTS_KEPT_PER_USER = 1000


class StoreError(Exception):
    """A storage operation that cannot be done; the message says what and why."""


class NotFoundError(StoreError):
    """The named user, token or node does not exist."""


class ConflictError(StoreError):
    """The thing to create exists already."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    created_at: float
    has_password: bool


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token without its secret: safe to list and log."""

    id: str
    user_id: int
    user: str
    agent: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None

    def active(self, now: float) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    info: TokenInfo
    secret_hash: bytes


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    user_id: int
    owner: str
    kind: NodeKind
    name: str
    node_key: bytes
    endpoints: tuple[str, ...]
    home_relay: HomeRelay | None
    as_of: float
    last_seen: float
    online: bool


@dataclass(frozen=True, slots=True)
class Grant:
    """``grantee`` may reach ``owner``'s agent ``agent_name`` (``*``: all of them)."""

    id: int
    grantee: str
    owner: str
    agent_name: str
    created_at: float


@dataclass(frozen=True, slots=True)
class TaskReport:
    """One ``report_task`` report: ``agent``'s task is in ``state``.

    ``user``/``token_id``/``reporter_agent`` say who reported it (from the bearer
    token, never from the request body).
    """

    id: int
    user_id: int
    user: str
    token_id: str
    reporter_agent: str | None
    agent: str
    state: TaskState
    summary: str
    link: str | None
    created_at: float


class Store(Protocol):
    """What the control plane needs from storage. Every method may raise StoreError."""

    async def aclose(self) -> None: ...
    async def add_user(self, name: str, password_hash: str | None, now: float) -> User: ...
    async def get_user(self, name: str) -> User | None: ...
    async def list_users(self) -> list[User]: ...
    async def password_hash(self, name: str) -> str | None: ...
    async def add_token(
        self,
        token_id: str,
        user: str,
        agent: str | None,
        secret_hash: bytes,
        now: float,
        expires_at: float | None,
    ) -> TokenInfo: ...
    async def token_credentials(self, token_id: str) -> TokenCredentials | None: ...
    async def list_tokens(self) -> list[TokenInfo]: ...
    async def revoke_token(self, token_id: str, now: float) -> TokenInfo: ...
    async def inactive_tokens(self, token_ids: list[str], now: float) -> set[str]: ...
    async def touch_token(self, token_id: str, now: float) -> None: ...
    async def upsert_node(self, node: NodeRecord, token_id: str) -> None: ...
    async def set_node_online(self, node_id: str, online: bool, now: float) -> None: ...
    async def get_node(self, node_id: str) -> NodeRecord | None: ...
    async def find_agents(self, name: str, owner: str | None) -> list[NodeRecord]: ...
    async def list_nodes(self) -> list[NodeRecord]: ...
    async def node_key_active(self, node_key: bytes, now: float) -> bool: ...
    async def set_tunnel(self, src: str, dst: str, present: bool, now: float) -> None: ...
    async def reset_sessions(self) -> None: ...
    async def add_grant(self, grantee: str, owner: str, agent_name: str, now: float) -> Grant: ...
    async def list_grants(self) -> list[Grant]: ...
    async def has_grant(self, grantee_id: int, owner_id: int, agent_name: str) -> bool: ...
    async def add_task_report(
        self,
        user_id: int,
        token_id: str,
        reporter_agent: str | None,
        agent: str,
        state: TaskState,
        summary: str,
        link: str | None,
        now: float,
    ) -> TaskReport: ...
    async def list_task_reports(
        self,
        viewer_id: int | None,
        *,
        limit: int,
        agent: str | None = None,
        state: TaskState | None = None,
    ) -> list[TaskReport]: ...
    async def remove_grant(self, grantee: str, owner: str, agent_name: str) -> Grant: ...
