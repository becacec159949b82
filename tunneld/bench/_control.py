"""An embedded control plane for the benchmarks that need a real network on loopback."""

from __future__ import annotations

import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from tunneld.config import HostPort
from tunneld.config._sections import ControlConfig
from tunneld.control import (
    ControlServer,
    ServerInfo,
    SqliteStore,
    default_relay_factory,
    default_stun_serve,
    new_token,
)
from tunneld.net.overlay import Overlay, PeerStatus

__all__ = ["embedded_control", "peer_path"]

BENCH_USER = "bench"


@asynccontextmanager
async def embedded_control(
    prefix: str, agent: str, *, stop_timeout: float
) -> AsyncIterator[tuple[ServerInfo, dict[str, str], Path]]:
    """Run a control plane (coordinator, DERP relay, STUN) on loopback ports it picks.

    Yields its :class:`ServerInfo`, the tokens of user ``bench`` (``"user"``: a client
    token, ``"agent"``: an agent token for ``agent``) and a temporary directory (its
    SQLite file lives there; callers may put sockets and workspaces beside it). On exit
    the server shuts down (waiting up to ``stop_timeout`` for its sessions to end) and
    the directory is removed.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        store = await SqliteStore.open(root / "control.db")
        try:
            now = time.time()
            await store.add_user(BENCH_USER, None, now)
            tokens = {}
            for name, agent_name in (("user", None), ("agent", agent)):
                token = new_token()
                await store.add_token(
                    token.id, BENCH_USER, agent_name, token.secret_hash, now, None
                )
                tokens[name] = token.value
            server = ControlServer(
                ControlConfig(
                    listen=HostPort("127.0.0.1", 0),
                    stun_listen=HostPort("127.0.0.1", 0),
                    data_dir=root,
                ),
                store,
                relay_factory=default_relay_factory(),
                stun_serve=default_stun_serve(),
            )
            async with trio.open_nursery() as outer:
                info: ServerInfo = await outer.start(server.serve)
                try:
                    yield info, tokens, root
                finally:
                    # The caller's nodes are gone by now; then the server, so its
                    # sessions end cleanly.
                    server.shutdown()
                    with trio.move_on_after(stop_timeout):
                        await server.stopped.wait()
                    outer.cancel_scope.cancel()
        finally:
            await store.aclose()


def peer_path(node: Overlay, peer: str) -> str:
    """``direct`` or ``relay``: how ``node`` reaches ``peer`` now (``none``: unknown)."""
    peers = node.status()["peers"]
    assert isinstance(peers, list)  # Overlay.status lists PeerStatus
    for status in peers:
        if isinstance(status, PeerStatus) and status.name == peer:
            return status.path
    return "none"
