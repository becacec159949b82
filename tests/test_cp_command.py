"""``tunneld cp`` end to end: a real control plane, ``tunneld agent`` and ``tunneld run``
processes, and ``tunneld cp`` processes moving files both ways through the overlay."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from tests._cp_support import (
    WAIT,
    CpWorld,
    cp_command,
    running_cp_world,
    tunneld,
    tunneld_measured,
)

MiB = 1 << 20


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Unix socket paths are short; pytest's tmp_path may be too long.
    path = Path(tempfile.mkdtemp(prefix="tunneld-cp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def world(nursery: trio.Nursery, tmp_path: Path, socket_dir: Path) -> AsyncIterator[CpWorld]:
    async with running_cp_world(nursery, tmp_path, socket_dir) as world:
        yield world


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, MiB))
            f.write(block)
            left -= len(block)
    return sha256(path)


async def round_trip(world: CpWorld, tmp_path: Path, size: int) -> None:
    local = tmp_path / "local.bin"
    digest = random_file(local, size)
    # Each direction at the overlay's speed on a busy 2-core box (about 1 MB/s).
    limit = max(120.0, size / 100_000)
    up, up_rss = await tunneld_measured(
        world, tmp_path / "rss", "cp", "--json", str(local), "web1:big.bin", limit=limit
    )
    assert up.returncode == 0, up.stderr
    assert up.stderr == b""  # not a terminal: quiet
    record = json.loads(up.stdout)
    assert record == {
        "source": str(local),
        "destination": "web1:big.bin",
        "bytes": size,
        "sha256": digest,
        "resumed_from": 0,
    }
    assert sha256(world.workspace / "big.bin") == digest
    assert not (world.workspace / ".big.bin.tunneld-part").exists()

    back = tmp_path / "back"
    back.mkdir()
    down, down_rss = await tunneld_measured(
        world, tmp_path / "rss", "cp", "--json", f"web1:{world.workspace}/big.bin", str(back),
        limit=limit,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert down.stderr == b""
    assert json.loads(down.stdout)["destination"] == str(back / "big.bin")
    assert sha256(back / "big.bin") == digest
    assert not (back / ".big.bin.tunneld-part").exists()
    # Memory stays bounded by the chunk size, not the file size: the interpreter and its
    # imports take about 40 MiB; a copy that held the file would need the file's size more.
    print(
        f"peak RSS of tunneld cp for {size} bytes: up {up_rss >> 20} MiB, down {down_rss >> 20} MiB"
    )
    assert up_rss < 100 * MiB
    assert down_rss < 100 * MiB


async def test_cp_both_ways_keeps_the_hash(world: CpWorld, tmp_path: Path) -> None:
    await round_trip(world, tmp_path, 8 * MiB + 12345)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNNELD_SLOW"), reason="100 MiB copy: TUNNELD_SLOW=1")
async def test_cp_100_mib(world: CpWorld, tmp_path: Path) -> None:
    await round_trip(world, tmp_path, 100 * MiB)


async def test_cp_stdin_stdout_and_directories(world: CpWorld, tmp_path: Path) -> None:
    payload = os.urandom(3 * MiB + 7)
    result = await tunneld(world, "cp", "-", "web1:from-stdin.bin", stdin=payload)
    assert result.returncode == 0, result.stderr
    assert (world.workspace / "from-stdin.bin").read_bytes() == payload
    result = await tunneld(world, "cp", "web1:from-stdin.bin", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    # An empty file both ways, into a remote directory named with a trailing slash.
    (world.workspace / "sub").mkdir()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    result = await tunneld(world, "cp", str(empty), "web1:sub/")
    assert result.returncode == 0, result.stderr
    assert (world.workspace / "sub" / "empty").read_bytes() == b""
    result = await tunneld(world, "cp", "web1:sub/empty", str(tmp_path / "empty-back"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "empty-back").read_bytes() == b""
    # -p carries the permission bits.
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\n")
    script.chmod(0o750)
    result = await tunneld(world, "cp", "-p", str(script), "web1:sub")
    assert result.returncode == 0, result.stderr
    assert (world.workspace / "sub" / "run.sh").stat().st_mode & 0o777 == 0o750


async def wait_for_size(path: Path, size: int, process: trio.Process) -> int:
    """The size ``path`` had when it first held at least ``size`` bytes."""
    with trio.fail_after(WAIT):
        while True:
            assert process.returncode is None, "the copy ended before it was interrupted"
            try:
                if (seen := os.stat(path).st_size) >= size:
                    return seen
            except FileNotFoundError:
                pass
            await trio.sleep(0.05)


# Starts the command with SIGINT blocked, as a parent spawning it from a thread that
# masks SIGINT would: the mask survives exec (the pid stays the same).
_SIGINT_BLOCKED = (
    "import os, signal, sys;"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT});"
    "os.execv(sys.argv[1], sys.argv[1:])"
)


async def start_cp(
    world: CpWorld, nursery: trio.Nursery, *args: str, sigint_blocked: bool = False
) -> trio.Process:
    command = list(cp_command(world, *args))
    if sigint_blocked:
        command = [sys.executable, "-c", _SIGINT_BLOCKED, *command]
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    return process


async def test_resume_after_an_interrupted_copy(
    world: CpWorld, tmp_path: Path, nursery: trio.Nursery
) -> None:
    size = 5 * MiB + 99
    local = tmp_path / "local.bin"
    digest = random_file(local, size)

    # Upload, killed hard half-way: the agent keeps the partial file; the target is untouched.
    part = world.workspace / ".big.bin.tunneld-part"
    process = await start_cp(world, nursery, "--limit-rate", "2MiB", str(local), "web1:big.bin")
    await wait_for_size(part, MiB + MiB // 2, process)
    process.kill()
    with trio.fail_after(WAIT):
        await process.wait()
    assert not (world.workspace / "big.bin").exists()
    kept = part.stat().st_size
    assert 0 < kept < size
    result = await tunneld(world, "cp", "--resume", "--json", str(local), "web1:big.bin")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert kept <= record["resumed_from"] < size  # a write in flight may have landed
    assert (record["bytes"], record["sha256"]) == (size, digest)
    assert sha256(world.workspace / "big.bin") == digest
    assert not part.exists()

    # Download, interrupted with Ctrl-C: exit 130, says how to go on, keeps the partial.
    back = tmp_path / "back.bin"
    local_part = tmp_path / ".back.bin.tunneld-part"
    # At 1 MiB/s about 3.5 s of copying remain when Ctrl-C is sent: room for a test
    # process that a loaded machine pauses for a while between its polls.
    process = await start_cp(world, nursery, "--limit-rate", "1MiB", "web1:big.bin", str(back))
    seen = await wait_for_size(local_part, MiB + MiB // 2, process)
    masks = signal_masks(process)
    process.send_signal(signal.SIGINT)
    with trio.fail_after(WAIT):
        await process.wait()
    # Exit 0 means the copy finished despite Ctrl-C: say whether SIGINT was blocked or
    # ignored in the child, or whether the copy was (nearly) done when this test looked.
    assert process.returncode == 130, (f"partial had {seen} of {size} bytes", masks)
    assert process.stderr is not None
    message = (await process.stderr.receive_some()).decode()
    assert "interrupted" in message
    assert "--resume" in message
    assert not back.exists()
    kept = local_part.stat().st_size
    assert 0 < kept < size
    result = await tunneld(world, "cp", "--resume", "--json", "web1:big.bin", str(back))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resumed_from"] == kept
    assert sha256(back) == digest
    assert not local_part.exists()

    # A partial file that does not match the source is not trusted: the copy starts over.
    local_part.write_bytes(b"not the same bytes")
    result = await tunneld(world, "cp", "--resume", "--json", "web1:big.bin", str(back))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["resumed_from"] == 0
    assert sha256(back) == digest


def signal_masks(process: trio.Process) -> str:
    """The child's blocked, ignored and caught signal sets, as /proc shows them."""
    with open(f"/proc/{process.pid}/status") as f:
        return " ".join(
            line.strip() for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt"))
        )


async def test_ctrl_c_stops_a_copy_started_with_sigint_blocked(
    world: CpWorld, tmp_path: Path, nursery: trio.Nursery
) -> None:
    # A blocked SIGINT inherited from the parent left Ctrl-C pending and unseen: the copy
    # ran to the end and exited 0. The command unblocks SIGINT/SIGTERM when it starts.
    random_file(world.workspace / "big.bin", 4 * MiB)
    back = tmp_path / "back.bin"
    local_part = tmp_path / ".back.bin.tunneld-part"
    process = await start_cp(
        world, nursery, "--limit-rate", "1MiB", "--chunk-size", "256KiB", "web1:big.bin",
        str(back), sigint_blocked=True,
    )  # fmt: skip
    await wait_for_size(local_part, MiB // 2, process)
    masks = signal_masks(process)
    assert "SigBlk:\t0000000000000000" in masks, masks  # unblocked by tunneld itself
    process.send_signal(signal.SIGINT)
    with trio.fail_after(WAIT):
        await process.wait()
    assert process.returncode == 130, (masks, back.exists())
    assert process.stderr is not None
    assert "interrupted" in (await process.stderr.receive_some()).decode()
    assert not back.exists()
    assert 0 < local_part.stat().st_size < 4 * MiB


def read_all(fd: int) -> bytes:
    """Everything written to a pty until its other end is closed."""
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the slave side closed
            break
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def test_progress_bar_on_a_terminal_only(world: CpWorld, tmp_path: Path) -> None:
    local = tmp_path / "local.bin"
    random_file(local, 3 * MiB)
    master, slave = os.openpty()
    try:
        with trio.fail_after(WAIT * 2):
            async with trio.open_nursery() as nursery:
                output: list[bytes] = []

                async def drain() -> None:
                    output.append(await trio.to_thread.run_sync(read_all, master))

                nursery.start_soon(drain)
                result = await trio.run_process(
                    cp_command(world, str(local), "web1:shown.bin"),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=slave,
                    check=False,
                )
                os.close(slave)
                slave = -1
        assert result.returncode == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = output[0].decode()
    print(repr(text[-300:]))  # shows in the test output what the bar looked like
    assert text.startswith("\rlocal.bin  ")
    assert "\x1b[K" in text
    assert "3.0 MiB/3.0 MiB" in text
    assert "100%" in text
    assert "/s" in text
    assert "ETA" in text
    # The final line: average rate and elapsed time, then a newline (the pty adds \r).
    last = text.rstrip().rsplit("\r", 1)[-1]
    assert last.startswith("local.bin  ")
    assert " in 0:" in last
    assert text.endswith("\n")
    # -q silences it even on a terminal; a pipe gets nothing (the round trip test).
    result = await tunneld(world, "cp", "-q", str(local), "web1:shown.bin")
    assert result.returncode == 0
    assert result.stderr == b""


async def test_clear_errors(world: CpWorld, tmp_path: Path, socket_dir: Path) -> None:
    async def fails(*args: str, status: int = 1) -> str:
        result = await tunneld(world, "cp", *args)
        assert result.returncode == status, result
        assert result.stdout == b""
        message = result.stderr.decode()
        assert message.startswith("tunneld: error: "), message
        return message

    (world.workspace / "there.txt").write_text("hello")
    message = await fails("web1:missing.bin", str(tmp_path / "x"))
    assert "missing.bin" in message
    assert "(not_found)" in message
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / ".x.tunneld-part").exists()
    message = await fails(str(tmp_path / "nope.bin"), "web1:x")
    assert f"{tmp_path / 'nope.bin'}: No such file or directory" in message
    message = await fails("web1:/etc/shadow", str(tmp_path / "x"))
    assert message == (  # the README quotes this one
        "tunneld: error: cp: web1: /etc/shadow: resolves to /etc/shadow,"
        " outside the agent's roots (path_outside_roots)\n"
    )
    message = await fails(str(world.workspace / "there.txt"), "web1:/etc/evil")
    assert "(path_outside_roots)" in message
    message = await fails(str(world.workspace / "there.txt"), "web1:no/such/dir/x")
    assert "(not_found)" in message
    message = await fails("nobody:/x", str(tmp_path / "x"))
    assert "agent nobody" in message
    assert "(unknown_agent)" in message
    message = await fails("web1:there.txt", str(tmp_path / "no-dir" / "x"))
    assert "No such file or directory" in message
    message = await fails("a.txt", "b.txt", status=2)
    assert "exactly one of SRC and DST must be AGENT:PATH" in message
    message = await fails("web1:a", "web2:b", status=2)
    assert "exactly one" in message
    message = await fails("--resume", "-", "web1:x", status=2)
    assert "--resume needs a file" in message

    # No daemon behind the socket.
    result = await trio.run_process(
        [sys.executable, "-m", "tunneld", "cp", "--socket", str(socket_dir / "none.sock"),
         "web1:x", str(tmp_path / "x")],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().startswith(
        "tunneld: error: the tunneld daemon is not running (no socket at "
    )


def as_nobody(command: Sequence[str]) -> list[str]:
    """``command`` run as uid/gid 65534 with no extra groups (via util-linux setpriv)."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root + setpriv")
async def test_permission_errors_name_the_fix(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path
) -> None:
    probe = await trio.run_process(
        as_nobody([sys.executable, "-c", "import tunneld"]), check=False, capture_stderr=True
    )
    if probe.returncode != 0:
        pytest.skip(f"uid 65534 cannot run this interpreter: {probe.stderr[-200:]!r}")
    # A caller outside the daemon's group can read the API but not dial: cp says so.
    os.chmod(socket_dir, 0o755)
    async with running_cp_world(nursery, tmp_path, socket_dir, socket_mode=0o666) as world:
        with trio.fail_after(WAIT * 2):
            result = await trio.run_process(
                as_nobody(cp_command(world, "web1:x", "/tmp/never-written")),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 1
        message = result.stderr.decode()
        assert message.startswith("tunneld: error: cp: agent web1: permission denied: uid 65534")
        assert "membership in its group" in message
        # Without access to the socket at all: the connect itself is refused.
        os.chmod(world.socket, 0o600)
        with trio.fail_after(WAIT * 2):
            result = await trio.run_process(
                as_nobody(cp_command(world, "web1:x", "/tmp/never-written")),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert result.returncode == 1
        message = result.stderr.decode()
        assert message.startswith(f"tunneld: error: permission denied connecting to {world.socket}")
