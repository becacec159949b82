"""Control-plane storage: the SQLite backend of :class:`Store` (``_records``).

The interface is a Protocol so a PostgreSQL backend can follow (DESIGN.md, "Storage
and scale"); the records and the Protocol are re-exported here for existing imports.
:class:`SqliteDatabase` is the blocking implementation (the CLI uses it directly);
:class:`SqliteStore` runs it off the trio thread.

Threading policy: one ``sqlite3`` connection per database object, opened with
``check_same_thread=False`` and used by one thread at a time — every method holds a
``threading.Lock`` for its whole duration, and :class:`SqliteStore` additionally
serialises its worker-thread calls with a ``trio.Lock`` so at most one thread waits.
Every write runs in ``BEGIN IMMEDIATE … COMMIT`` (rolled back on error); WAL mode lets
the CLI write while a server reads, with a busy timeout for the rare writer overlap.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib import resources
from pathlib import Path
from typing import ParamSpec, TypeVar

import trio

from tunneld.control._records import (
    TASK_REPORTS_KEPT_PER_USER,
    ConflictError,
    Grant,
    NodeKind,
    NodeRecord,
    NotFoundError,
    Store,
    StoreError,
    TaskReport,
    TaskState,
    TokenCredentials,
    TokenInfo,
    User,
)
from tunneld.proto.coord import HomeRelay

__all__ = [
    "TASK_REPORTS_KEPT_PER_USER",
    "ConflictError",
    "Grant",
    "NodeKind",
    "NodeRecord",
    "NotFoundError",
    "SqliteDatabase",
    "SqliteStore",
    "Store",
    "StoreError",
    "TaskReport",
    "TaskState",
    "TokenCredentials",
    "TokenInfo",
    "User",
    "migrations",
]

P = ParamSpec("P")
T = TypeVar("T")

_MIGRATION_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


def migrations() -> list[tuple[int, str, str]]:
    """``(version, name, sql)`` of every migration shipped in the package, in order."""
    found = []
    folder = resources.files("tunneld.control").joinpath("migrations")
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match is not None:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise StoreError(f"migration versions are not 1..n in order: {versions}")
    return found


def _statements(sql: str) -> Iterator[str]:
    buffer = ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    rest = "\n".join(x for x in buffer.splitlines() if not x.strip().startswith("--"))
    if rest.strip():
        raise StoreError(f"migration ends with an incomplete statement: {rest.strip()[:60]!r}")


_TOKEN_COLUMNS = (
    "t.id, t.user_id, u.name, t.agent, t.created_at, t.expires_at, t.revoked_at, "
    "t.last_used_at, t.secret_hash"
)
_NODE_COLUMNS = (
    "n.id, n.user_id, u.name, n.kind, n.name, n.node_key, n.endpoints, n.home_relay, "
    "n.as_of, n.last_seen, n.online"
)
# Every token or node read goes through these, so _token() and _node() see one row shape.
_SELECT_TOKENS = f"SELECT {_TOKEN_COLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id "
_SELECT_NODES = f"SELECT {_NODE_COLUMNS} FROM nodes n JOIN users u ON u.id = n.user_id "
# A node's token id "oauth:<family>" names an OAuth grant (migration 0002's oauth_tokens):
# active while it holds an unrevoked, unrotated, unexpired refresh token.
_OAUTH_ID = "oauth:"
_OAUTH_GRANT_ACTIVE = (
    "SELECT 1 FROM oauth_tokens WHERE family = ? AND kind = 'refresh' AND revoked_at IS NULL"
    " AND rotated_at IS NULL AND expires_at > ? LIMIT 1"
)
_SELECT_TASKS = (
    "SELECT r.id, r.user_id, u.name, r.token_id, r.reporter_agent, r.agent, r.state,"
    " r.summary, r.link, r.created_at FROM task_reports r JOIN users u ON u.id = r.user_id "
)


def _token(row: tuple[object, ...]) -> TokenInfo:
    return TokenInfo(
        str(row[0]),
        int(row[1]),  # type: ignore[call-overload]
        str(row[2]),
        None if row[3] is None else str(row[3]),
        float(row[4]),  # type: ignore[arg-type]
        None if row[5] is None else float(row[5]),  # type: ignore[arg-type]
        None if row[6] is None else float(row[6]),  # type: ignore[arg-type]
        None if row[7] is None else float(row[7]),  # type: ignore[arg-type]
    )


def _node(row: tuple[object, ...]) -> NodeRecord:
    relay_json = row[7]
    relay = None
    if isinstance(relay_json, str):
        raw = json.loads(relay_json)
        relay = HomeRelay(int(raw["region"]), str(raw["url"]))
    kind: NodeKind = "agent" if row[3] == "agent" else "client"
    return NodeRecord(
        id=str(row[0]),
        user_id=int(row[1]),  # type: ignore[call-overload]
        owner=str(row[2]),
        kind=kind,
        name=str(row[4]),
        node_key=bytes(row[5]),  # type: ignore[call-overload]
        endpoints=tuple(json.loads(str(row[6]))),
        home_relay=relay,
        as_of=float(row[8]),  # type: ignore[arg-type]
        last_seen=float(row[9]),  # type: ignore[arg-type]
        online=bool(row[10]),
    )


def _task(row: tuple[object, ...]) -> TaskReport:
    state = str(row[6])
    if state not in ("working", "complete", "idle", "failure"):
        raise StoreError(f"task report {row[0]}: unknown state {state!r}")
    return TaskReport(
        id=int(row[0]),  # type: ignore[call-overload]
        user_id=int(row[1]),  # type: ignore[call-overload]
        user=str(row[2]),
        token_id=str(row[3]),
        reporter_agent=None if row[4] is None else str(row[4]),
        agent=str(row[5]),
        state=state,  # type: ignore[arg-type]
        summary=str(row[7]),
        link=None if row[8] is None else str(row[8]),
        created_at=float(row[9]),  # type: ignore[arg-type]
    )


class SqliteDatabase:
    """The blocking SQLite implementation; safe to call from any one thread at a time.

    Opening creates the file (and its directory is expected to exist), switches to WAL
    and applies pending migrations, each in its own transaction.

    Raises:
        StoreError: the file cannot be opened, or its schema is newer than this program.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            # Password and token hashes live here: owner-only from the first byte
            # (SQLite gives the -wal/-shm files the database file's mode).
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StoreError(f"{path}: cannot create database: {exc.strerror}") from None
        try:
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=5.0
            )
            self._conn.execute("PRAGMA foreign_keys = ON")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(path) != ":memory:" and mode[0].lower() != "wal":
                raise StoreError(f"{path}: cannot switch to WAL mode (got {mode[0]})")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from None

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """``BEGIN IMMEDIATE … COMMIT`` under the database lock, rolled back on error.

        For storage of other packages sharing this file (``tunneld.oauth``). Blocks;
        call it from one thread at a time (a :class:`SqliteStore` worker).

        Raises:
            StoreError: an sqlite error inside, with the file name.
        """
        return self._write()

    def reading(self) -> AbstractContextManager[sqlite3.Connection]:
        """The connection under the database lock, for reads (sqlite errors → StoreError)."""
        return self._read()

    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
        known = migrations()
        for version, name, sql in known:
            with self._write() as conn:
                # Re-checked inside the write lock: another process may have just applied it.
                row = conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
                ).fetchone()
                if row is not None:
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, time.time())
                )
        with self._read() as conn:
            newest = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        if newest is not None and newest > len(known):
            raise StoreError(
                f"{self.path}: database schema version {newest} is newer than this "
                f"tunneld understands ({len(known)}); upgrade tunneld"
            )

    def schema_version(self) -> int:
        """The highest applied migration."""
        with self._read() as conn:
            return int(conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])

    def migration_count(self) -> int:
        """How many migrations are recorded (each exactly once)."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0])

    # --- users ------------------------------------------------------------------------

    def add_user(self, name: str, password_hash: str | None, now: float) -> User:
        with self._write() as conn:
            try:
                cur = conn.execute(
                    "INSERT INTO users (name, password_hash, created_at) VALUES (?, ?, ?)",
                    (name, password_hash, now),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"user {name!r} exists already") from None
            return User(int(cur.lastrowid or 0), name, now, password_hash is not None)

    def get_user(self, name: str) -> User | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, name, created_at, password_hash IS NOT NULL FROM users WHERE name = ?",
                (name,),
            ).fetchone()
        return None if row is None else User(int(row[0]), row[1], float(row[2]), bool(row[3]))

    def list_users(self) -> list[User]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, name, created_at, password_hash IS NOT NULL FROM users ORDER BY name"
            ).fetchall()
        return [User(int(r[0]), r[1], float(r[2]), bool(r[3])) for r in rows]

    def password_hash(self, name: str) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    # --- tokens -----------------------------------------------------------------------

    def add_token(
        self,
        token_id: str,
        user: str,
        agent: str | None,
        secret_hash: bytes,
        now: float,
        expires_at: float | None,
    ) -> TokenInfo:
        with self._write() as conn:
            row = conn.execute("SELECT id FROM users WHERE name = ?", (user,)).fetchone()
            if row is None:
                raise NotFoundError(f"no user {user!r} (add it with `tunneld control user add`)")
            try:
                conn.execute(
                    "INSERT INTO tokens (id, user_id, agent, secret_hash, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (token_id, row[0], agent, secret_hash, now, expires_at),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"token id {token_id} exists already") from None
        return TokenInfo(token_id, int(row[0]), user, agent, now, expires_at, None, None)

    def token_credentials(self, token_id: str) -> TokenCredentials | None:
        with self._read() as conn:
            row = conn.execute(
                _SELECT_TOKENS + "WHERE t.id = ?",
                (token_id,),
            ).fetchone()
        return None if row is None else TokenCredentials(_token(row), bytes(row[8]))

    def list_tokens(self) -> list[TokenInfo]:
        with self._read() as conn:
            rows = conn.execute(_SELECT_TOKENS + "ORDER BY t.created_at, t.id").fetchall()
        return [_token(r) for r in rows]

    def revoke_token(self, token_id: str, now: float) -> TokenInfo:
        with self._write() as conn:
            conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            row = conn.execute(
                _SELECT_TOKENS + "WHERE t.id = ?",
                (token_id,),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no token with id {token_id!r} (see `tunneld control token list`)")
        return _token(row)

    def inactive_tokens(self, token_ids: list[str], now: float) -> set[str]:
        # "oauth:<family>" ids are OAuth grants (client nodes of `tunneld login`): the
        # session lives as long as its grant, i.e. while the family holds a current
        # refresh token, so revoking the refresh token (or reusing a rotated one) ends it,
        # while the short-lived access token that opened it may expire meanwhile.
        families = {i: i[len(_OAUTH_ID) :] for i in token_ids if i.startswith(_OAUTH_ID)}
        plain = [i for i in token_ids if i not in families]
        active: set[str] = set()
        with self._read() as conn:
            if plain:
                marks = ",".join("?" * len(plain))
                rows = conn.execute(
                    f"SELECT id FROM tokens WHERE id IN ({marks}) AND revoked_at IS NULL "
                    "AND (expires_at IS NULL OR expires_at > ?)",
                    (*plain, now),
                ).fetchall()
                active.update(str(r[0]) for r in rows)
            for token_id, family in families.items():
                if conn.execute(_OAUTH_GRANT_ACTIVE, (family, now)).fetchone() is not None:
                    active.add(token_id)
        return set(token_ids) - active

    def touch_token(self, token_id: str, now: float) -> None:
        with self._write() as conn:
            conn.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", (now, token_id))

    # --- nodes and tunnels ------------------------------------------------------------

    def upsert_node(self, node: NodeRecord, token_id: str) -> None:
        relay = None
        if node.home_relay is not None:
            relay = json.dumps({"region": node.home_relay.region, "url": node.home_relay.url})
        with self._write() as conn:
            conn.execute(
                "INSERT INTO nodes (id, user_id, kind, name, node_key, endpoints, home_relay,"
                " as_of, last_seen, online, token_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET name=excluded.name, node_key=excluded.node_key,"
                " endpoints=excluded.endpoints, home_relay=excluded.home_relay,"
                " as_of=excluded.as_of, last_seen=excluded.last_seen, online=excluded.online,"
                " token_id=excluded.token_id",
                (
                    node.id,
                    node.user_id,
                    node.kind,
                    node.name,
                    node.node_key,
                    json.dumps(list(node.endpoints)),
                    relay,
                    node.as_of,
                    node.last_seen,
                    int(node.online),
                    token_id,
                ),
            )

    def set_node_online(self, node_id: str, online: bool, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE nodes SET online = ?, last_seen = ? WHERE id = ?",
                (int(online), now, node_id),
            )

    def get_node(self, node_id: str) -> NodeRecord | None:
        with self._read() as conn:
            row = conn.execute(
                _SELECT_NODES + "WHERE n.id = ?",
                (node_id,),
            ).fetchone()
        return None if row is None else _node(row)

    def find_agents(self, name: str, owner: str | None) -> list[NodeRecord]:
        query = _SELECT_NODES + "WHERE n.kind = 'agent' AND n.name = ?"
        params: tuple[str, ...] = (name,)
        if owner is not None:
            query += " AND u.name = ?"
            params = (name, owner)
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY u.name", params).fetchall()
        return [_node(r) for r in rows]

    def list_nodes(self) -> list[NodeRecord]:
        with self._read() as conn:
            rows = conn.execute(_SELECT_NODES + "ORDER BY u.name, n.kind, n.name").fetchall()
        return [_node(r) for r in rows]

    def node_key_active(self, node_key: bytes, now: float) -> bool:
        """Whether a registered node has this key and its token is neither revoked
        nor expired."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM nodes n JOIN tokens t ON t.id = n.token_id WHERE n.node_key = ?"
                " AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)",
                (node_key, now),
            ).fetchone()
            if row is not None:
                return True
            ids = conn.execute(
                "SELECT token_id FROM nodes WHERE node_key = ? AND token_id LIKE 'oauth:%'",
                (node_key,),
            ).fetchall()
            return any(
                conn.execute(_OAUTH_GRANT_ACTIVE, (str(r[0])[len(_OAUTH_ID) :], now)).fetchone()
                is not None
                for r in ids
            )

    def set_tunnel(self, src: str, dst: str, present: bool, now: float) -> None:
        with self._write() as conn:
            if present:
                conn.execute(
                    "INSERT OR IGNORE INTO tunnels (src_node_id, dst_node_id, created_at)"
                    " VALUES (?, ?, ?)",
                    (src, dst, now),
                )
            else:
                conn.execute(
                    "DELETE FROM tunnels WHERE src_node_id = ? AND dst_node_id = ?", (src, dst)
                )

    def reset_sessions(self) -> None:
        """At startup no session exists: every node is offline and no tunnel is live."""
        with self._write() as conn:
            conn.execute("UPDATE nodes SET online = 0")
            conn.execute("DELETE FROM tunnels")

    # --- grants -----------------------------------------------------------------------

    def add_grant(self, grantee: str, owner: str, agent_name: str, now: float) -> Grant:
        with self._write() as conn:
            ids = {}
            for role, name in (("grantee", grantee), ("owner", owner)):
                row = conn.execute("SELECT id FROM users WHERE name = ?", (name,)).fetchone()
                if row is None:
                    raise NotFoundError(f"no user {name!r} ({role})")
                ids[role] = int(row[0])
            try:
                cur = conn.execute(
                    "INSERT INTO grants (grantee_id, owner_id, agent_name, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (ids["grantee"], ids["owner"], agent_name, now),
                )
            except sqlite3.IntegrityError:
                raise ConflictError("that grant exists already") from None
        return Grant(int(cur.lastrowid or 0), grantee, owner, agent_name, now)

    def list_grants(self) -> list[Grant]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT g.id, a.name, b.name, g.agent_name, g.created_at FROM grants g"
                " JOIN users a ON a.id = g.grantee_id JOIN users b ON b.id = g.owner_id"
                " ORDER BY g.id"
            ).fetchall()
        return [Grant(int(r[0]), r[1], r[2], r[3], float(r[4])) for r in rows]

    def remove_grant(self, grantee: str, owner: str, agent_name: str) -> Grant:
        """Delete one grant (exactly as added). Raises NotFoundError if absent."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT g.id, g.created_at FROM grants g JOIN users a ON a.id = g.grantee_id"
                " JOIN users b ON b.id = g.owner_id"
                " WHERE a.name = ? AND b.name = ? AND g.agent_name = ?",
                (grantee, owner, agent_name),
            ).fetchone()
            if row is None:
                raise NotFoundError(
                    f"no grant of {owner}/{agent_name} to {grantee} (see `grant list`)"
                )
            conn.execute("DELETE FROM grants WHERE id = ?", (row[0],))
        return Grant(int(row[0]), grantee, owner, agent_name, float(row[1]))

    def has_grant(self, grantee_id: int, owner_id: int, agent_name: str) -> bool:
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM grants WHERE grantee_id = ? AND owner_id = ?"
                " AND agent_name IN (?, '*')",
                (grantee_id, owner_id, agent_name),
            ).fetchone()
        return row is not None

    # --- task reports -----------------------------------------------------------------

    def add_task_report(
        self,
        user_id: int,
        token_id: str,
        reporter_agent: str | None,
        agent: str,
        state: TaskState,
        summary: str,
        link: str | None,
        now: float,
    ) -> TaskReport:
        """Store one report (already validated) and prune the user's oldest beyond
        :data:`TASK_REPORTS_KEPT_PER_USER`.

        Raises:
            NotFoundError: no user with ``user_id`` (deleted since its token was checked).
        """
        with self._write() as conn:
            row = conn.execute("SELECT name FROM users WHERE id = ?", (user_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no user with id {user_id}")
            cur = conn.execute(
                "INSERT INTO task_reports (user_id, token_id, reporter_agent, agent, state,"
                " summary, link, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (user_id, token_id, reporter_agent, agent, state, summary, link, now),
            )
            conn.execute(
                "DELETE FROM task_reports WHERE user_id = ? AND id <= ("
                " SELECT id FROM task_reports WHERE user_id = ? ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)",
                (user_id, user_id, TASK_REPORTS_KEPT_PER_USER),
            )
        return TaskReport(
            int(cur.lastrowid or 0),
            user_id,
            str(row[0]),
            token_id,
            reporter_agent,
            agent,
            state,
            summary,
            link,
            now,
        )

    def list_task_reports(
        self,
        viewer_id: int | None,
        *,
        limit: int,
        agent: str | None = None,
        state: TaskState | None = None,
    ) -> list[TaskReport]:
        """The newest ``limit`` reports, newest first.

        ``viewer_id`` None lists everyone's (the CLI, which holds the database); a user
        id lists that user's reports and those about agents another user granted it
        (the same rule as the nodes it may see).
        """
        where: list[str] = []
        params: list[object] = []
        if viewer_id is not None:
            where.append(
                "(r.user_id = ? OR EXISTS (SELECT 1 FROM grants g WHERE g.grantee_id = ?"
                " AND g.owner_id = r.user_id AND g.agent_name IN (r.agent, '*')))"
            )
            params += [viewer_id, viewer_id]
        if agent is not None:
            where.append("r.agent = ?")
            params.append(agent)
        if state is not None:
            where.append("r.state = ?")
            params.append(state)
        query = _SELECT_TASKS + (("WHERE " + " AND ".join(where)) if where else "")
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY r.id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_task(r) for r in rows]


class SqliteStore:
    """:class:`Store` over a :class:`SqliteDatabase`, each call in a worker thread.

    Calls are serialised (one worker thread at a time). Cancellation: a call that has
    started in its thread runs to completion (sqlite cannot be interrupted safely), so
    a cancelled caller waits for at most one statement batch.
    """

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (create, migrate) the database at ``path`` off the trio thread."""
        db = await trio.to_thread.run_sync(SqliteDatabase, path)
        return cls(db)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking ``fn(*args, **kwargs)`` (which uses :attr:`db`) in the worker
        thread, serialised with every other call; same cancellation as the methods."""
        return await self._run(fn, *args, **kwargs)

    async def aclose(self) -> None:
        await self._run(self.db.close)

    async def add_user(self, name: str, password_hash: str | None, now: float) -> User:
        return await self._run(self.db.add_user, name, password_hash, now)

    async def get_user(self, name: str) -> User | None:
        return await self._run(self.db.get_user, name)

    async def list_users(self) -> list[User]:
        return await self._run(self.db.list_users)

    async def password_hash(self, name: str) -> str | None:
        return await self._run(self.db.password_hash, name)

    async def add_token(
        self,
        token_id: str,
        user: str,
        agent: str | None,
        secret_hash: bytes,
        now: float,
        expires_at: float | None,
    ) -> TokenInfo:
        return await self._run(
            self.db.add_token, token_id, user, agent, secret_hash, now, expires_at
        )

    async def token_credentials(self, token_id: str) -> TokenCredentials | None:
        return await self._run(self.db.token_credentials, token_id)

    async def list_tokens(self) -> list[TokenInfo]:
        return await self._run(self.db.list_tokens)

    async def revoke_token(self, token_id: str, now: float) -> TokenInfo:
        return await self._run(self.db.revoke_token, token_id, now)

    async def inactive_tokens(self, token_ids: list[str], now: float) -> set[str]:
        return await self._run(self.db.inactive_tokens, token_ids, now)

    async def touch_token(self, token_id: str, now: float) -> None:
        await self._run(self.db.touch_token, token_id, now)

    async def upsert_node(self, node: NodeRecord, token_id: str) -> None:
        await self._run(self.db.upsert_node, node, token_id)

    async def set_node_online(self, node_id: str, online: bool, now: float) -> None:
        await self._run(self.db.set_node_online, node_id, online, now)

    async def get_node(self, node_id: str) -> NodeRecord | None:
        return await self._run(self.db.get_node, node_id)

    async def find_agents(self, name: str, owner: str | None) -> list[NodeRecord]:
        return await self._run(self.db.find_agents, name, owner)

    async def list_nodes(self) -> list[NodeRecord]:
        return await self._run(self.db.list_nodes)

    async def node_key_active(self, node_key: bytes, now: float) -> bool:
        return await self._run(self.db.node_key_active, node_key, now)

    async def set_tunnel(self, src: str, dst: str, present: bool, now: float) -> None:
        await self._run(self.db.set_tunnel, src, dst, present, now)

    async def reset_sessions(self) -> None:
        await self._run(self.db.reset_sessions)

    async def add_grant(self, grantee: str, owner: str, agent_name: str, now: float) -> Grant:
        return await self._run(self.db.add_grant, grantee, owner, agent_name, now)

    async def list_grants(self) -> list[Grant]:
        return await self._run(self.db.list_grants)

    async def has_grant(self, grantee_id: int, owner_id: int, agent_name: str) -> bool:
        return await self._run(self.db.has_grant, grantee_id, owner_id, agent_name)

    async def add_task_report(
        self,
        user_id: int,
        token_id: str,
        reporter_agent: str | None,
        agent: str,
        state: TaskState,
        summary: str,
        link: str | None,
        now: float,
    ) -> TaskReport:
        return await self._run(
            self.db.add_task_report,
            user_id,
            token_id,
            reporter_agent,
            agent,
            state,
            summary,
            link,
            now,
        )

    async def list_task_reports(
        self,
        viewer_id: int | None,
        *,
        limit: int,
        agent: str | None = None,
        state: TaskState | None = None,
    ) -> list[TaskReport]:
        return await self._run(
            self.db.list_task_reports, viewer_id, limit=limit, agent=agent, state=state
        )

    async def remove_grant(self, grantee: str, owner: str, agent_name: str) -> Grant:
        return await self._run(self.db.remove_grant, grantee, owner, agent_name)
