"""Per-caller authorization: "may subject S reach agent A?", asked by a shared daemon.

A daemon serves many MCP callers over one overlay node, so the overlay's own ACL
(what the daemon's user may reach) is not enough: before a tool call opens a stream
to an agent for the OAuth token's subject, the daemon asks here. The answer follows
the same rules as the coordinator: a user reaches its own agents and the agents
granted to it (``tunneld control grant``), and the asking node's user must be able to
reach the agent too. Otherwise the daemon could not tunnel there anyway, and the
answer would tell a node about grants it has nothing to do with.

``GET /api/v1/access?subject=S&agent=REF`` with the daemon's node token (a client
token: agent tokens are refused). ``REF`` is ``owner/name``, ``name`` (one's own
agent first, else the one reachable agent of that name) or a node id. Answers::

    {"allowed": true, "subject": "alice", "agent": {"id": …, "owner": …, "name": …},
     "max_age": 5}
    {"allowed": false, "subject": "alice", "reason": "not_found", "max_age": 5}

``max_age`` bounds how long the daemon may cache it: a removed grant or user stops
working within that many seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunneld.control._coordinator import Principal
from tunneld.control._records import NodeRecord, Store, User

__all__ = ["ACCESS_MAX_AGE", "AccessAnswer", "check_access"]

ACCESS_MAX_AGE = 5.0


@dataclass(frozen=True, slots=True)
class AccessAnswer:
    allowed: bool
    agent: NodeRecord | None
    reason: str

    def to_json(self, subject: str, max_age: float) -> dict[str, object]:
        body: dict[str, object] = {"allowed": self.allowed, "subject": subject, "max_age": max_age}
        if self.agent is not None:
            body["agent"] = {
                "id": self.agent.id,
                "owner": self.agent.owner,
                "name": self.agent.name,
            }
        if not self.allowed:
            body["reason"] = self.reason
        return body


async def _may_reach(store: Store, user_id: int, record: NodeRecord) -> bool:
    if record.kind != "agent":
        return False
    if record.user_id == user_id:
        return True
    return await store.has_grant(user_id, record.user_id, record.name)


async def _candidates(store: Store, ref: str) -> list[NodeRecord]:
    record = await store.get_node(ref)
    if record is not None:
        return [record]
    owner: str | None
    if "/" in ref:
        owner, _, name = ref.partition("/")
    else:
        owner, name = None, ref
    return await store.find_agents(name, owner)


async def check_access(store: Store, asker: Principal, subject: str, ref: str) -> AccessAnswer:
    """Whether ``subject`` (a user name) may reach agent ``ref`` through ``asker``'s node.

    ``reason`` when refused: ``unknown_subject`` or ``not_found`` (no such agent, or
    not reachable by the subject or by the asking node: deliberately the same answer,
    so a caller cannot map other users' agents).
    """
    user: User | None = await store.get_user(subject)
    if user is None:
        return AccessAnswer(False, None, "unknown_subject")
    candidates = await _candidates(store, ref)
    own = [c for c in candidates if c.kind == "agent" and c.user_id == user.id]
    reachable = own or [c for c in candidates if await _may_reach(store, user.id, c)]
    if len(reachable) != 1:
        return AccessAnswer(False, None, "not_found")
    record = reachable[0]
    if not await _may_reach(store, asker.user_id, record):
        return AccessAnswer(False, None, "not_found")
    return AccessAnswer(True, record, "")
