"""The mux core when a path's datagram size changes (path MTU discovery), sans-IO.

Padded PATH_PROBEs have exactly the asked size and are answered; a path that comes
back with a bigger ``max_datagram_size`` sends bigger packets at once; one that comes
back smaller never sends a packet above the new size, and data lost in bigger packets
is resent re-split to fit.
"""

from __future__ import annotations

import hashlib

import pytest

from tunneld.proto.mux import Connection, Path, PathResponse, StreamOpened
from tunneld.proto.mux._config import MAX_PROBE_SIZE

DIRECT = Path("direct", address=b"10.0.0.1:41641")


def pair(size: int) -> tuple[Connection, Connection]:
    path = Path("direct", address=DIRECT.address, max_datagram_size=size)
    return Connection(is_initiator=True, path=path), Connection(is_initiator=False, path=path)


def deliver(sender: Connection, receiver: Connection, now: float) -> list[int]:
    """Move every datagram ``sender`` has now; returns their sizes."""
    sizes = []
    for data, path in sender.datagrams_to_send(now):
        sizes.append(len(data))
        receiver.receive_datagram(data, path, now)
    return sizes


def test_a_padded_probe_has_exactly_its_size_and_is_answered() -> None:
    a, b = pair(1200)
    a.send_path_probe(DIRECT, b"12345678", 1.0, size=9000)
    [(data, path)] = a.datagrams_to_send(1.0)
    assert len(data) == 9000
    assert a.bytes_in_flight == 0  # a probe is never in flight
    b.receive_datagram(data, path, 1.01)
    answers = b.datagrams_to_send(1.01)
    assert [len(d) for d, _ in answers] == [len(answers[0][0])]
    assert len(answers[0][0]) < 100  # the answer itself is small
    a.receive_datagram(answers[0][0], DIRECT, 1.02)
    events = []
    while (event := a.next_event()) is not None:
        events.append(event)
    assert [type(e) for e in events] == [PathResponse]
    with pytest.raises(ValueError, match="at most"):
        a.send_path_probe(DIRECT, b"12345678", 1.0, size=MAX_PROBE_SIZE + 1)


def test_a_smaller_size_mid_transfer_resplits_what_was_lost() -> None:
    a, b = pair(16000)
    payload = bytes(range(256)) * 2048  # 512 KiB
    stream = a.open_stream("bulk")
    assert a.send_stream_data(stream, payload, end_stream=True) == len(payload)
    now = 1.0
    lost = a.datagrams_to_send(now)  # the first window: all lost in a black hole
    assert max(len(d) for d, _ in lost) > 1200
    # The path shrinks: same identity, a smaller size (a new Path value).
    a.set_path(Path("direct", address=DIRECT.address, max_datagram_size=1200))
    received = bytearray()
    for _ in range(2000):
        now += 0.05
        timer = a.get_timer()
        if timer is not None and timer <= now:
            a.handle_timer(now)
        sizes = deliver(a, b, now)
        assert all(size <= 1200 for size in sizes), sizes
        deliver(b, a, now)
        while (event := b.next_event()) is not None:
            if isinstance(event, StreamOpened):
                assert event.service == "bulk"
        if stream in b.stream_ids():
            data, _ = b.read_stream(stream, 1 << 20)
            received += data
        if len(received) == len(payload):
            break
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


def test_a_bigger_size_on_the_same_path_sends_bigger_packets_and_keeps_the_window() -> None:
    a, b = pair(1200)
    stream = a.open_stream("bulk")
    now = 1.0

    def run(data: bytes) -> list[int]:
        nonlocal now
        assert a.send_stream_data(stream, data) == len(data)
        sizes = []
        for _ in range(50):
            now += 0.01
            sizes += deliver(a, b, now)
            deliver(b, a, now)
            if stream in b.stream_ids():
                b.read_stream(stream, 1 << 20)
        return sizes

    assert max(run(bytes(200_000))) <= 1200
    window = a.congestion_window
    a.set_path(Path("direct", address=DIRECT.address, max_datagram_size=8000))
    assert a.congestion_window == window  # same path: congestion state carries on
    sizes = run(bytes(200_000))
    assert 1200 < max(sizes) <= 8000
