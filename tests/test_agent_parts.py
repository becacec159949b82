"""Chunked uploads (write_part / commit_part / discard_part) and hash_file, over real streams."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._agent_support import make_config, open_client, running_services
from tunneld.agent.client import AgentError
from tunneld.proto.agentrpc import (
    CommitPartRequest,
    DiscardPartRequest,
    FrameDecoder,
    HashFileRequest,
    RemoteProtocolError,
    WritePartRequest,
    decode_client_frame,
    encode,
)

CI = settings(derandomize=True, max_examples=200, deadline=None)
DIGEST = hashlib.sha256(b"").hexdigest()


def _payload(frame: bytes) -> bytes:
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    payload = decoder.next_frame()
    assert payload is not None
    return payload


@pytest.mark.parametrize(
    "message",
    [
        WritePartRequest("a/b", 0, b"x" * 10),
        WritePartRequest("a", 1 << 40, b""),
        CommitPartRequest("f", 10, DIGEST),
        CommitPartRequest("f", 0, DIGEST, 0o600),
        DiscardPartRequest("f"),
        HashFileRequest("f"),
        HashFileRequest("f", 5, partial=True),
    ],
    ids=repr,
)
def test_transfer_requests_round_trip(message: object) -> None:
    assert decode_client_frame(_payload(encode(message))) == message  # type: ignore[arg-type]


def _raw(obj: object) -> bytes:
    packed = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(packed, bytes)
    return packed


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"op": "write_part", "path": "f", "data": b""}, "write_part: missing field 'offset'"),
        ({"op": "write_part", "path": "f", "offset": -1, "data": b""}, "field 'offset'"),
        ({"op": "write_part", "path": "f", "offset": 0, "data": "x"}, "field 'data'"),
        ({"op": "commit_part", "path": "f", "size": 1}, "missing field 'sha256'"),
        ({"op": "commit_part", "path": "f", "size": 1, "sha256": "ab"}, "64 lowercase hex"),
        ({"op": "commit_part", "path": "f", "size": 1, "sha256": DIGEST.upper()}, "hex"),
        ({"op": "commit_part", "path": "f", "size": 1, "sha256": DIGEST, "mode": 0o10000}, "mode"),
        ({"op": "hash_file", "path": "f", "length": "5"}, "hash_file: field 'length'"),
        ({"op": "hash_file", "path": "f", "partial": 1}, "field 'partial'"),
        ({"op": "discard_part", "path": ""}, "non-empty path"),
        ({"op": "discard_part", "path": "f", "extra": 1}, "unknown field 'extra'"),
    ],
)
def test_invalid_transfer_requests_say_where(obj: object, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_client_frame(_raw(obj))
    assert reason in info.value.reason


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=70),
    st.binary(max_size=8),
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=2),
)


@CI
@given(
    st.sampled_from(["write_part", "commit_part", "discard_part", "hash_file"]),
    st.dictionaries(
        st.sampled_from(["path", "offset", "data", "size", "sha256", "mode", "length", "partial"]),
        _values,
        max_size=6,
    ),
)
def test_fuzz_transfer_fields_only_raise_protocol_errors(
    op: str, fields: dict[str, object]
) -> None:
    reason = "decoded"
    try:
        decode_client_frame(_raw({**fields, "op": op}))
    except RemoteProtocolError as exc:
        reason = exc.reason
    assert reason


async def test_chunked_upload_commit_and_hash(tmp_path: Path) -> None:
    data = os.urandom(3 * 65536 + 123)
    digest = hashlib.sha256(data).hexdigest()
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery, tcp=True)
        async with client:
            offset = 0
            for start in range(0, len(data), 65536):
                chunk = data[start : start + 65536]
                offset = await client.write_part("up.bin", start, chunk)
            assert offset == len(data)
            part = tmp_path / ".up.bin.tunneld-part"
            assert part.stat().st_size == len(data)
            assert not (tmp_path / "up.bin").exists()  # nothing replaced before the commit
            assert part.stat().st_mode & 0o777 == 0o600

            half = await client.hash_file("up.bin", 1000, partial=True)
            assert half.sha256 == hashlib.sha256(data[:1000]).hexdigest()
            assert (half.length, half.size) == (1000, len(data))
            whole = await client.hash_file("up.bin", partial=True)
            assert (whole.sha256, whole.length) == (digest, len(data))

            await client.commit_part("up.bin", len(data), digest, 0o640)
            assert (tmp_path / "up.bin").read_bytes() == data
            assert (tmp_path / "up.bin").stat().st_mode & 0o777 == 0o640
            assert not part.exists()
            # Longer than the file: hashes what is there and says how much.
            full = await client.hash_file("up.bin", len(data) + 10)
            assert (full.sha256, full.length, full.size) == (digest, len(data), len(data))

            # Rewriting from offset 0 starts over; a shorter rewrite cuts the old tail.
            await client.write_part("up.bin", 0, b"0123456789")
            assert await client.write_part("up.bin", 4, b"ab") == 6
            assert part.read_bytes() == b"0123ab"
            with pytest.raises(AgentError) as past:
                await client.write_part("up.bin", 7, b"x")
            assert past.value.code == "invalid_request"
            assert "past the end" in past.value.message

            # A wrong hash or size fails the commit, keeps the target, drops the partial.
            with pytest.raises(AgentError) as bad:
                await client.commit_part("up.bin", 6, digest)
            assert bad.value.code == "verify_failed"
            assert "sha256" in bad.value.message
            assert not part.exists()
            assert (tmp_path / "up.bin").read_bytes() == data
            await client.write_part("up.bin", 0, b"abc")
            with pytest.raises(AgentError) as short:
                await client.commit_part("up.bin", 4, hashlib.sha256(b"abc").hexdigest())
            assert short.value.code == "verify_failed"
            assert "3 bytes, expected 4" in short.value.message

            with pytest.raises(AgentError) as missing:
                await client.commit_part("up.bin", 3, hashlib.sha256(b"abc").hexdigest())
            assert missing.value.code == "not_found"
            await client.write_part("up.bin", 0, b"abc")
            assert await client.discard_part("up.bin") is True
            assert await client.discard_part("up.bin") is False
            with pytest.raises(AgentError) as no_part:
                await client.hash_file("up.bin", partial=True)
            assert no_part.value.code == "not_found"


async def test_uploads_are_confined_and_need_allow_write(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").mkdir()
    async with running_services(make_config(root)) as (services, nursery):
        client = await open_client(services, nursery)
        async with client:
            for path in (str(outside / "x"), "../outside/x", "/etc/passwd"):
                with pytest.raises(AgentError) as escape:
                    await client.write_part(path, 0, b"x")
                assert escape.value.code == "path_outside_roots"
                with pytest.raises(AgentError) as hashed:
                    await client.hash_file(path)
                assert hashed.value.code == "path_outside_roots"
            # A symlink planted where the partial file goes is not followed out.
            (root / ".evil.tunneld-part").symlink_to(outside / "target")
            with pytest.raises(AgentError) as planted:
                await client.write_part("evil", 0, b"x")
            assert planted.value.code == "path_outside_roots"
            assert not (outside / "target").exists()
            with pytest.raises(AgentError) as is_dir:
                await client.write_part("sub", 0, b"x")
            assert is_dir.value.code == "is_a_directory"
            with pytest.raises(AgentError) as hash_dir:
                await client.hash_file("sub")
            assert hash_dir.value.code == "is_a_directory"
            with pytest.raises(AgentError) as no_dir:
                await client.write_part("nodir/x", 0, b"x")
            assert no_dir.value.code == "not_found"
            with pytest.raises(AgentError) as no_file:
                await client.hash_file("missing")
            assert no_file.value.code == "not_found"
    async with running_services(make_config(root, allow_write=False)) as (services, nursery):
        client = await open_client(services, nursery)
        async with client:
            for call in (
                client.write_part("x", 0, b"x"),
                client.commit_part("x", 1, DIGEST),
                client.discard_part("x"),
            ):
                with pytest.raises(AgentError) as denied:
                    await call
                assert denied.value.code == "denied"
                assert "[agent].allow_write" in denied.value.message
            # Hashing is a read: allowed without allow_write.
            (root / "r").write_bytes(b"read me")
            assert (await client.hash_file("r")).sha256 == hashlib.sha256(b"read me").hexdigest()


async def test_interleaved_requests_keep_the_stream_usable(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        async with client:
            with pytest.raises(AgentError):
                await client.write_part("f", 5, b"x")
            await client.write_part("f", 0, b"ok")
            await client.commit_part("f", 2, hashlib.sha256(b"ok").hexdigest())
            assert (await client.read_file("f")).data == b"ok"
            with trio.fail_after(5):
                assert (await client.stat("f")).size == 2
