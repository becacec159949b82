"""Hand-stepped tests of the mux connection-id header (docs/overlay.md, "Connection ids").

Two ``ConnectionIds`` play initiator and responder; packets are headers passed by hand,
including stale ones still in flight from replaced connections.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.net.overlay import HEADER_SIZE, ConnectionIds, Verdict

CI = bool(os.environ.get("CI"))


def ids(initiator: bool, local: int) -> ConnectionIds:
    side = ConnectionIds(initiator)
    side.renew(bytes([local]) * 8)
    return side


def test_first_packets_teach_each_side_the_other_id() -> None:
    a, b = ids(True, 1), ids(False, 2)
    assert b.accept(a.header()) is Verdict.DELIVER
    assert b.remote_id == a.local_id
    assert a.accept(b.header()) is Verdict.DELIVER
    assert a.remote_id == b.local_id
    assert a.header() == b.header()  # both name the same connection pair


def test_a_restarted_responder_makes_the_initiator_renew_and_stale_packets_drop() -> None:
    a, b = ids(True, 1), ids(False, 2)
    b.accept(a.header())
    a.accept(b.header())
    stale_from_a = a.header()
    b2 = ids(False, 3)  # the responder process restarted
    assert b2.accept(stale_from_a) is Verdict.DROP  # meant for its old connection
    assert a.accept(b2.header()) is Verdict.RENEW
    a.renew(bytes([4]) * 8)
    assert a.accept(b2.header()) is Verdict.DELIVER
    assert b2.accept(a.header()) is Verdict.DELIVER
    assert a.header() == b2.header()


def test_a_restarted_initiator_makes_the_responder_renew() -> None:
    a, b = ids(True, 1), ids(False, 2)
    b.accept(a.header())
    a.accept(b.header())
    stale_from_b = b.header()
    a2 = ids(True, 5)
    assert a2.accept(stale_from_b) is Verdict.DROP
    assert b.accept(a2.header()) is Verdict.RENEW
    b.renew(bytes([6]) * 8)
    assert b.accept(a2.header()) is Verdict.DELIVER
    assert a2.accept(b.header()) is Verdict.DELIVER
    assert a2.header() == b.header()


def test_packets_of_an_unchanged_peer_keep_being_delivered() -> None:
    a, b = ids(True, 1), ids(False, 2)
    for _ in range(3):
        assert b.accept(a.header()) is Verdict.DELIVER
        assert a.accept(b.header()) is Verdict.DELIVER


@pytest.mark.parametrize(
    "header",
    [b"", b"\x01" + bytes(16), b"\x02" + b"\x01" * 16, b"\x01" + b"\x01" * 15],
    ids=["empty", "zero-ids", "bad-version", "short"],
)
def test_malformed_headers_are_dropped(header: bytes) -> None:
    side = ids(False, 2)
    assert side.accept(header) is Verdict.DROP
    assert side.remote_id == bytes(8)


def test_renew_refuses_a_zero_id() -> None:
    with pytest.raises(ValueError, match="8 bytes, not all zero"):
        ConnectionIds(True).renew(bytes(8))


@settings(derandomize=CI, max_examples=200)
@given(st.binary(max_size=40), st.booleans())
def test_any_header_gives_a_verdict(header: bytes, initiator: bool) -> None:
    side = ids(initiator, 9)
    verdict = side.accept(header)
    assert isinstance(verdict, Verdict)
    if len(header) != HEADER_SIZE:
        assert verdict is Verdict.DROP
