"""agentrpc codec: round trips, strict validation with messages that say where, and fuzzing."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.proto.agentrpc import (
    MAX_FRAME_SIZE,
    Cancel,
    EditFileRequest,
    Error,
    ExecRequest,
    Exit,
    FileEdit,
    FrameDecoder,
    ListDirRequest,
    ProcessListRequest,
    ProcessOutputRequest,
    ProcessSignalRequest,
    ReadFileRequest,
    RemoteProtocolError,
    Result,
    StatRequest,
    Stderr,
    StdinData,
    StdinEof,
    Stdout,
    WriteFileRequest,
    decode_client_frame,
    decode_response,
    encode,
)

CI = settings(derandomize=True, max_examples=200, deadline=None)
slow = pytest.mark.skipif(not os.environ.get("TUNNELD_SLOW"), reason="set TUNNELD_SLOW=1")

CLIENT_FRAMES = [
    ExecRequest(argv=("echo", "hi")),
    ExecRequest(shell="cat", cwd="sub", env={"A": "1"}, timeout=2.5, stdin=b"x", background=True),
    ExecRequest(argv=("cat",), stream_stdin=True),
    ProcessListRequest(),
    ProcessOutputRequest("p1", 10, 100),
    ProcessSignalRequest("p1", "TERM"),
    ProcessSignalRequest("p1", 9),
    ReadFileRequest("a/b", 5, 7),
    ReadFileRequest("a"),
    WriteFileRequest("f", b"\x00\xff", 0o600),
    EditFileRequest("f", (FileEdit("a", "b"), FileEdit("c", ""))),
    ListDirRequest("."),
    StatRequest("/x"),
    StdinData(b"abc"),
    StdinEof(),
    Cancel(),
]
RESPONSES = [
    Result({"data": b"x", "n": 1, "nested": {"a": [1, 2]}}),
    Error("not_found", "read_file x: No such file or directory"),
    Stdout(b"out"),
    Stderr(b"err"),
    Exit(0, None, False),
    Exit(None, 9, True),
]


def _payload(frame: bytes) -> bytes:
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    payload = decoder.next_frame()
    assert payload is not None
    assert decoder.next_frame() is None
    return payload


@pytest.mark.parametrize("message", CLIENT_FRAMES, ids=repr)
def test_client_frames_round_trip(message: object) -> None:
    assert decode_client_frame(_payload(encode(message))) == message  # type: ignore[arg-type]


@pytest.mark.parametrize("message", RESPONSES, ids=repr)
def test_responses_round_trip(message: object) -> None:
    assert decode_response(_payload(encode(message))) == message  # type: ignore[arg-type]


def test_frames_split_at_every_byte_reassemble() -> None:
    stream = b"".join(encode(m) for m in CLIENT_FRAMES)
    decoder = FrameDecoder()
    got = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        while (payload := decoder.next_frame()) is not None:
            got.append(decode_client_frame(payload))
    assert got == CLIENT_FRAMES
    decoder.receive_data(b"")
    assert decoder.at_eof
    assert decoder.next_frame() is None


def _raw(obj: object) -> bytes:
    packed = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"op": "launch"}, "request: unknown op 'launch'"),
        ({"noop": 1}, "request: field 'op' must be a string"),
        ({"op": "exec"}, "exec: exactly one of 'argv' or 'shell' is required"),
        ({"op": "exec", "argv": [], "shell": "x"}, "exec: field 'argv' must be a list"),
        ({"op": "exec", "argv": ["a", 1]}, "exec: field 'argv' must be a list"),
        ({"op": "exec", "argv": ["a"], "timeout": -1}, "exec: field 'timeout' must be a positive"),
        ({"op": "exec", "argv": ["a"], "timeout": True}, "exec: field 'timeout'"),
        ({"op": "exec", "argv": ["a"], "env": {"A=B": "x"}}, "exec: field 'env'"),
        ({"op": "exec", "argv": ["a"], "stdin": b"", "stream_stdin": True}, "mutually exclusive"),
        ({"op": "exec", "argv": ["a"], "bogus": 1}, "exec: unknown field 'bogus'"),
        ({"op": "read_file"}, "read_file: missing field 'path'"),
        ({"op": "read_file", "path": ""}, "read_file: field 'path' must be a non-empty path"),
        ({"op": "read_file", "path": "a\x00b"}, "read_file: field 'path' must be a string"),
        ({"op": "read_file", "path": "a", "offset": -1}, "read_file: field 'offset'"),
        ({"op": "write_file", "path": "a", "data": "text"}, "write_file: field 'data' must be"),
        ({"op": "write_file", "path": "a", "data": b"", "mode": 0o10000}, "field 'mode'"),
        ({"op": "edit_file", "path": "a", "edits": []}, "edit_file: field 'edits'"),
        ({"op": "edit_file", "path": "a", "edits": [1]}, "edit_file: edits[0] must be a map"),
        (
            {"op": "edit_file", "path": "a", "edits": [{"search": "", "replace": ""}]},
            "edit_file: edits[0]: field 'search' must be a non-empty string",
        ),
        ({"op": "process_signal", "id": "p1", "signal": 0}, "process_signal: field 'signal'"),
    ],
)
def test_invalid_requests_name_the_op_and_field(obj: object, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_client_frame(_raw(obj))
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "not valid msgpack"),
        (_raw([1, 2]), "expected a map"),
        (_raw({"op": "stat", "path": "a"}) + b"\x00", "not valid msgpack"),
        (_raw({1: 2}), "not valid msgpack"),
    ],
)
def test_non_map_payloads_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_client_frame(payload)


def test_response_validation() -> None:
    with pytest.raises(RemoteProtocolError, match="response: unknown type 'what'"):
        decode_response(_raw({"type": "what"}))
    with pytest.raises(RemoteProtocolError, match="exit: field 'code'"):
        decode_response(_raw({"type": "exit", "code": "0", "signal": None}))
    with pytest.raises(RemoteProtocolError, match="result: field 'value' must be a map"):
        decode_response(_raw({"type": "result", "value": 3}))


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder()
    decoder.receive_data((MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="exceeds the 16777216-byte limit"):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):  # stays broken: the stream cannot resync
        decoder.next_frame()


def test_truncated_frame_at_eof() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(encode(StatRequest("abc"))[:-1])
    assert decoder.next_frame() is None
    decoder.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="stream ended inside a frame"):
        decoder.next_frame()


def test_encode_refuses_oversized_messages_locally() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode(WriteFileRequest("f", b"x" * 200), max_frame_size=100)


def _check_decoders(payload: bytes) -> None:
    for decode in (decode_client_frame, decode_response):
        try:
            decode(payload)
        except RemoteProtocolError as exc:
            reason = exc.reason
            assert reason


def _check_stream(data: bytes) -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    try:
        decoder.receive_data(data)
        decoder.receive_data(b"")
        while (payload := decoder.next_frame()) is not None:
            _check_decoders(payload)
    except RemoteProtocolError:
        pass


_VALID = [encode(m) for m in CLIENT_FRAMES + RESPONSES]


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(_VALID)))
    action = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if action == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << draw(st.integers(0, 7))
    elif action == "truncate":
        del frame[draw(st.integers(0, len(frame) - 1)) :]
    elif action == "extend":
        frame += draw(st.binary(max_size=40))
    else:
        i = draw(st.integers(4, len(frame)))
        frame[i:i] = draw(st.binary(min_size=1, max_size=10))
    return bytes(frame)


@CI
@given(_mutated())
def test_fuzz_mutated_frames_only_raise_protocol_errors(data: bytes) -> None:
    _check_stream(data)
    _check_decoders(data[4:])


@CI
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_stream(data)
    _check_decoders(data)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "op",
        "type",
        "argv",
        "shell",
        "path",
        "data",
        "edits",
        "offset",
        "limit",
        "signal",
        "id",
        "env",
        "timeout",
        "mode",
        "code",
        "value",
        "search",
        "replace",
        "stdin",
        "background",
    ]
)
_ops = st.sampled_from(
    [
        "exec",
        "process_list",
        "process_output",
        "process_signal",
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "stat",
        "stdin",
        "stdin_eof",
        "cancel",
        "result",
        "error",
        "stdout",
        "stderr",
        "exit",
    ]
)


@CI
@given(st.dictionaries(_keys, _msgpack_values, max_size=6), _ops)
def test_fuzz_structured_maps(fields: dict[str, object], op: str) -> None:
    # Right shape, wrong contents: exercises every field validator, not just msgpack.
    _check_decoders(_raw({**fields, "op": op}))
    _check_decoders(_raw({**fields, "type": op}))


@slow
@settings(max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_mutated())
def test_fuzz_long(data: bytes) -> None:
    _check_stream(data)
    _check_decoders(data[4:])
