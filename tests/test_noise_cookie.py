"""Cookie replies under load (whitepaper 5.3): mac2, the 64-byte reply, the retry, limits."""

from __future__ import annotations

import pytest
from _noise_support import Pair

from tunneld.proto.noise import (
    COOKIE_REPLY_SIZE,
    REKEY_TIMEOUT,
    HandshakeCompleted,
    RemoteProtocolError,
    TokenBucket,
    parse_cookie_reply,
)


def test_under_load_initiation_without_mac2_gets_cookie_then_retry_succeeds() -> None:
    p = Pair()
    p.b.force_under_load = True
    p.a.initiate(p.b_pub, p.now, p.wall)
    (initiation,) = p.a.datagrams_to_send(p.now)
    assert initiation.data[-16:] == bytes(16)  # no cookie yet: mac2 is zero
    p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    (reply,) = p.b.datagrams_to_send(p.now)
    assert reply.peer is None
    assert reply.destination == Pair.A_ADDR
    assert len(reply.data) == COOKIE_REPLY_SIZE
    assert reply.data[0] == 3
    assert parse_cookie_reply(reply.data).receiver == int.from_bytes(initiation.data[4:8], "little")
    assert p.events(p.b) == []  # b did no DH work and keeps no state for a

    p.a.receive_datagram(reply.data, Pair.B_ADDR, p.now, p.wall)
    assert p.a.datagrams_to_send(p.now) == []  # wireguard-go waits for the retransmit
    p.advance(REKEY_TIMEOUT + 0.4)  # retransmit timer fires; now with mac2
    p.deliver()
    assert p.events(p.a) == [HandshakeCompleted(p.b_pub, True)]
    assert p.events(p.b) == [HandshakeCompleted(p.a_pub, False)]


def test_cookie_is_bound_to_the_source_address() -> None:
    p = Pair()
    p.b.force_under_load = True
    p.a.initiate(p.b_pub, p.now, p.wall)
    (initiation,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    (reply,) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(reply.data, Pair.B_ADDR, p.now, p.wall)
    p.advance(REKEY_TIMEOUT + 0.4)
    (retry,) = p.a.datagrams_to_send(p.now)
    # From another address the cookie in mac2 is wrong: another cookie reply, no session.
    p.b.receive_datagram(retry.data, b"elsewhere", p.now, p.wall)
    (again,) = p.b.datagrams_to_send(p.now)
    assert again.destination == b"elsewhere"
    assert again.data[0] == 3


def test_forged_or_stale_cookie_replies_are_rejected() -> None:
    p = Pair()
    p.b.force_under_load = True
    p.a.initiate(p.b_pub, p.now, p.wall)
    (initiation,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    (reply,) = p.b.datagrams_to_send(p.now)
    forged = bytearray(reply.data)
    forged[40] ^= 1
    with pytest.raises(RemoteProtocolError, match="cookie reply: cannot decrypt cookie"):
        p.a.receive_datagram(bytes(forged), Pair.B_ADDR, p.now, p.wall)
    p.advance(REKEY_TIMEOUT + 0.4)  # a sends a new initiation under a new index
    p.a.datagrams_to_send(p.now)
    with pytest.raises(RemoteProtocolError, match="cookie reply: unknown receiver index 0x"):
        p.a.receive_datagram(reply.data, Pair.B_ADDR, p.now, p.wall)


def test_handshake_load_trigger_from_message_rate() -> None:
    p = Pair()
    p.b.handshake_load_threshold = 3
    p.a.initiate(p.b_pub, p.now, p.wall)
    (initiation,) = p.a.datagrams_to_send(p.now)
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            p.b.receive_datagram(b"\x01\0\0\0" + bytes(144), Pair.A_ADDR, p.now, p.wall)
    assert not p.b.under_load(p.now)  # mac1-invalid junk does not count
    p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    p.b.datagrams_to_send(p.now)
    with pytest.raises(RemoteProtocolError, match="replay"):
        p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    assert not p.b.under_load(p.now)
    # The third handshake message within a second trips the threshold: a cookie reply.
    p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    assert [o.data[0] for o in p.b.datagrams_to_send(p.now)] == [3]
    assert p.b.under_load(p.now)
    assert p.b.under_load(p.now + 0.99)
    assert not p.b.under_load(p.now + 1.01)
    p.b.note_handshake_backlog(128, 1024, p.now + 5)
    assert p.b.under_load(p.now + 5.5)


def test_rate_limit_per_source_under_load() -> None:
    p = Pair()
    p.b.force_under_load = True
    p.a.initiate(p.b_pub, p.now, p.wall)
    (first,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(first.data, Pair.A_ADDR, p.now, p.wall)
    (reply,) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(reply.data, Pair.B_ADDR, p.now, p.wall)
    p.advance(REKEY_TIMEOUT + 0.4)
    (retry,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(retry.data, Pair.A_ADDR, p.now, p.wall)  # token 1, accepted
    p.b.datagrams_to_send(p.now)
    for _ in range(4):  # tokens 2..5: valid mac2, but replays
        with pytest.raises(RemoteProtocolError, match="replay"):
            p.b.receive_datagram(retry.data, Pair.A_ADDR, p.now, p.wall)
    with pytest.raises(RemoteProtocolError, match="initiation: rate limited"):
        p.b.receive_datagram(retry.data, Pair.A_ADDR, p.now, p.wall)
    with pytest.raises(RemoteProtocolError, match="replay"):  # 60 ms later: a new token
        p.b.receive_datagram(retry.data, Pair.A_ADDR, p.now + 0.06, p.wall)


def test_token_bucket_rate_and_burst() -> None:
    bucket = TokenBucket(rate=20, burst=5)
    assert [bucket.allow(b"s", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.allow(b"other", 0.0)
    assert not bucket.would_allow(b"s", 0.01)
    assert bucket.allow(b"s", 0.05)
    assert not bucket.allow(b"s", 0.05)
    assert [bucket.allow(b"s", 10.0) for _ in range(6)] == [True] * 5 + [False]


def test_cookie_secret_rotates_and_cookies_expire_after_120_s() -> None:
    p = Pair()
    p.b.force_under_load = True
    p.a.initiate(p.b_pub, p.now, p.wall)
    (initiation,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    (reply,) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(reply.data, Pair.B_ADDR, p.now, p.wall)
    p.now += 121.0  # a's cookie is stale (mac2 zero again) and b's secret rotates
    p.a.initiate(p.b_pub, p.now, p.wall)
    (late,) = p.a.datagrams_to_send(p.now)
    assert late.data[-16:] == bytes(16)
    p.b.receive_datagram(late.data, Pair.A_ADDR, p.now, p.wall)
    (again,) = p.b.datagrams_to_send(p.now)
    assert again.data[0] == 3
    p.a.receive_datagram(again.data, Pair.B_ADDR, p.now, p.wall)
    p.advance(REKEY_TIMEOUT + 0.4, deliver=True)
    assert HandshakeCompleted(p.b_pub, True) in p.events(p.a)


def test_initiator_under_load_demands_mac2_on_the_response() -> None:
    p = Pair()
    p.a.force_under_load = True  # a is loaded: b's response needs a cookie from a
    p.a.initiate(p.b_pub, p.now, p.wall)
    (initiation,) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(initiation.data, Pair.A_ADDR, p.now, p.wall)
    (response,) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(response.data, Pair.B_ADDR, p.now, p.wall)
    (reply,) = p.a.datagrams_to_send(p.now)
    assert reply.destination == Pair.B_ADDR
    assert reply.data[0] == 3
    p.b.receive_datagram(reply.data, Pair.A_ADDR, p.now, p.wall)  # b stores a's cookie
    p.advance(REKEY_TIMEOUT + 0.4, deliver=True)  # a retries; b's response now has mac2
    assert HandshakeCompleted(p.b_pub, True) in p.events(p.a)
    assert HandshakeCompleted(p.a_pub, False) in p.events(p.b)
