"""tunneld.proto.ipv4: IPv4/ICMP echo building and parsing, and fuzzing of the parsers."""

from __future__ import annotations

import os
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunneld.proto import ipv4

# CI-size runs are short and deterministic; TUNNELD_SLOW=1 runs the long ones.
CI_SETTINGS = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SLOW_SETTINGS = settings(max_examples=20_000, deadline=None)
slow = pytest.mark.skipif(
    not os.environ.get("TUNNELD_SLOW"), reason="long fuzz run; set TUNNELD_SLOW=1 to run it"
)

A = IPv4Address("10.200.0.2")
B = IPv4Address("10.200.0.1")


def _echo_request(sequence: int = 1, data: bytes = b"abcdefgh") -> bytes:
    echo = ipv4.build_icmp_echo(ipv4.IcmpEchoKind.REQUEST, 0x1234, sequence, data)
    return ipv4.build_ipv4(A, B, ipv4.PROTOCOL_ICMP, echo, identification=7)


def test_checksum_matches_rfc_1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum is its complement).
    assert ipv4.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


def test_checksum_of_a_known_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert ipv4.internet_checksum(header) == 0xB861


def test_odd_length_checksum_pads_with_zero() -> None:
    assert ipv4.internet_checksum(b"\x01") == ipv4.internet_checksum(b"\x01\x00")


def test_built_echo_request_matches_what_ping_sends() -> None:
    packet = _echo_request(sequence=3, data=b"")
    # Header: version/IHL 45, length 28, id 7, DF, TTL 64, ICMP, checksum, addresses.
    assert packet[:4] == bytes.fromhex("4500001c")
    assert packet[4:8] == bytes.fromhex("00074000")
    assert packet[8:10] == bytes.fromhex("4001")
    assert packet[12:20] == A.packed + B.packed
    assert ipv4.internet_checksum(packet[:20]) == 0
    assert packet[20:] == bytes.fromhex("0800") + packet[22:24] + bytes.fromhex("12340003")
    assert ipv4.internet_checksum(packet[20:]) == 0


def test_round_trip_ignores_tunnel_padding() -> None:
    packet = _echo_request(data=b"x" * 56)
    parsed = ipv4.parse_ipv4(packet + bytes(-len(packet) % 16))
    assert (parsed.source, parsed.destination, parsed.protocol) == (A, B, ipv4.PROTOCOL_ICMP)
    assert parsed.ttl == 64
    assert parsed.identification == 7
    echo = ipv4.parse_icmp_echo(parsed.payload)
    assert echo == ipv4.IcmpEcho(ipv4.IcmpEchoKind.REQUEST, 0x1234, 1, b"x" * 56)


def test_echo_reply_swaps_addresses_and_keeps_id_seq_data() -> None:
    reply = ipv4.echo_reply_for(_echo_request(sequence=9), address=B)
    assert reply is not None
    parsed = ipv4.parse_ipv4(reply)
    assert (parsed.source, parsed.destination) == (B, A)
    echo = ipv4.parse_icmp_echo(parsed.payload)
    assert echo == ipv4.IcmpEcho(ipv4.IcmpEchoKind.REPLY, 0x1234, 9, b"abcdefgh")


def test_echo_reply_only_for_requests_to_our_address() -> None:
    assert ipv4.echo_reply_for(_echo_request(), address=IPv4Address("10.9.9.9")) is None
    reply = ipv4.echo_reply_for(_echo_request(), address=B)
    assert reply is not None
    # A reply is not answered again; UDP is not answered at all.
    assert ipv4.echo_reply_for(reply) is None
    udp = ipv4.build_ipv4(A, B, 17, b"\x00" * 8)
    assert ipv4.echo_reply_for(udp) is None


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda p: p[:19], "IPv4 packet truncated: 19 bytes, a header needs 20"),
        (lambda p: b"\x65" + p[1:], "not an IPv4 packet: version field is 6"),
        (lambda p: b"\x44" + p[1:], "IPv4 header length 16 is below the minimum 20"),
        (lambda p: p[:2] + b"\x00\x10" + p[4:], "IPv4 total length 16 is shorter than its header"),
        (lambda p: p[:-1], "IPv4 packet truncated: total length says 36 bytes, got 35"),
        (lambda p: p[:12] + b"\x0b" + p[13:], "IPv4 header checksum does not match"),
    ],
)
def test_bad_ipv4_says_what_is_wrong(mangle: Callable[[bytes], bytes], message: str) -> None:
    packet = _echo_request()
    with pytest.raises(ipv4.RemoteProtocolError, match=message):
        ipv4.parse_ipv4(mangle(packet))


def test_fragments_are_refused() -> None:
    echo = ipv4.build_icmp_echo(ipv4.IcmpEchoKind.REQUEST, 1, 1, b"")
    packet = bytearray(ipv4.build_ipv4(A, B, ipv4.PROTOCOL_ICMP, echo))
    packet[6:8] = b"\x20\x00"  # More Fragments
    packet[10:12] = b"\x00\x00"
    packet[10:12] = ipv4.internet_checksum(bytes(packet[:20])).to_bytes(2, "big")
    with pytest.raises(ipv4.RemoteProtocolError, match="fragments are not supported"):
        ipv4.parse_ipv4(bytes(packet))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"\x08\x00\x00", "ICMP message truncated: 3 bytes, an echo header needs 8"),
        (b"\x03\x01" + bytes(6), "ICMP type 3 is not an echo request or reply"),
        (b"\x08\x01" + bytes(6), "ICMP echo with code 1, expected 0"),
        (b"\x08\x00\x00\x01" + bytes(4), "ICMP checksum does not match"),
    ],
)
def test_bad_icmp_says_what_is_wrong(message: bytes, error: str) -> None:
    with pytest.raises(ipv4.RemoteProtocolError, match=error):
        ipv4.parse_icmp_echo(message)


def test_builders_refuse_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        ipv4.build_icmp_echo(ipv4.IcmpEchoKind.REQUEST, 0x10000, 1, b"")
    with pytest.raises(ValueError, match="does not fit"):
        ipv4.build_ipv4(A, B, 1, bytes(0x10000))
    with pytest.raises(ValueError, match="must fit"):
        ipv4.build_ipv4(A, B, 1, b"", ttl=256)


# --- fuzzing: only the module's own error type may escape -----------------------------


def _parse_everything(data: bytes) -> None:
    """Every parser on ``data``; returns normally or raises ipv4.RemoteProtocolError."""
    try:
        packet = ipv4.parse_ipv4(data)
    except ipv4.RemoteProtocolError:
        pass
    else:
        assert len(packet.payload) <= len(data) - 20
        try:
            ipv4.parse_icmp_echo(packet.payload)
        except ipv4.RemoteProtocolError:
            pass
    try:
        ipv4.parse_icmp_echo(data)
    except ipv4.RemoteProtocolError:
        pass
    try:
        reply = ipv4.echo_reply_for(data)
    except ipv4.RemoteProtocolError:
        pass
    else:
        if reply is not None:
            ipv4.parse_icmp_echo(ipv4.parse_ipv4(reply).payload)


@st.composite
def _mutated_packets(draw: st.DrawFn) -> bytes:
    data = draw(st.binary(max_size=120))
    packet = bytearray(_echo_request(sequence=draw(st.integers(0, 0xFFFF)), data=data))
    action = draw(st.sampled_from(["truncate", "extend", "flip", "none"]))
    if action == "truncate":
        del packet[draw(st.integers(0, len(packet))) :]
    elif action == "extend":
        packet += draw(st.binary(min_size=1, max_size=40))
    elif action == "flip":
        for _ in range(draw(st.integers(1, 4))):
            index = draw(st.integers(0, len(packet) - 1))
            packet[index] ^= 1 << draw(st.integers(0, 7))
    return bytes(packet)


@CI_SETTINGS
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_raise_only_our_error(data: bytes) -> None:
    _parse_everything(data)


@CI_SETTINGS
@given(_mutated_packets())
def test_fuzz_mutated_packets_raise_only_our_error(data: bytes) -> None:
    _parse_everything(data)


@CI_SETTINGS
@given(
    st.binary(max_size=1400),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.sampled_from(list(ipv4.IcmpEchoKind)),
)
def test_fuzz_round_trip(
    data: bytes, identifier: int, sequence: int, kind: ipv4.IcmpEchoKind
) -> None:
    echo = ipv4.build_icmp_echo(kind, identifier, sequence, data)
    packet = ipv4.build_ipv4(A, B, ipv4.PROTOCOL_ICMP, echo)
    parsed = ipv4.parse_ipv4(packet)
    assert ipv4.parse_icmp_echo(parsed.payload) == ipv4.IcmpEcho(kind, identifier, sequence, data)


@slow
@SLOW_SETTINGS
@given(_mutated_packets())
def test_fuzz_mutated_packets_long(data: bytes) -> None:
    _parse_everything(data)
