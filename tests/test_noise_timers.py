"""Timers and key lifetimes, stepped by hand (wireguard-go timers.go semantics)."""

from __future__ import annotations

import pytest
from _noise_support import Pair, ScriptedRng, private_key

from tunneld.proto.noise import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_TIMEOUT,
    DataReceived,
    HandshakeCompleted,
    RemoteProtocolError,
    WireGuardCore,
)


def sent_types(core: WireGuardCore, now: float) -> list[int]:
    return [o.data[0] for o in core.datagrams_to_send(now)]


def test_persistent_keepalive_every_interval_and_handshake_when_no_session() -> None:
    p = Pair(keepalive=25.0)
    p.a.initiate(p.b_pub, p.now, p.wall)
    p.deliver()
    p.events(p.a), p.events(p.b)
    start = p.now
    assert p.a.get_timer() == pytest.approx(start + 25.0)
    p.advance(25.0)
    log = p.deliver()
    # Each side sent a keepalive at its own 25 s mark (both heard packets at `start`).
    assert sorted((who, out.data[0], len(out.data)) for who, out in log) == [
        ("a", 4, 32),
        ("b", 4, 32),
    ]


def test_persistent_keepalive_starts_a_handshake_without_session() -> None:
    p = Pair(keepalive=10.0)
    p.a.initiate(p.b_pub, p.now, p.wall)
    assert sent_types(p.a, p.now) == [1]  # lost
    p.advance(30.0)  # retransmits happen; persistent keepalive arms after traversal
    types = sent_types(p.a, p.now)
    assert types
    assert set(types) == {1}


def test_initiator_rekeys_on_receive_after_165_seconds() -> None:
    p = Pair()
    p.handshake()
    p.events(p.a), p.events(p.b)
    p.now += 164.0
    p.b.send(p.a_pub, b"early", p.now, p.wall)
    assert sent_types(p.b, p.now) == [4]  # b is responder: no time-based rekey on send
    p.now += 2.0  # 166 s: a receiving data under an old key starts a last-minute handshake
    p.b.send(p.a_pub, b"late", p.now, p.wall)
    (packet,) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(packet.data, Pair.B_ADDR, p.now, p.wall)
    assert sent_types(p.a, p.now) == [1]
    # Only once per session: the next packet does not start another.
    p.b.send(p.a_pub, b"later", p.now + 0.1, p.wall)
    (packet,) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(packet.data, Pair.B_ADDR, p.now + 0.1, p.wall)
    assert sent_types(p.a, p.now) == []


def test_rekey_after_messages_and_reject_after_messages() -> None:
    p = Pair()
    p.handshake()
    # 2^60 messages is out of reach, so jump the sending counter (white-box).
    keypair = p.a._peers[p.b_pub].current
    assert keypair is not None
    p.now += REKEY_TIMEOUT + 1  # past the rate limit on initiations
    keypair.send_counter = REKEY_AFTER_MESSAGES + 1
    p.a.send(p.b_pub, b"x", p.now, p.wall)
    assert sent_types(p.a, p.now) == [4, 1]  # data still goes, a rekey starts
    keypair.send_counter = REJECT_AFTER_MESSAGES
    p.now += REKEY_TIMEOUT + 1
    p.a.send(p.b_pub, b"y", p.now, p.wall)
    assert sent_types(p.a, p.now) == [1]  # no more packets under this key: staged


def test_receiver_rejects_counter_at_reject_after_messages() -> None:
    p = Pair()
    p.handshake()
    keypair = p.a._peers[p.b_pub].current
    assert keypair is not None
    keypair.send_counter = REJECT_AFTER_MESSAGES - 1
    p.a.send(p.b_pub, b"last", p.now, p.wall)
    (last,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(last.data, Pair.A_ADDR, p.now, p.wall)
    assert DataReceived(p.a_pub, b"last" + bytes(12)) in p.events(p.b)
    forged_counter = bytearray(last.data)
    forged_counter[8:16] = REJECT_AFTER_MESSAGES.to_bytes(8, "little")
    with pytest.raises(RemoteProtocolError, match="at or past RejectAfterMessages"):
        p.b.receive_datagram(bytes(forged_counter), Pair.A_ADDR, p.now, p.wall)


def test_packets_under_the_previous_keypair_still_decrypt_after_rekey() -> None:
    p = Pair()
    p.handshake()
    p.a.send(p.b_pub, b"in flight", p.now, p.wall)
    (in_flight,) = p.a.datagrams_to_send(p.now)
    p.now += REKEY_TIMEOUT + 1
    p.a.initiate(p.b_pub, p.now, p.wall)
    p.deliver()
    p.events(p.a), p.events(p.b)
    p.b.receive_datagram(in_flight.data, Pair.A_ADDR, p.now, p.wall)
    assert p.events(p.b) == [DataReceived(p.a_pub, b"in flight" + bytes(7))]


def test_session_expires_after_reject_after_time_for_receiving() -> None:
    p = Pair()
    p.handshake()
    p.now += REJECT_AFTER_TIME + 0.5
    p.a.send(p.b_pub, b"", p.now, p.wall)  # a has to handshake again
    assert sent_types(p.a, p.now) == [1]
    # A packet under the old keys (forged by bumping an old one) is refused as expired.
    keypair = p.a._peers[p.b_pub].current
    assert keypair is not None
    old = keypair.seal(99, b"")
    packet = b"\x04\0\0\0" + keypair.remote_index.to_bytes(4, "little") + (99).to_bytes(8, "little")
    with pytest.raises(RemoteProtocolError, match="session expired"):
        p.b.receive_datagram(packet + old, Pair.A_ADDR, p.now, p.wall)


def test_keys_zeroed_after_three_times_reject_after_time() -> None:
    p = Pair()
    p.handshake()
    keypair = p.a._peers[p.b_pub].current
    assert keypair is not None
    p.advance(3 * REJECT_AFTER_TIME + 1)
    assert not p.a.peer_status(p.b_pub).has_session
    assert keypair.send_key == bytearray(32)
    assert keypair.receive_key == bytearray(32)
    assert p.a.get_timer() is None
    assert p.b.get_timer() is None


def test_remove_peer_zeroes_and_forgets() -> None:
    p = Pair()
    p.handshake()
    keypair = p.b._peers[p.a_pub].current
    assert keypair is not None
    p.b.remove_peer(p.a_pub)
    assert keypair.send_key == bytearray(32)
    p.a.send(p.b_pub, b"anyone?", p.now, p.wall)
    (packet,) = p.a.datagrams_to_send(p.now)
    with pytest.raises(RemoteProtocolError, match="transport: unknown receiver index"):
        p.b.receive_datagram(packet.data, Pair.A_ADDR, p.now, p.wall)


def test_initiation_replay_and_flood_protection() -> None:
    p = Pair()
    p.a.initiate(p.b_pub, p.now, p.wall)
    (first,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(first.data, Pair.A_ADDR, p.now, p.wall)
    with pytest.raises(RemoteProtocolError, match=r"^initiation: timestamp not newer"):
        p.b.receive_datagram(first.data, Pair.A_ADDR, p.now + 60, p.wall)
    # A newer timestamp within 20 ms of the last accepted one is a flood.
    p.a.initiate(p.b_pub, p.now + REKEY_TIMEOUT, p.wall + 1)
    (second,) = p.a.datagrams_to_send(p.now)
    with pytest.raises(RemoteProtocolError, match=r"^initiation: under 20 ms"):
        p.b.receive_datagram(second.data, Pair.A_ADDR, p.now + 0.015, p.wall)
    p.b.receive_datagram(second.data, Pair.A_ADDR, p.now + 0.025, p.wall)
    assert sent_types(p.b, p.now)[-1] == 2


def test_initiate_is_rate_limited_to_one_per_rekey_timeout() -> None:
    p = Pair()
    p.a.initiate(p.b_pub, p.now, p.wall)
    p.a.initiate(p.b_pub, p.now + REKEY_TIMEOUT - 0.01, p.wall)
    assert sent_types(p.a, p.now) == [1]
    p.a.initiate(p.b_pub, p.now + REKEY_TIMEOUT, p.wall)
    assert sent_types(p.a, p.now) == [1]


def test_retransmit_jitter_comes_from_rng_and_is_at_most_333ms() -> None:
    for jitter_bytes, expected in [(bytes(4), 0.0), ((333).to_bytes(4, "little"), 0.333)]:
        rng = ScriptedRng(script=[bytes(range(32)), b"\x01\x00\x00\x00", jitter_bytes])
        core = WireGuardCore(private_key(1), rng=rng)
        peer = WireGuardCore(private_key(2)).public_key
        core.add_peer(peer)
        core.initiate(peer, 50.0, 1.8e9)
        assert core.get_timer() == pytest.approx(50.0 + REKEY_TIMEOUT + expected)
        assert rng.draws == [32, 4, 4]


def test_lost_response_then_retransmitted_initiation_completes() -> None:
    p = Pair()
    p.a.initiate(p.b_pub, p.now, p.wall)
    (init,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(init.data, Pair.A_ADDR, p.now, p.wall)
    assert sent_types(p.b, p.now) == [2]  # lost
    p.advance(REKEY_TIMEOUT + 0.4)
    p.deliver()
    assert p.events(p.a) == [HandshakeCompleted(p.b_pub, True)]
    assert p.events(p.b) == [HandshakeCompleted(p.a_pub, False)]


def test_simultaneous_initiations_converge() -> None:
    p = Pair()
    p.a.initiate(p.b_pub, p.now, p.wall)
    p.b.initiate(p.a_pub, p.now, p.wall)
    p.deliver()
    # The lower static key keeps its initiation and rejects the crossing one; the
    # other side answers it (see test_noise_core's one-round-trip test).
    assert p.rejected == ["initiation: crossed our own pending initiation (lower static key wins)"]
    p.now += 1
    p.a.send(p.b_pub, b"from a", p.now, p.wall)
    p.b.send(p.a_pub, b"from b", p.now, p.wall)
    p.deliver()
    p.advance(REKEY_TIMEOUT * 3, deliver=True)
    p.a.send(p.b_pub, b"again a", p.now, p.wall)
    p.b.send(p.a_pub, b"again b", p.now, p.wall)
    p.deliver()
    got_b = [e for e in p.events(p.b) if isinstance(e, DataReceived)]
    got_a = [e for e in p.events(p.a) if isinstance(e, DataReceived)]
    assert [e.payload.rstrip(b"\0") for e in got_b] == [b"from a", b"again a"]
    assert [e.payload.rstrip(b"\0") for e in got_a] == [b"from b", b"again b"]


def test_close_zeroes_everything() -> None:
    p = Pair()
    p.handshake()
    keypair = p.a._peers[p.b_pub].current
    assert keypair is not None
    p.a.close()
    assert p.a.peers() == []
    assert keypair.send_key == bytearray(32)
    assert p.a._private == bytearray(32)
    assert p.a.get_timer() is None


def test_one_way_traffic_is_kept_alive_by_passive_keepalives_without_rehandshakes() -> None:
    p = Pair()
    p.handshake()
    first = p.a.peer_status(p.b_pub).last_handshake
    b_sent: list[int] = []
    for _ in range(100):  # a streams data once a second; b has nothing to say
        p.a.send(p.b_pub, b"stream", p.now, p.wall)
        p.advance(1.0, deliver=False)
        for who, out in p.deliver():
            if who == "b":
                b_sent.append(len(out.data))
    # b's keepalive (10 s after data with nothing sent) beats a's 15 s new-handshake timer.
    assert b_sent
    assert set(b_sent) == {32}
    assert p.a.peer_status(p.b_pub).last_handshake == first
