"""The agent's check_port request: real listeners on loopback, permissions, the codec, and
the /proc/net/tcp parser (fuzzed)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio
from _agent_support import make_config, open_client, running_services
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.agent._ports import check_port, parse_proc_net_tcp
from tunneld.agent.client import AgentError
from tunneld.proto.agentrpc import (
    CheckPortRequest,
    RemoteProtocolError,
    decode_client_frame,
    encode,
)

CI = settings(derandomize=True, max_examples=200, deadline=None)


def _listener(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


def _free_port() -> int:
    # Bound but not listening: the port is ours and nothing listens on it.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_codec_round_trip_and_port_range() -> None:
    message = CheckPortRequest(8080)
    assert decode_client_frame(encode(message)[4:]) == message
    for bad in (0, 65536, -1):
        with pytest.raises(RemoteProtocolError, match="check_port: field 'port'"):
            decode_client_frame(encode(CheckPortRequest(bad))[4:])


async def test_listening_ports_are_seen_on_every_address(tmp_path: Path) -> None:
    v4 = _listener()
    v6 = _listener(socket.AF_INET6, "::1")
    with v4, v6:
        port4, port6 = v4.getsockname()[1], v6.getsockname()[1]
        async with running_services(make_config(tmp_path)) as (services, nursery):
            client = await open_client(services, nursery)
            status = await client.check_port(port4)
            assert status.listening
            assert status.addresses == ("127.0.0.1",)
            assert status.method == "proc"
            status6 = await client.check_port(port6)
            assert status6.listening
            assert status6.addresses == ("::1",)
            idle = await client.check_port(_free_port())
            assert not idle.listening
            assert idle.addresses == ()
            await client.aclose()


async def test_check_port_needs_exec_or_an_allowed_port(tmp_path: Path) -> None:
    sock = _listener()
    with sock:
        port = sock.getsockname()[1]
        config = make_config(tmp_path, allow_exec=False, allowed_tcp_ports=(port,))
        async with running_services(config) as (services, nursery):
            client = await open_client(services, nursery)
            assert (await client.check_port(port)).listening
            with pytest.raises(AgentError) as info:
                await client.check_port(port + 1 if port < 65535 else port - 1)
            assert info.value.code == "denied"
            assert "allow_exec" in info.value.message
            # The stream is still good for the next request.
            assert (await client.check_port(port)).listening
            await client.aclose()


async def test_fallback_connects_to_loopback_without_proc(tmp_path: Path) -> None:
    sock = _listener()
    with sock:
        port = sock.getsockname()[1]
        status = await trio.to_thread.run_sync(check_port, port, tmp_path)
        assert status == {
            "port": port,
            "listening": True,
            "addresses": ["127.0.0.1"],
            "method": "connect",
        }
        idle = await trio.to_thread.run_sync(check_port, _free_port(), tmp_path)
        assert idle["listening"] is False


def _hex4(address: bytes, byteorder: str) -> str:
    words = [address[i : i + 4] for i in range(0, len(address), 4)]
    if byteorder == "little":
        words = [w[::-1] for w in words]
    return b"".join(words).hex().upper()


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_parser_reads_kernel_lines(byteorder: str) -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
    v4 = _hex4(socket.inet_pton(socket.AF_INET, "127.0.0.1"), byteorder)
    v6 = _hex4(socket.inet_pton(socket.AF_INET6, "::"), byteorder)
    lines = [
        header,
        f"   0: {v4}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
        f"   1: {v4}:1F90 0100007F:AD30 01 00000000:00000000 00:00000000 00000000 0 0 2",
        f"   2: {v6}:1F90 {'0' * 32}:0000 0A 00000000:00000000 00:00000000 00000000 0 0 3",
        f"   3: {v4}:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4",
    ]
    assert parse_proc_net_tcp(lines, 8080, byteorder) == ["127.0.0.1", "::"]
    assert parse_proc_net_tcp(lines, 22, byteorder) == ["127.0.0.1"]
    assert parse_proc_net_tcp(lines, 9, byteorder) == []


@CI
@given(
    st.lists(st.text(max_size=120), max_size=8),
    st.integers(1, 65535),
    st.sampled_from(["little", "big"]),
)
def test_fuzz_parser_never_raises(lines: list[str], port: int, byteorder: str) -> None:
    for address in parse_proc_net_tcp(lines, port, byteorder):
        assert isinstance(address, str)


@CI
@given(st.binary(min_size=4, max_size=4), st.integers(1, 65535))
def test_fuzz_parser_round_trips_ipv4(address: bytes, port: int) -> None:
    text = socket.inet_ntoa(address)
    hex_address = struct.pack("<I", int.from_bytes(address, "big")).hex().upper()
    line = f"0: {hex_address}:{port:04X} 00000000:0000 0A 0:0 00:0 0 0 0 1"
    assert parse_proc_net_tcp([line], port, "little") == [text]
