"""``tunneld control client`` and ``grant remove`` on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunneld.cli import main
from tunneld.control import SqliteDatabase
from tunneld.oauth._secret import secret_hash
from tunneld.oauth._storage import get_client


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_client_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    status, out, err = _run(
        capsys, "control", "client", "add", "host-app", "--redirect-uri",
        "http://127.0.0.1:8765/cb", "--redirect-uri", "https://app.example/cb",
        "--data-dir", d,
    )  # fmt: skip
    assert status == 0, err
    assert "public client host-app" in out
    status, out, err = _run(
        capsys, "control", "client", "add", "daemon-rs", "--introspect", "--data-dir", d
    )
    assert status == 0, err
    secret = out.strip()
    assert secret.startswith("tndcs_")
    assert secret not in err
    db = SqliteDatabase(tmp_path / "control.db")
    try:
        rs = get_client(db, "daemon-rs")
        assert rs is not None
        assert rs.introspect
        assert not rs.public
        assert rs.secret_hash == secret_hash("client", secret)
        app = get_client(db, "host-app")
        assert app is not None
        assert app.redirect_uris == ("http://127.0.0.1:8765/cb", "https://app.example/cb")
        assert app.public
    finally:
        db.close()
    status, out, _ = _run(capsys, "control", "client", "list", "--data-dir", d)
    assert status == 0
    assert "host-app" in out
    assert "daemon-rs" in out
    assert secret not in out
    assert _run(capsys, "control", "client", "remove", "host-app", "--data-dir", d)[0] == 0
    status, out, _ = _run(capsys, "control", "client", "list", "--data-dir", d)
    assert "host-app" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["x", "--redirect-uri", "http://evil.example/cb"], "loopback"),
        (["x", "--redirect-uri", "myapp://cb"], "scheme"),
        (["x"], "at least one"),
        (["dyn_x", "--redirect-uri", "https://a.example/cb"], "dyn_"),
        (["x", "--redirect-uri", "https://a.example/cb", "--scope", "admin"], "--scope"),
        (["bad name", "--redirect-uri", "https://a.example/cb"], "client id"),
    ],
)
def test_client_add_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = _run(capsys, "control", "client", "add", *argv, "--data-dir", str(tmp_path))
    assert status != 0
    assert message in err


def test_client_remove_unknown_and_duplicate_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    status, _, err = _run(capsys, "control", "client", "remove", "nope", "--data-dir", d)
    assert status != 0
    assert "no client 'nope'" in err
    argv = [
        "control",
        "client",
        "add",
        "a",
        "--redirect-uri",
        "https://a.example/cb",
        "--data-dir",
        d,
    ]
    assert _run(capsys, *argv)[0] == 0
    status, _, err = _run(capsys, *argv)
    assert status != 0
    assert "exists already" in err


def test_grant_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    for name in ("alice", "bob"):
        assert _run(capsys, "control", "user", "add", name, "--data-dir", d)[0] == 0
    grant = ["--user", "alice", "--owner", "bob", "--agent", "build", "--data-dir", d]
    assert _run(capsys, "control", "grant", "add", *grant)[0] == 0
    status, out, _ = _run(capsys, "control", "grant", "remove", *grant)
    assert status == 0
    assert "removed alice's access to bob/build" in out
    _, out, _ = _run(capsys, "control", "grant", "list", "--data-dir", d)
    assert "build" not in out
    status, _, err = _run(capsys, "control", "grant", "remove", *grant)
    assert status != 0
    assert "no grant" in err


@pytest.mark.parametrize(
    ("mcp", "message"),
    [
        (
            'authorization_server = "http://127.0.0.1:7420"\ntoken_file = "/nonexistent"\n',
            "token_file or authorization_server, not both",
        ),
        ('authorization_server = "http://127.0.0.1:7420"\n', "introspection_client_id"),
        (
            'authorization_server = "http://127.0.0.1:7420"\nintrospection_client_id = "rs"\n',
            "introspection_secret_file",
        ),
        (
            'authorization_server = "http://127.0.0.1:7420"\nintrospection_client_id = "rs"\n'
            'introspection_secret_file = "{open}"\n',
            "is accessible by group or others",
        ),
    ],
)
def test_run_refuses_bad_oauth_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mcp: str, message: str
) -> None:
    token = tmp_path / "node.token"
    token.write_text("tnd_000000000000_" + "x" * 43 + "\n")
    token.chmod(0o600)
    open_secret = tmp_path / "open.secret"
    open_secret.write_text("tndcs_x\n")
    open_secret.chmod(0o644)
    config = tmp_path / "daemon.toml"
    config.write_text(
        "[daemon]\n"
        f'socket = "{tmp_path / "api.sock"}"\n'
        'socket_group = ""\n'
        f'key_file = "{tmp_path / "daemon.key"}"\n'
        f'token_file = "{token}"\n'
        "[mcp]\n" + mcp.replace("{open}", str(open_secret))
    )
    status, _, err = _run(capsys, "run", "--config", str(config))
    assert status != 0
    assert message in err
