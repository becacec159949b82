"""Our core against a real wireguard-go in a network namespace, in both roles.

Needs root, ``ip`` and ``wireguard-go``/``wg`` (CI installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunneld.keys import encode_key, generate_private_key, public_key

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "wg", "wireguard-go")),
        reason="needs root, iproute2, wireguard-go and wireguard-tools",
    ),
]

DRIVER = Path(__file__).with_name("_noise_interop_driver.py")
WG_PORT, OUR_PORT = 51820, 51821


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=20).stdout


class WireguardGo:
    def __init__(self, ns: str, ifname: str, private: bytes) -> None:
        self.ns = ns
        self.ifname = ifname
        self.private = private
        self.public = public_key(private)


@pytest.fixture
def wireguard_go(tmp_path: Path) -> Iterator[WireguardGo]:
    ns = f"tunneld-noise-{os.getpid()}-{secrets.token_hex(3)}"
    # wireguard-go's control socket is /var/run/wireguard/IFNAME.sock, shared across
    # namespaces: a unique name keeps parallel runs (and `wg set`) apart.
    ifname = f"wgn{secrets.token_hex(4)}"
    run("ip", "netns", "add", ns)
    proc: subprocess.Popen[bytes] | None = None
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        log = tmp_path / "wireguard-go.log"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, "wireguard-go", "-f", ifname],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while subprocess.run(
            ["ip", "-n", ns, "link", "show", ifname], capture_output=True
        ).returncode:
            assert time.monotonic() < deadline, "wireguard-go did not create its interface"
            assert proc.poll() is None, f"wireguard-go exited: {log.read_text()}"
            time.sleep(0.05)
        private = generate_private_key()
        key_file = tmp_path / "wg.key"
        key_file.write_text(encode_key(private))
        key_file.chmod(0o600)
        yield WireguardGo(ns, ifname, private)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def configure(wg: WireguardGo, ours: bytes, tmp_path: Path) -> None:
    run(
        "ip", "netns", "exec", wg.ns, "wg", "set", wg.ifname,
        "private-key", str(tmp_path / "wg.key"), "listen-port", str(WG_PORT),
        "peer", encode_key(public_key(ours)), "allowed-ips", "10.200.0.2/32",
        "endpoint", f"127.0.0.1:{OUR_PORT}",
    )  # fmt: skip
    run("ip", "-n", wg.ns, "addr", "add", "10.200.0.1/24", "dev", wg.ifname)
    run("ip", "-n", wg.ns, "link", "set", wg.ifname, "up")


def driver(wg: WireguardGo, role: str, ours: bytes) -> subprocess.Popen[str]:
    """Start the driver and wait until its UDP socket is bound."""
    proc = subprocess.Popen(
        [
            "ip", "netns", "exec", wg.ns, sys.executable, str(DRIVER), role,
            ours.hex(), wg.public.hex(), str(OUR_PORT), str(WG_PORT),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


def test_our_initiator_against_wireguard_go(wireguard_go: WireguardGo, tmp_path: Path) -> None:
    ours = generate_private_key()
    configure(wireguard_go, ours, tmp_path)
    out, _ = driver(wireguard_go, "initiator", ours).communicate(timeout=30)
    result = json.loads(out)
    assert result["events"][0] == "handshake initiator=True"
    assert "data icmp type 0 from 0ac80001" in result["events"]
    assert result.get("ok") is True
    assert result["replies"] == [1]
    assert result["rejected"] == []


def test_second_session_with_wireguard_go(wireguard_go: WireguardGo, tmp_path: Path) -> None:
    ours = generate_private_key()
    configure(wireguard_go, ours, tmp_path)
    out, _ = driver(wireguard_go, "rekey", ours).communicate(timeout=30)
    result = json.loads(out)
    assert result["events"].count("handshake initiator=True") == 2
    assert result["replies"] == [1, 2]
    assert result["rejected"] == []


def test_our_responder_against_wireguard_go(wireguard_go: WireguardGo, tmp_path: Path) -> None:
    ours = generate_private_key()
    configure(wireguard_go, ours, tmp_path)
    proc = driver(wireguard_go, "responder", ours)
    ping = subprocess.run(
        ["ip", "netns", "exec", wireguard_go.ns, "ping", "-c", "1", "-W", "5", "10.200.0.2"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    out, _ = proc.communicate(timeout=20)
    result = json.loads(out)
    assert result["events"][:2] == ["handshake initiator=False", "data icmp type 8 from 0ac80001"]
    assert result["rejected"] == []
    assert ping.returncode == 0, ping.stdout + ping.stderr
