"""WireGuardCore stepped by hand: handshakes, transport both ways, rekeys and timers."""

from __future__ import annotations

import pytest
from _noise_support import Pair

from tunneld.proto.noise import (
    INITIATION_SIZE,
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    RESPONSE_SIZE,
    DataReceived,
    HandshakeCompleted,
    HandshakeTimedOut,
    NoiseError,
    RemoteProtocolError,
)


def kinds(log: list[tuple[str, object]]) -> list[tuple[str, int, int]]:
    return [(who, out.data[0], len(out.data)) for who, out in log]  # type: ignore[attr-defined]


def test_handshake_then_data_both_ways() -> None:
    p = Pair()
    p.a.initiate(p.b_pub, p.now, p.wall)
    log = p.deliver()
    # initiation, response, then the initiator's keepalive confirms the keys.
    assert kinds(log) == [("a", 1, INITIATION_SIZE), ("b", 2, RESPONSE_SIZE), ("a", 4, 32)]
    assert p.events(p.a) == [HandshakeCompleted(p.b_pub, True)]
    assert p.events(p.b) == [HandshakeCompleted(p.a_pub, False)]

    p.a.send(p.b_pub, b"hello", p.now, p.wall)
    log = p.deliver()
    assert kinds(log) == [("a", 4, 32 + 16)]
    assert p.events(p.b) == [DataReceived(p.a_pub, b"hello" + bytes(11))]
    p.b.send(p.a_pub, b"x" * 16, p.now, p.wall)
    p.deliver()
    assert p.events(p.a) == [DataReceived(p.b_pub, b"x" * 16)]
    assert p.a.peer_status(p.b_pub).endpoint == Pair.B_ADDR
    assert p.b.peer_status(p.a_pub).has_session


def test_send_before_handshake_stages_payload_on_both_sides() -> None:
    p = Pair()
    p.b.send(p.a_pub, b"from b", p.now, p.wall)  # b initiates this time
    log = p.deliver()
    assert kinds(log)[:2] == [("b", 1, INITIATION_SIZE), ("a", 2, RESPONSE_SIZE)]
    assert p.events(p.a) == [
        HandshakeCompleted(p.b_pub, False),
        DataReceived(p.b_pub, b"from b" + bytes(10)),
    ]


def test_responder_cannot_send_before_key_confirmation() -> None:
    p = Pair()
    p.a.initiate(p.b_pub, p.now, p.wall)
    (init,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(init.data, Pair.A_ADDR, p.now, p.wall)
    (resp,) = p.b.datagrams_to_send(p.now)
    # b has only a `next` keypair: its data waits for a's first transport packet.
    p.b.send(p.a_pub, b"early", p.now, p.wall)
    assert p.b.datagrams_to_send(p.now) == []
    p.a.receive_datagram(resp.data, Pair.B_ADDR, p.now, p.wall)
    p.deliver()
    assert DataReceived(p.b_pub, b"early" + bytes(11)) in p.events(p.a)


def test_unknown_peer_is_local_error() -> None:
    p = Pair()
    with pytest.raises(NoiseError, match="unknown peer"):
        p.a.send(b"\x09" * 32, b"x", p.now, p.wall)


def test_rekey_after_time_by_initiator_keeps_traffic_flowing() -> None:
    p = Pair()
    p.handshake()
    p.events(p.a), p.events(p.b)
    for step in range(30):
        p.now += 5
        p.a.send(p.b_pub, b"a%d" % step, p.now, p.wall)
        p.b.send(p.a_pub, b"b%d" % step, p.now, p.wall)
        p.deliver()
        got_b = [e for e in p.events(p.b) if isinstance(e, DataReceived)]
        got_a = [e for e in p.events(p.a) if isinstance(e, DataReceived)]
        assert [e.payload.rstrip(b"\0") for e in got_b] == [b"a%d" % step]
        assert [e.payload.rstrip(b"\0") for e in got_a] == [b"b%d" % step]
    # 150 s of traffic: a new session replaced the first after RekeyAfterTime.
    assert p.a.peer_status(p.b_pub).last_handshake > 100.0 + REKEY_AFTER_TIME - 1
    # Retired keypairs left the index table: current + previous at most.
    assert len(p.a._index) <= 3
    assert len(p.b._index) <= 3


def test_keepalive_after_receiving_data_and_sending_nothing() -> None:
    p = Pair()
    p.handshake()
    p.a.send(p.b_pub, b"ping", p.now, p.wall)
    p.deliver()
    assert p.b.get_timer() is not None
    start = p.now
    p.advance(KEEPALIVE_TIMEOUT - 0.01)
    assert p.b.datagrams_to_send(p.now) == []
    p.advance(0.02)
    (keepalive,) = p.b.datagrams_to_send(p.now)
    assert len(keepalive.data) == 32
    assert p.now - start >= KEEPALIVE_TIMEOUT


def test_new_handshake_when_sending_without_receiving() -> None:
    p = Pair()
    p.handshake()
    p.a.send(p.b_pub, b"ping", p.now, p.wall)
    p.deliver(drop=True)  # b never hears, never answers
    p.advance(15.4)
    out = p.a.datagrams_to_send(p.now)
    assert [o.data[0] for o in out] == [1]


def test_reject_after_time_forces_a_new_handshake() -> None:
    p = Pair()
    p.handshake()
    p.now += REJECT_AFTER_TIME + 1
    p.b.send(p.a_pub, b"late", p.now, p.wall)
    (out,) = p.b.datagrams_to_send(p.now)
    assert out.data[0] == 1  # no transport with an expired key: a fresh initiation


def test_retransmits_then_gives_up_and_zeroes() -> None:
    p = Pair()
    p.a.send(p.b_pub, b"never", p.now, p.wall)
    sent = [o.data[0] for o in p.a.datagrams_to_send(p.now)]
    start = p.now
    timed_out = []
    while not timed_out:
        deadline = p.a.get_timer()
        assert deadline is not None
        p.now = deadline
        p.a.handle_timer(p.now, p.wall)
        sent += [o.data[0] for o in p.a.datagrams_to_send(p.now)]
        timed_out = p.events(p.a)
    assert timed_out == [HandshakeTimedOut(p.b_pub)]
    assert sent == [1] * 20  # first + 19 retries, like wireguard-go
    assert 95 <= p.now - start <= 100 + 20 * 0.334
    # Afterwards a send starts over.
    p.a.send(p.b_pub, b"again", p.now, p.wall)
    assert [o.data[0] for o in p.a.datagrams_to_send(p.now)] == [1]


def test_replayed_transport_is_rejected_with_counter() -> None:
    p = Pair()
    p.handshake()
    p.a.send(p.b_pub, b"once", p.now, p.wall)
    (packet,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(packet.data, Pair.A_ADDR, p.now, p.wall)
    with pytest.raises(RemoteProtocolError, match=r"transport: replayed counter 1"):
        p.b.receive_datagram(packet.data, Pair.A_ADDR, p.now, p.wall)


def test_simultaneous_initiations_settle_in_one_round_trip() -> None:
    p = Pair()
    # Both ends initiate before either hears the other (the overlay does this when
    # the coordinator introduces two nodes); the lower static key's handshake wins.
    p.a.initiate(p.b_pub, p.now, p.wall)
    p.b.initiate(p.a_pub, p.now, p.wall)
    p.deliver()
    low, high = (p.a, p.b) if p.a_pub < p.b_pub else (p.b, p.a)
    low_pub, high_pub = (p.a_pub, p.b_pub) if p.a_pub < p.b_pub else (p.b_pub, p.a_pub)
    assert p.rejected == ["initiation: crossed our own pending initiation (lower static key wins)"]
    assert p.events(low) == [HandshakeCompleted(high_pub, True)]
    assert p.events(high) == [HandshakeCompleted(low_pub, False)]
    low.send(high_pub, b"ping", p.now, p.wall)
    high.send(low_pub, b"pong", p.now, p.wall)
    p.deliver()
    assert p.events(high) == [DataReceived(low_pub, b"ping" + bytes(12))]
    assert p.events(low) == [DataReceived(high_pub, b"pong" + bytes(12))]
