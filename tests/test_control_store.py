"""SQLite storage: migrations, WAL, hashed tokens, transactions, the async wrapper."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest
import trio

from tunneld.control import (
    ConflictError,
    NodeRecord,
    NotFoundError,
    SqliteDatabase,
    SqliteStore,
    StoreError,
    new_token,
    parse_token,
)
from tunneld.control._store import migrations
from tunneld.control._tokens import hash_password, token_matches, verify_password


def test_migrations_are_idempotent_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    first = SqliteDatabase(path)
    first.add_user("alice", None, 1.0)
    first.close()
    second = SqliteDatabase(path)  # opening again applies nothing twice
    assert second.schema_version() == len(migrations())
    assert second.migration_count() == len(migrations())
    assert [u.name for u in second.list_users()] == ["alice"]
    second.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "tokens", "nodes", "tunnels", "grants", "schema_migrations"} <= tables


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    SqliteDatabase(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        SqliteDatabase(path)


def test_tokens_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    db = SqliteDatabase(path)
    db.add_user("alice", None, 1.0)
    token = new_token()
    info = db.add_token(token.id, "alice", "web1", token.secret_hash, 2.0, 100.0)
    assert (info.user, info.agent) == ("alice", "web1")
    assert parse_token(token.value) == token.id
    creds = db.token_credentials(token.id)
    assert creds is not None
    assert token_matches(token.value, creds.secret_hash)
    assert not token_matches(token.value + "x", creds.secret_hash)
    assert db.inactive_tokens([token.id], 50.0) == set()
    assert db.inactive_tokens([token.id], 100.0) == {token.id}  # expired
    db.revoke_token(token.id, 3.0)
    assert db.inactive_tokens([token.id], 50.0) == {token.id}
    with pytest.raises(NotFoundError, match="no token with id 'nope'"):
        db.revoke_token("nope", 4.0)
    with pytest.raises(NotFoundError, match="no user 'zed'"):
        db.add_token("abc", "zed", None, b"x" * 32, 1.0, None)
    with pytest.raises(ConflictError, match="user 'alice' exists already"):
        db.add_user("alice", None, 1.0)
    db.close()
    secret = token.value.split("_", 2)[2].encode()
    for file in tmp_path.iterdir():
        assert secret not in file.read_bytes(), file


@pytest.mark.parametrize(
    "token", ["", "tnd_", "tnd_abc_" + "x" * 40, "xyz_0123456789ab_" + "x" * 40]
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert parse_token(token) is None


def test_passwords_use_argon2id() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert verify_password("correct horse", hashed)
    assert not verify_password("wrong", hashed)
    assert not verify_password("x", "not a hash")


def test_failed_write_rolls_back(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "control.db")
    db.add_user("alice", None, 1.0)
    with pytest.raises(NotFoundError):
        db.add_grant("alice", "nobody", "*", 1.0)
    assert db.list_grants() == []
    db.close()


async def test_async_store_from_many_tasks(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "control.db")
    try:
        await store.add_user("alice", None, time.time())
        user = await store.get_user("alice")
        assert user is not None

        async def add(i: int) -> None:
            record = NodeRecord(
                f"n{i}",
                user.id,
                "alice",
                "agent",
                f"a{i}",
                bytes([i]) * 32,
                (),
                None,
                1.0,
                1.0,
                True,
            )
            await store.upsert_node(record, "tok")

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(add, i)
        nodes = await store.list_nodes()
        assert len(nodes) == 20
        assert not await store.node_key_active(bytes([3]) * 32, 0.0)  # token "tok" unknown

        found = await store.find_agents("a3", "alice")
        assert [n.id for n in found] == ["n3"]
        await store.reset_sessions()
        assert not any(n.online for n in await store.list_nodes())
    finally:
        await store.aclose()
