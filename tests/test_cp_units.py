"""The pieces of ``tunneld cp`` without processes: endpoints, the progress bar, and
upload/download (resume, streams, verification) against AgentServices over real streams."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from tests._agent_support import make_config, open_client, running_services
from tunneld.agent.client import AgentError
from tunneld.agent.transfer import VerifyError, _Pacer, download, local_part_path, upload
from tunneld.cli._common import CliError
from tunneld.cli._cp import Endpoint, parse_endpoint
from tunneld.cli._progress import ProgressBar, format_bytes, format_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web1:/srv/x", Endpoint("web1", "/srv/x")),
        ("web1:", Endpoint("web1", "")),
        ("web1:rel/a:b", Endpoint("web1", "rel/a:b")),
        ("-", Endpoint(None, "-")),
        ("plain.txt", Endpoint(None, "plain.txt")),
        ("./a:b", Endpoint(None, "./a:b")),
        ("/abs/a:b", Endpoint(None, "/abs/a:b")),
        ("../up:x", Endpoint(None, "../up:x")),
    ],
)
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


def test_parse_endpoint_refuses_an_empty_agent() -> None:
    with pytest.raises(CliError, match="empty agent name"):
        parse_endpoint(":/x")


def test_formats() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(100 * 2**20) == "100.0 MiB"
    assert format_bytes(3 * 2**40) == "3.0 TiB"
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"


def test_progress_bar_rate_eta_and_final_line() -> None:
    now = [100.0]
    out = io.StringIO()
    bar = ProgressBar("big.bin", out, clock=lambda: now[0], columns=100)
    bar.update(0, 10 * 2**20)
    for step in range(1, 6):
        now[0] += 1.0
        bar.update(step * 2**20, 10 * 2**20)
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 6
    last = frames[-1]
    assert last.startswith("big.bin  [")
    assert " 50%  5.0 MiB/10.0 MiB  1.0 MiB/s  ETA 0:05" in last
    assert last.endswith("\x1b[K")
    # Frames are redrawn at most every min_interval, except at 100%.
    now[0] += 0.01
    bar.update(6 * 2**20, 10 * 2**20)
    assert len(out.getvalue().split("\r")) == 7
    now[0] += 0.01
    bar.update(10 * 2**20, 10 * 2**20)
    assert "100%" in out.getvalue().split("\r")[-1]
    bar.finish()
    bar.finish()  # once only
    final = out.getvalue().split("\r")[-1]
    assert final.endswith("\n")
    assert "in 0:05" in final
    # Every frame has the same width up to the numbers: the bar does not jump around.
    assert len({frame.index("]") for frame in frames}) == 1


def test_progress_bar_without_a_total_and_after_a_resume() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar("stdin", out, clock=lambda: now[0], columns=80)
    bar.update(0, None)
    now[0] = 2.0
    bar.update(2048, None)
    assert out.getvalue().split("\r")[-1].startswith("stdin  2.0 KiB  1.0 KiB/s  ETA --:--")
    out = io.StringIO()
    resumed = ProgressBar("x", out, clock=lambda: now[0], columns=80)
    resumed.update(900, 1000)  # 900 bytes were already there: not part of the rate
    now[0] = 3.0
    resumed.update(1000, 1000)
    resumed.finish()
    assert "100 B/s" in out.getvalue().split("\r")[-1]


async def test_upload_resume_download_resume_and_streams(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    data = os.urandom(300_000)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    async with running_services(make_config(root)) as (services, nursery):
        client = await open_client(services, nursery, tcp=True)
        async with client:
            seen: list[tuple[int, int | None]] = []
            result = await upload(
                client,
                source,
                "up.bin",
                chunk_size=65536,
                progress=lambda d, t: seen.append((d, t)),
            )
            assert (result.size, result.sha256, result.resumed_from) == (len(data), digest, 0)
            assert seen[0] == (0, len(data))
            assert seen[-1] == (len(data), len(data))
            assert (root / "up.bin").read_bytes() == data

            # A partial upload that matches the source's prefix is continued...
            await client.write_part("again.bin", 0, data[:100_000])
            result = await upload(client, source, "again.bin", resume=True, chunk_size=65536)
            assert result.resumed_from == 100_000
            assert (root / "again.bin").read_bytes() == data
            # ...one that does not is started over, as is one longer than the source.
            await client.write_part("again.bin", 0, bytes([data[0] ^ 0xFF]) + data[1:100_000])
            assert (await upload(client, source, "again.bin", resume=True)).resumed_from == 0
            await client.write_part("again.bin", 0, data + b"more")
            assert (await upload(client, source, "again.bin", resume=True)).resumed_from == 0
            assert (root / "again.bin").read_bytes() == data
            # Resuming a finished partial file just commits it.
            await client.write_part("whole.bin", 0, data)
            result = await upload(client, source, "whole.bin", resume=True)
            assert result.resumed_from == len(data)
            assert (root / "whole.bin").read_bytes() == data

            # Downloads: a matching local partial file is continued, a wrong one replaced.
            target = tmp_path / "down.bin"
            local_part_path(target).write_bytes(data[:50_000])
            result = await download(client, "up.bin", target, resume=True, chunk_size=65536)
            assert result.resumed_from == 50_000
            assert target.read_bytes() == data
            assert not local_part_path(target).exists()
            local_part_path(target).write_bytes(b"garbage")
            assert (await download(client, "up.bin", target, resume=True)).resumed_from == 0
            assert target.read_bytes() == data

            # Streams: stdin-like in, stdout-like out.
            send, receive = trio.testing.memory_stream_pair()
            await send.send_all(data[:1000])
            await send.send_eof()
            result = await upload(client, receive, "streamed.bin", chunk_size=300)
            assert (root / "streamed.bin").read_bytes() == data[:1000]
            sink_send, sink_receive = trio.testing.memory_stream_pair()
            got = bytearray()

            async def drain() -> None:
                while chunk := await sink_receive.receive_some():
                    got.extend(chunk)

            async with trio.open_nursery() as inner:
                inner.start_soon(drain)
                await download(client, "streamed.bin", sink_send, chunk_size=256)
                await sink_send.send_eof()
            assert bytes(got) == data[:1000]
            with pytest.raises(ValueError, match="only a file can be resumed"):
                await upload(client, receive, "x", resume=True)

            # A directory or a missing file is the agent's clear error.
            (root / "dir").mkdir()
            with pytest.raises(AgentError) as is_dir:
                await download(client, "dir", tmp_path / "d")
            assert is_dir.value.code == "is_a_directory"
            with pytest.raises(AgentError) as missing:
                await download(client, "missing", tmp_path / "m")
            assert missing.value.code == "not_found"


async def test_a_source_that_changes_during_a_download_fails_verification(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "moving.bin").write_bytes(b"a" * 10_000)
    async with running_services(make_config(root)) as (services, nursery):
        client = await open_client(services, nursery)
        async with client:
            target = tmp_path / "out.bin"

            def rewrite(done: int, total: int | None) -> None:
                if done >= 4096:  # after the first chunk: the file changes under us
                    (root / "moving.bin").write_bytes(b"b" * 10_000)

            with pytest.raises(VerifyError, match="changed during the copy"):
                await download(client, "moving.bin", target, chunk_size=4096, progress=rewrite)
            assert not target.exists()
            assert not local_part_path(target).exists()


async def test_a_new_download_gets_0666_minus_the_umask_which_it_leaves_alone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").write_bytes(b"payload")
    previous = os.umask(0o027)
    try:
        async with running_services(make_config(root)) as (services, nursery):
            client = await open_client(services, nursery, tcp=True)
            async with client:
                await download(client, "f.bin", tmp_path / "new.bin")
        assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640
        assert os.umask(0o027) == 0o027  # still the umask we set
    finally:
        os.umask(previous)


async def test_limit_rate_spends_at_most_a_quarter_second_of_unused_credit(
    autojump_clock: trio.abc.Clock,
) -> None:
    pacer = _Pacer(1000.0)
    start = trio.current_time()
    await pacer.account(100)
    assert trio.current_time() == pytest.approx(start + 0.1)
    await trio.sleep(10.0)  # a stall: ten seconds of credit left unused
    await pacer.account(1000)  # one second of the rate: 0.25 s of it is credit
    assert trio.current_time() == pytest.approx(start + 10.1 + 0.75)
    await pacer.account(500)
    assert trio.current_time() == pytest.approx(start + 10.1 + 1.25)
