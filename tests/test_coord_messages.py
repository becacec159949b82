"""The coordinator protocol: round trips, strict validation with clear reasons, fuzzing."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.proto.coord import (
    AGENTS_PER_PAGE,
    MAX_ENDPOINTS,
    MAX_MESSAGE_SIZE,
    AddTunnel,
    AgentInfo,
    AgentList,
    CloseCode,
    CoordinatorClient,
    Disconnect,
    Error,
    HomeRelay,
    ListAgents,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    RemoteProtocolError,
    RemoveTunnel,
    UpdateSelf,
    decode_request,
    decode_response,
    encode,
)

FUZZ = settings(
    derandomize=True,
    max_examples=int(os.environ.get("TUNNELD_FUZZ_EXAMPLES", "300")),
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)
# Structured inputs are costly to generate; fewer of them cover the validators well.
FUZZ_STRUCTURED = settings(FUZZ, max_examples=max(FUZZ.max_examples // 4, 25))
KEY = bytes(range(32))
NODE = Node(
    "n0123456789abcdef",
    "laptop",
    "alice",
    KEY,
    ("192.0.2.1:41641", "[2001:db8::1]:41641"),
    HomeRelay(1, "wss://control.example.org/derp"),
    1700000000.5,
)

REQUESTS = [
    UpdateSelf(NODE),
    UpdateSelf(Node("", "laptop", "", KEY)),
    AddTunnel("web1"),
    AddTunnel("bob/web1"),
    RemoveTunnel("n0123456789abcdef"),
    ReadyForHandshake("n0123456789abcdef"),
    Disconnect(),
    ListAgents(0),
    ListAgents(2**32 - 1),
]
AGENT = AgentInfo("n0123456789abcdef", "web1", "alice", True, 1700000000.5)
RESPONSES = [
    PeerUpdate(NODE.id, PeerUpdateKind.NODE, NODE),
    PeerUpdate(NODE.id, PeerUpdateKind.LOST, reason="session lost"),
    PeerUpdate(NODE.id, PeerUpdateKind.DISCONNECTED, reason="offline"),
    PeerUpdate(NODE.id, PeerUpdateKind.READY_FOR_HANDSHAKE),
    Error("not_found", "no such peer, or not permitted", "web9"),
    AgentList(7),
    AgentList(7, (AGENT, AgentInfo("n1", "db1", "bob", False, None)), more=True),
    AgentList(8, (AGENT,) * AGENTS_PER_PAGE),
]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
def test_requests_round_trip(message: Any) -> None:
    assert decode_request(encode(message)) == message


@pytest.mark.parametrize("message", RESPONSES, ids=lambda m: type(m).__name__)
def test_responses_round_trip(message: Any) -> None:
    assert decode_response(encode(message)) == message


def _wire(obj: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _node_wire(**changes: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": "",
        "name": "laptop",
        "owner": "",
        "node_key": KEY,
        "endpoints": ["192.0.2.1:41641"],
        "home_relay": None,
        "as_of": 0.0,
    }
    node.update(changes)
    return node


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        (b"\xc1", CloseCode.INVALID_PAYLOAD, "not a msgpack message"),
        (_wire({"peer": "x"}), CloseCode.INVALID_PAYLOAD, "no string 'type'"),
        (msgpack.packb([1, 2]), CloseCode.INVALID_PAYLOAD, "not a msgpack map"),
        (_wire({"type": "hello"}), CloseCode.POLICY_VIOLATION, "unknown request type 'hello'"),
        (_wire({"type": "add_tunnel"}), CloseCode.INVALID_PAYLOAD, "request: missing peer"),
        (
            _wire({"type": "add_tunnel", "peer": "a", "x": 1}),
            CloseCode.INVALID_PAYLOAD,
            "unknown field 'x'",
        ),
        (_wire({"type": "add_tunnel", "peer": 5}), CloseCode.INVALID_PAYLOAD, "peer: expected"),
        (_wire({"type": "add_tunnel", "peer": ""}), CloseCode.INVALID_PAYLOAD, "peer: empty"),
        (
            _wire({"type": "update_self", "node": _node_wire(node_key=b"short")}),
            CloseCode.INVALID_PAYLOAD,
            "update_self.node.node_key: expected 32 bytes",
        ),
        (
            _wire({"type": "update_self", "node": _node_wire(endpoints=["1.2.3.4"])}),
            CloseCode.INVALID_PAYLOAD,
            "update_self.node.endpoints[0]: expected IP:PORT",
        ),
        (
            _wire({"type": "update_self", "node": _node_wire(endpoints=["1.2.3.4:0"])}),
            CloseCode.INVALID_PAYLOAD,
            "endpoints[0]: port must be 1-65535",
        ),
        (
            _wire({"type": "update_self", "node": _node_wire(endpoints=["host:80"])}),
            CloseCode.INVALID_PAYLOAD,
            "endpoints[0]: not an IPv4 address",
        ),
        (
            _wire(
                {
                    "type": "update_self",
                    "node": _node_wire(endpoints=[f"10.0.0.{i}:1" for i in range(17)]),
                }
            ),
            CloseCode.INVALID_PAYLOAD,
            "not a msgpack message",  # msgpack's own array bound trips first
        ),
        (
            _wire({"type": "update_self", "node": _node_wire(name="bad name")}),
            CloseCode.INVALID_PAYLOAD,
            "update_self.node.name: may only contain",
        ),
        (
            _wire({"type": "update_self", "node": _node_wire(as_of=float("nan"))}),
            CloseCode.INVALID_PAYLOAD,
            "update_self.node.as_of: expected a finite",
        ),
        (
            _wire(
                {"type": "update_self", "node": _node_wire(home_relay={"region": -1, "url": ""})}
            ),
            CloseCode.INVALID_PAYLOAD,
            "update_self.node.home_relay.region",
        ),
        (b"\x00" * (MAX_MESSAGE_SIZE + 1), CloseCode.MESSAGE_TOO_BIG, "exceeds"),
    ],
)
def test_bad_requests_name_what_and_where(data: bytes, code: CloseCode, fragment: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_request(data)
    assert info.value.close_code == code
    assert fragment in info.value.reason
    assert len(info.value.reason.encode()) <= 123  # fits a close frame


def test_endpoint_count_is_bounded() -> None:
    assert MAX_ENDPOINTS == 16
    ok = _node_wire(endpoints=[f"10.0.0.{i}:1" for i in range(16)])
    assert len(decode_request(_wire({"type": "update_self", "node": ok})).node.endpoints) == 16  # type: ignore[union-attr]


def test_peer_update_node_must_match_kind() -> None:
    bad = {
        "type": "peer_update",
        "id": "n1",
        "kind": "lost",
        "node": _node_wire(id="n1"),
        "reason": "",
    }
    with pytest.raises(RemoteProtocolError, match="set exactly when kind is 'node'"):
        decode_response(_wire(bad))
    with pytest.raises(RemoteProtocolError, match="unknown kind"):
        decode_response(_wire({**bad, "kind": ["x"], "node": None}))


def test_client_helper_tracks_peers_and_replays() -> None:
    client = CoordinatorClient()
    client.update_self(name="laptop", node_key=KEY, endpoints=("192.0.2.1:1",))
    client.add_tunnel("web1")
    client.add_tunnel("web2")
    client.remove_tunnel("web2")
    replay = [decode_request(m) for m in client.replay()]
    assert replay == [
        UpdateSelf(Node("", "laptop", "", KEY, ("192.0.2.1:1",))),
        AddTunnel("web1"),
    ]
    client.receive(encode(RESPONSES[0]))
    assert client.peers[NODE.id].online
    client.receive(encode(RESPONSES[1]))
    assert not client.peers[NODE.id].online
    client.receive(encode(RESPONSES[0]))
    client.receive(encode(RESPONSES[3]))
    assert client.peers[NODE.id].online
    assert client.peers[NODE.id].ready_for_handshake
    client.receive(encode(RESPONSES[2]))
    assert NODE.id not in client.peers
    assert client.receive(encode(RESPONSES[4])) == RESPONSES[4]
    with pytest.raises(RemoteProtocolError):
        client.receive(encode(REQUESTS[2]))  # a request is not a valid response


def test_client_helper_catches_up_with_changes_made_during_a_replay() -> None:
    client = CoordinatorClient()
    client.update_self(name="laptop", node_key=KEY)
    client.add_tunnel("web1")
    client.add_tunnel("web2")
    assert len(client.replay()) == 3
    assert client.catch_up() == []  # nothing changed since
    # While the replay is being sent the owner has no session: it only records.
    client.add_tunnel("web3")
    client.remove_tunnel("web1")
    client.update_self(name="laptop", node_key=KEY, endpoints=("192.0.2.1:1",))
    assert [decode_request(m) for m in client.catch_up()] == [
        UpdateSelf(Node("", "laptop", "", KEY, ("192.0.2.1:1",))),
        RemoveTunnel("web1"),
        AddTunnel("web3"),
    ]
    assert client.catch_up() == []
    client.add_tunnel("web1")
    client.remove_tunnel("web1")  # added and given up in one go: nothing to say
    assert client.catch_up() == []
    # A fresh replay starts over from the whole state.
    assert [decode_request(m) for m in client.replay()][1:] == [
        AddTunnel("web2"),
        AddTunnel("web3"),
    ]
    assert client.catch_up() == []


# --- fuzzing: only RemoteProtocolError may escape ------------------------------------

_VALID = [encode(m) for m in REQUESTS + RESPONSES]


def _decode_both(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        error: RemoteProtocolError | None = None
        try:
            decode(data)
        except RemoteProtocolError as exc:
            error = exc
        if error is not None:
            assert error.reason
            assert isinstance(error.close_code, CloseCode)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_both(data)


@FUZZ
@given(st.sampled_from(_VALID), st.data())
def test_fuzz_mutated_valid_messages(valid: bytes, data: st.DataObject) -> None:
    mutation = data.draw(st.sampled_from(["truncate", "extend", "flip", "splice"]))
    if mutation == "truncate":
        cut = data.draw(st.integers(0, len(valid)))
        mutated = valid[:cut]
    elif mutation == "extend":
        mutated = valid + data.draw(st.binary(min_size=1, max_size=32))
    elif mutation == "flip":
        buf = bytearray(valid)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        mutated = bytes(buf)
    else:
        i = data.draw(st.integers(0, len(valid)))
        mutated = valid[:i] + data.draw(st.binary(max_size=16)) + valid[i:]
    _decode_both(mutated)


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.sampled_from(["update_self", "add_tunnel", "peer_update", "error", "node", "lost"]),
    st.sampled_from(["list_agents", "agents"]),
)
_objects = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "peer",
                    "node",
                    "id",
                    "name",
                    "owner",
                    "node_key",
                    "endpoints",
                    "home_relay",
                    "as_of",
                    "kind",
                    "reason",
                    "code",
                    "message",
                    "region",
                    "url",
                    "agents",
                    "online",
                    "last_seen",
                    "more",
                ]
            ),
            inner,
            max_size=8,
        ),
    ),
    max_leaves=12,
)


@FUZZ_STRUCTURED
@given(_objects)
def test_fuzz_structured_msgpack(obj: object) -> None:
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    _decode_both(data)


@FUZZ_STRUCTURED
@given(
    st.sampled_from(["update_self", "peer_update"]),
    st.dictionaries(
        st.sampled_from(["id", "name", "owner", "node_key", "endpoints", "home_relay", "as_of"]),
        _objects,
    ),
)
def test_fuzz_node_fields(kind: str, fields: dict[str, Any]) -> None:
    node = {**_node_wire(id="n1"), **fields}
    body = {"type": kind, "node": node}
    if kind == "peer_update":
        body.update(id="n1", kind="node", reason="")
    try:
        data = _wire(body)
    except (OverflowError, ValueError, TypeError):
        return
    _decode_both(data)


def _agent_wire(**changes: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "id": "n1",
        "name": "web1",
        "owner": "alice",
        "online": True,
        "last_seen": None,
    }
    agent.update(changes)
    return agent


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"type": "list_agents"}, "list_agents: missing id"),
        ({"type": "list_agents", "id": -1}, "list_agents.id: expected an integer 0..2^32-1"),
        ({"type": "list_agents", "id": True}, "list_agents.id: expected an integer"),
        ({"type": "list_agents", "id": 1, "x": 1}, "unknown field 'x'"),
    ],
)
def test_bad_list_agents_requests(obj: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_request(_wire(obj))
    assert fragment in info.value.reason
    assert info.value.close_code is CloseCode.INVALID_PAYLOAD


@pytest.mark.parametrize(
    ("agents", "more", "fragment"),
    [
        ([_agent_wire(online="yes")], False, "agents.agents[0].online: expected a boolean"),
        ([_agent_wire(name="a b")], False, "agents.agents[0].name: may only contain"),
        ([_agent_wire(owner="")], False, "agents.agents[0].owner: empty"),
        ([_agent_wire(last_seen=-1.0)], False, "agents.agents[0].last_seen: expected a finite"),
        ([_agent_wire(last_seen="now")], False, "last_seen: expected a number or nil"),
        ([_agent_wire(), 5], False, "agents.agents[1]: expected a map"),
        ([_agent_wire()], 1, "agents.more: expected a boolean"),
        ([_agent_wire()] * (AGENTS_PER_PAGE + 1), False, "not a msgpack message"),
    ],
)
def test_bad_agent_lists_name_what_and_where(
    agents: list[Any], more: object, fragment: str
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_response(_wire({"type": "agents", "id": 1, "agents": agents, "more": more}))
    assert fragment in info.value.reason


def test_client_gathers_agent_pages_per_request() -> None:
    client = CoordinatorClient()
    first, data = client.list_agents()
    assert decode_request(data) == ListAgents(first)
    second, _ = client.list_agents()
    assert second != first
    other = AgentInfo("n2", "db1", "bob", False, 1.0)
    # A page for a request nobody asked comes back unchanged and is not kept.
    assert client.receive(encode(AgentList(99, (AGENT,)))) == AgentList(99, (AGENT,))
    assert client.receive(encode(AgentList(first, (AGENT,), more=True))).more
    assert client.receive(encode(AgentList(second, ()))) == AgentList(second, ())
    assert client.receive(encode(AgentList(first, (other,)))) == AgentList(first, (AGENT, other))
    # Answered (or given up): later pages with that id are not gathered any more.
    assert client.receive(encode(AgentList(first, (other,)))) == AgentList(first, (other,))
    third, _ = client.list_agents()
    assert client.forget_listings() == [third]


@FUZZ_STRUCTURED
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["id", "name", "owner", "online", "last_seen"]), _objects, max_size=6
        ).map(lambda fields: {**_agent_wire(), **fields}),
        max_size=4,
    ),
    _objects,
)
def test_fuzz_agent_list_fields(agents: list[dict[str, Any]], more: object) -> None:
    try:
        data = _wire({"type": "agents", "id": 3, "agents": agents, "more": more})
    except (OverflowError, ValueError, TypeError):
        return
    _decode_both(data)
