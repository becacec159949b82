"""The mux's per-stream send buffer against a plain bytes model."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.proto.mux._sendbuf import SendBuffer

CI = bool(os.environ.get("CI"))

# Sizes on both sides of the buffer's own thresholds: tiny writes gathered in its
# tail, writes that are chunks of their own, and many releases (compaction).
_SIZES = st.one_of(st.integers(0, 300), st.integers(8000, 20_000))
_OPS = st.lists(
    st.tuples(st.sampled_from(["append", "copy", "release"]), _SIZES, st.integers(0, 10**6)),
    max_size=120,
)


@settings(derandomize=CI, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(start=st.integers(0, 10**9), ops=_OPS, as_bytes=st.booleans())
def test_send_buffer_copies_exactly_what_was_appended_and_not_released(
    start: int, ops: list[tuple[str, int, int]], as_bytes: bool
) -> None:
    buffer = SendBuffer(start)
    model = bytearray()  # bytes from model_start on
    model_start = start
    written = 0
    for op, size, pick in ops:
        if op == "append":
            data = bytes((written + i) % 251 for i in range(size))
            written += size
            buffer.append(data if as_bytes else bytearray(data))
            model += data
        elif op == "release" and model:
            count = pick % (len(model) + 1)
            buffer.release_to(model_start + count)
            del model[:count]
            model_start += count
        elif op == "copy" and model:
            offset = pick % len(model)
            length = min(size, len(model) - offset)
            out = bytearray(b"head")
            buffer.copy_to(out, model_start + offset, length)
            assert out == b"head" + model[offset : offset + length]
        assert buffer.start == model_start
        assert buffer.end == model_start + len(model)
        assert len(buffer) == len(model)
    out = bytearray()
    buffer.copy_to(out, model_start, len(model))
    assert out == model


def test_send_buffer_keeps_a_big_bytes_write_without_copying_it() -> None:
    buffer = SendBuffer()
    data = bytes(range(256)) * 64  # 16 KiB
    buffer.append(data)
    out = bytearray()
    buffer.copy_to(out, 0, len(data))
    assert out == data
    assert buffer._chunks[0] is data


def test_send_buffer_copies_a_mutable_write_so_later_changes_do_not_leak_in() -> None:
    buffer = SendBuffer()
    data = bytearray(20_000)
    buffer.append(data)
    data[0] = 1
    small = bytearray(10)
    buffer.append(small)
    small[0] = 1
    out = bytearray()
    buffer.copy_to(out, 0, len(buffer))
    assert out == bytes(20_010)


def test_releasing_everything_and_appending_again_continues_at_the_end() -> None:
    buffer = SendBuffer(100)
    buffer.append(bytes(9000))
    buffer.append(b"abc")
    buffer.release_to(9103)
    assert len(buffer) == 0
    buffer.append(b"xyz")
    out = bytearray()
    buffer.copy_to(out, 9103, 3)
    assert out == b"xyz"
    assert (buffer.start, buffer.end) == (9103, 9106)
