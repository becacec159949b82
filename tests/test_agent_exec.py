"""Agent exec over real streams: streamed output, exit status, stdin, timeouts that kill the
whole process group, cancellation, and background processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _agent_support import make_config, open_client, poll_pause, running_services

from tunneld.agent.client import AgentError
from tunneld.proto.agentrpc import Exit, Stderr, Stdout

# The leader prints its child's pid, the child prints the grandchild's; all ignore SIGTERM
# (SIG_IGN survives exec) so only the SIGKILL escalation can end them.
FAMILY = "trap '' TERM; sh -c 'sleep 300 & echo grandchild $!; wait' & echo child $!; wait"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _wait_dead(pids: list[int]) -> None:
    with trio.fail_after(10):
        while any(_alive(p) for p in pids):
            await poll_pause()


def _pids(text: bytes) -> list[int]:
    return [int(line.split()[1]) for line in text.decode().splitlines() if line.strip()]


@pytest.mark.parametrize("tcp", [False, True], ids=["memory", "tcp"])
async def test_output_is_streamed_in_chunks_as_it_is_printed(tmp_path: Path, tcp: bool) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery, tcp=tcp)
        script = "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three"
        events = []
        async with client.exec(shell=script) as run:
            async for event in run:
                events.append(event)
        assert events[0] == Stdout(b"one\n")  # arrived while the command still ran
        assert Stderr(b"two\n") in events
        assert b"".join(e.data for e in events if isinstance(e, Stdout)) == b"one\nthree\n"
        assert events[-1] == Exit(0, None, False)
        await client.aclose()


async def test_exit_codes_signals_stdin_env_and_cwd(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        assert (await client.run(shell="exit 3")).exit == Exit(3, None, False)
        assert (await client.run(shell="kill -9 $$")).exit == Exit(None, 9, False)
        out = await client.run(["cat"], stdin=b"hello\x00world")
        assert out.stdout == b"hello\x00world"
        out = await client.run(shell='echo "$GREETING"; pwd', env={"GREETING": "hi"}, cwd="sub")
        assert out.stdout == f"hi\n{tmp_path / 'sub'}\n".encode()
        default_cwd = await client.run(["pwd"])
        assert default_cwd.stdout == f"{tmp_path}\n".encode()
        await client.aclose()


async def test_streamed_stdin(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        async with client.exec(["tr", "a-z", "A-Z"], stream_stdin=True) as run:
            await run.send_stdin(b"abc ")
            await run.send_stdin(b"def")
            await run.close_stdin()
            out = b"".join([e.data async for e in run if isinstance(e, Stdout)])
        assert out == b"ABC DEF"
        assert run.exit == Exit(0, None, False)
        # The stream carries the next request afterwards.
        assert (await client.run(["true"])).exit.code == 0
        await client.aclose()


async def test_start_failures_and_denials_are_errors_not_crashes(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        with pytest.raises(AgentError) as info:
            await client.run(["/nonexistent/program"])
        assert info.value.code == "not_found"
        assert "exec /nonexistent/program" in info.value.message
        with pytest.raises(AgentError) as info:
            await client.run(["true"], cwd="/")
        assert info.value.code == "path_outside_roots"
        assert (await client.run(["true"])).exit.code == 0
        await client.aclose()
    async with running_services(make_config(tmp_path, allow_exec=False)) as (services, nursery):
        client = await open_client(services, nursery)
        with pytest.raises(AgentError) as info:
            await client.run(["true"])
        assert info.value.code == "denied"
        assert "[agent].allow_exec" in info.value.message
        await client.aclose()


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path), kill_grace=0.3) as (services, nursery):
        client = await open_client(services, nursery)
        out = await client.run(shell=FAMILY, time_limit=1.0)
        assert out.exit == Exit(None, 9, True)  # ignored SIGTERM, so SIGKILL after the grace
        pids = _pids(out.stdout)
        assert len(pids) == 2
        await _wait_dead(pids)
        await client.aclose()


async def test_closing_the_client_stream_kills_the_process_group(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path), kill_grace=0.3) as (services, nursery):
        client = await open_client(services, nursery, tcp=True)
        run = client.exec(shell=FAMILY)
        seen = b""
        async for event in run:
            assert isinstance(event, Stdout)
            seen += event.data
            if len(_pids(seen)) == 2 and seen.endswith(b"\n"):
                break
        pids = _pids(seen)
        assert all(_alive(p) for p in pids)
        await client.aclose()
        await _wait_dead(pids)


async def test_cancel_message_ends_the_command_and_the_stream_goes_on(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path)) as (services, nursery):
        client = await open_client(services, nursery)
        async with client.exec(shell="echo started; exec sleep 300") as run:
            async for event in run:
                if event == Stdout(b"started\n"):
                    await run.cancel()
        assert run.exit == Exit(None, 15, False)
        # Leaving the block early also cancels, and the stream stays usable.
        async with client.exec(shell="echo x; exec sleep 300") as run:
            async for _ in run:
                break
        assert (await client.run(["echo", "next"])).stdout == b"next\n"
        await client.aclose()


async def test_background_processes_list_output_signal(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_background_processes=2)
    async with running_services(config, output_limit=64) as (services, nursery):
        client = await open_client(services, nursery)
        ident = await client.start_background(shell="echo started; exec sleep 300")
        with trio.fail_after(5):
            while (await client.process_output(ident))["data"] != b"started\n":
                await poll_pause()
        [entry] = await client.process_list()
        assert entry["id"] == ident
        assert entry["running"] is True
        assert entry["argv"] == ["/bin/sh", "-c", "echo started; exec sleep 300"]

        # The table is bounded: a second runs, a third is refused while both run.
        loud = await client.start_background(
            shell="for i in $(seq 100); do echo line$i; done; exec sleep 300"
        )
        with pytest.raises(AgentError) as info:
            await client.start_background(["sleep", "1"])
        assert info.value.code == "too_many_processes"

        await client.process_signal(ident, "TERM")
        with trio.fail_after(5):
            while (out := await client.process_output(ident))["running"]:
                await poll_pause()
        assert out["signal"] == 15
        assert out["exit_code"] is None
        with pytest.raises(AgentError) as info:
            await client.process_signal(ident, "TERM")
        assert info.value.code == "no_such_process"

        # Output is bounded: old bytes are dropped and the offset says so.
        with trio.fail_after(5):
            while not (out := await client.process_output(loud))["data"].endswith(b"line100\n"):
                await poll_pause()
        assert out["offset"] > 0
        assert out["dropped"] == out["offset"]
        assert len(out["data"]) <= 64
        await client.process_signal(loud, 9)
        with trio.fail_after(5):
            while (out := await client.process_output(loud))["running"]:
                await poll_pause()
        assert (out["exit_code"], out["signal"]) == (None, 9)

        # A finished process makes room for a new one.
        await client.start_background(["true"])
        with pytest.raises(AgentError) as info:
            await client.process_output("p999")
        assert info.value.code == "no_such_process"
        await client.aclose()


async def test_stopping_the_services_kills_background_processes(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path), kill_grace=0.2) as (services, nursery):
        client = await open_client(services, nursery)
        ident = await client.start_background(shell=FAMILY)
        with trio.fail_after(5):
            while len(_pids((await client.process_output(ident))["data"])) < 2:
                await poll_pause()
        data = (await client.process_output(ident))["data"]
        [entry] = await client.process_list()
        pids = [*_pids(data), entry["pid"]]
        await client.aclose()
    await _wait_dead(pids)


async def test_cancelling_the_serving_task_kills_a_foreground_command(tmp_path: Path) -> None:
    async with running_services(make_config(tmp_path), kill_grace=0.2) as (services, nursery):
        client = await open_client(services, nursery)
        seen = b""
        async for event in client.exec(shell=FAMILY):
            assert isinstance(event, Stdout)
            seen += event.data
            if len(_pids(seen)) == 2 and seen.endswith(b"\n"):
                break
        pids = _pids(seen)
        # Leaving the block cancels serve_rpc mid-exec (an overlay shutting down).
    await _wait_dead(pids)
