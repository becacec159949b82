"""Coordinator messages: typed frozen dataclasses and their strict msgpack encoding.

One message per WebSocket binary message: a msgpack map with a ``"type"`` string and
the message's fields (docs/coordinator.md has the full table). Decoding checks every
field's type and size and rejects unknown types and unknown keys, so anything the
network sends either becomes one of these dataclasses or raises
:class:`RemoteProtocolError` with the WebSocket close code and reason to answer with.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

__all__ = [
    "AGENTS_PER_PAGE",
    "MAX_ENDPOINTS",
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "NODE_KEY_SIZE",
    "AddTunnel",
    "AgentInfo",
    "AgentList",
    "CloseCode",
    "CoordError",
    "Disconnect",
    "Error",
    "HomeRelay",
    "ListAgents",
    "Node",
    "PeerUpdate",
    "PeerUpdateKind",
    "ReadyForHandshake",
    "RelayMap",
    "RemoteProtocolError",
    "RemoveTunnel",
    "Request",
    "Response",
    "UpdateSelf",
    "decode_request",
    "decode_response",
    "encode",
    "validate_endpoint",
    "validate_name",
]

NODE_KEY_SIZE: Final = 32
MAX_ENDPOINTS: Final = 16
MAX_NAME_LENGTH: Final = 64
MAX_ID_LENGTH: Final = 64
MAX_URL_LENGTH: Final = 512
MAX_REASON_LENGTH: Final = 256
MAX_ENDPOINT_LENGTH: Final = 64
MAX_REQUEST_ID: Final = 2**32 - 1
# One ``agents`` page; a longer list comes as several pages (each stays far below
# MAX_MESSAGE_SIZE, and under msgpack's array bound below).
AGENTS_PER_PAGE: Final = 16
# A node with 16 endpoints and a long relay URL stays under 2 KiB; 16 KiB leaves room.
MAX_MESSAGE_SIZE: Final = 16 * 1024


class CloseCode(enum.IntEnum):
    """WebSocket close codes the coordinator uses (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # a text message where binary msgpack is expected
    INVALID_PAYLOAD = 1007  # not msgpack, or a field of the wrong type or size
    POLICY_VIOLATION = 1008  # unknown message type, rate limit, revoked token
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class CoordError(Exception):
    """Base of the coordinator protocol's errors."""


class RemoteProtocolError(CoordError):
    """The peer sent something that is not a valid coordinator message.

    ``close_code`` and ``reason`` are what to close the WebSocket with; ``reason`` is
    short (it fits a close frame's 123 bytes) and says what was wrong and where.
    """

    def __init__(self, reason: str, close_code: CloseCode = CloseCode.INVALID_PAYLOAD) -> None:
        super().__init__(reason)
        self.reason = reason[:120]
        self.close_code = close_code


class PeerUpdateKind(enum.Enum):
    """What a ``peer_update`` tells about a peer."""

    NODE = "node"  # the peer's current node (new or changed)
    LOST = "lost"  # its session dropped; it may come back within the grace period
    DISCONNECTED = "disconnected"  # gone (left, grace expired, or offline): forget its paths
    READY_FOR_HANDSHAKE = "ready_for_handshake"  # it knows us now; handshake away


@dataclass(frozen=True, slots=True)
class HomeRelay:
    """The DERP relay a node is reachable through: a region number and its URL."""

    region: int
    url: str


@dataclass(frozen=True, slots=True)
class Node:
    """One overlay node as the coordinator knows it.

    In ``update_self`` the sender leaves ``id`` and ``owner`` empty (the coordinator
    fills them in from the token); in ``peer_update`` every field is set. ``as_of`` is
    seconds since the Unix epoch when this version of the node was recorded.
    """

    id: str
    name: str
    owner: str
    node_key: bytes
    endpoints: tuple[str, ...] = ()
    home_relay: HomeRelay | None = None
    as_of: float = 0.0


@dataclass(frozen=True, slots=True)
class UpdateSelf:
    """Request: this is my node now (key, endpoints, home relay)."""

    node: Node


@dataclass(frozen=True, slots=True)
class AddTunnel:
    """Request: I want to reach ``peer`` (a node id, an agent name or ``owner/agent``)."""

    peer: str


@dataclass(frozen=True, slots=True)
class RemoveTunnel:
    """Request: I no longer need ``peer``."""

    peer: str


@dataclass(frozen=True, slots=True)
class ReadyForHandshake:
    """Request: I know ``peer`` (a node id) now; tell it to start its handshake."""

    peer: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Request: I am leaving on purpose; tell my peers ``disconnected`` at once."""


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """Response: news about peer ``id``; ``node`` is set when ``kind`` is NODE."""

    id: str
    kind: PeerUpdateKind
    node: Node | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Error:
    """Response: a request failed. ``code`` is machine-readable, ``message`` for people.

    ``peer`` repeats the request's peer reference when the request named one.
    """

    code: str
    message: str
    peer: str = ""


@dataclass(frozen=True, slots=True)
class ListAgents:
    """Request: which agents may I reach? Answered by ``agents`` pages with this ``id``.

    ``id`` (0..2³²-1) is the caller's choice; it only pairs the answer with the question.
    """

    id: int


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One agent the asking node may reach, online or not.

    ``last_seen`` is seconds since the Unix epoch when the coordinator last heard from
    it (its last ``update_self`` or session end), None if never.
    """

    id: str
    name: str
    owner: str
    online: bool
    last_seen: float | None = None


@dataclass(frozen=True, slots=True)
class AgentList:
    """Response: one page (≤ :data:`AGENTS_PER_PAGE`) of the answer to ``list_agents``.

    ``more`` is true on every page but the last; an empty list is one page, ``more`` false.
    """

    id: int
    agents: tuple[AgentInfo, ...] = ()
    more: bool = False


@dataclass(frozen=True, slots=True)
class RelayMap:
    """Response: the DERP relays this control plane offers (home relay candidates).

    Sent once at the start of a session, and only to a client that asked for it when
    it connected (``?relay_map=1`` on the coordinate URL): an older client rejects
    message types it does not know, so it never gets one.
    """

    relays: tuple[HomeRelay, ...] = ()


Request = UpdateSelf | AddTunnel | RemoveTunnel | ReadyForHandshake | Disconnect | ListAgents
Response = PeerUpdate | Error | AgentList | RelayMap


# --- encoding ---------------------------------------------------------------------------


def _relay_to_wire(relay: HomeRelay) -> dict[str, Any]:
    return {"region": relay.region, "url": relay.url}


def _node_to_wire(node: Node) -> dict[str, Any]:
    relay = None
    if node.home_relay is not None:
        relay = _relay_to_wire(node.home_relay)
    return {
        "id": node.id,
        "name": node.name,
        "owner": node.owner,
        "node_key": node.node_key,
        "endpoints": list(node.endpoints),
        "home_relay": relay,
        "as_of": float(node.as_of),
    }


def encode(message: Request | Response) -> bytes:
    """The msgpack bytes of one message (one WebSocket binary message)."""
    body: dict[str, Any]
    match message:
        case UpdateSelf(node=node):
            body = {"type": "update_self", "node": _node_to_wire(node)}
        case AddTunnel(peer=peer):
            body = {"type": "add_tunnel", "peer": peer}
        case RemoveTunnel(peer=peer):
            body = {"type": "remove_tunnel", "peer": peer}
        case ReadyForHandshake(peer=peer):
            body = {"type": "ready_for_handshake", "peer": peer}
        case Disconnect():
            body = {"type": "disconnect"}
        case ListAgents(id=request_id):
            body = {"type": "list_agents", "id": request_id}
        case AgentList(id=request_id, agents=agents, more=more):
            body = {
                "type": "agents",
                "id": request_id,
                "agents": [
                    {
                        "id": a.id,
                        "name": a.name,
                        "owner": a.owner,
                        "online": a.online,
                        "last_seen": None if a.last_seen is None else float(a.last_seen),
                    }
                    for a in agents
                ],
                "more": more,
            }
        case PeerUpdate(id=node_id, kind=kind, node=node, reason=reason):
            body = {
                "type": "peer_update",
                "id": node_id,
                "kind": kind.value,
                "node": None if node is None else _node_to_wire(node),
                "reason": reason,
            }
        case Error(code=code, message=text, peer=peer):
            body = {"type": "error", "code": code, "message": text, "peer": peer}
        case RelayMap(relays=relays):
            body = {"type": "relays", "relays": [_relay_to_wire(r) for r in relays]}
        case _:
            raise TypeError(f"not a coordinator message: {message!r}")
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


# --- decoding ---------------------------------------------------------------------------


def _fail(reason: str, code: CloseCode = CloseCode.INVALID_PAYLOAD) -> RemoteProtocolError:
    return RemoteProtocolError(reason, code)


def _unpack(data: bytes) -> tuple[str, dict[str, Any]]:
    if len(data) > MAX_MESSAGE_SIZE:
        raise _fail(
            f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}", CloseCode.MESSAGE_TOO_BIG
        )
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_URL_LENGTH,
            max_bin_len=NODE_KEY_SIZE,
            max_array_len=MAX_ENDPOINTS,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, ...)
        raise _fail(f"not a msgpack message: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise _fail("message is not a msgpack map")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _fail("message has no string 'type'")
    return kind, obj


def _fields(obj: Mapping[str, Any], where: str, required: set[str], optional: set[str]) -> None:
    keys = set(obj)
    missing = required - keys
    if missing:
        raise _fail(f"{where}: missing {', '.join(sorted(missing))}")
    extra = keys - required - optional
    if extra:
        raise _fail(f"{where}: unknown field {sorted(str(k) for k in extra)[0][:32]!r}")


def _str(obj: Mapping[str, Any], key: str, where: str, limit: int, *, empty: bool = True) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}: expected a string")
    if len(value) > limit:
        raise _fail(f"{where}.{key}: longer than {limit} characters")
    if not empty and not value:
        raise _fail(f"{where}.{key}: empty")
    if not value.isprintable():
        raise _fail(f"{where}.{key}: not printable text")
    return value


def validate_name(name: str) -> str | None:
    """Why ``name`` is not a valid node/agent/user name, or None if it is.

    Names are 1-64 characters of ASCII letters, digits, ``.``, ``_`` and ``-``,
    starting with a letter or digit (they appear in URLs, logs and ``owner/agent``).
    """
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        return f"must be 1-{MAX_NAME_LENGTH} characters"
    if not (name[0].isascii() and name[0].isalnum()):
        return "must start with a letter or digit"
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in name):
        return "may only contain letters, digits, '.', '_' and '-'"
    return None


def validate_endpoint(text: str) -> str | None:
    """Why ``text`` is not an ``ip:port`` / ``[ipv6]:port`` endpoint, or None if it is."""
    if len(text) > MAX_ENDPOINT_LENGTH:
        return "too long"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return "expected [IPv6]:PORT"
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "not an IPv6 address"
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            return "expected IP:PORT"
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "not an IPv4 address"
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        return "port must be 1-65535"
    return None


def _node(value: Any, where: str) -> Node:
    if not isinstance(value, dict):
        raise _fail(f"{where}: expected a map")
    keys = {"id", "name", "owner", "node_key", "endpoints", "home_relay", "as_of"}
    _fields(value, where, keys, set())
    node_id = _str(value, "id", where, MAX_ID_LENGTH)
    owner = _str(value, "owner", where, MAX_NAME_LENGTH)
    name = _str(value, "name", where, MAX_NAME_LENGTH)
    problem = validate_name(name)
    if problem is not None:
        raise _fail(f"{where}.name: {problem}")
    key = value["node_key"]
    if not isinstance(key, bytes) or len(key) != NODE_KEY_SIZE:
        raise _fail(f"{where}.node_key: expected {NODE_KEY_SIZE} bytes")
    endpoints = value["endpoints"]
    if not isinstance(endpoints, list):
        raise _fail(f"{where}.endpoints: expected a list")
    if len(endpoints) > MAX_ENDPOINTS:
        raise _fail(f"{where}.endpoints: more than {MAX_ENDPOINTS}")
    for i, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, str):
            raise _fail(f"{where}.endpoints[{i}]: expected a string")
        problem = validate_endpoint(endpoint)
        if problem is not None:
            raise _fail(f"{where}.endpoints[{i}]: {problem}")
    if len(set(endpoints)) != len(endpoints):
        raise _fail(f"{where}.endpoints: duplicates")
    relay_value = value["home_relay"]
    relay: HomeRelay | None = None
    if relay_value is not None:
        relay = _relay(relay_value, f"{where}.home_relay")
    as_of = value["as_of"]
    if isinstance(as_of, bool) or not isinstance(as_of, (int, float)):
        raise _fail(f"{where}.as_of: expected a number")
    if not math.isfinite(as_of) or as_of < 0:
        raise _fail(f"{where}.as_of: expected a finite non-negative number")
    return Node(node_id, name, owner, key, tuple(endpoints), relay, float(as_of))


def _relay(value: Any, where: str) -> HomeRelay:
    if not isinstance(value, dict):
        raise _fail(f"{where}: expected a map or nil")
    _fields(value, where, {"region", "url"}, set())
    region = value["region"]
    if isinstance(region, bool) or not isinstance(region, int) or not 0 <= region < 2**31:
        raise _fail(f"{where}.region: expected an integer 0..2^31-1")
    url = _str(value, "url", where, MAX_URL_LENGTH)
    if url and not url.startswith(("http://", "https://", "ws://", "wss://")):
        raise _fail(f"{where}.url: expected an http(s)/ws(s) URL")
    return HomeRelay(region, url)


def _relay_map(obj: dict[str, Any]) -> RelayMap:
    _fields(obj, "relays", {"type", "relays"}, set())
    entries = obj["relays"]
    if not isinstance(entries, list):
        raise _fail("relays.relays: expected a list")
    relays = tuple(_relay(entry, f"relays.relays[{i}]") for i, entry in enumerate(entries))
    if any(not relay.url for relay in relays):
        raise _fail("relays.relays: empty url")
    return RelayMap(relays)


def _peer_request(cls: Callable[[str], Request]) -> Callable[[dict[str, Any]], Request]:
    def build(obj: dict[str, Any]) -> Request:
        _fields(obj, "request", {"type", "peer"}, set())
        return cls(_str(obj, "peer", "request", MAX_ID_LENGTH + MAX_NAME_LENGTH, empty=False))

    return build


def _update_self(obj: dict[str, Any]) -> Request:
    _fields(obj, "update_self", {"type", "node"}, set())
    return UpdateSelf(_node(obj["node"], "update_self.node"))


def _disconnect(obj: dict[str, Any]) -> Request:
    _fields(obj, "disconnect", {"type"}, set())
    return Disconnect()


def _request_id(obj: Mapping[str, Any], where: str) -> int:
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REQUEST_ID:
        raise _fail(f"{where}.id: expected an integer 0..2^32-1")
    return value


def _list_agents(obj: dict[str, Any]) -> Request:
    _fields(obj, "list_agents", {"type", "id"}, set())
    return ListAgents(_request_id(obj, "list_agents"))


def _agent_info(value: Any, where: str) -> AgentInfo:
    if not isinstance(value, dict):
        raise _fail(f"{where}: expected a map")
    _fields(value, where, {"id", "name", "owner", "online", "last_seen"}, set())
    node_id = _str(value, "id", where, MAX_ID_LENGTH, empty=False)
    name = _str(value, "name", where, MAX_NAME_LENGTH)
    problem = validate_name(name)
    if problem is not None:
        raise _fail(f"{where}.name: {problem}")
    owner = _str(value, "owner", where, MAX_NAME_LENGTH, empty=False)
    online = value["online"]
    if not isinstance(online, bool):
        raise _fail(f"{where}.online: expected a boolean")
    last_seen = value["last_seen"]
    if last_seen is not None:
        if isinstance(last_seen, bool) or not isinstance(last_seen, (int, float)):
            raise _fail(f"{where}.last_seen: expected a number or nil")
        if not math.isfinite(last_seen) or last_seen < 0:
            raise _fail(f"{where}.last_seen: expected a finite non-negative number")
        last_seen = float(last_seen)
    return AgentInfo(node_id, name, owner, online, last_seen)


def _agent_list(obj: dict[str, Any]) -> AgentList:
    _fields(obj, "agents", {"type", "id", "agents", "more"}, set())
    request_id = _request_id(obj, "agents")
    entries = obj["agents"]
    if not isinstance(entries, list):
        raise _fail("agents.agents: expected a list")
    if len(entries) > AGENTS_PER_PAGE:
        raise _fail(f"agents.agents: more than {AGENTS_PER_PAGE}")
    agents = tuple(_agent_info(entry, f"agents.agents[{i}]") for i, entry in enumerate(entries))
    more = obj["more"]
    if not isinstance(more, bool):
        raise _fail("agents.more: expected a boolean")
    return AgentList(request_id, agents, more)


_REQUESTS: Final[dict[str, Callable[[dict[str, Any]], Request]]] = {
    "update_self": _update_self,
    "add_tunnel": _peer_request(AddTunnel),
    "remove_tunnel": _peer_request(RemoveTunnel),
    "ready_for_handshake": _peer_request(ReadyForHandshake),
    "disconnect": _disconnect,
    "list_agents": _list_agents,
}


def decode_request(data: bytes) -> Request:
    """Parse one client-to-coordinator message.

    Raises:
        RemoteProtocolError: not msgpack, too big (close 1009), unknown type (1008),
            or a field missing, unknown, of the wrong type or out of bounds (1007).
    """
    kind, obj = _unpack(data)
    build = _REQUESTS.get(kind)
    if build is None:
        raise _fail(f"unknown request type {kind[:32]!r}", CloseCode.POLICY_VIOLATION)
    return build(obj)


_KINDS: Final = {kind.value: kind for kind in PeerUpdateKind}


def decode_response(data: bytes) -> Response:
    """Parse one coordinator-to-client message.

    Raises:
        RemoteProtocolError: as :func:`decode_request`.
    """
    kind, obj = _unpack(data)
    if kind == "peer_update":
        _fields(obj, "peer_update", {"type", "id", "kind", "node", "reason"}, set())
        node_id = _str(obj, "id", "peer_update", MAX_ID_LENGTH, empty=False)
        kind_text = obj["kind"]
        if not isinstance(kind_text, str) or kind_text not in _KINDS:
            raise _fail("peer_update.kind: unknown kind")
        update_kind = _KINDS[kind_text]
        node = None if obj["node"] is None else _node(obj["node"], "peer_update.node")
        if (node is not None) != (update_kind is PeerUpdateKind.NODE):
            raise _fail("peer_update.node: set exactly when kind is 'node'")
        if node is not None and node.id != node_id:
            raise _fail("peer_update.node.id: differs from peer_update.id")
        reason = _str(obj, "reason", "peer_update", MAX_REASON_LENGTH)
        return PeerUpdate(node_id, update_kind, node, reason)
    if kind == "error":
        _fields(obj, "error", {"type", "code", "message", "peer"}, set())
        return Error(
            _str(obj, "code", "error", MAX_NAME_LENGTH, empty=False),
            _str(obj, "message", "error", MAX_REASON_LENGTH),
            _str(obj, "peer", "error", MAX_ID_LENGTH + MAX_NAME_LENGTH),
        )
    if kind == "agents":
        return _agent_list(obj)
    if kind == "relays":
        return _relay_map(obj)
    raise _fail(f"unknown response type {kind[:32]!r}", CloseCode.POLICY_VIOLATION)
