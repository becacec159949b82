"""Agent file operations over real streams, confined to the configured roots."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio
from _agent_support import make_config, open_client, running_services
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.agent._errors import OperationError
from tunneld.agent._files import INLINE_READ_MAX, read_file, read_small_file
from tunneld.agent._paths import PathPolicy
from tunneld.agent.client import AgentClient, AgentError
from tunneld.config import ByteSize


async def _error(call: object) -> AgentError:
    with pytest.raises(AgentError) as info:
        await call  # type: ignore[misc]
    return info.value


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "thread"])
async def test_read_with_offset_limit_and_the_size_cap(tmp_path: Path, inline: bool) -> None:
    # A 1 KiB file: read on the event loop with inline_reads, in a thread without;
    # the answers and errors are the same either way.
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 4)
    config = make_config(tmp_path, max_read_size=ByteSize(100), inline_reads=inline)
    async with running_services(config) as (services, nursery):
        client = await open_client(services, nursery, tcp=True)
        part = await client.read_file("f.bin", offset=10, limit=5)
        assert (part.data, part.offset, part.size, part.eof) == (
            bytes(range(10, 15)),
            10,
            1024,
            False,
        )
        capped = await client.read_file(str(tmp_path / "f.bin"), offset=0, limit=5000)
        assert capped.data == bytes(range(100))
        assert not capped.eof
        tail = await client.read_file("f.bin", offset=1000)
        assert tail.data == bytes(range(232, 256))
        assert tail.eof
        beyond = await client.read_file("f.bin", offset=5000)
        assert (beyond.data, beyond.eof) == (b"", True)
        err = await _error(client.read_file("missing.txt"))
        assert err.code == "not_found"
        assert "read_file missing.txt" in err.message
        err = await _error(client.read_file("."))
        assert err.code == "is_a_directory"
        await client.aclose()


async def test_atomic_write_with_mode(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        await client.write_file("new.txt", b"one", mode=0o600)
        target = tmp_path / "new.txt"
        assert target.read_bytes() == b"one"
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        inode = target.stat().st_ino
        await client.write_file("new.txt", b"two")  # keeps the mode; a new inode (rename)
        assert target.read_bytes() == b"two"
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert target.stat().st_ino != inode
        assert os.listdir(tmp_path) == ["new.txt"]  # no temp left
        err = await _error(client.write_file("nodir/x.txt", b""))
        assert err.code == "not_found"
        err = await _error(client.write_file(".", b""))
        assert err.code == "is_a_directory"
        await client.aclose()
    async with running_services(make_config(tmp_path, allow_write=False)) as (services, nursery):
        client = await open_client(services, nursery)
        err = await _error(client.write_file("new.txt", b"x"))
        assert err.code == "denied"
        assert "[agent].allow_write" in err.message
        err = await _error(client.edit_file("new.txt", [("two", "three")]))
        assert err.code == "denied"
        assert target.read_bytes() == b"two"
        await client.aclose()


async def test_edit_file_success_missing_and_ambiguous(tmp_path: Path) -> None:
    target = tmp_path / "code.py"
    original = "def f():\n    return 1\n\nx = 1\ny = 1\n"
    target.write_text(original)
    target.chmod(0o640)
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        err = await _error(client.edit_file("code.py", [("return 1", "return 2"), ("= 1", "= 2")]))
        assert err.code == "ambiguous_edit"
        assert "edit 1: search string occurs 2 times" in err.message
        assert target.read_text() == original  # all or nothing
        err = await _error(client.edit_file("code.py", [("return 1", "return 2"), ("zzz", "")]))
        assert err.code == "search_not_found"
        assert "edit 1: search string not found: 'zzz'" in err.message
        assert target.read_text() == original
        size = await client.edit_file("code.py", [("return 1", "return 2"), ("x = 1", "x = 3")])
        assert target.read_text() == "def f():\n    return 2\n\nx = 3\ny = 1\n"
        assert size == len(target.read_bytes())
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        (tmp_path / "bin").write_bytes(b"\xff\xfe")
        err = await _error(client.edit_file("bin", [("a", "b")]))
        assert err.code == "invalid_request"
        assert "not UTF-8" in err.message
        await client.aclose()


async def test_list_dir_and_stat(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"12345")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "link").symlink_to("b.txt")
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        entries = await client.list_dir(".")
        assert [(e.name, e.type) for e in entries] == [
            ("a_dir", "dir"),
            ("b.txt", "file"),
            ("link", "symlink"),
        ]
        assert entries[1].size == 5
        info = await client.stat("link")
        assert (info.type, info.size, info.path) == ("file", 5, str(tmp_path / "b.txt"))
        assert (await client.stat("a_dir")).type == "dir"
        err = await _error(client.list_dir("b.txt"))
        assert err.code == "not_a_directory"
        err = await _error(client.stat("nope"))
        assert err.code == "not_found"
        await client.aclose()


async def _assert_outside(client: AgentClient, path: str) -> None:
    for call in (
        client.read_file(path),
        client.write_file(path, b"pwned"),
        client.edit_file(path, [("secret", "pwned")]),
        client.list_dir(path),
        client.stat(path),
    ):
        err = await _error(call)
        assert err.code == "path_outside_roots", (path, err)
        assert path in err.message


async def test_path_escapes_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("secret")
    (root / "sub").mkdir()
    (root / "escape").symlink_to(secret)
    (root / "parent_link").symlink_to(outside)
    async with running_services(make_config(root)) as (services, nursery):
        client = await open_client(services, nursery)
        for path in (
            "../outside/secret.txt",
            "sub/../../outside/secret.txt",
            "sub/../sub",  # ".." is refused even when it would stay inside
            str(secret),
            "/etc/passwd",
            "escape",
            "parent_link/secret.txt",
            "parent_link",
        ):
            await _assert_outside(client, path)
        err = await _error(client.write_file("parent_link/new.txt", b"x"))
        assert err.code == "path_outside_roots"
        assert not (outside / "new.txt").exists()
        assert secret.read_text() == "secret"
        # exec working directories are confined the same way.
        err = await _error(client.run(["true"], cwd="parent_link"))
        assert err.code == "path_outside_roots"
        # Inside paths still work, by relative and absolute name.
        await client.write_file(str(root / "sub" / "ok.txt"), b"fine")
        assert (await client.read_file("sub/ok.txt")).data == b"fine"
        await client.aclose()


async def test_no_roots_means_no_file_access(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path, roots=())) as (services, nursery):
        client = await open_client(services, nursery)
        err = await _error(client.read_file(str(tmp_path)))
        assert err.code == "path_outside_roots"
        assert "no file roots are configured" in err.message
        # exec without roots runs in the agent's own working directory.
        out = await client.run(["pwd"])
        assert out.stdout == f"{os.getcwd()}\n".encode()
        await client.aclose()


# ---- the small-file read on the event loop -----------------------------------------


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    size=st.sampled_from([0, 1, 100, INLINE_READ_MAX - 1, INLINE_READ_MAX]),
    offset=st.integers(0, INLINE_READ_MAX + 10),
    limit=st.one_of(st.none(), st.integers(0, INLINE_READ_MAX + 10)),
    max_read=st.integers(0, 2 * INLINE_READ_MAX),
)
def test_small_reads_answer_exactly_what_read_file_does(
    tmp_path_factory: pytest.TempPathFactory,
    size: int,
    offset: int,
    limit: int | None,
    max_read: int,
) -> None:
    root = tmp_path_factory.mktemp("small")
    (root / "f").write_bytes(os.urandom(size))
    policy = PathPolicy([root])
    inline = read_small_file(policy, "f", offset, limit, max_read)
    assert inline == read_file(policy, "f", offset, limit, max_read)


def test_small_reads_leave_everything_else_to_the_thread(tmp_path: Path) -> None:
    # Not a small regular file, or an error: None, so read_file (in a thread) answers
    # and words the error. A FIFO is never opened (opening one for reading blocks until
    # a writer comes), nor is a directory.
    policy = PathPolicy([tmp_path])
    (tmp_path / "big").write_bytes(b"x" * (INLINE_READ_MAX + 1))
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "secret").write_bytes(b"s")
    (tmp_path / "secret").chmod(0)
    for name in ("big", "fifo", "dir", "missing"):
        assert read_small_file(policy, name, 0, None, 1 << 20) is None, name
    if os.geteuid() != 0:  # root reads a mode-0 file anyway
        assert read_small_file(policy, "secret", 0, None, 1 << 20) is None
    with pytest.raises(OperationError) as caught:
        read_small_file(policy, "../etc/passwd", 0, None, 100)
    assert caught.value.code == "path_outside_roots"


async def test_a_fifo_in_the_roots_does_not_stall_other_requests(tmp_path: Path) -> None:
    # The FIFO's read waits for a writer in a worker thread, as before; the agent's
    # loop keeps answering small reads meanwhile.
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "small.txt").write_text("hello")
    async with running_services(make_config(tmp_path)) as (services, nursery):
        blocked = await open_client(services, nursery)
        client = await open_client(services, nursery)

        async def read_fifo() -> None:
            # Once a writer opens it, the read fails (a FIFO cannot seek): an error
            # frame, as before this change.
            err = await _error(blocked.read_file("fifo"))
            assert "read_file fifo" in err.message

        nursery.start_soon(read_fifo)
        with trio.fail_after(30):
            for _ in range(5):
                assert (await client.read_file("small.txt")).data == b"hello"
        # Let the blocked open finish, so its worker thread does not outlive the test.
        fifo = await trio.to_thread.run_sync(os.open, tmp_path / "fifo", os.O_WRONLY)
        os.close(fifo)
        await client.aclose()
