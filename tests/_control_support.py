"""Helpers for the control-plane tests: a real server on loopback and a coordinator client."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from tunneld.config import Duration, HostPort
from tunneld.config._sections import ControlConfig
from tunneld.control import (
    ControlServer,
    DerpRelay,
    RelayLimits,
    ServerInfo,
    SqliteStore,
    default_relay_factory,
    default_stun_serve,
    new_token,
)
from tunneld.proto.coord import (
    CoordinatorClient,
    Error,
    PeerUpdate,
    PeerUpdateKind,
    Response,
    decode_response,
)

WAIT = 10.0  # generous bound on "should arrive"; tests never sleep to wait


def control_config(data_dir: Path, **changes: Any) -> ControlConfig:
    config = ControlConfig(
        listen=HostPort("127.0.0.1", 0),
        stun_listen=HostPort("127.0.0.1", 0),
        data_dir=data_dir,
        lost_grace=Duration(0.3),
        revocation_poll=Duration(0.05),
        shutdown_grace=Duration(1.0),
    )
    return replace(config, **changes)


@dataclass
class Harness:
    server: ControlServer
    info: ServerInfo
    store: SqliteStore

    async def user(self, name: str) -> None:
        await self.store.add_user(name, None, time.time())

    async def token(
        self, user: str, agent: str | None = None, expires_at: float | None = None
    ) -> str:
        token = new_token()
        await self.store.add_token(
            token.id, user, agent, token.secret_hash, time.time(), expires_at
        )
        return token.value

    async def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.info.url + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")

        def fetch() -> tuple[int, dict[str, str], bytes]:
            try:
                with urllib.request.urlopen(request, timeout=WAIT) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers), exc.read()

        return await trio.to_thread.run_sync(fetch)


@asynccontextmanager
async def running_server(
    nursery: trio.Nursery,
    data_dir: Path,
    *,
    relay: bool = False,
    relay_limits: RelayLimits | None = None,
    **changes: Any,
) -> AsyncIterator[Harness]:
    """A real server on loopback port 0; with ``relay``, the DERP relay and STUN too.

    ``relay_limits``: the relay's per-client bounds (None: its defaults).
    """
    store = await SqliteStore.open(data_dir / "control.db")
    relay_factory = default_relay_factory() if relay else None
    if relay and relay_limits is not None:

        def relay_factory(
            private_key: bytes, authorize: Callable[[bytes], Awaitable[bool]]
        ) -> DerpRelay:
            return DerpRelay(private_key, authorize=authorize, limits=relay_limits)

    server = ControlServer(
        control_config(data_dir, **changes),
        store,
        relay_factory=relay_factory,
        stun_serve=default_stun_serve() if relay else None,
    )
    try:
        info = await nursery.start(server.serve)
        yield Harness(server, info, store)
    finally:
        server.shutdown()
        with trio.move_on_after(WAIT):
            await server.stopped.wait()
        await store.aclose()


class Peer:
    """One node's coordinator session, with the sans-IO client helper."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.client = CoordinatorClient()
        self.node_key = bytes([len(name)]) + name.encode().ljust(31, b"\0")[:31]

    async def send(self, data: bytes) -> None:
        await self.ws.send_message(data)

    async def announce(
        self, endpoints: tuple[str, ...] = ("127.0.0.1:40000",), *, sync: bool = True
    ) -> None:
        """Send update_self; with ``sync``, return once the server has processed it."""
        await self.send(
            self.client.update_self(name=self.name, node_key=self.node_key, endpoints=endpoints)
        )
        if sync:
            await self.sync()

    async def recv(self) -> Response:
        with trio.fail_after(WAIT):
            data = await self.ws.get_message()
        assert isinstance(data, bytes)
        return self.client.receive(data)

    async def expect_update(self, kind: PeerUpdateKind) -> PeerUpdate:
        message = await self.recv()
        assert isinstance(message, PeerUpdate), message
        assert message.kind is kind, message
        return message

    async def expect_error(self, code: str = "not_found") -> Error:
        message = await self.recv()
        assert isinstance(message, Error), message
        assert message.code == code, message
        return message

    async def sync(self) -> None:
        """Round trip: everything the server queued for us before this arrives first."""
        await self.send(self.client.ready_for_handshake("n-sync"))
        error = await self.expect_error()
        assert error.peer == "n-sync"

    async def expect_closed(self) -> trio_websocket.CloseReason:
        with trio.fail_after(WAIT):
            while True:
                try:
                    await self.ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    return exc.reason


@asynccontextmanager
async def session(info: ServerInfo, token: str, name: str) -> AsyncIterator[Peer]:
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    async with trio_websocket.open_websocket_url(
        info.coordinate_url, extra_headers=headers, connect_timeout=WAIT, disconnect_timeout=WAIT
    ) as ws:
        yield Peer(ws, name)


def raw_update(data: bytes) -> PeerUpdate:
    message = decode_response(data)
    assert isinstance(message, PeerUpdate)
    return message


def read_json(data: bytes) -> Any:
    return json.loads(data.decode())


AGENT_PROCESS_WAIT = 30.0  # a real process on a busy 2-core box: start-up takes a while


@asynccontextmanager
async def agent_process(
    nursery: trio.Nursery,
    h: Harness,
    tmp: Path,
    name: str,
    workspace: Path,
    *,
    owner: str = "alice",
) -> AsyncIterator[trio.Process]:
    """A real ``tunneld agent`` process named ``name`` (``owner``'s agent token) serving
    ``workspace``; yields once its ready file exists, SIGTERMs it on exit."""
    token_file = tmp / f"{name}.token"
    token_file.write_text(await h.token(owner, agent=name) + "\n")
    token_file.chmod(0o600)  # token files readable by others are refused
    config = tmp / f"{name}.toml"
    config.write_text(
        "[agent]\n"
        f'roots = ["{workspace}"]\n'
        f'name = "{name}"\n'
        f'key_file = "{tmp / (name + ".key")}"\n'
        f'control_url = "{h.info.url}"\n'
        f'token_file = "{token_file}"\n'
        'udp_listen = "127.0.0.1:0"\n'
    )
    ready = tmp / f"{name}.ready"
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            [sys.executable, "-m", "tunneld", "agent", "--config", str(config),
             "--ready-file", str(ready)],
            check=False,
            stderr=subprocess.DEVNULL,
        )
    )  # fmt: skip
    try:
        with trio.fail_after(AGENT_PROCESS_WAIT):
            while not await trio.Path(ready).exists():
                assert process.returncode is None, "the agent exited before it was ready"
                await trio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.fail_after(AGENT_PROCESS_WAIT):
            await process.wait()
