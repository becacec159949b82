"""Agent stream services: dispatch by service name, tcp forwarding, malformed frames, config."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing
from _agent_support import make_config, open_client, running_services, tcp_stream_pair
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.agent import AgentServices, OperationError, parse_service
from tunneld.agent.client import AgentClient
from tunneld.config import AgentConfig, ConfigError, from_mapping, load_config
from tunneld.config._sections import Config
from tunneld.proto.agentrpc import (
    Error,
    ExecRequest,
    Exit,
    FrameDecoder,
    Result,
    StatRequest,
    decode_response,
    encode,
    frame,
)


async def _echo_server(
    nursery: trio.Nursery, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A real TCP echo server on loopback that half-closes after echoing everything."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while data := await stream.receive_some(65536):
        chunks.append(data)
    return b"".join(chunks)


async def _read_responses(stream: trio.abc.ReceiveStream) -> list[object]:
    decoder = FrameDecoder()
    decoder.receive_data(await _read_all(stream))
    decoder.receive_data(b"")
    out = []
    while (payload := decoder.next_frame()) is not None:
        out.append(decode_response(payload))
    return out


async def test_tcp_forward_pipes_both_ways_with_half_close(tmp_path: Path) -> None:
    async with trio.open_nursery() as outer:
        port = await outer.start(_echo_server, outer)
        config = make_config(tmp_path, allowed_tcp_ports=(port,))
        async with running_services(config) as (services, nursery):
            client_end, server_end = await tcp_stream_pair()
            nursery.start_soon(services.dispatch, f"tcp:{port}", server_end)
            payload = bytes(range(256)) * 2000  # 512 KB: more than any single buffer
            async with trio.open_nursery() as io:

                async def send() -> None:
                    await client_end.send_all(payload)
                    await client_end.send_eof()  # the echo server sees EOF and closes too

                io.start_soon(send)
                echoed = await _read_all(client_end)
            assert echoed == payload
            await client_end.aclose()
        outer.cancel_scope.cancel()


async def test_denied_port_unknown_service_and_connect_failure(tmp_path: Path) -> None:
    free_port = 1  # nothing listens on tcp/1 here, and it is allowed below
    config = make_config(tmp_path, allowed_tcp_ports=(free_port,))
    async with running_services(config) as (services, nursery):
        for service, code, text in [
            ("tcp:22", "denied", "tcp:22: port not in [agent].allowed_tcp_ports"),
            ("shell", "unknown_service", "unknown service 'shell' (known: rpc, tcp:PORT)"),
            ("tcp:0", "unknown_service", "unknown service 'tcp:0'"),
            ("tcp:022", "unknown_service", "unknown service"),
            (f"tcp:{free_port}", "connect_failed", f"tcp:{free_port}: "),
        ]:
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(services.dispatch, service, b)
            [response] = await _read_responses(a)
            assert isinstance(response, Error)
            assert response.code == code, service
            assert text in response.message
        assert services.check_service("rpc") is None
        assert services.check_service(f"tcp:{free_port}") is None
        refusal = services.check_service("tcp:22")
        assert refusal is not None
        assert refusal.code == "denied"


def test_parse_service() -> None:
    assert parse_service("rpc") == ("rpc", None)
    assert parse_service("tcp:65535") == ("tcp", 65535)
    for bad in ("tcp:65536", "tcp:", "tcp:+1", "tcp:\uff11", "udp:53", "RPC", ""):
        with pytest.raises(OperationError, match="unknown service"):
            parse_service(bad)


async def test_dispatch_rpc_serves_requests(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        a, b = trio.testing.memory_stream_pair()
        nursery.start_soon(services.dispatch, "rpc", b)
        client = AgentClient(a)
        assert (await client.stat(".")).type == "dir"
        assert (await client.run(["echo", "ok"])).stdout == b"ok\n"
        await client.aclose()


async def test_bad_requests_get_errors_and_the_stream_goes_on(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client_end, server_end = await tcp_stream_pair()
        nursery.start_soon(services.serve_rpc, server_end)
        bad_payloads = [
            b"\xc1",
            msgpack.packb({"op": "format_disk"}),
            msgpack.packb({"op": "read_file", "path": 7}),
        ]
        for payload in bad_payloads:
            await client_end.send_all(frame(payload))
        await client_end.send_all(encode(StatRequest(".")))
        await client_end.send_eof()
        responses = await _read_responses(client_end)
        assert [type(r) for r in responses] == [Error, Error, Error, Result]
        assert all(r.code == "invalid_request" for r in responses[:3])  # type: ignore[union-attr]
        assert "unknown op 'format_disk'" in responses[1].message  # type: ignore[union-attr]
        assert "read_file: field 'path'" in responses[2].message  # type: ignore[union-attr]
        await client_end.aclose()


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ((1 << 31).to_bytes(4, "big") + b"xxxx", "exceeds the 16777216-byte limit"),
        (b"\x00\x00\x01\x00abc", "stream ended inside a frame"),
    ],
)
async def test_malformed_frames_close_the_stream_and_a_new_stream_works(
    tmp_path: Path, garbage: bytes, reason: str
) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client_end, server_end = await tcp_stream_pair()
        nursery.start_soon(services.serve_rpc, server_end)
        await client_end.send_all(garbage)
        await client_end.send_eof()
        # One error answer, then a clean end of stream (_read_responses reads to EOF).
        [response] = await _read_responses(client_end)
        assert isinstance(response, Error)
        assert response.code == "invalid_request"
        assert reason in response.message
        await client_end.aclose()
        fresh = await open_client(services, nursery, tcp=True)
        assert (await fresh.stat(".")).type == "dir"
        await fresh.aclose()


async def test_one_failing_stream_does_not_affect_another(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        steady = await open_client(services, nursery)
        async with steady.exec(shell="echo a; sleep 0.5; echo b") as run:
            first = await run.__anext__()
            broken_end, server_end = await tcp_stream_pair()
            nursery.start_soon(services.serve_rpc, server_end)
            await broken_end.send_all(b"\xff\xff\xff\xff")
            await broken_end.aclose()
            rest = [e async for e in run]
        assert first.data == b"a\n"  # type: ignore[union-attr]
        assert rest[-1].code == 0  # type: ignore[union-attr]
        await steady.aclose()


def test_agent_config_defaults_are_safe() -> None:
    config = Config().agent
    assert config == AgentConfig()
    assert config.roots == ()
    assert not config.allow_exec
    assert not config.allow_write
    assert config.allowed_tcp_ports == ()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"allowed_tcp_ports": [22, 70000]}, "[agent].allowed_tcp_ports: expected TCP port"),
        ({"allowed_tcp_ports": "22"}, "[agent].allowed_tcp_ports: expected a list"),
        ({"exec_timeout": "0s"}, "[agent].exec_timeout: expected a duration > 0"),
        ({"max_read_size": "1GiB"}, "[agent].max_read_size: expected a size between"),
        ({"max_background_processes": -1}, "[agent].max_background_processes: expected a non"),
        ({"allow_exec": "yes"}, "[agent].allow_exec: expected true or false"),
        ({"roots": "/srv"}, "[agent].roots: expected a list"),
        ({"root": ["/srv"]}, "[agent].root: unknown key (did you mean roots?)"),
    ],
)
def test_config_errors_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(Config, {"agent": table}, source="config.toml")
    assert f"config.toml: {message}" in str(info.value)


def test_config_loads_agent_section(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[agent]\nroots = ["/srv", "~/work"]\nallow_exec = true\nallowed_tcp_ports = [22]\n'
        'exec_timeout = "90s"\nmax_read_size = "1MiB"\n'
    )
    config = load_config(path).agent
    assert config.roots == (Path("/srv"), Path("~/work").expanduser())
    assert config.allow_exec
    assert config.allowed_tcp_ports == (22,)
    assert config.exec_timeout.seconds == 90
    assert config.max_read_size.bytes == 2**20
    AgentServices(config)  # builds from a loaded config without touching the filesystem


async def test_rpc_over_a_lockstep_stream(tmp_path: Path) -> None:
    # Lockstep streams have no buffering at all: every send waits for a matching receive.
    async with running_services(make_config(tmp_path)) as (services, nursery):
        a, b = trio.testing.lockstep_stream_pair()
        nursery.start_soon(services.dispatch, "rpc", b)
        client = AgentClient(a)
        out = await client.run(shell="echo out; echo err >&2")
        assert (out.stdout, out.stderr, out.exit.code) == (b"out\n", b"err\n", 0)
        await client.write_file("x", b"data")
        assert (await client.read_file("x")).data == b"data"
        await client.aclose()


def _serve_garbage(root: Path, data: bytes) -> list[object]:
    async def main() -> list[object]:
        config = make_config(root, allow_exec=False, allow_write=False)
        async with running_services(config) as (services, nursery):
            a, b = trio.testing.memory_stream_pair()
            nursery.start_soon(services.serve_rpc, b)
            await a.send_all(data)
            await a.send_eof()
            with trio.fail_after(10):
                return await _read_responses(a)

    return trio.run(main)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=4))
def test_fuzz_garbage_streams_get_error_frames_and_a_clean_close(chunks: list[bytes]) -> None:
    # Mixes valid frames among garbage so some requests succeed between the errors.
    with tempfile.TemporaryDirectory() as root:
        data = b"".join(frame(c) if i % 2 else c for i, c in enumerate(chunks))
        data += encode(StatRequest("."))
        responses = _serve_garbage(Path(root), data)
    assert all(isinstance(r, (Error, Result)) for r in responses)
    assert all(r.code == "invalid_request" for r in responses if isinstance(r, Error))


async def test_a_new_request_during_an_exec_ends_it_and_the_stream(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client_end, server_end = await tcp_stream_pair()
        nursery.start_soon(services.serve_rpc, server_end)
        await client_end.send_all(encode(ExecRequest(shell="echo up; exec sleep 300")))
        decoder = FrameDecoder()
        while decoder.next_frame() is None:  # wait until the command runs
            decoder.receive_data(await client_end.receive_some(65536))
        await client_end.send_all(encode(StatRequest(".")))
        responses = await _read_responses(client_end)  # ends: the agent closed the stream
        assert responses[0] == Exit(None, 15, False)
        assert isinstance(responses[1], Error)
        assert responses[1].code == "invalid_request"
        assert "only stdin, stdin_eof or cancel while running" in responses[1].message
        await client_end.aclose()
