"""A mux stream's receive side against the bytes that were sent: frames of every size
(big in-order ones are held as chunks, the rest in the reassembly buffer), in any
order, duplicated and overlapping, read in pieces of any size."""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.proto.mux._stream import Stream

CI = bool(os.environ.get("CI"))

_DATA = bytes(random.Random(7).randbytes(200_000))


def _frames(draw: st.DrawFn) -> list[tuple[int, int]]:
    """(offset, length) frames covering [0, total), then shuffled and repeated."""
    sizes = draw(
        st.lists(st.sampled_from([1, 100, 1200, 4095, 4096, 9000, 63_000]), min_size=1, max_size=30)
    )
    frames = []
    offset = 0
    for length in sizes:
        length = min(length, len(_DATA) - offset)
        if not length:
            break
        frames.append((offset, length))
        offset += length
    total = offset
    order = draw(st.permutations(range(len(frames)))) if draw(st.booleans()) else range(len(frames))
    shuffled = [frames[i] for i in order]
    extra = draw(st.lists(st.sampled_from(frames), max_size=5))  # duplicates
    overlaps = draw(
        st.lists(st.tuples(st.integers(0, total - 1), st.integers(1, 70_000)), max_size=3)
    )
    overlapping = [(start, min(length, total - start)) for start, length in overlaps]
    for frame in extra + overlapping:
        shuffled.insert(draw(st.integers(0, len(shuffled))), frame)
    return shuffled


@st.composite
def _plans(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[int]]:
    return _frames(draw), draw(st.lists(st.integers(1, 100_000), min_size=1, max_size=20))


@settings(derandomize=CI, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(plan=_plans())
def test_every_byte_is_read_once_in_order_whatever_the_frames(
    plan: tuple[list[tuple[int, int]], list[int]],
) -> None:
    frames, reads = plan
    total = max(offset + length for offset, length in frames)
    stream = Stream(1, False, 10**9, 10**9)
    out = bytearray()
    for index, (offset, length) in enumerate(frames):
        stream.receive(offset, memoryview(_DATA)[offset : offset + length], False)
        size = reads[index % len(reads)]
        readable = stream.readable_bytes()
        assert stream.peek(min(size, readable)) == _DATA[len(out) : len(out) + min(size, readable)]
        data = stream.read(size)
        assert len(data) <= size
        out += data
        assert out == _DATA[: len(out)]
    while data := stream.read(100_000):
        out += data
    assert out == _DATA[:total]
    assert stream.readable_bytes() == 0
    assert not stream.recv_chunks
    assert not stream.recv_buf


def test_an_in_order_big_frame_is_read_back_as_it_came() -> None:
    stream = Stream(1, False, 10**9, 10**9)
    stream.receive(0, memoryview(_DATA)[:63_000], False)
    held = stream.recv_chunks[0]
    assert stream.read(64 * 1024) is held


def test_an_exact_read_spans_chunks_and_the_reassembly_buffer() -> None:
    stream = Stream(1, False, 10**9, 10**9)
    stream.receive(0, memoryview(_DATA)[:5000], False)  # a chunk
    stream.receive(5000, memoryview(_DATA)[5000:5100], False)  # small: the buffer
    assert stream.read(5050, exact=True) == _DATA[:5050]
    assert stream.read(100) == _DATA[5050:5100]


def test_small_reads_of_a_big_chunk_leave_the_rest_as_a_view_not_a_copy() -> None:
    stream = Stream(1, False, 10**9, 10**9)
    stream.receive(0, memoryview(_DATA)[:63_000], False)
    out = bytearray(stream.read(1000))
    rest = stream.recv_chunks[0]
    assert isinstance(rest, memoryview)  # each read copies only what it returns
    while data := stream.read(1000):
        assert isinstance(data, bytes)
        out += data
    assert out == _DATA[:63_000]
