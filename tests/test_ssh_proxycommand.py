"""``ssh -o ProxyCommand='tunneld dial %h PORT'`` to a real sshd on the agent's host.

The test starts OpenSSH's sshd on a loopback port with its own host key and authorized
key; the agent allows that port (``[agent].allowed_tcp_ports``); ssh reaches it through
``tunneld dial`` → the ``tunneld run`` daemon → the overlay → the agent's ``tcp:PORT``
forward. The host key is pinned (StrictHostKeyChecking=yes), so the session really ends
at that sshd.
"""

from __future__ import annotations

import functools
import getpass
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests._agent_support import poll_pause
from tests.test_exec_command import WAIT, running_world, socket_dir

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")

__all__ = ["socket_dir"]  # the fixture, shared with the exec tests

pytestmark = pytest.mark.skipif(
    SSHD is None or SSH is None or SSH_KEYGEN is None,
    reason="needs OpenSSH (Debian openssh-server and openssh-client: sshd, ssh, ssh-keygen)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> str:
    assert SSH_KEYGEN is not None
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def ensure_privsep_dir() -> None:
    """sshd refuses to start without its privilege-separation directory."""
    privsep = Path("/run/sshd")
    if not privsep.is_dir():
        try:
            privsep.mkdir(mode=0o755)
        except PermissionError:
            pytest.skip("sshd needs /run/sshd, which only root can create")


async def test_ssh_through_tunneld_dial(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path
) -> None:
    assert SSHD is not None
    assert SSH is not None
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir(mode=0o700)
    host_key = keygen(ssh_dir / "host_key")
    keygen(ssh_dir / "client_key")
    authorized = ssh_dir / "authorized_keys"
    shutil.copy(ssh_dir / "client_key.pub", authorized)
    authorized.chmod(0o600)
    port = free_port()
    config = ssh_dir / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {ssh_dir / 'host_key'}\n"
        f"AuthorizedKeysFile {authorized}\n"
        f"PidFile {ssh_dir / 'sshd.pid'}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\n"
        "StrictModes no\n"
        "UsePAM no\n"
    )
    ensure_privsep_dir()
    sshd: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            [SSHD, "-D", "-e", "-f", str(config)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        with trio.fail_after(WAIT):
            while True:
                assert sshd.returncode is None, "sshd exited (see its config above)"
                try:
                    await trio.open_tcp_stream("127.0.0.1", port)
                    break
                except OSError:
                    await poll_pause()
        async with running_world(nursery, tmp_path, socket_dir, tcp_ports=(port,)) as world:
            known_hosts = ssh_dir / "known_hosts"
            known_hosts.write_text(f"web1 {host_key}\n")
            proxy = shlex.join(
                [sys.executable, "-m", "tunneld", "dial", "--socket", str(world.socket)]
            )
            command = [
                SSH, "-F", "/dev/null",
                "-o", f"ProxyCommand={proxy} %h {port}",
                "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes",
                "-i", str(ssh_dir / "client_key"),
                f"{getpass.getuser()}@web1",
            ]  # fmt: skip
            with trio.fail_after(WAIT * 2):
                result = await trio.run_process(
                    [*command, "echo hello over tunneld; cat; exit 5"],
                    stdin=b"piped through ssh\n",
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            assert result.returncode == 5, result.stderr
            assert result.stdout == b"hello over tunneld\npiped through ssh\n"
    finally:
        if sshd.returncode is None:
            sshd.terminate()
        with trio.fail_after(WAIT):
            await sshd.wait()
