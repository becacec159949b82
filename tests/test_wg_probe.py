"""The trio WireGuard driver and ``tunneld debug wg-probe``, between our own cores.

Everything here runs over real UDP sockets on 127.0.0.1 (no namespaces needed); the
interop tests against wireguard-go are in test_wireguard_interop.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import trio
import trio.testing

from tunneld.cli._wg_probe import ProbeOptions, probe_initiator, probe_responder
from tunneld.keys import encode_key, generate_private_key, public_key, write_key_file
from tunneld.net.wireguard_udp import WireGuardUdp, pack_address, unpack_address
from tunneld.proto.noise import DataReceived, HandshakeCompleted, WireGuardCore

LOOPBACK = "127.0.0.1"
A_ADDRESS = IPv4Address("10.200.0.2")
B_ADDRESS = IPv4Address("10.200.0.1")


def test_addresses_pack_and_unpack() -> None:
    assert pack_address(("127.0.0.1", 51820)) == bytes([127, 0, 0, 1, 0xCA, 0x6C])
    assert unpack_address(pack_address(("127.0.0.1", 51820))) == ("127.0.0.1", 51820)
    assert unpack_address(pack_address(("::1", 9))) == ("::1", 9)
    with pytest.raises(ValueError, match="6 or 18 bytes, got 3"):
        unpack_address(b"abc")


async def _bound_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((LOOPBACK, 0))
    return sock


async def _next_event(driver: WireGuardUdp, kind: type[object], seconds: float = 5) -> object:
    with trio.fail_after(seconds):
        async for event in driver.events:
            if isinstance(event, kind):
                return event
    raise AssertionError("event channel closed")


async def test_two_drivers_handshake_and_exchange_data(nursery: trio.Nursery) -> None:
    key_a, key_b = generate_private_key(), generate_private_key()
    core_a, core_b = WireGuardCore(key_a), WireGuardCore(key_b)
    core_a.add_peer(core_b.public_key)
    core_b.add_peer(core_a.public_key)
    with await _bound_socket() as sock_a, await _bound_socket() as sock_b:
        a, b = WireGuardUdp(core_a, sock_a), WireGuardUdp(core_b, sock_b)
        address_a = await nursery.start(a.serve)
        address_b = await nursery.start(b.serve)
        # Only A knows where B is; B learns A's endpoint from the initiation.
        a.set_endpoint(core_b.public_key, address_b)
        assert b.endpoint(core_a.public_key) is None

        a.send(core_b.public_key, b"hello from a")  # starts the handshake, held until done
        completed = await _next_event(a, HandshakeCompleted)
        assert completed == HandshakeCompleted(peer=core_b.public_key, initiator=True)
        received = await _next_event(b, DataReceived)
        assert isinstance(received, DataReceived)
        assert received.peer == core_a.public_key
        assert received.payload.rstrip(b"\x00") == b"hello from a"
        assert b.endpoint(core_a.public_key) == address_a

        b.send(core_a.public_key, b"hello from b")
        back = await _next_event(a, DataReceived)
        assert isinstance(back, DataReceived)
        assert back.payload.rstrip(b"\x00") == b"hello from b"
        assert a.stats.datagrams_rejected == b.stats.datagrams_rejected == 0
        assert a.stats.transport_decrypted >= 1
        assert b.stats.transport_decrypted >= 1
        nursery.cancel_scope.cancel()


async def test_driver_rejects_garbage_and_keeps_working(nursery: trio.Nursery) -> None:
    core_a, core_b = WireGuardCore(generate_private_key()), WireGuardCore(generate_private_key())
    core_a.add_peer(core_b.public_key)
    core_b.add_peer(core_a.public_key)
    with await _bound_socket() as sock_a, await _bound_socket() as sock_b:
        a, b = WireGuardUdp(core_a, sock_a), WireGuardUdp(core_b, sock_b)
        await nursery.start(a.serve)
        address_b = await nursery.start(b.serve)
        with await _bound_socket() as attacker:
            for junk in (b"", b"\x01", b"\x01" + bytes(147), b"\x04" + bytes(31), os.urandom(200)):
                await attacker.sendto(junk, address_b)
        # Loopback queues datagrams in send order: the junk is read before the initiation.
        a.set_endpoint(core_b.public_key, address_b)
        a.initiate(core_b.public_key)
        await _next_event(a, HandshakeCompleted)
        assert b.stats.datagrams_rejected == 5
        assert b.stats.last_reject_reason
        nursery.cancel_scope.cancel()


async def test_probe_pings_our_responder_over_loopback(nursery: trio.Nursery) -> None:
    key_a, key_b = generate_private_key(), generate_private_key()
    responder_options = ProbeOptions(
        key_b, public_key(key_a), listen=(LOOPBACK, 0), address=B_ADDRESS, count=3, timeout=10
    )
    responder_report = []
    responder_done = trio.Event()

    async def run_responder(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        responder_report.append(await probe_responder(responder_options, task_status=task_status))
        responder_done.set()

    listening = await nursery.start(run_responder)
    report = await probe_initiator(
        ProbeOptions(
            key_a,
            public_key(key_b),
            endpoint=listening,
            address=A_ADDRESS,
            ping=B_ADDRESS,
            count=3,
            interval=0.05,
            timeout=5,
        )
    )
    assert report.error is None
    assert report.exit_status == 0
    assert report.handshake_completed
    assert report.handshake_ms is not None
    assert report.handshake_ms > 0
    assert report.pings_sent == 3
    assert [reply.sequence for reply in report.replies] == [1, 2, 3]
    assert all(reply.ttl == 64 for reply in report.replies)
    with trio.fail_after(5):
        await responder_done.wait()
    (answered,) = responder_report
    assert answered.exit_status == 0
    assert answered.handshake_completed
    assert [echo.sequence for echo in answered.echo_replies_sent] == [1, 2, 3]
    assert {echo.source for echo in answered.echo_replies_sent} == {str(A_ADDRESS)}
    # The responder learned our endpoint from the initiation (we bind the wildcard).
    assert report.local is not None
    assert answered.remote == f"{LOOPBACK}:{report.local.rsplit(':', 1)[1]}"

    as_json = report.to_json()
    assert as_json["ok"] is True
    assert as_json["ping"]["received"] == 3
    assert "ping 10.200.0.1: 3 sent, 3 received, 0% loss" in report.render_text()
    text = answered.render_text()
    assert f"handshake from {answered.remote} completed" in text
    assert "echo replies sent: 3\n  seq 1 id" in text
    assert answered.to_json()["handshake"]["after_ms"] > 0


async def test_responder_ignores_pings_to_another_address(nursery: trio.Nursery) -> None:
    key_a, key_b = generate_private_key(), generate_private_key()
    done: list[object] = []

    async def run_responder(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        options = ProbeOptions(
            key_b, public_key(key_a), listen=(LOOPBACK, 0), address=IPv4Address("10.9.9.9"),
            timeout=3,
        )  # fmt: skip
        done.append(await probe_responder(options, task_status=task_status))

    listening = await nursery.start(run_responder)
    report = await probe_initiator(
        ProbeOptions(
            key_a, public_key(key_b), endpoint=listening, address=A_ADDRESS, ping=B_ADDRESS,
            count=1, timeout=0.5,
        )
    )  # fmt: skip
    assert report.handshake_completed
    assert report.replies == []
    assert report.exit_status == 1
    assert report.error == (
        "no echo replies from 10.200.0.1 within 0.5s of the last request "
        "(does the peer route 10.200.0.1, and allow 10.200.0.2 as our address?)"
    )
    nursery.cancel_scope.cancel()


async def test_probe_reports_timeout_when_nothing_answers() -> None:
    with await _bound_socket() as silent:  # bound but never read: no reply, no ICMP error
        endpoint = silent.getsockname()
        report = await probe_initiator(
            ProbeOptions(
                generate_private_key(),
                public_key(generate_private_key()),
                endpoint=endpoint,
                timeout=0.3,
            )
        )
    assert not report.handshake_completed
    assert report.exit_status == 1
    assert report.stats.datagrams_sent >= 1
    assert report.error is not None
    assert report.error.startswith(
        f"no handshake response from {endpoint[0]}:{endpoint[1]} within 0.3s: is WireGuard "
        f"listening there, with peer {report.public_key} (our public key) configured?"
    )


async def test_probe_with_the_wrong_peer_key_does_not_complete(nursery: trio.Nursery) -> None:
    key_a, key_b = generate_private_key(), generate_private_key()

    async def run_responder(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        options = ProbeOptions(key_b, public_key(key_a), listen=(LOOPBACK, 0), timeout=2)
        await probe_responder(options, task_status=task_status)

    listening = await nursery.start(run_responder)
    # We believe the responder has another key, so our initiation's mac1 is wrong for it.
    report = await probe_initiator(
        ProbeOptions(key_a, public_key(generate_private_key()), endpoint=listening, timeout=0.5)
    )
    assert not report.handshake_completed
    assert report.exit_status == 1
    nursery.cancel_scope.cancel()


# --- the command line, as a real process ---------------------------------------------


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "probe.key"
    write_key_file(path, generate_private_key())
    return path


def _wg_probe(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld", "debug", "wg-probe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield f"{LOOPBACK}:{sock.getsockname()[1]}"


PEER = encode_key(public_key(generate_private_key()))


def test_cli_timeout_is_a_clear_error(key_file: Path, silent_endpoint: str) -> None:
    result = _wg_probe(
        "--key", str(key_file), "--peer", PEER, "--endpoint", silent_endpoint, "--timeout", "0.5"
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"tunneld: error: no handshake response from {silent_endpoint} within 0.5s" in (
        result.stderr
    )
    assert "handshake: not completed" in result.stdout


def test_cli_timeout_with_json(key_file: Path, silent_endpoint: str) -> None:
    result = _wg_probe(
        "--key", str(key_file), "--peer", PEER, "--endpoint", silent_endpoint,
        "--timeout", "0.3", "--json",
    )  # fmt: skip
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["handshake"] == {"completed": False, "rtt_ms": None}
    assert report["error"].startswith(f"no handshake response from {silent_endpoint}")
    assert report["packets"]["sent"] >= 1


def test_cli_refuses_a_key_file_others_can_read(key_file: Path, silent_endpoint: str) -> None:
    key_file.chmod(0o644)
    result = _wg_probe("--key", str(key_file), "--peer", PEER, "--endpoint", silent_endpoint)
    assert result.returncode == 1
    assert result.stderr == (
        f"tunneld: error: private key file {key_file} is accessible by group or others "
        f"(mode 0644); it holds a secret: run chmod 600 {key_file}\n"
    )


def test_cli_bad_key_file_contents(tmp_path: Path, silent_endpoint: str) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    result = _wg_probe("--key", str(bad), "--peer", PEER, "--endpoint", silent_endpoint)
    assert result.returncode == 1
    assert result.stderr.startswith(f"tunneld: error: {bad}: not base64")
    missing = _wg_probe(
        "--key", str(tmp_path / "nope.key"), "--peer", PEER, "--endpoint", silent_endpoint
    )
    assert missing.returncode == 1
    assert "cannot read private key file" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peer", "abc"], "--peer public key: not base64"),
        (["--peer", encode_key(b"x" * 31)], "--peer public key: decodes to 31 bytes, expected 32"),
        (["--peer", "A" * 43 + "="], f"--peer {'A' * 43}=: not usable: "),
        (["--ping", "10.0.0.1"], "--ping needs --address"),
        (["--address", "fe80::1/64"], "--address 'fe80::1/64': only IPv4 is supported"),
        (["--endpoint", "nocolon"], "--endpoint 'nocolon': expected HOST:PORT"),
        (["--endpoint", "127.0.0.1:99999"], "port must be a number from 0 to 65535"),
        (["--endpoint", "no-such-host.invalid:1"], "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_cli_bad_arguments_are_clear_errors(
    key_file: Path, silent_endpoint: str, args: list[str], message: str
) -> None:
    argv = {"--peer": PEER, "--endpoint": silent_endpoint}
    extra: list[str] = []
    for name, value in zip(args[::2], args[1::2], strict=True):
        if name in argv:
            argv[name] = value
        else:
            extra += [name, value]
    flat = [item for pair in argv.items() for item in pair]
    result = _wg_probe("--key", str(key_file), *flat, *extra, "--timeout", "0.2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr


async def test_cli_process_pings_our_in_process_responder(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    key_a, key_b = generate_private_key(), generate_private_key()
    key_a_file = tmp_path / "a.key"
    write_key_file(key_a_file, key_a)

    async def run_responder(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        options = ProbeOptions(
            key_b, public_key(key_a), listen=(LOOPBACK, 0), address=B_ADDRESS, count=2, timeout=20
        )
        await probe_responder(options, task_status=task_status)

    host, port = await nursery.start(run_responder)
    result = await trio.run_process(
        [
            sys.executable, "-m", "tunneld", "debug", "wg-probe",
            "--key", str(key_a_file),
            "--peer", encode_key(public_key(key_b)),
            "--endpoint", f"{host}:{port}",
            "--address", "10.200.0.2/32",
            "--ping", "10.200.0.1",
            "--count", "2",
            "--interval", "0.05",
            "--json",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert report["ok"] is True
    assert report["mode"] == "initiate"
    assert report["peer"] == encode_key(public_key(key_b))
    assert report["public_key"] == encode_key(public_key(key_a))
    assert report["handshake"]["completed"] is True
    assert report["ping"]["sent"] == 2
    assert report["ping"]["received"] == 2
    assert report["packets"]["rejected"] == 0
    nursery.cancel_scope.cancel()


async def test_lost_initiation_is_retransmitted_by_the_timer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Virtual time (autojump): the pump must sleep until get_timer() and call
    # handle_timer, or the retransmission after RekeyTimeout (5 s) never happens.
    core_a, core_b = WireGuardCore(generate_private_key()), WireGuardCore(generate_private_key())
    core_a.add_peer(core_b.public_key)
    core_b.add_peer(core_a.public_key)
    with (
        await _bound_socket() as sock_a,
        await _bound_socket() as sock_b,
        await _bound_socket() as black_hole,
    ):
        a, b = WireGuardUdp(core_a, sock_a), WireGuardUdp(core_b, sock_b)
        await nursery.start(a.serve)
        address_b = await nursery.start(b.serve)
        a.set_endpoint(core_b.public_key, black_hole.getsockname())
        started = trio.current_time()
        a.send(core_b.public_key, b"after the retry")
        await a.flush()
        assert a.stats.datagrams_sent == 1  # the first initiation, lost
        a.set_endpoint(core_b.public_key, address_b)
        await _next_event(a, HandshakeCompleted, seconds=10)
        assert 5.0 <= trio.current_time() - started < 6.0  # RekeyTimeout + jitter
        received = await _next_event(b, DataReceived)
        assert isinstance(received, DataReceived)
        assert received.payload.rstrip(b"\x00") == b"after the retry"
        nursery.cancel_scope.cancel()


async def test_probe_over_ipv6_loopback(nursery: trio.Nursery) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    key_a, key_b = generate_private_key(), generate_private_key()

    async def run_responder(*, task_status: trio.TaskStatus[tuple[str, int]]) -> None:
        options = ProbeOptions(key_b, public_key(key_a), listen=("::1", 0), address=B_ADDRESS)
        await probe_responder(options, task_status=task_status)

    listening = await nursery.start(run_responder)
    report = await probe_initiator(
        ProbeOptions(
            key_a, public_key(key_b), endpoint=listening[:2], address=A_ADDRESS, ping=B_ADDRESS,
            count=1,
        )
    )  # fmt: skip
    assert report.remote == f"[::1]:{listening[1]}"
    assert report.exit_status == 0, report.error
    assert len(report.replies) == 1
    nursery.cancel_scope.cancel()
