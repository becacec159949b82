"""``tunneld control``: user/token/grant commands on a real SQLite file, config errors,
and the server as a real subprocess driven through its ready file."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from _control_support import WAIT, session

from tunneld.cli import main
from tunneld.control import ServerInfo, SqliteDatabase
from tunneld.proto.coord import CloseCode, PeerUpdateKind


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_user_and_token_lifecycle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d = str(tmp_path)
    assert _run(capsys, "control", "--data-dir", d, "user", "add", "alice")[0] == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret pass\n"))
    assert (
        _run(capsys, "control", "user", "add", "bob", "--password-stdin", "--data-dir", d)[0] == 0
    )
    status, out, _ = _run(capsys, "control", "user", "list", "--data-dir", d)
    assert status == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("alice", "no"), ("bob", "yes")]

    status, out, err = _run(
        capsys, "control", "token", "create", "--user", "alice", "--agent", "web1",
        "--expires", "30d", "--data-dir", d,
    )  # fmt: skip
    assert status == 0
    token = out.strip()
    assert token.startswith("tnd_")
    token_id = token.split("_")[1]
    assert token_id in err
    assert token not in err  # the secret goes to stdout once, nowhere else

    status, out, _ = _run(capsys, "control", "token", "list", "--data-dir", d)
    assert status == 0
    assert token_id in out
    assert token not in out
    assert token.split("_", 2)[2] not in out
    (row,) = [line.split() for line in out.splitlines()[1:]]
    assert row[:4] == [token_id, "alice", "web1", "active"]

    status, out, _ = _run(capsys, "control", "token", "revoke", token_id, "--data-dir", d)
    assert (status, out.strip()) == (0, f"revoked token {token_id} of user alice")
    status, out, _ = _run(capsys, "control", "token", "list", "--data-dir", d)
    assert out.splitlines()[1].split()[3] == "revoked"

    db = SqliteDatabase(tmp_path / "control.db")
    try:
        info = db.token_credentials(token_id)
        assert info is not None
        assert info.info.revoked_at is not None
        assert db.password_hash(
            "bob",
        ).startswith("$argon2id$")  # type: ignore[union-attr]
    finally:
        db.close()

    assert _run(capsys, "control", "grant", "add", "--user", "bob", "--owner", "alice",
                "--agent", "*", "--data-dir", d)[0] == 0  # fmt: skip
    status, out, _ = _run(capsys, "control", "grant", "list", "--data-dir", d)
    assert out.splitlines()[1].split() == ["bob", "alice", "*"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["user", "add", "bad name"], "user name 'bad name': may only contain"),
        (["token", "create", "--user", "nobody"], "no user 'nobody'"),
        (["token", "create", "--user", "alice", "--expires", "soon"], "--expires: expected"),
        (["token", "create", "--user", "alice", "--agent", "../x"], "agent name '../x'"),
        (["token", "revoke", "ffffffffffff"], "no token with id 'ffffffffffff'"),
        (["user", "add", "alice"], "user 'alice' exists already"),
    ],
)
def test_cli_errors_say_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert _run(capsys, "control", "--data-dir", str(tmp_path), "user", "add", "alice")[0] == 0
    status, _, err = _run(capsys, "control", "--data-dir", str(tmp_path), *argv)
    assert status == 1
    assert message in err


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[control]\nlost_grace = "soon"\n', "[control].lost_grace: expected a duration"),
        ('[control]\nlisten = "nowhere"\n', "[control].listen: expected HOST:PORT"),
        ("[control]\nupdate_rate = 0\n", "[control].update_rate: expected a number > 0"),
        (
            '[control]\nlistn = "127.0.0.1:1"\n',
            "[control].listn: unknown key (did you mean listen?)",
        ),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml)
    status, _, err = _run(capsys, "control", "--config", str(config), "user", "list")
    assert status == 1
    assert message in err


def test_tls_needs_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[control]\nlisten = "127.0.0.1:0"\nstun = false\ntls_cert = "/x.pem"\n')
    status, _, err = _run(capsys, "control", "--config", str(config), "--data-dir", str(tmp_path))
    assert status == 1
    assert "[control].tls_key: required when the other TLS file is set" in err


async def _tunneld(*argv: str) -> str:
    result = await trio.run_process(
        [sys.executable, "-m", "tunneld", *argv], capture_stdout=True, capture_stderr=True
    )
    return result.stdout.decode()


async def test_server_subprocess_ready_file_sessions_and_sigterm(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    ready = tmp_path / "ready.json"
    await _tunneld("control", "--data-dir", data, "user", "add", "alice")
    argv = [
        sys.executable, "-m", "tunneld", "control", "--data-dir", data,
        "--listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0", "--ready-file", str(ready),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    try:
        # Wait for the "ready" log line (written after the ready file), never sleeping.
        log = b""
        with trio.fail_after(WAIT * 2):
            while b"control.ready" not in log:
                chunk = await process.stderr.receive_some()
                assert chunk, f"server exited early: {log.decode()}"
                log += chunk
        info = ServerInfo(**json.loads(ready.read_text()))
        assert info.pid == process.pid
        assert info.url.startswith("http://127.0.0.1:")
        assert info.coordinate_url == info.url.replace("http", "ws") + "/api/v1/coordinate"
        assert info.derp_url == info.url.replace("http", "ws") + "/derp"
        assert info.stun is not None
        assert info.stun.startswith("127.0.0.1:")
        assert info.derp_public_key is not None
        assert len(base64.b64decode(info.derp_public_key)) == 32

        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                assert process.stderr is not None
                while await process.stderr.receive_some():
                    pass

            nursery.start_soon(drain)
            # Tokens made by the CLI while the server runs work at once (WAL, shared file).
            create = ("control", "token", "create", "--user", "alice", "--data-dir", data)
            client_token = (await _tunneld(*create)).strip()
            agent_token = (await _tunneld(*create, "--agent", "web1")).strip()
            async with (
                session(info, agent_token, "web1") as agent,
                session(info, client_token, "laptop") as client,
            ):
                await agent.announce()
                await client.announce()
                await client.send(client.client.add_tunnel("web1"))
                await client.expect_update(PeerUpdateKind.NODE)
                await agent.expect_update(PeerUpdateKind.NODE)
                # Revoking with the CLI closes the live session promptly.
                await _tunneld("control", "token", "revoke", client_token.split("_")[1],
                               "--data-dir", data)  # fmt: skip
                closed = await client.expect_closed()
                assert closed.code == CloseCode.POLICY_VIOLATION
                assert closed.reason == "token revoked or expired"
                await agent.expect_update(PeerUpdateKind.LOST)
                # SIGTERM: sessions are closed as "going away" and the process exits 0.
                process.send_signal(signal.SIGTERM)
                closed = await agent.expect_closed()
                assert closed.code == CloseCode.GOING_AWAY
            with trio.fail_after(WAIT):
                status = await process.wait()
            nursery.cancel_scope.cancel()
        assert status == 0
        assert not ready.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_busy_port_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status, _, err = _run(
            capsys, "control", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}",
            "--stun-listen", "127.0.0.1:0",
        )  # fmt: skip
    assert status == 1
    assert f"cannot serve on 127.0.0.1:{port}" in err
