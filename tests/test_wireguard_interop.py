"""Interop with a real WireGuard: wireguard-go and wireguard-tools as the oracle.

Each test makes its own network namespace, runs ``wireguard-go -f IFNAME`` inside it, and
runs ``tunneld debug wg-probe`` as a real subprocess in the same namespace, so all
traffic (UDP on 127.0.0.1 and the tunnel's 10.200.0.0/24) stays inside it. Without root,
``ip netns``, /dev/net/tun, wireguard-go or wg these tests are skipped and say why.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tunneld.keys import encode_key, generate_private_key, public_key, write_key_file

netns = pytest.mark.netns

WG_PORT = 51820
PROBE_PORT = 51821
WG_ADDRESS = "10.200.0.1"
OUR_ADDRESS = "10.200.0.2"
INSTALL_HINT = "apt-get install --no-install-recommends wireguard-go wireguard-tools"


@functools.cache
def _unavailable() -> str | None:
    """Why these tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces and TUN"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (no TUN support)"
    for tool in ("wireguard-go", "wg"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed ({INSTALL_HINT})"
    name = f"tunneld-check-{secrets.token_hex(4)}"
    added = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if added.returncode != 0:
        return f"`ip netns add` fails here: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def _run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


@dataclass
class Namespace:
    name: str

    def exec(self, *argv: str) -> list[str]:
        """argv to run a command inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]


@dataclass
class WireGuardGo:
    namespace: Namespace
    private_key_file: Path
    public_key: str
    log_file: Path
    # Unique per test: wireguard-go's control socket /var/run/wireguard/IFNAME.sock is
    # shared by every namespace, so two runs both named wg0 would fight over it.
    ifname: str

    def configure(self, peer: str, *, endpoint: str | None = None, psk: Path | None = None) -> None:
        """wg set + address + link up, as an operator would."""
        argv = [
            "wg", "set", self.ifname,
            "private-key", str(self.private_key_file),
            "listen-port", str(WG_PORT),
            "peer", peer,
            "allowed-ips", f"{OUR_ADDRESS}/32",
        ]  # fmt: skip
        if endpoint is not None:
            argv += ["endpoint", endpoint]
        if psk is not None:
            argv += ["preshared-key", str(psk)]
        _run(*self.namespace.exec(*argv))
        _run("ip", "-n", self.namespace.name, "addr", "add", f"{WG_ADDRESS}/24", "dev", self.ifname)
        _run("ip", "-n", self.namespace.name, "link", "set", self.ifname, "up")

    def show(self, field: str) -> str:
        return _run(*self.namespace.exec("wg", "show", self.ifname, field)).stdout


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    name = f"tunneld-test-{os.getpid()}-{secrets.token_hex(3)}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        yield Namespace(name)
    finally:
        # Anything still running in the namespace (a wireguard-go a test left, a probe)
        # would keep its interfaces alive; end it before deleting the namespace.
        pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "del", name, check=False)


@pytest.fixture
def wireguard_go(namespace: Namespace, tmp_path: Path) -> Iterator[WireGuardGo]:
    key = generate_private_key()
    key_file = tmp_path / "wg-go.key"
    write_key_file(key_file, key)
    log_file = tmp_path / "wireguard-go.log"
    ifname = f"wgp{secrets.token_hex(4)}"
    with log_file.open("w") as log:
        # -f: stay in the foreground (daemonized, it dies with the namespace exec here).
        process = subprocess.Popen(
            namespace.exec("wireguard-go", "-f", ifname), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while _run("ip", "-n", namespace.name, "link", "show", ifname, check=False).returncode:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"wireguard-go did not create {ifname}: {log_file.read_text()}"
                )
            time.sleep(0.05)
        yield WireGuardGo(namespace, key_file, encode_key(public_key(key)), log_file, ifname)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class OurKey:
    file: Path
    public: str


@pytest.fixture
def our_key(tmp_path: Path) -> OurKey:
    key = generate_private_key()
    path = tmp_path / "probe.key"
    write_key_file(path, key)
    return OurKey(path, encode_key(public_key(key)))


def _ping_argv(address: str, *, count: int, wait: int) -> list[str]:
    """ping(8) if installed, else the same through a raw socket (tests/icmp_ping.py)."""
    if shutil.which("ping") is not None:
        return ["ping", "-c", str(count), "-W", str(wait), address]
    script = Path(__file__).with_name("icmp_ping.py")
    return [sys.executable, str(script), address, str(count), str(wait)]


def _probe_argv(namespace: Namespace, *args: str) -> list[str]:
    return namespace.exec(sys.executable, "-m", "tunneld", "debug", "wg-probe", *args)


def _json_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"wg-probe printed no JSON (exit {result.returncode}):\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        ) from None
    return report


@netns
@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_probe_handshakes_and_pings_through_wireguard_go(
    namespace: Namespace, wireguard_go: WireGuardGo, our_key: OurKey, host: str
) -> None:
    if host == "[::1]" and "::1" not in _run("ip", "-n", namespace.name, "-6", "addr").stdout:
        pytest.skip("no IPv6 loopback in a new namespace here (IPv6 disabled?)")
    wireguard_go.configure(our_key.public)
    result = _run(
        *_probe_argv(
            namespace,
            "--key", str(our_key.file),
            "--peer", wireguard_go.public_key,
            "--endpoint", f"{host}:{WG_PORT}",
            "--address", f"{OUR_ADDRESS}/32",
            "--ping", WG_ADDRESS,
            "--count", "3",
            "--interval", "0.2",
            "--timeout", "5",
            "--json",
        ),
        check=False,
    )  # fmt: skip
    report = _json_report(result)
    assert result.returncode == 0, (report, result.stderr, wireguard_go.log_file.read_text())
    assert report["handshake"]["completed"] is True
    assert report["handshake"]["rtt_ms"] > 0
    assert report["remote"] == f"{host}:{WG_PORT}"
    assert report["ping"]["sent"] == 3
    assert report["ping"]["received"] > 0
    assert {reply["seq"] for reply in report["ping"]["replies"]} <= {1, 2, 3}
    assert report["packets"]["decrypted"] >= report["ping"]["received"]
    assert report["packets"]["rejected"] == 0
    # wireguard-go's own view: it completed a handshake with us and moved data both ways.
    handshakes = wireguard_go.show("latest-handshakes").split()
    assert handshakes[0] == our_key.public
    assert int(handshakes[1]) > 0
    peer, received, sent = wireguard_go.show("transfer").split()
    assert peer == our_key.public
    assert int(received) > 0
    assert int(sent) > 0


@netns
def test_probe_with_preshared_key(
    namespace: Namespace, wireguard_go: WireGuardGo, our_key: OurKey, tmp_path: Path
) -> None:
    psk = tmp_path / "psk"
    write_key_file(psk, secrets.token_bytes(32))
    wireguard_go.configure(our_key.public, psk=psk)
    argv = [
        "--key", str(our_key.file),
        "--peer", wireguard_go.public_key,
        "--endpoint", f"127.0.0.1:{WG_PORT}",
        "--address", f"{OUR_ADDRESS}/32",
        "--ping", WG_ADDRESS,
        "--count", "1",
        "--timeout", "3",
        "--json",
    ]  # fmt: skip
    result = _run(*_probe_argv(namespace, *argv, "--psk", str(psk)), check=False)
    report = _json_report(result)
    assert result.returncode == 0, (report, result.stderr)
    assert report["ping"]["received"] == 1

    # Without the preshared key wireguard-go cannot complete the handshake with us.
    other = _run(*_probe_argv(namespace, *argv[:-3], "--timeout", "1", "--json"), check=False)
    report = _json_report(other)
    assert other.returncode == 1
    assert report["handshake"]["completed"] is False
    assert "no handshake response from 127.0.0.1:51820 within 1s" in other.stderr
    # wireguard-go answered, but its response does not authenticate without the PSK.
    assert report["packets"]["rejected"] >= 1
    assert "check --peer and --psk" in other.stderr


@netns
def test_wireguard_go_initiates_to_our_responder(
    namespace: Namespace, wireguard_go: WireGuardGo, our_key: OurKey
) -> None:
    responder = subprocess.Popen(
        _probe_argv(
            namespace,
            "--key", str(our_key.file),
            "--peer", wireguard_go.public_key,
            "--listen", f"127.0.0.1:{PROBE_PORT}",
            "--address", f"{OUR_ADDRESS}/32",
            "--count", "3",
            "--timeout", "10",
            "--json",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert responder.stderr is not None
        # The responder logs wg_probe.listening once its socket is bound.
        seen = []
        for line in responder.stderr:
            seen.append(line)
            if "wg_probe.listening" in line:
                break
        else:
            raise AssertionError(f"responder exited before listening: {''.join(seen)}")
        wireguard_go.configure(our_key.public, endpoint=f"127.0.0.1:{PROBE_PORT}")
        # The kernel's ping over the interface makes wireguard-go initiate the handshake to us.
        ping = _run(*namespace.exec(*_ping_argv(OUR_ADDRESS, count=3, wait=2)), check=False)
        stdout, stderr = responder.communicate(timeout=30)
    finally:
        if responder.poll() is None:
            responder.kill()
            responder.wait()
    assert ping.returncode == 0, (ping.stdout, ping.stderr, wireguard_go.log_file.read_text())
    report = json.loads(stdout)
    assert responder.returncode == 0, (report, stderr)
    assert report["mode"] == "listen"
    assert report["handshake"]["completed"] is True
    assert report["handshake"]["after_ms"] > 0
    assert report["remote"].startswith("127.0.0.1:")
    assert {reply["from"] for reply in report["echo_replies_sent"]} == {WG_ADDRESS}
    # Every reply ping counted is one we sent (normally all 3; a slow first handshake on
    # a loaded machine may cost ping's first request, never correctness).
    received = int(ping.stdout.split(" received")[0].rsplit(",", 1)[-1])
    assert 1 <= received <= len(report["echo_replies_sent"]) <= 3


def test_tunneld_keys_match_wg(tmp_path: Path) -> None:
    if shutil.which("wg") is None:
        pytest.skip(f"`wg` is not installed ({INSTALL_HINT})")
    tunneld = [sys.executable, "-m", "tunneld"]
    ours = _run(*tunneld, "keygen").stdout
    ours_public = subprocess.run(
        [*tunneld, "pubkey"], input=ours, capture_output=True, text=True, check=True
    ).stdout
    wg_public = subprocess.run(
        ["wg", "pubkey"], input=ours, capture_output=True, text=True, check=True
    ).stdout
    assert ours_public == wg_public
    assert len(ours_public.strip()) == 44
    # And the other way round: a key from `wg genkey` gives the same public key in both.
    theirs = _run("wg", "genkey").stdout
    assert (
        subprocess.run(
            [*tunneld, "pubkey"], input=theirs, capture_output=True, text=True, check=True
        ).stdout
        == subprocess.run(
            ["wg", "pubkey"], input=theirs, capture_output=True, text=True, check=True
        ).stdout
    )
