"""``tunneld cp`` end to end: a real control plane, ``tunneld agent`` and ``tunneld run``
processes, and ``tunneld cp`` processes moving files both ways through the overlay."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from tests._cp_support import WAIT, CpWorld, running_cp_world, tunneld

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
    up = await tunneld(world, "cp", "--json", str(local), "web1:big.bin")
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
    down = await tunneld(world, "cp", "--json", f"web1:{world.workspace}/big.bin", str(back))
    assert down.returncode == 0, down.stderr
    assert down.stderr == b""
    assert json.loads(down.stdout)["destination"] == str(back / "big.bin")
    assert sha256(back / "big.bin") == digest
    assert not (back / ".big.bin.tunneld-part").exists()


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
