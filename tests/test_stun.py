"""STUN: RFC 5389 binding build/parse round trips, fuzzing, and a real UDP exchange."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.control._stun import StunStats, serve_stun
from tunneld.net.stun import stun_binding
from tunneld.proto.stun import (
    MAGIC_COOKIE,
    BindingRequest,
    BindingResponse,
    RemoteProtocolError,
    build_binding_request,
    build_binding_response,
    looks_like_stun,
    parse_binding_request,
    parse_binding_response,
)

CI_SETTINGS = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TXID = bytes(range(12))


def test_request_layout() -> None:
    data = build_binding_request(TXID, fingerprint=False)
    assert data == struct.pack(">HHI", 1, 0, MAGIC_COOKIE) + TXID
    assert looks_like_stun(data)
    assert parse_binding_request(data) == BindingRequest(TXID)


def test_request_with_software_and_fingerprint_round_trips() -> None:
    data = build_binding_request(TXID, software="tunneld")
    assert data[-8:-4] == b"\x80\x28\x00\x04"
    assert parse_binding_request(data) == BindingRequest(TXID, "tunneld")


@pytest.mark.parametrize(
    "address",
    [("192.0.2.1", 32853), ("127.0.0.1", 1), ("2001:db8::1", 65535), ("::1", 3478)],
)
@pytest.mark.parametrize("fingerprint", [True, False])
def test_response_round_trip(address: tuple[str, int], fingerprint: bool) -> None:
    data = build_binding_response(TXID, address, fingerprint=fingerprint)
    assert parse_binding_response(data) == BindingResponse(TXID, address)


def test_xor_mapped_address_matches_rfc5769_vector() -> None:
    # RFC 5769 section 2.2: 192.0.2.1:32853 encodes as port 0xa147, address 0xe112a643.
    data = build_binding_response(
        bytes.fromhex("b7e7a701bc34d686fa87dfae"), ("192.0.2.1", 32853), fingerprint=False
    )
    assert data[20:32] == bytes.fromhex("002000080001a147e112a643")


def test_rfc5769_ipv6_response_parses() -> None:
    # RFC 5769 section 2.3 sample IPv6 response (SOFTWARE, XOR-MAPPED-ADDRESS,
    # MESSAGE-INTEGRITY which we ignore, FINGERPRINT).
    sample = bytes.fromhex(
        "010100482112a442b7e7a701bc34d686fa87dfae"
        "8022000b7465737420766563746f7220"
        "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
        "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
        "80280004c8fb0b4c"
    )
    assert parse_binding_response(sample) == BindingResponse(
        bytes.fromhex("b7e7a701bc34d686fa87dfae"), ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x00\x01\x00", "shorter than the header"),
        (struct.pack(">HHI", 1, 0, 0x12345678) + TXID, "magic cookie is 0x12345678"),
        (struct.pack(">HHI", 0xC001, 0, MAGIC_COOKIE) + TXID, "first two bits"),
        (struct.pack(">HHI", 1, 4, MAGIC_COOKIE) + TXID, "length field 4 does not match"),
        (
            struct.pack(">HHI", 1, 8, MAGIC_COOKIE) + TXID + b"\x80\x22\x00\x10abcd",
            "claims 16 bytes, only 4 left",
        ),
        (build_binding_response(TXID, ("10.0.0.1", 5)), "not a Binding request"),
        (build_binding_request(TXID)[:-1] + b"\x00", "FINGERPRINT does not match"),
    ],
)
def test_bad_requests_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_binding_request(data)
    assert reason in info.value.reason


def test_error_response_and_missing_address() -> None:
    error = (
        struct.pack(">HHI", 0x0111, 8, MAGIC_COOKIE) + TXID + b"\x00\x09\x00\x04\x00\x00\x04\x14"
    )
    with pytest.raises(RemoteProtocolError, match="error response 420"):
        parse_binding_response(error)
    empty = struct.pack(">HHI", 0x0101, 0, MAGIC_COOKIE) + TXID
    with pytest.raises(RemoteProtocolError, match="no XOR-MAPPED-ADDRESS"):
        parse_binding_response(empty)


@CI_SETTINGS
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    for parse in (parse_binding_request, parse_binding_response):
        try:
            parse(data)
        except RemoteProtocolError as exc:
            assert exc.reason  # noqa: PT017 - fuzz: any input may legitimately fail


@CI_SETTINGS
@given(st.data())
def test_fuzz_mutated_messages(data: st.DataObject) -> None:
    base = bytearray(
        data.draw(
            st.sampled_from(
                [
                    build_binding_request(TXID, software="x"),
                    build_binding_response(TXID, ("2001:db8::7", 9)),
                    build_binding_response(TXID, ("10.1.2.3", 9), fingerprint=False),
                ]
            )
        )
    )
    how = data.draw(st.sampled_from(["truncate", "extend", "flip"]))
    if how == "truncate":
        del base[data.draw(st.integers(0, len(base) - 1)) :]
    elif how == "extend":
        base += data.draw(st.binary(min_size=1, max_size=40))
    else:
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] ^= 1 << data.draw(st.integers(0, 7))
    for parse in (parse_binding_request, parse_binding_response):
        try:
            parse(bytes(base))
        except RemoteProtocolError as exc:
            assert exc.reason  # noqa: PT017 - fuzz: any input may legitimately fail


async def test_udp_round_trip_and_bad_datagrams(nursery: trio.Nursery) -> None:
    stats = StunStats()
    host, port = await nursery.start(
        lambda task_status: serve_stun("127.0.0.1", 0, stats=stats, task_status=task_status)
    )
    assert host == "127.0.0.1"
    assert port > 0
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        await sock.sendto(b"garbage", (host, port))
        await sock.sendto(os.urandom(20), (host, port))
        reflexive = await stun_binding((host, port), sock=sock, timeout=5)
        assert reflexive == sock.getsockname()
    # A temporary socket when none is given.
    other = await stun_binding((host, port), timeout=5)
    assert other[0] == "127.0.0.1"
    # The server counts a response after its send returns, possibly after we read it.
    with trio.fail_after(5):
        while stats.responses < 2:  # noqa: ASYNC110 - polling a counter
            await trio.sleep(0.01)
    assert stats.bad_datagrams == 2
    assert stats.requests == stats.responses == 2


async def test_udp_round_trip_ipv6(nursery: trio.Nursery) -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    host, port = await nursery.start(serve_stun, "::1", 0)
    address = await stun_binding((host, port), timeout=5)
    assert address[0] == "::1"


async def test_stun_binding_times_out() -> None:
    # A bound socket that never answers.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    with silent, pytest.raises(TimeoutError, match=r"no STUN answer from 127\.0\.0\.1"):
        await stun_binding(silent.getsockname(), timeout=0.3)
