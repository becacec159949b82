"""The trio coordinator client: bearer auth, replay after reconnect, close reasons."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from _control_support import Harness, running_server, session

from tunneld.config import Duration
from tunneld.log import Secret
from tunneld.net.coord import (
    CoordinatorClosed,
    CoordinatorConnectError,
    CoordinatorConnection,
    connect_coordinator,
)
from tunneld.proto.coord import CoordinatorClient, PeerUpdate, PeerUpdateKind


@pytest.fixture
async def control(nursery: trio.Nursery, tmp_path: Path) -> Harness:  # type: ignore[misc]
    # A long grace period: a reconnect must never race the "disconnected" update.
    async with running_server(nursery, tmp_path, lost_grace=Duration(30.0)) as harness:
        await harness.user("alice")
        yield harness


async def _next_update(connection: object, kind: PeerUpdateKind) -> PeerUpdate:
    with trio.fail_after(10):
        message = await connection.receive()  # type: ignore[attr-defined]
    assert isinstance(message, PeerUpdate), message
    assert message.kind is kind, message
    return message


async def test_reconnect_replays_node_and_tunnels(control: Harness) -> None:
    token = Secret(await control.token("alice"))
    agent_token = await control.token("alice", agent="web1")
    client = CoordinatorClient()
    client.update_self(name="laptop", node_key=b"\x05" * 32, endpoints=("10.0.0.5:41641",))
    client.add_tunnel("web1")
    async with session(control.info, agent_token, "web1") as agent:
        await agent.announce()
        async with connect_coordinator(control.info.coordinate_url, token, client) as first:
            seen = await _next_update(first, PeerUpdateKind.NODE)
            learned = await agent.expect_update(PeerUpdateKind.NODE)
            assert learned.node is not None
            assert learned.node.endpoints == ("10.0.0.5:41641",)
        await agent.expect_update(PeerUpdateKind.LOST)
        # A new session with the same client object replays everything by itself.
        async with connect_coordinator(control.info.coordinate_url, token, client) as second:
            again = await _next_update(second, PeerUpdateKind.NODE)
            assert again.id == seen.id
            back = await agent.expect_update(PeerUpdateKind.NODE)
            assert back.id == learned.id
            assert client.peers[seen.id].online
            await second.send(client.disconnect())
            # (Another node update may still be queued: the replayed update_self and
            # add_tunnel each announce the agent.)
            with pytest.raises(CoordinatorClosed) as closed:  # noqa: PT012
                for _ in range(3):
                    await second.receive()
            assert closed.value.code == 1000


async def test_bad_token_and_unreachable_server(control: Harness) -> None:
    with pytest.raises(CoordinatorConnectError) as refused:
        async with connect_coordinator(
            control.info.coordinate_url, Secret("tnd_000000000000_" + "x" * 43), CoordinatorClient()
        ):
            pass
    assert refused.value.status == 401
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CoordinatorConnectError) as unreachable:
        async with connect_coordinator(
            f"ws://127.0.0.1:{port}/api/v1/coordinate", Secret("x"), CoordinatorClient()
        ):
            pass
    assert unreachable.value.status is None


async def test_changes_made_while_the_replay_is_being_sent_are_sent_too(
    control: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The overlay learns of a session only once connect_coordinator yields it; until
    # then its add_tunnel/remove_tunnel only update the client (to be replayed). A
    # tool call's add_tunnel landing while the replay was being sent used to be in
    # neither that replay nor (the session being up) any later one: lost for good,
    # agent_offline after the connect timeout. The replay's first send is held here
    # until the owner has made its changes, as a loaded machine may interleave them.
    token = Secret(await control.token("alice"))
    client = CoordinatorClient()
    client.update_self(name="laptop", node_key=b"\x06" * 32)
    client.add_tunnel("web2")  # replayed, then given up while the replay is sent
    replaying, changed = trio.Event(), trio.Event()
    send = CoordinatorConnection.send

    async def held_send(self: CoordinatorConnection, data: bytes) -> None:
        if self.client is client and not changed.is_set():
            replaying.set()
            await changed.wait()
        await send(self, data)

    monkeypatch.setattr(CoordinatorConnection, "send", held_send)

    async def owner() -> None:
        await replaying.wait()
        # What Overlay.add_tunnel/remove_tunnel do while they have no session yet.
        client.add_tunnel("web1")
        client.remove_tunnel("web2")
        changed.set()

    async with (
        session(control.info, await control.token("alice", agent="web1"), "web1") as web1,
        session(control.info, await control.token("alice", agent="web2"), "web2") as web2,
    ):
        await web1.announce()
        await web2.announce()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner)
            async with connect_coordinator(control.info.coordinate_url, token, client) as conn:
                names = []
                while "web1" not in names:  # web2's node first (replayed), then web1's
                    update = await _next_update(conn, PeerUpdateKind.NODE)
                    assert update.node is not None
                    names.append(update.node.name)
                assert names in (["web1"], ["web2", "web1"])
                learned = await web1.expect_update(PeerUpdateKind.NODE)
                assert learned.node is not None
                assert learned.node.name == "laptop"
                # web2 heard of the laptop (the replayed tunnel), then that it is gone.
                await web2.expect_update(PeerUpdateKind.NODE)
                gone = await web2.expect_update(PeerUpdateKind.DISCONNECTED)
                assert gone.reason == "tunnel removed"
                assert client.tunnels == {"web1"}
