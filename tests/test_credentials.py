"""Token providers: static, file (re-read on change, mode checked), environment, command;
and the real `tunneld agent` process getting its token from a command and a rotated file."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests._agent_support import poll_pause
from tests._control_support import running_server
from tunneld.credentials import (
    CommandTokenProvider,
    EnvironmentTokenProvider,
    FileTokenProvider,
    NoTokenSourceError,
    StaticTokenProvider,
    TokenUnavailableError,
    token_provider_for,
)
from tunneld.demo import loopback_overlay

WAIT = 30.0


def write_token(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


async def test_static_and_environment() -> None:
    assert await StaticTokenProvider(" tok_abc\n")() == "tok_abc"
    with pytest.raises(TokenUnavailableError, match="static token is empty"):
        StaticTokenProvider("  ")
    environ = {"MY_TOKEN": "tok_env\n"}
    provider = EnvironmentTokenProvider("MY_TOKEN", environ)
    assert await provider() == "tok_env"
    environ["MY_TOKEN"] = "tok_rotated"
    assert await provider() == "tok_rotated"  # read at every call
    del environ["MY_TOKEN"]
    with pytest.raises(TokenUnavailableError, match="environment variable MY_TOKEN is empty"):
        await provider()


async def test_file_is_re_read_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_token(path, "tok_one\n")
    provider = FileTokenProvider(path)
    assert await provider() == "tok_one"
    assert await provider() == "tok_one"
    # Replaced the way editors and secret agents do it: a new file renamed over.
    write_token(tmp_path / "new", "tok_two_longer\n")
    os.replace(tmp_path / "new", path)
    assert await provider() == "tok_two_longer"
    # Rewritten in place with the same size: the mtime tells.
    write_token(path, "tok_two_LONGER\n")
    os.utime(path, ns=(1, 1))
    assert await provider() == "tok_two_LONGER"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
async def test_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    write_token(path, "tok_secret\n", mode)
    provider = FileTokenProvider(path)
    with pytest.raises(TokenUnavailableError) as info:
        await provider()
    message = str(info.value)
    assert f"is accessible by group or others (mode {mode:04o})" in message
    assert f"chmod 600 {path}" in message
    assert "tok_secret" not in message
    # Fixed by the operator: the next call (the overlay's next reconnect) works.
    path.chmod(0o600)
    assert await provider() == "tok_secret"
    # A file that loosens later is refused again, even though its token was cached.
    path.chmod(0o644)
    with pytest.raises(TokenUnavailableError):
        await provider()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "is empty"),
        ("\n  \n", "is empty"),
        ("tok_a\ntok_b\n", "does not hold one token"),
        ("tok with space", "does not hold one token"),
        ("x" * 9000, "is over 8194 bytes"),
    ],
)
async def test_file_content_must_be_one_token(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "token"
    write_token(path, content)
    with pytest.raises(TokenUnavailableError, match=reason) as info:
        await FileTokenProvider(path)()
    assert "tok_a" not in str(info.value)
    with pytest.raises(TokenUnavailableError, match="cannot read token file"):
        await FileTokenProvider(tmp_path / "missing")()
    # An OSError: the overlay's reconnect loop retries it and shows the message.
    assert isinstance(info.value, OSError)


async def test_command(tmp_path: Path) -> None:
    script = tmp_path / "secret-tool"
    script.write_text("#!/bin/sh\necho tok_from_command\necho 'diagnostics' >&2\n")
    script.chmod(0o755)
    assert await CommandTokenProvider([str(script)])() == "tok_from_command"
    failing = CommandTokenProvider(["sh", "-c", "echo tok_leaked; exit 3"])
    with pytest.raises(TokenUnavailableError, match="exited with status 3") as info:
        await failing()
    assert "tok_leaked" not in str(info.value)
    slow = CommandTokenProvider(["sleep", "30"], timeout=0.3)
    with trio.fail_after(WAIT), pytest.raises(TokenUnavailableError, match=r"within 0\.3s"):
        await slow()
    with pytest.raises(TokenUnavailableError, match="cannot run token command"):
        await CommandTokenProvider([str(tmp_path / "nope")])()
    with pytest.raises(TokenUnavailableError, match="does not hold one token"):
        await CommandTokenProvider(["printf", "a\\nb\\n"])()
    with pytest.raises(ValueError, match="empty"):
        CommandTokenProvider([])


async def test_choosing_from_config(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_token(path, "tok_file")
    chosen = token_provider_for(section="daemon", token_file=str(path), environ={})
    assert isinstance(chosen, FileTokenProvider)
    command = token_provider_for(section="daemon", token_command=["echo", "tok"], environ={})
    assert isinstance(command, CommandTokenProvider)
    assert await command() == "tok"
    env = token_provider_for(section="agent", token_env="OTHER", environ={"OTHER": "tok_o"})
    assert await env() == "tok_o"
    fallback = token_provider_for(section="agent", environ={"TUNNELD_TOKEN": "tok_default"})
    assert await fallback() == "tok_default"
    with pytest.raises(NoTokenSourceError, match=r"only one of \[agent\].token_file and"):
        token_provider_for(section="agent", token_file=str(path), token_command=["x"])
    with pytest.raises(NoTokenSourceError, match=r"no token: set \[agent\].token_file"):
        token_provider_for(section="agent", environ={})
    # Checked at start: a loose file or a missing variable fails at once.
    path.chmod(0o644)
    with pytest.raises(TokenUnavailableError, match="chmod 600"):
        token_provider_for(section="agent", token_file=str(path), environ={})
    with pytest.raises(TokenUnavailableError, match="OTHER is empty"):
        token_provider_for(section="agent", token_env="OTHER", environ={})


async def test_agent_process_refuses_a_loose_token_file(tmp_path: Path) -> None:
    token = tmp_path / "agent.token"
    write_token(token, "tok_x\n", 0o644)
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nkey_file = "{tmp_path / "agent.key"}"\ntoken_file = "{token}"\n')
    result = await trio.run_process(
        [sys.executable, "-m", "tunneld", "agent", "--config", str(config)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"tunneld: error: token file {token} is accessible by group or others (mode 0644);"
        f" it holds a secret: run chmod 600 {token}\n"
    )


async def test_agent_process_with_a_token_command(nursery: trio.Nursery, tmp_path: Path) -> None:
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        secret = tmp_path / "vault"
        write_token(secret, await h.token("alice", agent="web1") + "\n")
        config = tmp_path / "agent.toml"
        config.write_text(
            "[agent]\n"
            'name = "web1"\n'
            f'key_file = "{tmp_path / "agent.key"}"\n'
            f'control_url = "{h.info.url}"\n'
            f'token_command = ["cat", "{secret}"]\n'
            'token_command_timeout = "5s"\n'
            'udp_listen = "127.0.0.1:0"\n'
        )
        ready = tmp_path / "agent.ready"
        env = {k: v for k, v in os.environ.items() if k != "TUNNELD_TOKEN"}
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "tunneld", "agent", "--config", str(config),
                 "--ready-file", str(ready)],
                env=env,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        )  # fmt: skip
        try:
            # The agent comes online with the command's token: the control plane lists it.
            with trio.fail_after(WAIT):
                while not await trio.Path(ready).exists():
                    assert process.returncode is None, "the agent exited"
                    await trio.sleep(0.05)
            assert json.loads(ready.read_text())["name"] == "web1"
            with trio.fail_after(WAIT):
                while True:
                    status, _, body = await h.get("/api/v1/nodes", await h.token("alice"))
                    nodes = json.loads(body) if status == 200 else {}
                    names = [n.get("name") for n in nodes.get("nodes", [])]
                    if "web1" in names:
                        break
                    await trio.sleep(0.1)
        finally:
            process.terminate()
            with trio.fail_after(WAIT):
                await process.wait()


async def test_overlay_retries_a_broken_token_file_and_says_why(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        path = tmp_path / "token"
        write_token(path, await h.token("alice") + "\n", 0o644)
        overlay = loopback_overlay(h.info, "laptop", FileTokenProvider(path))
        await nursery.start(overlay.serve)
        with trio.fail_after(WAIT):
            while True:
                if "chmod 600" in str(overlay.status()["coordinator_error"]):
                    break
                await poll_pause()
        assert overlay.status()["coordinator"] != "connected"
        path.chmod(0o600)  # the operator fixes it; the next reconnect attempt succeeds
        with trio.fail_after(WAIT):
            while True:
                if overlay.status()["coordinator"] == "connected":
                    break
                await poll_pause()


async def test_command_printing_without_end_is_killed_at_the_output_cap() -> None:
    # `yes` never stops: the provider must stop reading at the cap, not at the timeout.
    provider = CommandTokenProvider(["yes"], timeout=60)
    with pytest.raises(TokenUnavailableError, match=r"printed over 65536 bytes.*killed"):
        await provider()
