"""The daemon's agent list end to end: real control server, real overlay nodes, the API.

A daemon that has never opened a tunnel lists every agent its user may reach — online,
offline (seen before), granted by another user — and not the ungranted one; the
coordinator is asked once per burst; with the control plane down the daemon still
answers, from what its overlay knows, marked stale.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio_websocket

from tests._control_support import Harness, running_server, session
from tests.test_daemon_e2e import make_overlay
from tunneld.config import DaemonConfig, Duration
from tunneld.daemon import Daemon, open_api_listener
from tunneld.daemon._client import LocalApiClient
from tunneld.keys import generate_private_key
from tunneld.mcp import Caller
from tunneld.net.overlay import CoordinatorUnavailableError, LinkState, Overlay, OverlayConfig
from tunneld.proto.coord import ListAgents, decode_request

WAIT = 30.0


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-agents-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class World:
    def __init__(self, h: Harness, daemon: Daemon, path: Path) -> None:
        self.h = h
        self.daemon = daemon
        self.path = path
        self.client = LocalApiClient(path)

    async def agents(self) -> dict[str, object]:
        with trio.fail_after(WAIT):
            answer = await self.client.request("GET", "/v0/agents")
        assert isinstance(answer, dict)
        return answer


async def wait_coordinator(overlay: Overlay, *, connected: bool = True) -> None:
    """Until the overlay's coordinator session is (or is no longer) connected."""
    with trio.fail_after(WAIT):
        # The overlay exposes no event for its link state; fail_after bounds the poll.
        while (overlay.coordinator_state is LinkState.CONNECTED) != connected:  # noqa: ASYNC110
            await trio.sleep(0.02)


@pytest.fixture
async def world(nursery: trio.Nursery, tmp_path: Path, socket_dir: Path) -> AsyncIterator[World]:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        await h.user("bob")
        await h.store.add_grant("alice", "bob", "db1", time.time())
        # web2 was online once and left; bob's db2 is online but not granted to alice.
        async with session(h.info, await h.token("alice", agent="web2"), "web2") as web2:
            await web2.announce()
        web1 = make_overlay(h, "web1", await h.token("alice", agent="web1"), serve=True)
        db1 = make_overlay(h, "db1", await h.token("bob", agent="db1"), serve=True)
        db2 = make_overlay(h, "db2", await h.token("bob", agent="db2"), serve=True)
        for agent in (web1, db1, db2):
            await nursery.start(agent.serve)
            await wait_coordinator(agent)
        laptop = make_overlay(h, "laptop", await h.token("alice"), serve=False)
        daemon = Daemon(laptop, DaemonConfig(socket_group="", idle_timeout=Duration(30.0)))
        path = socket_dir / "tunneld.sock"
        listener = await open_api_listener(path, mode=0o600)
        with trio.CancelScope() as scope:
            await nursery.start(daemon.run, [listener])
            await wait_coordinator(laptop)
            try:
                yield World(h, daemon, path)
            finally:
                scope.cancel()


def by_name(answer: dict[str, object]) -> dict[str, dict[str, object]]:
    agents = answer["agents"]
    assert isinstance(agents, list)
    return {f"{a['owner']}/{a['name']}": a for a in agents}


async def test_lists_every_reachable_agent_before_any_tunnel(world: World) -> None:
    daemon = world.daemon
    assert daemon.overlay.status()["peers"] == []
    answer = await world.agents()
    assert answer["source"] == "control"
    assert answer["stale"] is False
    assert answer["error"] is None
    agents = by_name(answer)
    assert sorted(agents) == ["alice/web1", "alice/web2", "bob/db1"]
    assert agents["alice/web1"]["online"] is True
    assert agents["bob/db1"]["online"] is True
    assert agents["alice/web2"]["online"] is False
    last_seen = agents["alice/web2"]["last_seen"]
    assert isinstance(last_seen, float)
    assert 0 < time.time() - last_seen < 600
    for agent in agents.values():
        assert agent["tunnel"] is None
        assert agent["handshake"] is False
        assert agent["path"] is None
    # Still no tunnel: listing does not open one.
    assert daemon.overlay.status()["peers"] == []
    assert daemon.tunnels.tunnels() == []

    # MCP tool handlers get the same list through DaemonAgents.list_agents.
    listed = await daemon._agents_for(Caller()).list_agents()
    assert sorted(f"{a['owner']}/{a['name']}" for a in listed) == sorted(agents)

    # The CLI prints it as a table, and as JSON.
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "agents", "--socket", str(world.path)],
            capture_stdout=True,
            capture_stderr=True,
        )
    lines = result.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["NAME", "OWNER", "ONLINE"]
    rows = {tuple(line.split()[:3]) for line in lines[1:]}
    assert rows == {("web1", "alice", "yes"), ("web2", "alice", "no"), ("db1", "bob", "yes")}
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "agents", "--json", "--socket", str(world.path)],
            capture_stdout=True,
            capture_stderr=True,
        )
    assert sorted(by_name(json.loads(result.stdout))) == sorted(agents)


async def test_a_burst_asks_the_coordinator_once(world: World) -> None:
    daemon = world.daemon
    stats = world.h.server.coordinator.stats
    daemon.directory.ttl = 60.0  # nothing expires during the test, however slow the box
    before = stats.messages.get("ListAgents", 0)
    answers: list[dict[str, object]] = []

    async def one() -> None:
        answers.append(await world.agents())

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
        for _ in range(4):
            nursery.start_soon(daemon._agents_for(Caller()).list_agents)
    assert len(answers) == 8
    assert all(sorted(by_name(a)) == ["alice/web1", "alice/web2", "bob/db1"] for a in answers)
    assert daemon.directory.requests == 1
    assert stats.messages.get("ListAgents", 0) - before == 1

    # Once the cache expires the next call asks again.
    daemon.directory.ttl = 0.0
    await world.agents()
    assert daemon.directory.requests == 2
    assert stats.messages.get("ListAgents", 0) - before == 2


async def test_tunnel_state_is_merged_and_control_plane_down_answers_stale(
    world: World,
) -> None:
    daemon = world.daemon
    with trio.fail_after(WAIT):
        stream = await world.client.dial("web1", "echo")
    try:
        await stream.send_all(b"ping")
        with trio.fail_after(WAIT):
            assert await stream.receive_some(4) == b"ping"
        daemon.directory.ttl = 0.0
        agents = by_name(await world.agents())
        web1 = agents["alice/web1"]
        assert web1["handshake"] is True
        assert web1["path"] in ("direct", "relay")
        assert web1["tunnel"] == {"state": "active", "leases": 1}
        assert agents["bob/db1"]["tunnel"] is None

        # The control plane goes away: the overlay keeps the tunnel, the list is stale.
        world.h.server.shutdown()
        with trio.fail_after(WAIT):
            await world.h.server.stopped.wait()
        await wait_coordinator(daemon.overlay, connected=False)
        answer = await world.agents()
        assert answer["stale"] is True
        assert isinstance(answer["error"], str)
        assert "control plane" in answer["error"]
        agents = by_name(answer)
        # The last answer is kept (marked stale), merged with the overlay's live state.
        assert answer["source"] == "control"
        assert sorted(agents) == ["alice/web1", "alice/web2", "bob/db1"]
        assert all(a["stale"] is True for a in agents.values())
        assert agents["alice/web1"]["tunnel"] == {"state": "active", "leases": 1}
        assert agents["alice/web1"]["handshake"] is True
        # The tunnel still carries bytes.
        await stream.send_all(b"pong")
        with trio.fail_after(WAIT):
            assert await stream.receive_some(4) == b"pong"
        with trio.fail_after(WAIT):
            result = await trio.run_process(
                [sys.executable, "-m", "tunneld", "agents", "--socket", str(world.path)],
                capture_stdout=True,
                capture_stderr=True,
            )
        assert b"warning: control plane unavailable" in result.stderr
        assert "web1" in result.stdout.decode()
    finally:
        await stream.aclose()


async def test_without_any_answer_the_overlay_alone_is_listed(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        web1 = make_overlay(h, "web1", await h.token("alice", agent="web1"), serve=True)
        await nursery.start(web1.serve)
        laptop = make_overlay(h, "laptop", await h.token("alice"), serve=False)
        daemon = Daemon(laptop, DaemonConfig(socket_group="", idle_timeout=Duration(30.0)))
        path = socket_dir / "tunneld.sock"
        listener = await open_api_listener(path, mode=0o600)
        with trio.CancelScope() as scope:
            await nursery.start(daemon.run, [listener])
            await wait_coordinator(laptop)
            client = LocalApiClient(path)
            with trio.fail_after(WAIT):
                stream = await client.dial("web1", "echo")
            h.server.shutdown()
            with trio.fail_after(WAIT):
                await h.server.stopped.wait()
            await wait_coordinator(laptop, connected=False)
            answer = await client.request("GET", "/v0/agents")
            assert isinstance(answer, dict)
            assert answer["source"] == "overlay"
            assert answer["stale"] is True
            assert answer["as_of"] is None
            [agent] = answer["agents"]
            assert (agent["owner"], agent["name"]) == ("alice", "web1")
            assert agent["last_seen"] is None
            assert agent["tunnel"] == {"state": "active", "leases": 1}
            await stream.aclose()
            scope.cancel()


async def test_an_older_coordinator_is_not_asked_again(nursery: trio.Nursery) -> None:
    """A coordinator without list_agents closes the session (1008, unknown request type):
    the overlay reconnects and stops asking, so listing cannot make the session flap."""
    asked: list[int] = []

    async def old_coordinator(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        while True:
            try:
                data = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            assert isinstance(data, bytes)
            if isinstance(decode_request(data), ListAgents):
                # What a coordinator from before list_agents answers (docs/coordinator.md).
                asked.append(1)
                await ws.aclose(1008, "unknown request type 'list_agents'")
                return

    server = await nursery.start(
        functools.partial(trio_websocket.serve_websocket, old_coordinator, "127.0.0.1", 0, None)
    )
    port = server.port
    config = OverlayConfig(
        name="laptop",
        private_key=generate_private_key(),
        coordinate_url=f"ws://127.0.0.1:{port}/api/v1/coordinate",
        derp_url="ws://127.0.0.1:9/derp",  # nothing there: relay-less, which is fine here
        udp_host="127.0.0.1",
        backoff_cap=0.2,
    )

    async def token() -> str:
        return "tnd_test_token"

    overlay = Overlay(config, token)
    await nursery.start(overlay.serve)
    await wait_coordinator(overlay)
    with pytest.raises(CoordinatorUnavailableError, match="session ended"):
        with trio.fail_after(WAIT):
            await overlay.list_agents()
    await wait_coordinator(overlay)
    with pytest.raises(CoordinatorUnavailableError, match="does not support list_agents"):
        await overlay.list_agents()
    assert asked == [1]
