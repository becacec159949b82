"""The overlay between real processes in network namespaces (needs root, ``ip netns``, nft).

Three namespaces on one bridge (10.99.0.0/24, existing only inside them): the control
plane (``tunneld control``, 10.99.0.1), the agent (``tunneld agent``, 10.99.0.3, with
a hashing TCP sink on its loopback) and a client node (tests/_netns_driver.py,
10.99.0.2) that forwards a stream to ``tcp:PORT`` and checks the sink's hash.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "_netns_driver.py"
WAIT = 20.0
SINK_PORT = 5201
CONTROL, CLIENT, AGENT = "10.99.0.1", "10.99.0.2", "10.99.0.3"
_counter = itertools.count()


def _netns_unavailable() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux"
    if shutil.which("ip") is None or shutil.which("nft") is None:
        return "needs the `ip` and `nft` tools"
    name = f"tndprobe{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        try:
            subprocess.run(
                ["ip", "netns", "exec", name, "nft", "add", "table", "inet", "t"],
                check=True,
                capture_output=True,
            )
        finally:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns` / nft do not work here: {exc}"
    return None


_REASON = _netns_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Namespaces:
    control: str
    client: str
    agent: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def exec(self, ns: str, args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args], cwd=ROOT, text=True, **kwargs
        )
        self.processes.append(process)
        return process

    def run(self, ns: str, args: list[str]) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", ns, *args], cwd=ROOT, text=True, capture_output=True
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    def block_udp(self) -> None:
        """Drop UDP between client and agent (both ways) on each one's input hook."""
        for ns, peer in ((self.client, AGENT), (self.agent, CLIENT)):
            self.run(ns, ["nft", "add", "table", "inet", "t"])
            self.run(
                ns, ["nft", "add", "chain", "inet", "t", "inp",
                     "{ type filter hook input priority 0; }"],
            )  # fmt: skip
            self.run(
                ns, ["nft", "add", "rule", "inet", "t", "inp",
                     "meta", "l4proto", "udp", "ip", "saddr", peer, "drop"],
            )  # fmt: skip

    def unblock_udp(self) -> None:
        for ns in (self.client, self.agent):
            self.run(ns, ["nft", "delete", "table", "inet", "t"])


@contextmanager
def namespaces() -> Iterator[Namespaces]:
    tag = f"tnd{os.getpid()}x{next(_counter)}"
    spaces = Namespaces(f"{tag}c", f"{tag}l", f"{tag}a")
    created: list[str] = []
    try:
        for ns in (spaces.control, spaces.client, spaces.agent):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        # A bridge inside the control namespace; every veth is created inside the
        # namespaces, so nothing ever appears in the host's.
        ip("-n", spaces.control, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        ip("-n", spaces.control, "addr", "add", f"{CONTROL}/24", "dev", "br0")
        ip("-n", spaces.control, "link", "set", "br0", "up")
        for ns, address, port in ((spaces.client, CLIENT, "vl"), (spaces.agent, AGENT, "va")):
            ip("-n", spaces.control, "link", "add", port, "type", "veth",
               "peer", "name", "eth0", "netns", ns)  # fmt: skip
            ip("-n", spaces.control, "link", "set", port, "master", "br0")
            ip("-n", spaces.control, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        yield spaces
    finally:
        for process in spaces.processes:
            if process.poll() is None:
                process.terminate()
        for process in spaces.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_for_file(path: Path, process: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        assert process.poll() is None, f"{process.args} exited early"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def read_record(stream: IO[str], phase: str, log: Path | None = None) -> dict[str, Any]:
    """The driver's next JSON record, which must be ``phase``; if the driver ended
    first, the failure shows the end of its ``log`` (its stderr), to say why."""
    line = stream.readline()
    if not line:
        tail = log.read_text(errors="replace").splitlines()[-20:] if log and log.exists() else []
        raise AssertionError(
            f"the driver ended before phase {phase!r}" + "".join(f"\n  {t}" for t in tail)
        )
    record = dict(json.loads(line))
    assert record["phase"] == phase, record
    return record


def start_world(spaces: Namespaces, tmp: Path) -> tuple[dict[str, Any], str]:
    """Control plane and agent (with the sink) running; returns (server info, client token)."""
    python = sys.executable
    data = tmp / "control"
    control = ["-m", "tunneld", "control", "--data-dir", str(data)]
    subprocess.run([python, *control, "user", "add", "alice"], check=True, capture_output=True)

    def token(*extra: str) -> str:
        result = subprocess.run(
            [python, *control, "token", "create", "--user", "alice", *extra],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    agent_token, client_token = token("--agent", "web1"), token()
    ready = tmp / "control.ready"
    server = spaces.exec(
        spaces.control,
        [python, *control, "--listen", f"{CONTROL}:0", "--stun-listen", f"{CONTROL}:0",
         "--ready-file", str(ready)],
        stderr=(tmp / "control.log").open("w"),
    )  # fmt: skip
    info = wait_for_file(ready, server)

    sink = spaces.exec(
        spaces.agent,
        [python, str(DRIVER), "sink", str(SINK_PORT)],
        stdout=subprocess.PIPE,
        stderr=(tmp / "sink.log").open("w"),
    )
    assert sink.stdout is not None
    assert read_record(sink.stdout, "listening")

    (tmp / "agent.token").write_text(agent_token + "\n")
    (tmp / "agent.token").chmod(0o600)  # token files must not be group/world-readable
    config = tmp / "agent.toml"
    config.write_text(
        "[agent]\n"
        f"allowed_tcp_ports = [{SINK_PORT}]\n"
        'name = "web1"\n'
        f'key_file = "{tmp / "agent.key"}"\n'
        f'control_url = "{info["url"]}"\n'
        f'token_file = "{tmp / "agent.token"}"\n'
        f'udp_listen = "{AGENT}:0"\n'
    )
    agent_ready = tmp / "agent.ready"
    agent = spaces.exec(
        spaces.agent,
        [python, "-m", "tunneld", "agent", "--config", str(config),
         "--ready-file", str(agent_ready)],
        stderr=(tmp / "agent.log").open("w"),
    )  # fmt: skip
    wait_for_file(agent_ready, agent)
    return info, client_token


def start_client(
    spaces: Namespaces,
    tmp: Path,
    info: dict[str, Any],
    token: str,
    *,
    pause: bool,
    driver: Path = DRIVER,
    size: int = 3 * 1024 * 1024,
) -> subprocess.Popen[str]:
    """``driver``'s client in the client namespace, sending ``size`` bytes to the sink."""
    options = {
        "token": token,
        "coordinate_url": info["coordinate_url"],
        "derp_url": info["derp_url"],
        "host": CLIENT,
        "port": SINK_PORT,
        "size": size,
        "pause": pause,
    }
    return spaces.exec(
        spaces.client,
        [sys.executable, str(driver), "client", json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp / "client.log").open("w"),
    )


def finish(client: subprocess.Popen[str]) -> dict[str, Any]:
    assert client.stdout is not None
    second = read_record(client.stdout, "second")
    assert second["path"] == "direct", second
    done = read_record(client.stdout, "done")
    assert client.wait(timeout=WAIT) == 0
    assert done["answer"] == f"{done['bytes']} {done['sha256']}", done
    assert done["path"] == "direct", done
    return done


def test_direct_path_between_namespaces(tmp_path: Path) -> None:
    with namespaces() as spaces:
        info, token = start_world(spaces, tmp_path)
        client = start_client(spaces, tmp_path, info, token, pause=False)
        assert client.stdout is not None
        read_record(client.stdout, "first", tmp_path / "client.log")
        finish(client)


def test_blocked_udp_uses_the_relay_then_upgrades_to_direct_mid_stream(tmp_path: Path) -> None:
    with namespaces() as spaces:
        spaces.block_udp()
        info, token = start_world(spaces, tmp_path)
        client = start_client(spaces, tmp_path, info, token, pause=True)
        assert client.stdout is not None
        assert client.stdin is not None
        first = read_record(client.stdout, "first", tmp_path / "client.log")
        # A megabyte went through while every UDP packet between the two was dropped.
        assert first["path"] == "relay", first
        spaces.unblock_udp()
        client.stdin.write("go\n")
        client.stdin.flush()
        finish(client)
