"""Path MTU discovery's search (tunneld/net/overlay/_pmtu.py), sans-IO.

A simulated path carries mux datagrams up to ``mtu`` IP bytes (bigger ones are
dropped silently, or refused by "our kernel" with EMSGSIZE); the tests drive
``PmtuSearch`` as the overlay does and check where it settles, that it never claims a
size the path did not carry, that black holes fall back to the base, and that every
search is bounded.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunneld.net.overlay._pmtu import (
    LADDER,
    PmtuSearch,
    PmtuState,
    datagram_bytes,
    ip_packet_bytes,
    mux_size_for,
)

BASE = 1200
TIMEOUT = 1.0


class Path:
    """A path carrying IP packets up to ``mtu`` bytes; ``local`` makes oversize sends
    fail at once (our own link, EMSGSIZE) instead of vanishing on the way."""

    def __init__(self, mtu: int, *, local: bool = False, ipv6: bool = False) -> None:
        self.mtu = mtu
        self.local = local
        self.ipv6 = ipv6

    def carries(self, size: int) -> bool:
        return ip_packet_bytes(size, ipv6=self.ipv6) <= self.mtu


def drive(
    search: PmtuSearch,
    path: Path,
    *,
    start: float = 0.0,
    until: float = 200.0,
    lose: set[int] | None = None,
    stop_when_done: bool = True,
) -> tuple[float, int]:
    """Run ``search`` against ``path`` from ``start`` (steps of 0.25 s, answers after
    10 ms) until it is done (or ``until``); ``lose`` drops probes by sequence number.
    ``stop_when_done`` False: on until ``until`` (confirmations, the raise timer).
    Returns (the time, probes sent)."""
    now = start
    sent = 0
    counter = itertools.count()
    while now < until:
        size = search.due(now)
        if size is not None:
            challenge = next(counter).to_bytes(8, "big")
            search.sent(challenge, size, now)
            sent += 1
            if not path.carries(size):
                if path.local:
                    search.too_big(datagram_bytes(size), now)
                continue  # dropped on the way: no answer
            if lose is not None and sent in lose:
                continue
            search.acknowledged(challenge, now + 0.01)
            continue  # the next probe leaves at once
        if stop_when_done and search.state is PmtuState.DONE and search.outstanding is None:
            return now, sent
        now += 0.25
    return now, sent


def test_sizes_and_the_grid() -> None:
    # A 1,500-byte Ethernet MTU: 1,423-byte mux datagrams fill it exactly.
    assert mux_size_for(1500) == 1423
    assert ip_packet_bytes(1423) == 1500
    assert ip_packet_bytes(1424) == 1516  # one byte more pads 16 more
    assert datagram_bytes(1200) == 1264  # 17-byte header, padded to 1,232, + 32
    # The largest IPv4 UDP datagram (65,507 bytes) holds a 65,455-byte mux datagram.
    assert datagram_bytes(mux_size_for(65535)) <= 65507
    assert mux_size_for(65535) == 65455
    assert mux_size_for(1400, ipv6=True) == mux_size_for(1380)


@pytest.mark.parametrize("mtu", [*LADDER, 1300, 1492, 4000, 60000])
@pytest.mark.parametrize("local", [False, True])
def test_settles_on_the_largest_size_the_path_carries(mtu: int, local: bool) -> None:
    search = PmtuSearch(BASE, 0.0, probe_timeout=TIMEOUT)
    path = Path(mtu, local=local)
    _, sent = drive(search, path)
    assert search.state is PmtuState.DONE
    assert path.carries(search.size)
    expected = max(BASE, mux_size_for(mtu))
    if mtu in LADDER or mtu <= 1500:
        assert search.size == expected  # a ladder step, or refined to the byte grid
    else:
        assert search.size >= expected - (expected - BASE) // 16
    assert sent <= (len(LADDER) + 6) * 3


def test_a_local_emsgsize_fails_a_probe_at_once() -> None:
    search = PmtuSearch(BASE, 0.0, probe_timeout=TIMEOUT)
    done_at, _ = drive(search, Path(1500, local=True))
    assert search.size == 1423
    # No timeouts waited for: every failure was immediate.
    assert done_at == 0.0


def test_silent_drops_take_max_probes_timeouts_per_size() -> None:
    search = PmtuSearch(BASE, 0.0, probe_timeout=TIMEOUT, max_probes=3)
    done_at, sent = drive(search, Path(9000))
    assert search.size == 8911
    # 16 KiB fails (3 probes), then the refinement's sizes fail (3 probes each).
    assert done_at >= 3 * TIMEOUT
    assert sent <= 3 + 3 + 3 * 6  # three ladder steps answered; 16 KiB, 6 refinements


def test_a_lost_probe_is_retried_before_the_size_fails() -> None:
    search = PmtuSearch(BASE, 0.0, probe_timeout=TIMEOUT, max_probes=3)
    drive(search, Path(65535), lose={1, 2})  # the first 1,400 probe twice
    assert search.size == mux_size_for(65535)


def test_ipv6_counts_its_bigger_header() -> None:
    search = PmtuSearch(BASE, 0.0, ipv6=True)
    path = Path(1500, ipv6=True, local=True)
    drive(search, path)
    assert search.size == mux_size_for(1500, ipv6=True) == 1391


def test_maximum_caps_the_search() -> None:
    search = PmtuSearch(BASE, 0.0, maximum=16000)
    drive(search, Path(65535))
    assert search.size == 16000
    assert search.maximum == 16000
    assert PmtuSearch(BASE, 0.0, maximum=100).maximum == BASE  # never below the base


def test_confirmations_find_a_black_hole_and_search_again_below_it() -> None:
    search = PmtuSearch(BASE, 0.0, probe_timeout=TIMEOUT, confirm_interval=1.0)
    path = Path(9000)
    now, _ = drive(search, path)
    assert search.size == 8911
    # Confirmations of the current size are answered: nothing changes.
    for _ in range(5):
        now += 1.0
        size = search.due(now)
        assert size == 8911
        search.sent(b"c" * 8, size, now)
        assert search.acknowledged(b"c" * 8, now) is False
    # The path shrinks to 1,400 without telling anyone: confirmations go unanswered.
    path.mtu = 1400
    changed_at = None
    for step in range(40):
        now += 0.25
        size = search.due(now)
        if search.size == BASE:
            changed_at = now
            break
        if size is not None:
            search.sent(step.to_bytes(8, "big"), size, now)
    assert changed_at is not None
    assert search.black_holes == 1
    assert search.state is PmtuState.SEARCHING
    drive(search, path, start=now)
    assert search.size == mux_size_for(1400) == 1311


def test_emsgsize_on_data_of_the_current_size_is_a_black_hole() -> None:
    search = PmtuSearch(BASE, 0.0)
    drive(search, Path(65535, local=True))
    assert search.size == 65455
    # Our own link shrank (ip link set ... mtu 1500): a data packet is refused.
    assert search.too_big(datagram_bytes(30000), 5.0) is True
    assert search.size == BASE
    assert search.black_holes == 1
    # More refusals of the old size from the same burst change nothing.
    assert search.too_big(datagram_bytes(65455), 5.0) is False
    assert search.too_big(datagram_bytes(BASE), 5.0) is False  # the base is the floor
    drive(search, Path(1500, local=True), start=5.0)
    assert search.size == 1423


def test_a_finished_search_runs_again_upwards_after_the_raise_interval() -> None:
    search = PmtuSearch(BASE, 0.0, raise_interval=600.0)
    path = Path(1500, local=True)
    now, _ = drive(search, path)
    assert search.size == 1423
    path.mtu = 9000  # the path grew (a new route)
    now, _ = drive(search, path, start=now, until=now + 500, stop_when_done=False)
    assert search.size == 1423  # not yet: confirmations only
    drive(search, path, start=now, until=now + 200, stop_when_done=False)
    assert search.size == 8911
    assert search.searches == 2


def test_answers_that_are_not_ours_are_ignored() -> None:
    search = PmtuSearch(BASE, 0.0)
    assert search.acknowledged(b"12345678", 0.0) is None
    size = search.due(0.0)
    assert size == mux_size_for(1400)
    search.sent(b"abcdefgh", size, 0.0)
    assert search.acknowledged(b"zzzzzzzz", 0.0) is None
    assert search.size == BASE
    assert search.outstanding == size
    assert search.due(0.5) is None  # one probe at a time


def test_base_at_or_above_the_maximum_never_probes() -> None:
    search = PmtuSearch(BASE, 0.0, maximum=BASE)
    assert search.due(0.0) is None
    assert search.state is PmtuState.DONE
    assert search.due(10_000.0) is None


@given(
    mtu=st.integers(min_value=1300, max_value=65535),
    losses=st.sets(st.integers(min_value=1, max_value=60), max_size=20),
    local=st.booleans(),
    ipv6=st.booleans(),
)
def test_never_claims_what_the_path_did_not_carry_and_always_ends(
    mtu: int, losses: set[int], local: bool, ipv6: bool
) -> None:
    search = PmtuSearch(BASE, 0.0, ipv6=ipv6, probe_timeout=TIMEOUT)
    path = Path(mtu, local=local, ipv6=ipv6)
    done_at, sent = drive(search, path, lose=losses, until=10_000.0)
    assert search.state is PmtuState.DONE
    assert BASE <= search.size <= search.maximum
    assert search.size == BASE or path.carries(search.size)
    # Bounded: a few probes per ladder step and refinement, a few seconds per failure.
    assert sent <= (len(LADDER) + 6) * 3 + len(losses)
    assert done_at <= 200.0
