"""The client side of a coordinator session, sans-IO: requests out, peer state in.

The overlay keeps one :class:`CoordinatorClient` for the life of the node (not of one
WebSocket): it remembers the node it last announced and the tunnels it wants, so after
a reconnect :meth:`CoordinatorClient.replay` yields everything to send again (SPECS.md,
"Clients replay their tunnels after a reconnect").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunneld.proto.coord._messages import (
    MAX_REQUEST_ID,
    AddTunnel,
    AgentInfo,
    AgentList,
    Disconnect,
    Error,
    HomeRelay,
    ListAgents,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    RelayMap,
    RemoveTunnel,
    Response,
    UpdateSelf,
    decode_response,
    encode,
)

__all__ = ["CoordinatorClient", "PeerState"]


@dataclass(slots=True)
class PeerState:
    """What the coordinator last told us about one peer."""

    node: Node
    online: bool = True
    ready_for_handshake: bool = False


@dataclass(slots=True)
class CoordinatorClient:
    """Builds requests and folds responses into a peer table.

    Every method that returns ``bytes`` returns one WebSocket binary message to send.
    Nothing here does I/O or reads a clock; ``as_of`` is passed in.
    """

    self_node: Node | None = None
    tunnels: set[str] = field(default_factory=set)
    peers: dict[str, PeerState] = field(default_factory=dict)
    # What the current session was last brought up to date with (replay/catch_up).
    _sent_self: Node | None = field(default=None, repr=False)
    _sent_tunnels: frozenset[str] = field(default=frozenset(), repr=False)
    # Pages gathered so far per pending ``list_agents`` request id.
    _listings: dict[int, list[AgentInfo]] = field(default_factory=dict)
    _next_id: int = 1

    def update_self(
        self,
        *,
        name: str,
        node_key: bytes,
        endpoints: tuple[str, ...] = (),
        home_relay: HomeRelay | None = None,
        as_of: float = 0.0,
    ) -> bytes:
        """Announce (or re-announce) our node; ``id``/``owner`` come from the token."""
        self.self_node = Node("", name, "", node_key, endpoints, home_relay, as_of)
        return encode(UpdateSelf(self.self_node))

    def add_tunnel(self, peer: str) -> bytes:
        """Ask to reach ``peer`` (a node id, an agent name or ``owner/agent``)."""
        self.tunnels.add(peer)
        return encode(AddTunnel(peer))

    def remove_tunnel(self, peer: str) -> bytes:
        """Stop wanting ``peer``."""
        self.tunnels.discard(peer)
        return encode(RemoveTunnel(peer))

    def ready_for_handshake(self, peer_id: str) -> bytes:
        """Tell peer ``peer_id`` (a node id) that we know it and accept its handshake."""
        return encode(ReadyForHandshake(peer_id))

    def disconnect(self) -> bytes:
        """Leave on purpose: peers hear ``disconnected`` at once instead of ``lost``."""
        return encode(Disconnect())

    def list_agents(self) -> tuple[int, bytes]:
        """Ask which agents we may reach: (request id, message to send).

        :meth:`receive` returns the whole answer as one :class:`AgentList` with that id
        and ``more`` false once its last page arrives. Requests are not replayed: after
        the session drops, call :meth:`forget_listings` and ask again.
        """
        request_id = self._next_id
        self._next_id = self._next_id % MAX_REQUEST_ID + 1
        self._listings[request_id] = []
        return request_id, encode(ListAgents(request_id))

    def forget_listing(self, request_id: int) -> None:
        """Stop gathering the answer to ``request_id`` (the asker gave up)."""
        self._listings.pop(request_id, None)

    def forget_listings(self) -> list[int]:
        """Drop every pending ``list_agents`` (the session ended); returns their ids."""
        pending = list(self._listings)
        self._listings.clear()
        return pending

    def replay(self) -> list[bytes]:
        """Everything to send on a fresh session: our node first, then each tunnel.

        Also remembers what it returned, for :meth:`catch_up`.
        """
        self._sent_self = self.self_node
        self._sent_tunnels = frozenset(self.tunnels)
        messages = []
        if self.self_node is not None:
            messages.append(encode(UpdateSelf(self.self_node)))
        messages.extend(encode(AddTunnel(peer)) for peer in sorted(self.tunnels))
        return messages

    def catch_up(self) -> list[bytes]:
        """What changed since the last :meth:`replay` or :meth:`catch_up`: a newer node,
        then tunnels removed, then tunnels added; empty when nothing did.

        Sending a replay takes awaits, and the node's owner may call :meth:`add_tunnel`,
        :meth:`remove_tunnel` or :meth:`update_self` meanwhile while it has no session
        to send on yet. Those changes are in neither the replay already under way nor
        (the session being open by then) the next one; the session opener sends what
        this returns until it is empty.
        """
        messages = []
        if self.self_node is not None and self.self_node is not self._sent_self:
            messages.append(encode(UpdateSelf(self.self_node)))
        messages.extend(
            encode(RemoveTunnel(peer)) for peer in sorted(self._sent_tunnels - self.tunnels)
        )
        messages.extend(
            encode(AddTunnel(peer)) for peer in sorted(self.tunnels - self._sent_tunnels)
        )
        self._sent_self = self.self_node
        self._sent_tunnels = frozenset(self.tunnels)
        return messages

    def receive(self, data: bytes) -> Response:
        """Parse one message from the coordinator and update :attr:`peers`.

        Raises:
            RemoteProtocolError: the message is invalid; close the session with its
                ``close_code`` and ``reason`` and reconnect.
        """
        response = decode_response(data)
        if isinstance(response, (Error, RelayMap)):
            return response
        if isinstance(response, AgentList):
            return self._gather(response)
        self._apply(response)
        return response

    def _gather(self, page: AgentList) -> AgentList:
        """Fold one page into its request; the last page returns the whole list.

        Pages of an id nobody waits for (unknown, or given up) come back unchanged.
        """
        gathered = self._listings.get(page.id)
        if gathered is None:
            return page
        gathered.extend(page.agents)
        if page.more:
            return page
        del self._listings[page.id]
        return AgentList(page.id, tuple(gathered), more=False)

    def _apply(self, update: PeerUpdate) -> None:
        state = self.peers.get(update.id)
        if update.kind is PeerUpdateKind.NODE and update.node is not None:
            if state is None:
                self.peers[update.id] = PeerState(update.node)
            else:
                state.node = update.node
                state.online = True
        elif update.kind is PeerUpdateKind.DISCONNECTED:
            self.peers.pop(update.id, None)
        elif state is not None and update.kind is PeerUpdateKind.LOST:
            state.online = False
        elif state is not None and update.kind is PeerUpdateKind.READY_FOR_HANDSHAKE:
            state.ready_for_handshake = True
