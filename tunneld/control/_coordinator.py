"""The coordinator: one WebSocket session per node, the tunnel graph and the ACL.

Rules (docs/coordinator.md has the wire format):

* A session is authenticated by its bearer token before the upgrade. Its node's
  identity — owner, and the agent name for agent tokens — comes from the token, never
  from the messages. Client node ids derive from (owner, node key), agent node ids from
  (owner, agent name), so a reconnecting node keeps its id.
* ``add_tunnel`` is allowed from a client node to an agent of the same user, or to an
  agent the grants table opens to that user. Anything else — including an agent of
  another user that exists — gets the same ``not_found`` error, so a node learns
  nothing about nodes it may not reach.
* When both ends of a tunnel are online each gets ``peer_update kind=node`` of the
  other (the agent must know the client before the client's handshake arrives), and
  ``ready_for_handshake`` is relayed only between nodes that share a tunnel.
* A session that drops leaves its peers a ``lost`` update and, if it does not come back
  within ``lost_grace``, a ``disconnected`` one; tunnels it started are then forgotten
  (clients replay them on reconnect). A ``disconnect`` request skips the grace period.
* All state changes happen under one lock, in the order requests arrive; pushes to
  other sessions never block (bounded queues; a session that cannot keep up is closed).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio
from trio_websocket import ConnectionClosed

from tunneld.control._ratelimit import TokenBucket
from tunneld.control._records import NodeRecord, Store, StoreError
from tunneld.control._tokens import parse_token, token_matches
from tunneld.log import get_logger
from tunneld.proto.coord import (
    AGENTS_PER_PAGE,
    AddTunnel,
    AgentInfo,
    AgentList,
    CloseCode,
    Disconnect,
    Error,
    HomeRelay,
    ListAgents,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    RelayMap,
    RemoteProtocolError,
    RemoveTunnel,
    Request,
    Response,
    UpdateSelf,
    decode_request,
    encode,
    validate_name,
)

__all__ = [
    "OAUTH_PRINCIPAL_PREFIX",
    "Coordinator",
    "CoordinatorSettings",
    "CoordinatorStats",
    "MessageSocket",
    "Principal",
    "node_id_for",
]

log = get_logger(__name__)

_SEND_QUEUE: Final = 1024  # a reconnect with many tunnels queues one update per peer
_NOT_FOUND: Final = "no such peer, or not permitted"
_DUMMY_HASH: Final = bytes(32)
# OAuth access tokens (tunneld.oauth) and the token-id prefix of their principals.
OAUTH_ACCESS_PREFIX: Final = "tndat_"
OAUTH_PRINCIPAL_PREFIX: Final = "oauth:"


class MessageSocket(Protocol):
    """The part of ``trio_websocket.WebSocketConnection`` a session uses."""

    async def get_message(self) -> str | bytes: ...
    async def send_message(self, message: str | bytes) -> None: ...
    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for: a user, and an agent name for agent tokens."""

    token_id: str
    user_id: int
    user: str
    agent: str | None


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    """Tunables; tests shorten the durations."""

    lost_grace: float = 30.0
    revocation_poll: float = 1.0
    rate: float = 20.0  # messages per second per session, sustained
    burst: float = 200.0
    close_timeout: float = 2.0


@dataclass(slots=True)
class CoordinatorStats:
    sessions_total: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    peer_updates_sent: int = 0


def node_id_for(user_id: int, agent: str | None, node_key: bytes) -> str:
    """A node's stable id: from (owner, agent name) for agents, (owner, key) for clients."""
    material = f"agent\0{user_id}\0{agent}".encode() if agent else b"client\0%d\0" % user_id
    if not agent:
        material += node_key
    return "n" + hashlib.blake2b(material, digest_size=8, person=b"tunneld-node").hexdigest()


class _Session:
    def __init__(self, principal: Principal, ws: MessageSocket, bucket: TokenBucket) -> None:
        self.principal = principal
        self.ws = ws
        self.bucket = bucket
        self.node_id: str | None = None
        self.send, self.outbox = trio.open_memory_channel[bytes](_SEND_QUEUE)
        self.cancel_scope = trio.CancelScope()
        self.close_code: int = CloseCode.NORMAL
        self.close_reason = "closed"
        self.category = "peer_closed"
        self.clean = False
        self.closing = False

    def kill(self, code: int, reason: str, category: str) -> None:
        """End the session (the first reason wins); returns at once.

        ``category`` is a small fixed vocabulary for metrics labels; ``reason`` (which
        may quote the offending field) goes to the close frame and the log.
        """
        if not self.closing:
            self.closing = True
            self.close_code = code
            self.close_reason = reason
            self.category = category
        self.cancel_scope.cancel()

    def push(self, message: Response) -> bool:
        if self.closing:
            return False
        try:
            self.send.send_nowait(encode(message))
        except trio.WouldBlock:
            self.kill(CloseCode.POLICY_VIOLATION, "send queue full (client too slow)", "slow")
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True


class Coordinator:
    """Sessions, nodes and tunnels of one control server.

    Start :meth:`run` with ``nursery.start`` (grace timers and revocation polling live
    there), then hand each authenticated WebSocket to :meth:`handle_session`.
    """

    def __init__(
        self,
        store: Store,
        settings: CoordinatorSettings | None = None,
        *,
        wall_clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.settings = settings or CoordinatorSettings()
        self.stats = CoordinatorStats()
        self._wall = wall_clock
        self._lock = trio.Lock()
        self._sessions: set[_Session] = set()
        self._by_node: dict[str, _Session] = {}
        self._nodes: dict[str, NodeRecord] = {}
        self._out: dict[str, set[str]] = {}  # src -> dsts
        self._in: dict[str, set[str]] = {}  # dst -> srcs
        self._grace: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        # Called with the node key of a session closed for a revoked/expired token
        # (the server points it at the DERP relay's close_peer).
        self.on_revoked: Callable[[bytes], None] | None = None
        # Checks an OAuth access token (``tndat_…``, scope ``node``) for a client node;
        # the server wires it to its authorization server. Its principals' token ids
        # read ``oauth:<grant family>`` so the revocation poll can find the grant.
        self.oauth_authenticate: Callable[[str], Awaitable[Principal | None]] | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run timers and revocation polling until cancelled."""
        await self.store.reset_sessions()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._poll_revocations()

    def close_all(self, reason: str = "server shutting down") -> None:
        """Close every session with 1001 going away (shutdown); returns at once."""
        for session in list(self._sessions):
            session.kill(CloseCode.GOING_AWAY, reason, "shutdown")

    @property
    def sessions_current(self) -> int:
        return len(self._sessions)

    @property
    def nodes_online(self) -> int:
        return len(self._by_node)

    def online(self, node_id: str) -> bool:
        return node_id in self._by_node

    def tunnels(self) -> list[tuple[str, str]]:
        """The live tunnels as ``(src node id, dst node id)`` pairs, sorted (the dashboard)."""
        return sorted((src, dst) for src, dsts in self._out.items() for dst in dsts)

    # --- authentication ---------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization: Bearer …`` header value, or None.

        None for a missing/malformed header, an unknown, wrong, revoked or expired
        token. The secret is compared in constant time.
        """
        if authorization is None:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            return None
        if value.startswith(OAUTH_ACCESS_PREFIX):
            if self.oauth_authenticate is None:
                return None
            return await self.oauth_authenticate(value)
        token_id = parse_token(value)
        if token_id is None:
            return None
        creds = await self.store.token_credentials(token_id)
        if creds is None:
            token_matches(value, _DUMMY_HASH)  # same work as a real check
            return None
        if not token_matches(value, creds.secret_hash):
            return None
        now = self._wall()
        if not creds.info.active(now):
            return None
        await self.store.touch_token(token_id, now)
        return Principal(token_id, creds.info.user_id, creds.info.user, creds.info.agent)

    # --- sessions ---------------------------------------------------------------------

    async def handle_session(
        self,
        principal: Principal,
        ws: MessageSocket,
        *,
        relay_map: tuple[HomeRelay, ...] | None = None,
    ) -> None:
        """Serve one coordinator session until it ends; closes ``ws`` before returning.

        ``relay_map``: sent first as a ``relays`` message (only to a client that asked
        for it on connect: older clients reject unknown message types).

        Cancellation: cancelling the caller closes the session like a dropped
        connection (peers see ``lost``).
        """
        session = _Session(
            principal, ws, TokenBucket(self.settings.rate, self.settings.burst, trio.current_time())
        )
        if relay_map is not None:
            session.send.send_nowait(encode(RelayMap(relay_map)))
        self._sessions.add(session)
        self.stats.sessions_total += 1
        slog = log.bind(user=principal.user, agent=principal.agent, auth_id=principal.token_id)
        slog.info("coord.session_open")
        try:
            with session.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, session)
                    await self._reader(session)
                    nursery.cancel_scope.cancel()
        finally:
            self._sessions.discard(session)
            session.send.close()
            category = session.category
            self.stats.closes[category] = self.stats.closes.get(category, 0) + 1
            with trio.CancelScope(shield=True):
                await self._session_ended(session)
                with trio.move_on_after(self.settings.close_timeout):
                    try:
                        await ws.aclose(session.close_code, session.close_reason)
                    except ConnectionClosed:
                        pass
            slog.info(
                "coord.session_closed",
                node_id=session.node_id,
                code=session.close_code,
                reason=session.close_reason,
            )

    async def _writer(self, session: _Session) -> None:
        try:
            async for message in session.outbox:
                await session.ws.send_message(message)
                self.stats.peer_updates_sent += 1
        except ConnectionClosed:
            session.kill(CloseCode.NORMAL, "connection closed by peer", "peer_closed")

    async def _reader(self, session: _Session) -> None:
        while True:
            try:
                data = await session.ws.get_message()
            except ConnectionClosed:
                if not session.closing:
                    session.closing = True
                    session.close_reason = "connection closed by peer"
                return
            if isinstance(data, str):
                session.kill(
                    CloseCode.UNSUPPORTED_DATA,
                    "text message; expected binary msgpack",
                    "protocol_error",
                )
                return
            if not session.bucket.take(trio.current_time()):
                session.kill(CloseCode.POLICY_VIOLATION, "rate limit exceeded", "rate_limited")
                return
            try:
                request = decode_request(data)
            except RemoteProtocolError as exc:
                session.kill(exc.close_code, exc.reason, "protocol_error")
                return
            name = type(request).__name__
            self.stats.messages[name] = self.stats.messages.get(name, 0) + 1
            async with self._lock:
                if session.closing:
                    return
                try:
                    await self._handle(session, request)
                except StoreError as exc:
                    log.error("coord.store_failed", error=str(exc))
                    session.kill(CloseCode.INTERNAL_ERROR, "storage error", "internal")
            if session.closing:
                return

    async def _handle(self, session: _Session, request: Request) -> None:
        match request:
            case UpdateSelf(node=node):
                await self._update_self(session, node)
            case AddTunnel(peer=peer):
                await self._add_tunnel(session, peer)
            case RemoveTunnel(peer=peer):
                await self._remove_tunnel(session, peer)
            case ReadyForHandshake(peer=peer):
                self._ready_for_handshake(session, peer)
            case ListAgents(id=request_id):
                await self._list_agents(session, request_id)
            case Disconnect():
                session.clean = True
                session.kill(CloseCode.NORMAL, "disconnect requested", "disconnect")

    # --- requests ---------------------------------------------------------------------

    def _to_wire(self, record: NodeRecord) -> Node:
        return Node(
            record.id,
            record.name,
            record.owner,
            record.node_key,
            record.endpoints,
            record.home_relay,
            record.as_of,
        )

    def _peers_of(self, node_id: str) -> set[str]:
        return self._out.get(node_id, set()) | self._in.get(node_id, set())

    def _tell(self, node_id: str, update: PeerUpdate) -> None:
        target = self._by_node.get(node_id)
        if target is not None:
            target.push(update)

    async def _update_self(self, session: _Session, node: Node) -> None:
        principal = session.principal
        name = principal.agent or node.name
        if validate_name(name) is not None:  # a token's agent name was checked at creation
            session.push(Error("bad_node", "invalid node name"))
            return
        node_id = node_id_for(principal.user_id, principal.agent, node.node_key)
        if session.node_id is not None and session.node_id != node_id:
            session.push(Error("key_changed", "a client's node key cannot change in a session"))
            return
        for other_id, other in self._by_node.items():
            if (
                other_id != node_id
                and other.node_id
                and self._nodes[other_id].node_key == (node.node_key)
            ):
                session.push(Error("key_in_use", "that node key belongs to another node"))
                return
        now = self._wall()
        record = NodeRecord(
            id=node_id,
            user_id=principal.user_id,
            owner=principal.user,
            kind="agent" if principal.agent else "client",
            name=name,
            node_key=node.node_key,
            endpoints=node.endpoints,
            home_relay=node.home_relay,
            as_of=now,
            last_seen=now,
            online=True,
        )
        await self.store.upsert_node(record, principal.token_id)
        if session.closing:
            return
        previous = self._by_node.get(node_id)
        if previous is not None and previous is not session:
            previous.node_id = None  # its end must not mark this node lost
            previous.kill(CloseCode.NORMAL, "replaced by a newer session", "replaced")
        grace = self._grace.pop(node_id, None)
        if grace is not None:
            grace.cancel()
        first = session.node_id is None
        session.node_id = node_id
        self._by_node[node_id] = session
        self._nodes[node_id] = record
        wire = self._to_wire(record)
        for peer_id in self._peers_of(node_id):
            self._tell(peer_id, PeerUpdate(node_id, PeerUpdateKind.NODE, wire))
            if first and peer_id in self._by_node:
                # A returning node learns its peers again (an agent must know the client
                # before the client's next handshake arrives).
                session.push(
                    PeerUpdate(peer_id, PeerUpdateKind.NODE, self._to_wire(self._nodes[peer_id]))
                )

    async def _may_reach(self, session: _Session, record: NodeRecord) -> bool:
        principal = session.principal
        if record.kind != "agent" or record.id == session.node_id:
            return False
        if record.user_id == principal.user_id:
            return True
        return await self.store.has_grant(principal.user_id, record.user_id, record.name)

    async def _resolve(self, session: _Session, ref: str) -> NodeRecord | None:
        """The agent ``ref`` names that this session may reach, else None (no hint why)."""
        record = self._nodes.get(ref) or await self.store.get_node(ref)
        if record is not None:
            return record if await self._may_reach(session, record) else None
        owner: str | None
        if "/" in ref:
            owner, _, name = ref.partition("/")
        else:
            owner, name = None, ref
        candidates = await self.store.find_agents(name, owner)
        own = [c for c in candidates if c.user_id == session.principal.user_id]
        reachable = own or [c for c in candidates if await self._may_reach(session, c)]
        if len(reachable) != 1:
            return None
        return self._nodes.get(reachable[0].id, reachable[0])

    async def _list_agents(self, session: _Session, request_id: int) -> None:
        """Answer ``list_agents``: the agents ``add_tunnel`` would accept, in pages."""
        principal = session.principal
        agents: list[AgentInfo] = []
        # Agent tokens cannot open tunnels, so an agent may reach nothing.
        if principal.agent is None:
            for record in await self._visible(principal):
                if record.kind != "agent" or record.id == session.node_id:
                    continue
                online = record.id in self._by_node
                # An online agent is seen right now; else when its session last spoke.
                last_seen: float | None = self._wall() if online else record.last_seen
                if last_seen is not None and not math.isfinite(last_seen):
                    last_seen = None
                agents.append(AgentInfo(record.id, record.name, record.owner, online, last_seen))
        agents.sort(key=lambda a: (a.owner != principal.user, a.owner, a.name))
        pages = [agents[i : i + AGENTS_PER_PAGE] for i in range(0, len(agents), AGENTS_PER_PAGE)]
        for index, page in enumerate(pages or [[]]):
            if not session.push(AgentList(request_id, tuple(page), more=index < len(pages) - 1)):
                return

    async def _add_tunnel(self, session: _Session, ref: str) -> None:
        src = session.node_id
        if src is None:
            session.push(Error("no_node", "send update_self before add_tunnel", ref))
            return
        if session.principal.agent is not None:
            session.push(Error("not_found", _NOT_FOUND, ref))
            return
        record = await self._resolve(session, ref)
        if session.closing:
            return
        if record is None:
            session.push(Error("not_found", _NOT_FOUND, ref))
            return
        dst = record.id
        self._out.setdefault(src, set()).add(dst)
        self._in.setdefault(dst, set()).add(src)
        await self.store.set_tunnel(src, dst, True, self._wall())
        if dst in self._by_node:
            session.push(PeerUpdate(dst, PeerUpdateKind.NODE, self._to_wire(self._nodes[dst])))
            self._tell(dst, PeerUpdate(src, PeerUpdateKind.NODE, self._to_wire(self._nodes[src])))
        else:
            session.push(PeerUpdate(dst, PeerUpdateKind.DISCONNECTED, reason="offline"))

    async def _remove_tunnel(self, session: _Session, ref: str) -> None:
        src = session.node_id
        record = None if src is None else await self._resolve(session, ref)
        if src is None or record is None or record.id not in self._out.get(src, set()):
            session.push(Error("not_found", "no such tunnel", ref))
            return
        dst = record.id
        self._unlink(src, dst)
        await self.store.set_tunnel(src, dst, False, self._wall())
        if src not in self._peers_of(dst):
            self._tell(dst, PeerUpdate(src, PeerUpdateKind.DISCONNECTED, reason="tunnel removed"))

    def _unlink(self, src: str, dst: str) -> None:
        self._out.get(src, set()).discard(dst)
        self._in.get(dst, set()).discard(src)
        if not self._out.get(src, True):
            del self._out[src]
        if not self._in.get(dst, True):
            del self._in[dst]

    def _ready_for_handshake(self, session: _Session, ref: str) -> None:
        me = session.node_id
        if me is None or ref not in self._peers_of(me) or ref not in self._by_node:
            session.push(Error("not_found", _NOT_FOUND, ref))
            return
        self._tell(ref, PeerUpdate(me, PeerUpdateKind.READY_FOR_HANDSHAKE))

    # --- departures -------------------------------------------------------------------

    async def _session_ended(self, session: _Session) -> None:
        # The in-memory part runs without awaiting (so without the lock: nothing else
        # runs in between under trio), which means a slow store can never leave a dead
        # session registered as the node's live one. Store writes follow, best effort.
        node_id = session.node_id
        if node_id is None or self._by_node.get(node_id) is not session:
            return
        del self._by_node[node_id]
        removed: list[str] = []
        if session.clean or self.settings.lost_grace <= 0 or self._nursery is None:
            removed = self._drop_node(node_id, "disconnected")
        else:
            for peer_id in self._peers_of(node_id):
                self._tell(peer_id, PeerUpdate(node_id, PeerUpdateKind.LOST, reason="session lost"))
            scope = trio.CancelScope()
            self._grace[node_id] = scope
            self._nursery.start_soon(self._expire, node_id, scope)
        await self._forget(node_id, removed, offline=True)

    async def _expire(self, node_id: str, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self.settings.lost_grace)
            if self._grace.get(node_id) is scope and node_id not in self._by_node:
                del self._grace[node_id]
                removed = self._drop_node(node_id, "lost grace period expired")
                await self._forget(node_id, removed, offline=False)

    def _drop_node(self, node_id: str, reason: str) -> list[str]:
        """Tell peers ``node_id`` is gone; returns the tunnels it asked for, now removed."""
        for peer_id in self._peers_of(node_id):
            self._tell(peer_id, PeerUpdate(node_id, PeerUpdateKind.DISCONNECTED, reason=reason))
        # Tunnels this node asked for are forgotten (it replays them when it returns);
        # tunnels others asked for to it stay, so they hear when it comes back.
        removed = sorted(self._out.get(node_id, ()))
        for dst in removed:
            self._unlink(node_id, dst)
        return removed

    async def _forget(self, node_id: str, removed: list[str], *, offline: bool) -> None:
        now = self._wall()
        with trio.move_on_after(self.settings.close_timeout):
            try:
                if offline:
                    await self.store.set_node_online(node_id, False, now)
                for dst in removed:
                    await self.store.set_tunnel(node_id, dst, False, now)
            except StoreError as exc:
                log.error("coord.store_failed", error=str(exc))

    async def _poll_revocations(self) -> None:
        while True:
            await trio.sleep(self.settings.revocation_poll)
            token_ids = sorted({s.principal.token_id for s in self._sessions})
            try:
                inactive = await self.store.inactive_tokens(token_ids, self._wall())
            except StoreError as exc:
                log.error("coord.store_failed", error=str(exc))
                continue
            for session in list(self._sessions):
                if session.principal.token_id in inactive:
                    session.kill(CloseCode.POLICY_VIOLATION, "token revoked or expired", "revoked")
                    node = self._nodes.get(session.node_id or "")
                    if node is not None and self.on_revoked is not None:
                        self.on_revoked(node.node_key)

    # --- queries ----------------------------------------------------------------------

    async def _visible(self, principal: Principal) -> list[NodeRecord]:
        """Nodes ``principal`` may see: its user's nodes and agents granted to it.

        The one ACL for listings (``GET /api/v1/nodes``, ``list_agents``); it matches
        :meth:`_may_reach` for agents.
        """
        result: list[NodeRecord] = []
        for record in await self.store.list_nodes():
            if record.user_id == principal.user_id or (
                record.kind == "agent"
                and await self.store.has_grant(principal.user_id, record.user_id, record.name)
            ):
                result.append(record)
        return result

    async def visible_nodes(self, principal: Principal) -> list[dict[str, object]]:
        """Nodes ``principal`` may see: its user's nodes and agents granted to it."""
        result: list[dict[str, object]] = []
        for record in await self._visible(principal):
            live = self._nodes.get(record.id, record) if record.id in self._by_node else record
            result.append(
                {
                    "id": live.id,
                    "name": live.name,
                    "owner": live.owner,
                    "kind": live.kind,
                    "online": live.id in self._by_node,
                    "last_seen": live.last_seen if math.isfinite(live.last_seen) else None,
                    "home_relay": None
                    if live.home_relay is None
                    else {"region": live.home_relay.region, "url": live.home_relay.url},
                    "endpoints": list(live.endpoints),
                }
            )
        return result
