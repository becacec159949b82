"""`tunneld agent` as a real process: control plane + agent process + a client node."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests._control_support import running_server
from tunneld.agent.client import AgentClient, AgentError
from tunneld.demo import loopback_overlay

WAIT = 20.0


async def _wait_for_file(path: Path, process: trio.Process) -> dict[str, object]:
    ready = trio.Path(path)
    with trio.fail_after(WAIT):
        while not await ready.exists():
            assert process.returncode is None, "the agent exited before it was ready"
            await trio.sleep(0.05)
    return dict(json.loads(await ready.read_text()))


async def test_agent_process_serves_exec_and_files_to_a_permitted_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "hello.txt").write_text("hello from the agent host\n")
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        token_file = tmp_path / "agent.token"
        token_file.write_text(await h.token("alice", agent="web1") + "\n")
        token_file.chmod(0o600)  # token files must not be group/world-readable
        control_url = h.info.url
        config = tmp_path / "agent.toml"
        config.write_text(
            "[agent]\n"
            f'roots = ["{workspace}"]\n'
            "allow_exec = true\n"
            "allow_write = true\n"
            'name = "web1"\n'
            f'key_file = "{tmp_path / "agent.key"}"\n'
            f'control_url = "{control_url}"\n'
            f'token_file = "{token_file}"\n'
            'udp_listen = "127.0.0.1:0"\n'
        )
        ready_file = tmp_path / "agent.ready"
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "tunneld", "agent", "--config", str(config),
                 "--ready-file", str(ready_file)],
                check=False,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        try:
            ready = await _wait_for_file(ready_file, process)
            assert ready["name"] == "web1"
            assert ready["pid"] == process.pid
            assert (tmp_path / "agent.key").stat().st_mode & 0o777 == 0o600

            user_token = await h.token("alice")

            laptop = loopback_overlay(h.info, "laptop", user_token)
            await nursery.start(laptop.serve)
            await laptop.add_tunnel("web1")
            with trio.fail_after(WAIT):
                stream = await laptop.open_stream("web1", "rpc")
            async with AgentClient(stream) as agent:
                output = await agent.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
                assert output.stdout == b"out\n"
                assert output.stderr == b"err\n"
                assert output.exit.code == 3
                read = await agent.read_file(str(workspace / "hello.txt"))
                assert read.data == b"hello from the agent host\n"
                await agent.write_file(str(workspace / "new.txt"), b"written remotely")
                with pytest.raises(AgentError) as refused:
                    await agent.read_file("/etc/passwd")
                assert refused.value.code == "path_outside_roots"
            assert (workspace / "new.txt").read_bytes() == b"written remotely"
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(WAIT):
                await process.wait()
        assert process.returncode == 0
        assert not ready_file.exists()


async def test_agent_without_a_token_says_which_key_to_set(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nkey_file = "{tmp_path / "agent.key"}"\n')
    env = {k: v for k, v in os.environ.items() if k != "TUNNELD_TOKEN"}
    result = await trio.run_process(
        [sys.executable, "-m", "tunneld", "agent", "--config", str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        "tunneld: error: no token: set [agent].token_file or the TUNNELD_TOKEN variable\n"
    )
