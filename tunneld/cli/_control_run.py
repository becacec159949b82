"""The ``tunneld control`` commands' work: the server, and the data directory's
users, tokens, grants, task reports and OAuth clients (loaded only when one runs)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from tunneld.cli._common import CliError, apply_log_config
from tunneld.config import ConfigError, load_config, parse_duration
from tunneld.config._sections import ControlConfig
from tunneld.control import ControlServer, ControlSetupError, SqliteDatabase, SqliteStore
from tunneld.control._records import MAX_LIST_LIMIT
from tunneld.control._server import write_ready_file
from tunneld.control._store import StoreError
from tunneld.control._tasks import task_json
from tunneld.control._tokens import hash_password, new_token
from tunneld.log import get_logger
from tunneld.oauth._clients import redirect_uri_problem
from tunneld.oauth._secret import new_secret, secret_hash
from tunneld.oauth._settings import SCOPES
from tunneld.oauth._storage import Client, add_client, list_clients, remove_client
from tunneld.proto.coord import validate_name

log = get_logger("tunneld.cli._control")


def _config(args: argparse.Namespace) -> ControlConfig:
    loaded = load_config(args.config)
    apply_log_config(args, loaded.log)
    config = loaded.control
    if args.data_dir is not None:
        config = dataclasses.replace(config, data_dir=args.data_dir)
    return config


def _make_data_dir(config: ControlConfig) -> None:
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CliError(f"{config.data_dir}: cannot create data directory: {exc.strerror}") from None


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[SqliteDatabase]:
    """The data directory's database, closed on exit; a StoreError becomes a CliError."""
    config = _config(args)
    _make_data_dir(config)
    try:
        db = SqliteDatabase(config.data_dir / "control.db")
    except StoreError as exc:
        raise CliError(str(exc)) from None
    try:
        yield db
    except StoreError as exc:
        raise CliError(str(exc)) from None
    finally:
        db.close()


def _stamp(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_name(what: str, name: str) -> None:
    problem = validate_name(name)
    if problem is not None:
        raise CliError(f"{what} {name!r}: {problem}")


def _user_add(args: argparse.Namespace) -> int:
    _check_name("user name", args.name)
    password_hash = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CliError("--password-stdin: read an empty password")
        password_hash = hash_password(password)
    with _database(args) as db:
        user = db.add_user(args.name, password_hash, time.time())
    print(f"added user {user.name}")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    with _database(args) as db:
        users = db.list_users()
    print(f"{'NAME':<24} {'PASSWORD':<8} CREATED")
    for user in users:
        print(
            f"{user.name:<24} {'yes' if user.has_password else 'no':<8} {_stamp(user.created_at)}"
        )
    return 0


def _token_create(args: argparse.Namespace) -> int:
    if args.agent is not None:
        _check_name("agent name", args.agent)
    now = time.time()
    expires_at = None
    if args.expires is not None:
        try:
            lifetime = parse_duration(args.expires)
        except ValueError:
            raise CliError(
                f"--expires: expected a duration like 30d or 12h, got {args.expires!r}"
            ) from None
        if lifetime.seconds <= 0:
            raise CliError("--expires: must be longer than zero")
        expires_at = now + lifetime.seconds
    token = new_token()
    with _database(args) as db:
        db.add_token(token.id, args.user, args.agent, token.secret_hash, now, expires_at)
    kind = f"agent {args.agent!r}" if args.agent else "client"
    print(
        f"created {kind} token {token.id} for user {args.user!r} (expires {_stamp(expires_at)});"
        " it is shown only now:",
        file=sys.stderr,
    )
    print(token.value)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    with _database(args) as db:
        tokens = db.list_tokens()
    now = time.time()
    print(f"{'ID':<12} {'USER':<16} {'AGENT':<16} {'STATE':<8} {'CREATED':<20} EXPIRES")
    for t in tokens:
        state = "revoked" if t.revoked_at is not None else "active" if t.active(now) else "expired"
        print(
            f"{t.id:<12} {t.user:<16} {t.agent or '-':<16} {state:<8} "
            f"{_stamp(t.created_at):<20} {_stamp(t.expires_at)}"
        )
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    with _database(args) as db:
        info = db.revoke_token(args.id, time.time())
    print(f"revoked token {info.id} of user {info.user}")
    return 0


def _grant_add(args: argparse.Namespace) -> int:
    if args.agent != "*":
        _check_name("agent name", args.agent)
    with _database(args) as db:
        grant = db.add_grant(args.user, args.owner, args.agent, time.time())
    print(f"granted {grant.grantee} access to {grant.owner}/{grant.agent_name}")
    return 0


def _grant_remove(args: argparse.Namespace) -> int:
    with _database(args) as db:
        grant = db.remove_grant(args.user, args.owner, args.agent)
    print(f"removed {grant.grantee}'s access to {grant.owner}/{grant.agent_name}")
    return 0


def _grant_list(args: argparse.Namespace) -> int:
    with _database(args) as db:
        grants = db.list_grants()
    print(f"{'USER':<16} {'OWNER':<16} AGENT")
    for g in grants:
        print(f"{g.grantee:<16} {g.owner:<16} {g.agent_name}")
    return 0


def _tasks_list(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_LIST_LIMIT:
        raise CliError(f"--limit: expected 1..{MAX_LIST_LIMIT}, got {args.limit}")
    if args.agent is not None:
        _check_name("--agent", args.agent)
    with _database(args) as db:
        reports = db.list_task_reports(None, limit=args.limit, agent=args.agent, state=args.state)
    if args.json:
        print(json.dumps({"tasks": [task_json(r) for r in reports]}, ensure_ascii=False))
        return 0
    print(f"{'TIME':<20} {'OWNER':<12} {'AGENT':<16} {'STATE':<8} {'REPORTER':<20} SUMMARY")
    for r in reports:
        # The reporting token: an agent token shows as OWNER/AGENT, a client token as OWNER.
        reporter = f"{r.user}/{r.reporter_agent}" if r.reporter_agent else r.user
        summary = r.summary if r.link is None else f"{r.summary} <{r.link}>"
        print(
            f"{_stamp(r.created_at):<20} {r.user:<12} {r.agent:<16} {r.state:<8} "
            f"{reporter:<20} {summary}"
        )
    return 0


def _client_add(args: argparse.Namespace) -> int:
    _check_name("client id", args.name)
    if args.name.startswith("dyn_"):
        raise CliError("client id: the prefix 'dyn_' is for dynamically registered clients")
    for uri in args.redirect_uri:
        problem = redirect_uri_problem(uri)
        if problem is not None:
            raise CliError(f"--redirect-uri {uri!r}: {problem}")
    if not args.redirect_uri and not args.introspect:
        raise CliError("--redirect-uri: at least one is needed (unless --introspect)")
    scope = tuple(dict.fromkeys((args.scope or " ".join(SCOPES)).split()))
    unknown = [s for s in scope if s not in SCOPES]
    if unknown or not scope:
        raise CliError(f"--scope: expected some of {' '.join(SCOPES)}, got {args.scope!r}")
    confidential = args.confidential or args.introspect
    secret = new_secret("client") if confidential else None
    client = Client(
        id=args.name,
        name=args.display_name or args.name,
        redirect_uris=tuple(args.redirect_uri),
        auth_method="client_secret_basic" if confidential else "none",
        scope=scope,
        introspect=bool(args.introspect),
        origin="cli",
        created_at=time.time(),
        secret_hash=None if secret is None else secret_hash("client", secret),
    )
    with _database(args) as db:
        add_client(db, client)
    kind = "confidential" if confidential else "public"
    if secret is None:
        print(f"added {kind} client {client.id}")
        return 0
    print(f"added {kind} client {client.id}; its secret is shown only now:", file=sys.stderr)
    print(secret)
    return 0


def _client_list(args: argparse.Namespace) -> int:
    with _database(args) as db:
        clients = list_clients(db)
    print(f"{'ID':<32} {'TYPE':<13} {'ORIGIN':<8} {'INTROSPECT':<10} {'CREATED':<20} REDIRECT URIS")
    for c in clients:
        kind = "public" if c.public else "confidential"
        print(
            f"{c.id:<32} {kind:<13} {c.origin:<8} {'yes' if c.introspect else 'no':<10} "
            f"{_stamp(c.created_at):<20} {' '.join(c.redirect_uris) or '-'}"
        )
    return 0


def _client_remove(args: argparse.Namespace) -> int:
    with _database(args) as db:
        client = remove_client(db, args.id)
    print(f"removed client {client.id}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.listen is not None:
        config = dataclasses.replace(config, listen=args.listen)
    if args.stun_listen is not None:
        config = dataclasses.replace(config, stun_listen=args.stun_listen)
    _make_data_dir(config)
    try:
        trio.run(_run_server, config, args.ready_file)
    except BaseException as exc:
        # Nurseries wrap errors in exception groups; report the one cause plainly.
        leaf = _unwrap(exc)
        if isinstance(leaf, ControlSetupError):
            raise ConfigError(str(leaf)) from None
        if isinstance(leaf, StoreError):
            raise CliError(str(leaf)) from None
        if isinstance(leaf, OSError):
            raise CliError(f"cannot serve on {config.listen}: {leaf.strerror or leaf}") from None
        if isinstance(leaf, KeyboardInterrupt):
            raise leaf from None
        raise
    return 0


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _run_server(config: ControlConfig, ready_file: Path | None) -> None:
    from tunneld.control import default_relay_factory, default_stun_serve, relay_limits

    store = await SqliteStore.open(config.data_dir / "control.db")
    try:
        server = ControlServer(
            config,
            store,
            relay_factory=default_relay_factory(relay_limits(config)),
            stun_serve=default_stun_serve(),
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                info = await nursery.start(server.serve)
                if ready_file is not None:
                    await trio.to_thread.run_sync(write_ready_file, ready_file, info)
                log.info("control.ready", url=info.url, pid=info.pid)
                nursery.start_soon(_stop_on_signal, signals, server)
                await server.stopped.wait()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
            if ready_file is not None:
                await trio.to_thread.run_sync(lambda: ready_file.unlink(missing_ok=True))


async def _stop_on_signal(signals: AsyncIterator[int], server: ControlServer) -> None:
    async for signum in signals:
        log.info("control.signal", signal=signal.Signals(signum).name)
        server.shutdown()
        break
    # A second signal while draining: stop at once.
    async for _ in signals:
        raise KeyboardInterrupt
