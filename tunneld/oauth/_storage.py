"""The authorization server's rows in the control plane's SQLite file (migration 0002).

Blocking functions over a :class:`~tunneld.control.SqliteDatabase`, called through
:meth:`~tunneld.control.SqliteStore.run` (one worker thread at a time). Every check
that must not race, such as redeeming a code once or rotating a refresh token once,
happens inside one ``BEGIN IMMEDIATE`` transaction. Secrets arrive hashed.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

from tunneld.control._store import ConflictError, NotFoundError, SqliteDatabase

__all__ = [
    "AuthMethod",
    "Client",
    "CodeRow",
    "NewToken",
    "TokenRow",
    "add_client",
    "add_code",
    "add_tokens",
    "get_client",
    "list_clients",
    "lookup_token",
    "redeem_code",
    "remove_client",
    "revoke_family",
    "revoke_token",
    "rotate_refresh",
]

AuthMethod = Literal["none", "client_secret_basic", "client_secret_post"]
TokenKind = Literal["access", "refresh"]
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Client:
    """A registered OAuth client. ``secret_hash`` is None for public clients."""

    id: str
    name: str
    redirect_uris: tuple[str, ...]
    auth_method: AuthMethod
    scope: tuple[str, ...]
    introspect: bool
    origin: Literal["cli", "dynamic"]
    created_at: float
    secret_hash: bytes | None = None

    @property
    def public(self) -> bool:
        """A client without a secret (``token_endpoint_auth_method`` ``none``)."""
        return self.auth_method == "none"


@dataclass(frozen=True, slots=True)
class CodeRow:
    """An authorization code's grant, as stored at consent."""

    family: str
    client_id: str
    user_id: int
    user: str
    redirect_uri: str
    scope: tuple[str, ...]
    resource: str | None
    code_challenge: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token row to insert (the hash of a fresh value)."""

    token_hash: bytes
    kind: TokenKind
    family: str
    client_id: str
    user_id: int
    scope: tuple[str, ...]
    audience: str | None
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class TokenRow:
    """A stored access or refresh token, with its user's name."""

    kind: TokenKind
    family: str
    client_id: str
    user_id: int
    user: str
    scope: tuple[str, ...]
    audience: str | None
    created_at: float
    expires_at: float
    revoked_at: float | None
    rotated_at: float | None

    def active(self, now: float) -> bool:
        """Not revoked, not rotated away, not expired at ``now``."""
        return self.revoked_at is None and self.rotated_at is None and now < self.expires_at


def _client(row: tuple[Any, ...]) -> Client:
    method: AuthMethod = row[4]
    origin: Literal["cli", "dynamic"] = "cli" if row[7] == "cli" else "dynamic"
    return Client(
        id=str(row[0]),
        name=str(row[2]),
        redirect_uris=tuple(json.loads(str(row[3]))),
        auth_method=method,
        scope=tuple(str(row[5]).split()),
        introspect=bool(row[6]),
        origin=origin,
        created_at=float(row[8]),
        secret_hash=None if row[1] is None else bytes(row[1]),
    )


_CLIENT_COLUMNS = (
    "id, secret_hash, name, redirect_uris, auth_method, scope, introspect, origin, created_at"
)


def add_client(db: SqliteDatabase, client: Client) -> None:
    """Insert ``client``. Raises ConflictError when its id exists."""
    with db.transaction() as conn:
        try:
            conn.execute(
                f"INSERT INTO oauth_clients ({_CLIENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    client.id,
                    client.secret_hash,
                    client.name,
                    json.dumps(list(client.redirect_uris)),
                    client.auth_method,
                    " ".join(client.scope),
                    int(client.introspect),
                    client.origin,
                    client.created_at,
                ),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(f"client {client.id!r} exists already") from None


def get_client(db: SqliteDatabase, client_id: str) -> Client | None:
    """The client with ``client_id``, or None."""
    with db.reading() as conn:
        row = conn.execute(
            f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE id = ?", (client_id,)
        ).fetchone()
    return None if row is None else _client(row)


def list_clients(db: SqliteDatabase) -> list[Client]:
    """Every client, oldest first."""
    with db.reading() as conn:
        rows = conn.execute(
            f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients ORDER BY created_at, id"
        ).fetchall()
    return [_client(r) for r in rows]


def remove_client(db: SqliteDatabase, client_id: str) -> Client:
    """Delete a client with its codes and tokens (they stop working at once).

    Raises:
        NotFoundError: no such client.
    """
    with db.transaction() as conn:
        row = conn.execute(
            f"SELECT {_CLIENT_COLUMNS} FROM oauth_clients WHERE id = ?", (client_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no client {client_id!r} (see `tunneld control client list`)")
        conn.execute("DELETE FROM oauth_tokens WHERE client_id = ?", (client_id,))
        conn.execute("DELETE FROM oauth_codes WHERE client_id = ?", (client_id,))
        conn.execute("DELETE FROM oauth_clients WHERE id = ?", (client_id,))
    return _client(row)


def add_code(
    db: SqliteDatabase,
    code_hash: bytes,
    code: CodeRow,
    state_hash: bytes | None,
    now: float,
) -> None:
    """Store a fresh authorization code (and forget codes expired a day ago)."""
    with db.transaction() as conn:
        conn.execute("DELETE FROM oauth_codes WHERE expires_at < ?", (now - _DAY,))
        conn.execute(
            "INSERT INTO oauth_codes (code_hash, family, client_id, user_id, redirect_uri,"
            " scope, resource, code_challenge, state_hash, created_at, expires_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                code_hash,
                code.family,
                code.client_id,
                code.user_id,
                code.redirect_uri,
                " ".join(code.scope),
                code.resource,
                code.code_challenge,
                state_hash,
                now,
                code.expires_at,
            ),
        )


def redeem_code(db: SqliteDatabase, code_hash: bytes, now: float) -> tuple[CodeRow | None, bool]:
    """Mark a code used: ``(row, False)`` the first time, ``(row, True)`` on replay.

    A replay revokes every token the first redemption issued (its family) in the
    same transaction (OAuth 2.1 section 4.1.3). ``(None, False)``: unknown code.
    """
    with db.transaction() as conn:
        row = conn.execute(
            "SELECT c.family, c.client_id, c.user_id, u.name, c.redirect_uri, c.scope,"
            " c.resource, c.code_challenge, c.expires_at, c.used_at FROM oauth_codes c"
            " JOIN users u ON u.id = c.user_id WHERE c.code_hash = ?",
            (code_hash,),
        ).fetchone()
        if row is None:
            return None, False
        code = CodeRow(
            family=str(row[0]),
            client_id=str(row[1]),
            user_id=int(row[2]),
            user=str(row[3]),
            redirect_uri=str(row[4]),
            scope=tuple(str(row[5]).split()),
            resource=None if row[6] is None else str(row[6]),
            code_challenge=str(row[7]),
            expires_at=float(row[8]),
        )
        if row[9] is not None:
            conn.execute(
                "UPDATE oauth_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
                (now, code.family),
            )
            return code, True
        conn.execute("UPDATE oauth_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash))
        return code, False


def _insert_tokens(conn: sqlite3.Connection, tokens: list[NewToken]) -> None:
    conn.executemany(
        "INSERT INTO oauth_tokens (token_hash, kind, family, client_id, user_id, scope,"
        " audience, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)",
        [
            (
                t.token_hash,
                t.kind,
                t.family,
                t.client_id,
                t.user_id,
                " ".join(t.scope),
                t.audience,
                t.created_at,
                t.expires_at,
            )
            for t in tokens
        ],
    )


def add_tokens(db: SqliteDatabase, tokens: list[NewToken], now: float) -> None:
    """Insert tokens (and forget tokens expired a day ago)."""
    with db.transaction() as conn:
        conn.execute("DELETE FROM oauth_tokens WHERE expires_at < ?", (now - _DAY,))
        _insert_tokens(conn, tokens)


def lookup_token(db: SqliteDatabase, token_hash: bytes) -> TokenRow | None:
    """The stored token with this hash, whatever its state, or None."""
    with db.reading() as conn:
        row = conn.execute(
            "SELECT t.kind, t.family, t.client_id, t.user_id, u.name, t.scope, t.audience,"
            " t.created_at, t.expires_at, t.revoked_at, t.rotated_at FROM oauth_tokens t"
            " JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
            (token_hash,),
        ).fetchone()
    if row is None:
        return None
    kind: TokenKind = "refresh" if row[0] == "refresh" else "access"
    return TokenRow(
        kind=kind,
        family=str(row[1]),
        client_id=str(row[2]),
        user_id=int(row[3]),
        user=str(row[4]),
        scope=tuple(str(row[5]).split()),
        audience=None if row[6] is None else str(row[6]),
        created_at=float(row[7]),
        expires_at=float(row[8]),
        revoked_at=None if row[9] is None else float(row[9]),
        rotated_at=None if row[10] is None else float(row[10]),
    )


def rotate_refresh(
    db: SqliteDatabase, old_hash: bytes, tokens: list[NewToken], now: float
) -> Literal["rotated", "reused", "invalid"]:
    """Exchange a refresh token once for ``tokens`` (same family).

    ``"reused"``: it had been rotated already, so someone holds a stolen copy: the
    whole family is revoked (RFC 9700 section 4.14.2). ``"invalid"``: unknown,
    revoked or expired; nothing changes.
    """
    with db.transaction() as conn:
        row = conn.execute(
            "SELECT family, revoked_at, rotated_at, expires_at FROM oauth_tokens"
            " WHERE token_hash = ? AND kind = 'refresh'",
            (old_hash,),
        ).fetchone()
        if row is None:
            return "invalid"
        family = str(row[0])
        if row[2] is not None:
            conn.execute(
                "UPDATE oauth_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
                (now, family),
            )
            return "reused"
        if row[1] is not None or float(row[3]) <= now:
            return "invalid"
        conn.execute("UPDATE oauth_tokens SET rotated_at = ? WHERE token_hash = ?", (now, old_hash))
        _insert_tokens(conn, tokens)
        return "rotated"


def revoke_family(db: SqliteDatabase, family: str, now: float) -> int:
    """Revoke every token of ``family``; how many were still unrevoked."""
    with db.transaction() as conn:
        cur = conn.execute(
            "UPDATE oauth_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL",
            (now, family),
        )
        return cur.rowcount


def revoke_token(db: SqliteDatabase, token_hash: bytes, now: float) -> int:
    """Revoke one token; how many rows changed (0 or 1)."""
    with db.transaction() as conn:
        cur = conn.execute(
            "UPDATE oauth_tokens SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL",
            (now, token_hash),
        )
        return cur.rowcount
