"""Shared pieces of the daemon tests: the fake overlay edge, a daemon's config file."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

# How the tests start a real daemon: `tunneld run` in a child process.
RUN = (sys.executable, "-m", "tunneld", "run", "--config")


def daemon_config(
    directory: Path,
    control_url: str,
    *,
    socket: Path,
    token_file: Path | None = None,
    login_file: Path | None = None,
    mcp_listen: str = "127.0.0.1:0",
    extra: str = "",
    daemon_extra: str = "",
) -> Path:
    """Write ``directory/daemon.toml`` for a daemon named ``laptop`` on loopback.

    Its key goes in ``directory``; it signs in with ``token_file`` or ``login_file``.
    The MCP listener is ``mcp_listen`` (never the default 127.0.0.1:7421, which tests
    running in parallel would share; "" for none). ``daemon_extra`` is appended to the
    ``[daemon]`` table, ``extra`` (more tables) to the file.
    """
    credential = (f'token_file = "{token_file}"\n' if token_file is not None else "") + (
        f'login_file = "{login_file}"\n' if login_file is not None else ""
    )
    config = directory / "daemon.toml"
    config.write_text(
        "[daemon]\n"
        f'socket = "{socket}"\n'
        'socket_group = ""\n'
        'name = "laptop"\n'
        f'key_file = "{directory / "daemon.key"}"\n'
        f'control_url = "{control_url}"\n'
        f"{credential}"
        'udp_listen = "127.0.0.1:0"\n'
        f"{daemon_extra}"
        "[mcp]\n"
        f'listen = "{mcp_listen}"\n' + extra
    )
    return config


class FakeOverlay:
    """The edge: records calls; agents listed in ``errors`` fail add_tunnel."""

    def __init__(self, *, connect_delay: float = 1.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.connect_delay = connect_delay
        self.errors: dict[str, Exception] = {}
        self.never_reachable: set[str] = set()
        self.live: set[str] = set()

    async def add_tunnel(self, agent: str) -> str:
        self.calls.append(("add", agent))
        await trio.sleep(0.1)
        if agent in self.errors:
            raise self.errors[agent]
        peer = f"peer-{agent}"
        self.live.add(peer)
        return peer

    async def wait_reachable(self, peer: str, deadline: float) -> None:
        self.calls.append(("wait", peer))
        if peer in self.never_reachable:
            await trio.sleep_forever()
        await trio.sleep(self.connect_delay)

    async def remove_tunnel(self, peer: str) -> None:
        self.calls.append(("remove", peer))
        await trio.sleep(0.1)
        self.live.discard(peer)

    def count(self, kind: str) -> int:
        return sum(1 for call, _ in self.calls if call == kind)
