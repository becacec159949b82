"""The hole-punching schedule and CALL_ME_MAYBE parsing, stepped by hand (sans-IO)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from tunneld.net.overlay._punch import PunchSchedule, parse_call_me_maybe
from tunneld.proto.coord import MAX_ENDPOINTS, validate_endpoint


def run(schedule: PunchSchedule, until: float, step: float = 0.25) -> list[float]:
    """Try whenever due, in ``step`` ticks up to ``until``; returns the try times."""
    tries = []
    now = 0.0
    while now <= until:
        if schedule.due(now):
            schedule.note_try(now)
            tries.append(now)
        now += step
    return tries


def test_a_burst_doubles_its_gaps_then_falls_back_to_the_slow_reprobe() -> None:
    schedule = PunchSchedule(interval=1.0, tries=5, reprobe_interval=30.0)
    assert not schedule.running
    assert not schedule.due(0.0)
    schedule.restart(0.0, "session up")
    assert run(schedule, 100.0) == [0.0, 1.0, 3.0, 7.0, 15.0, 45.0, 75.0]
    assert schedule.bursts == 1


def test_a_restart_begins_a_fresh_burst_and_a_direct_path_stops_it() -> None:
    schedule = PunchSchedule(interval=1.0, tries=3, reprobe_interval=30.0)
    schedule.restart(0.0, "session up")
    run(schedule, 10.0)
    schedule.restart(20.0, "direct path silent")
    assert schedule.due(20.0)
    assert schedule.reason == "direct path silent"
    schedule.note_try(20.0)
    schedule.stop()
    assert not schedule.running
    assert not schedule.due(math.inf)
    assert schedule.bursts == 2


def test_an_infinite_reprobe_interval_means_bursts_only() -> None:
    schedule = PunchSchedule(interval=0.5, tries=2, reprobe_interval=math.inf)
    schedule.restart(0.0, "woke up")
    assert run(schedule, 1000.0) == [0.0, 0.5]
    assert not schedule.running


def test_call_me_maybe_keeps_valid_endpoints_in_order_without_duplicates() -> None:
    raw = (
        b"10.0.0.1:41641",
        b"[2001:db8::1]:41641",
        b"10.0.0.1:41641",  # duplicate
        b"host.example:1",  # not an address
        b"\xff\xfe:1",  # not ASCII
        b"10.0.0.2:0",  # no port 0
        b"10.0.0.3:70000",
    )
    assert parse_call_me_maybe(raw) == ("10.0.0.1:41641", "[2001:db8::1]:41641")


@given(st.lists(st.binary(max_size=70), max_size=40))
def test_any_call_me_maybe_yields_a_bounded_list_of_valid_endpoints(raw: list[bytes]) -> None:
    parsed = parse_call_me_maybe(tuple(raw))
    assert len(parsed) <= MAX_ENDPOINTS
    assert len(set(parsed)) == len(parsed)
    assert all(validate_endpoint(endpoint) is None for endpoint in parsed)


@given(st.lists(st.integers(1, 65535), max_size=40))
def test_call_me_maybe_is_cut_at_max_endpoints(ports: list[int]) -> None:
    raw = tuple(f"192.0.2.1:{port}".encode() for port in ports)
    assert parse_call_me_maybe(raw) == tuple(dict.fromkeys(r.decode() for r in raw))[:MAX_ENDPOINTS]
