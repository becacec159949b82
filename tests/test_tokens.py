"""tunneld.tokens: where nodes get their control-plane token (static, env, file,
external command) and how each fails."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from tunneld.tokens import (
    CommandToken,
    EnvToken,
    FileToken,
    StaticToken,
    TokenError,
    token_provider,
)

TOKEN = "tnd_0123456789ab_" + "s" * 43


async def test_static_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await StaticToken(TOKEN)() == TOKEN
    monkeypatch.setenv("TUNNELD_TEST_TOKEN", TOKEN + "\n")
    provider = EnvToken("TUNNELD_TEST_TOKEN")
    assert await provider() == TOKEN
    monkeypatch.setenv("TUNNELD_TEST_TOKEN", "second")
    assert await provider() == "second"  # read at each call
    monkeypatch.delenv("TUNNELD_TEST_TOKEN")
    with pytest.raises(TokenError, match=r"\$TUNNELD_TEST_TOKEN: no token"):
        await provider()


async def test_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "node.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    provider = FileToken(path)
    assert await provider() == TOKEN
    # Rotated in place (new inode via rename, as editors and secret agents do).
    fresh = tmp_path / "new.token"
    fresh.write_text("rotated-token\n")
    fresh.chmod(0o600)
    fresh.replace(path)
    assert await provider() == "rotated-token"


async def test_file_permissions_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "node.token"
    path.write_text(TOKEN)
    path.chmod(0o644)
    with pytest.raises(TokenError, match="readable by group or others") as info:
        await FileToken(path)()
    assert TOKEN not in str(info.value)
    assert await FileToken(path, strict=False)() == TOKEN  # warns only


@pytest.mark.parametrize(("content", "message"), [("", "no token"), ("a b", "one token")])
async def test_file_content_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "node.token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(TokenError, match=message):
        await FileToken(path)()
    with pytest.raises(TokenError, match="No such file"):
        await FileToken(tmp_path / "missing")()


async def test_command_output_is_cached(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    script = (
        "import pathlib, sys; p = pathlib.Path(sys.argv[1]);"
        " n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n));"
        f" print('{TOKEN}-' + str(n)); print('ignored second line')"
    )
    clock = [0.0]
    provider = CommandToken(
        [sys.executable, "-c", script, str(counter)], cache_seconds=60, clock=lambda: clock[0]
    )
    assert await provider() == f"{TOKEN}-1"
    assert await provider() == f"{TOKEN}-1"
    assert await trio.Path(counter).read_text() == "1"
    clock[0] = 61.0
    assert await provider() == f"{TOKEN}-2"


async def test_command_failures() -> None:
    failing = CommandToken([sys.executable, "-c", f"print('{TOKEN}'); raise SystemExit(3)"])
    with pytest.raises(TokenError, match="exited with status 3") as info:
        await failing()
    assert TOKEN not in str(info.value)
    with pytest.raises(TokenError, match="cannot run"):
        await CommandToken(["/nonexistent/secret-tool"])()
    slow = CommandToken([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    with pytest.raises(TokenError, match="no answer within"):
        await slow()
    with pytest.raises(TokenError, match="no token"):
        await CommandToken([sys.executable, "-c", "pass"])()


def test_token_provider_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNNELD_TOKEN", raising=False)
    with pytest.raises(ValueError, match="no token source"):
        token_provider()
    assert isinstance(token_provider(token_command="pass show x", token_file="f"), CommandToken)
    assert isinstance(token_provider(token_file=str(tmp_path / "f")), FileToken)
    monkeypatch.setenv("TUNNELD_TOKEN", "x")
    assert isinstance(token_provider(), EnvToken)
    with pytest.raises(ValueError, match="token_command"):
        token_provider(token_command="'unclosed")
    assert os.environ["TUNNELD_TOKEN"] == "x"
