"""The coordinator end to end: a real server on loopback, real WebSocket sessions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio_websocket
from _control_support import WAIT, Harness, read_json, running_server, session

from tunneld.config import Duration
from tunneld.proto.coord import AGENTS_PER_PAGE, AgentList, CloseCode, PeerUpdateKind


@pytest.fixture
async def control(nursery: trio.Nursery, tmp_path: Path) -> Harness:  # type: ignore[misc]
    async with running_server(nursery, tmp_path) as harness:
        await harness.user("alice")
        await harness.user("bob")
        yield harness


async def _rejected(harness: Harness, headers: list[tuple[bytes, bytes]]) -> int:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(
            harness.info.coordinate_url, extra_headers=headers, connect_timeout=WAIT
        ):
            pass
    return int(info.value.status_code)


async def test_401_without_or_with_a_bad_token(control: Harness) -> None:
    assert await _rejected(control, []) == 401
    assert (
        await _rejected(control, [(b"Authorization", b"Bearer tnd_000000000000_" + b"x" * 43)])
        == 401
    )
    good = await control.token("alice")
    assert await _rejected(control, [(b"Authorization", f"Basic {good}".encode())]) == 401
    assert await _rejected(control, [(b"Authorization", f"Bearer {good}x".encode())]) == 401
    expired = await control.token("alice", expires_at=time.time() - 1)
    assert await _rejected(control, [(b"Authorization", f"Bearer {expired}".encode())]) == 401
    status, headers, body = await control.get("/api/v1/nodes")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert read_json(body)["error"]["code"] == "unauthorized"


async def test_client_and_agent_learn_each_other_and_handshake_is_relayed(
    control: Harness,
) -> None:
    client_token = await control.token("alice")
    agent_token = await control.token("alice", agent="web1")
    async with (
        session(control.info, agent_token, "ignored-name") as agent,
        session(control.info, client_token, "laptop") as client,
    ):
        await agent.announce(("127.0.0.1:41000",))
        await client.announce()
        await client.send(client.client.add_tunnel("web1"))
        seen = await client.expect_update(PeerUpdateKind.NODE)
        assert seen.node is not None
        assert (seen.node.name, seen.node.owner) == ("web1", "alice")  # name from the token
        assert seen.node.endpoints == ("127.0.0.1:41000",)
        assert seen.node.node_key == agent.node_key
        learned = await agent.expect_update(PeerUpdateKind.NODE)
        assert learned.node is not None
        assert (learned.node.name, learned.node.owner) == ("laptop", "alice")
        # The agent, now knowing the client, says so; the client hears it.
        await agent.send(agent.client.ready_for_handshake(learned.id))
        ready = await client.expect_update(PeerUpdateKind.READY_FOR_HANDSHAKE)
        assert ready.id == seen.id
        assert client.client.peers[seen.id].ready_for_handshake
        # Endpoint changes reach the peer.
        await agent.announce(("127.0.0.1:41001",), sync=False)
        moved = await client.expect_update(PeerUpdateKind.NODE)
        assert moved.node is not None
        assert moved.node.endpoints == ("127.0.0.1:41001",)
        # By node id works as well as by name; owner/name too.
        await client.send(client.client.add_tunnel(seen.id))
        await client.expect_update(PeerUpdateKind.NODE)
        await client.send(client.client.add_tunnel("alice/web1"))
        await client.expect_update(PeerUpdateKind.NODE)


async def test_acl_hides_other_users_agents(control: Harness) -> None:
    alice_client = await control.token("alice")
    bob_agent = await control.token("bob", agent="db1")
    bob_client = await control.token("bob")
    async with (
        session(control.info, bob_agent, "db1") as agent,
        session(control.info, alice_client, "laptop") as alice,
        session(control.info, bob_client, "desk") as bob,
    ):
        await agent.announce()
        await alice.announce()
        await bob.announce()
        await bob.send(bob.client.add_tunnel("db1"))
        agent_update = await bob.expect_update(PeerUpdateKind.NODE)
        await agent.expect_update(PeerUpdateKind.NODE)
        # Alice asks for bob's agent by name, owner/name and node id: all look alike to
        # a name that does not exist at all.
        answers = []
        for ref in ("db1", "bob/db1", agent_update.id, "nosuch", "bob/nosuch"):
            await alice.send(alice.client.add_tunnel(ref))
            error = await alice.expect_error()
            answers.append((error.code, error.message))
        assert len(set(answers)) == 1
        # ready_for_handshake to a node it shares no tunnel with is refused too.
        await alice.send(alice.client.ready_for_handshake(agent_update.id))
        await alice.expect_error()
        # Nothing about alice reached bob's agent: its next message is its own reply.
        await agent.sync()
        status, _, body = await control.get("/api/v1/nodes", alice_client)
        assert status == 200
        names = {(n["owner"], n["name"]) for n in read_json(body)["nodes"]}
        assert names == {("alice", "laptop")}
        # An agent token cannot open tunnels at all.
        await agent.send(agent.client.add_tunnel("db1"))
        await agent.expect_error()


async def test_grants_extend_the_acl(control: Harness) -> None:
    await control.store.add_grant("alice", "bob", "db1", time.time())
    alice_client = await control.token("alice")
    bob_agent = await control.token("bob", agent="db1")
    bob_other = await control.token("bob", agent="db2")
    async with (
        session(control.info, bob_agent, "db1") as db1,
        session(control.info, bob_other, "db2") as db2,
        session(control.info, alice_client, "laptop") as alice,
    ):
        await db1.announce()
        await db2.announce()
        await alice.announce()
        await alice.send(alice.client.add_tunnel("db1"))
        await alice.expect_update(PeerUpdateKind.NODE)
        await db1.expect_update(PeerUpdateKind.NODE)
        await alice.send(alice.client.add_tunnel("bob/db2"))
        await alice.expect_error()
        await db2.sync()


async def test_two_clients_of_one_user_share_an_agent(control: Harness) -> None:
    agent_token = await control.token("alice", agent="web1")
    client_token = await control.token("alice")
    async with (
        session(control.info, agent_token, "web1") as agent,
        session(control.info, client_token, "laptop") as one,
        session(control.info, client_token, "desktop") as two,
    ):
        await agent.announce()
        await one.announce()
        await two.announce()
        ids = set()
        for client in (one, two):
            await client.send(client.client.add_tunnel("web1"))
            await client.expect_update(PeerUpdateKind.NODE)
            learned = await agent.expect_update(PeerUpdateKind.NODE)
            assert learned.node is not None
            ids.add((learned.id, learned.node.name))
        assert {name for _, name in ids} == {"laptop", "desktop"}
        assert len({i for i, _ in ids}) == 2
        # Clients do not learn about each other.
        await one.sync()
        await two.sync()
        status, _, body = await control.get("/api/v1/nodes", client_token)
        nodes = read_json(body)["nodes"]
        assert status == 200
        assert {n["name"] for n in nodes} == {"web1", "laptop", "desktop"}
        assert all(n["online"] for n in nodes)


async def test_lost_then_disconnected_after_grace_and_return(control: Harness) -> None:
    agent_token = await control.token("alice", agent="web1")
    client_token = await control.token("alice")
    async with session(control.info, client_token, "laptop") as client:
        await client.announce()
        async with session(control.info, agent_token, "web1") as agent:
            await agent.announce()
            await client.send(client.client.add_tunnel("web1"))
            seen = await client.expect_update(PeerUpdateKind.NODE)
            await agent.expect_update(PeerUpdateKind.NODE)
        # The agent's connection dropped (no `disconnect` request).
        lost = await client.expect_update(PeerUpdateKind.LOST)
        assert lost.id == seen.id
        assert client.client.peers[seen.id].online is False
        gone = await client.expect_update(PeerUpdateKind.DISCONNECTED)
        assert gone.reason == "lost grace period expired"
        # The agent comes back: the client's tunnel still stands, both learn each other.
        async with session(control.info, agent_token, "web1") as agent:
            await agent.announce(sync=False)
            back = await client.expect_update(PeerUpdateKind.NODE)
            assert back.id == seen.id
            await agent.expect_update(PeerUpdateKind.NODE)
            # A clean disconnect skips the grace period.
            await agent.send(agent.client.disconnect())
            closed = await agent.expect_closed()
            assert closed.code == CloseCode.NORMAL
            gone = await client.expect_update(PeerUpdateKind.DISCONNECTED)
            assert gone.reason == "disconnected"


async def test_reconnect_within_grace_is_not_disconnected(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, lost_grace=Duration(30.0)) as h:
        await h.user("alice")
        agent_token = await h.token("alice", agent="web1")
        client_token = await h.token("alice")
        async with session(h.info, client_token, "laptop") as client:
            await client.announce()
            async with session(h.info, agent_token, "web1") as agent:
                await agent.announce()
                await client.send(client.client.add_tunnel("web1"))
                await client.expect_update(PeerUpdateKind.NODE)
            await client.expect_update(PeerUpdateKind.LOST)
            async with session(h.info, agent_token, "web1") as agent:
                await agent.announce(sync=False)
                await client.expect_update(PeerUpdateKind.NODE)
                # The returning agent is told about the client at once.
                await agent.expect_update(PeerUpdateKind.NODE)


async def test_revoked_token_closes_its_session(control: Harness) -> None:
    doomed = await control.token("alice")
    other = await control.token("alice", agent="web1")
    async with (
        session(control.info, doomed, "laptop") as victim,
        session(control.info, other, "web1") as bystander,
    ):
        await victim.announce()
        await bystander.announce()
        token_id = doomed.split("_")[1]
        await control.store.revoke_token(token_id, time.time())
        closed = await victim.expect_closed()
        assert closed.code == CloseCode.POLICY_VIOLATION
        assert closed.reason == "token revoked or expired"
        await bystander.sync()
    assert await _rejected(control, [(b"Authorization", f"Bearer {doomed}".encode())]) == 401


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"\xc1\xc1", CloseCode.INVALID_PAYLOAD, "not a msgpack message"),
        (msgpack.packb({"type": "teleport"}), CloseCode.POLICY_VIOLATION, "unknown request type"),
        (b"\x80" * 20000, CloseCode.MESSAGE_TOO_BIG, "exceeds 16384"),
        ("text", CloseCode.UNSUPPORTED_DATA, "text message"),
        (b"\xc0" * 100_000, CloseCode.MESSAGE_TOO_BIG, ""),  # over the WebSocket limit
    ],
    ids=["bad-msgpack", "unknown-type", "oversized", "text", "over-websocket-limit"],
)
async def test_misbehaving_session_is_closed_others_keep_going(
    control: Harness, payload: bytes | str, code: int, reason: str
) -> None:
    token = await control.token("alice")
    async with (
        session(control.info, token, "good") as good,
        session(control.info, token, "bad") as bad,
    ):
        await good.announce()
        await bad.ws.send_message(payload)
        closed = await bad.expect_closed()
        assert closed.code == code
        assert reason in (closed.reason or "")
        await good.sync()
        await good.announce(("127.0.0.1:40001",))


async def test_rate_limit_closes_the_flooding_session(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, update_rate=1.0, update_burst=5.0) as h:
        await h.user("alice")
        token = await h.token("alice")
        async with session(h.info, token, "calm") as calm, session(h.info, token, "flood") as flood:
            await calm.announce()
            for _ in range(50):  # the server may close before all are written
                try:
                    await flood.announce(sync=False)
                except trio_websocket.ConnectionClosed:
                    break
            closed = await flood.expect_closed()
            assert closed.code == CloseCode.POLICY_VIOLATION
            assert closed.reason == "rate limit exceeded"
            await calm.sync()
        status, _, body = await h.get("/metrics")
        assert status == 200
        assert 'tunneld_coordinator_session_closes_total{cause="rate_limited"} 1.0' in body.decode()


async def test_health_and_metrics(control: Harness) -> None:
    token = await control.token("alice")
    async with session(control.info, token, "laptop") as client:
        await client.announce()
        await client.sync()
        status, _, body = await control.get("/healthz")
        assert status == 200
        health = read_json(body)
        assert health["status"] == "ok"
        assert health["coordinator_sessions"] == 1
        assert health["nodes_online"] == 1
        status, headers, body = await control.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "tunneld_coordinator_sessions 1.0" in text
    assert "tunneld_coordinator_nodes_online 1.0" in text
    assert 'tunneld_coordinator_messages_total{type="UpdateSelf"} 1.0' in text


async def test_offline_agent_then_online_and_remove_tunnel(control: Harness) -> None:
    agent_token = await control.token("alice", agent="web1")
    client_token = await control.token("alice")
    # The agent registers once, then leaves cleanly: it is known but offline.
    async with session(control.info, agent_token, "web1") as agent:
        await agent.announce()
        await agent.send(agent.client.disconnect())
        await agent.expect_closed()
    async with session(control.info, client_token, "laptop") as client:
        # add_tunnel before update_self is refused.
        await client.send(client.client.add_tunnel("web1"))
        await client.expect_error("no_node")
        await client.announce()
        await client.send(client.client.add_tunnel("web1"))
        offline = await client.expect_update(PeerUpdateKind.DISCONNECTED)
        assert offline.reason == "offline"
        async with session(control.info, agent_token, "web1") as agent:
            await agent.announce(sync=False)
            assert (await client.expect_update(PeerUpdateKind.NODE)).id == offline.id
            await agent.expect_update(PeerUpdateKind.NODE)
            await client.send(client.client.remove_tunnel("web1"))
            removed = await agent.expect_update(PeerUpdateKind.DISCONNECTED)
            assert removed.reason == "tunnel removed"
            await client.send(client.client.remove_tunnel("web1"))
            await client.expect_error("not_found")


async def test_newer_session_replaces_older_and_keys_are_owned(control: Harness) -> None:
    agent_token = await control.token("alice", agent="web1")
    client_token = await control.token("alice")
    async with session(control.info, agent_token, "web1") as old:
        await old.announce()
        async with session(control.info, agent_token, "web1") as new:
            await new.announce()
            closed = await old.expect_closed()
            assert (closed.code, closed.reason) == (1000, "replaced by a newer session")
            # Another node may not claim the agent's key.
            async with session(control.info, client_token, "thief") as thief:
                thief.node_key = new.node_key
                await thief.send(thief.client.update_self(name="thief", node_key=new.node_key))
                await thief.expect_error("key_in_use")
                # A client's key is fixed for the session.
                await thief.send(thief.client.update_self(name="thief", node_key=b"\x01" * 32))
                await thief.sync()
                await thief.send(thief.client.update_self(name="thief", node_key=b"\x02" * 32))
                await thief.expect_error("key_changed")
            await new.sync()


async def _list(peer: Any) -> AgentList:
    request_id, data = peer.client.list_agents()
    await peer.send(data)
    while True:
        message = await peer.recv()
        if isinstance(message, AgentList) and not message.more:
            assert message.id == request_id
            return message


async def test_list_agents_follows_the_acl_online_or_not(control: Harness) -> None:
    await control.store.add_grant("alice", "bob", "db1", time.time())
    alice_client = await control.token("alice")
    # web2 was online once and left: listed offline, with when it was last seen.
    async with session(control.info, await control.token("alice", agent="web2"), "web2") as web2:
        await web2.announce()
    async with session(control.info, await control.token("bob", agent="db2"), "db2") as db2:
        await db2.announce()
    async with (
        session(control.info, await control.token("alice", agent="web1"), "web1") as web1,
        session(control.info, await control.token("bob", agent="db1"), "db1") as db1,
        session(control.info, alice_client, "laptop") as alice,
    ):
        await web1.announce()
        await db1.announce()
        # Before update_self too: the question needs no node of its own.
        answer = await _list(alice)
        seen = {(a.owner, a.name): a for a in answer.agents}
        assert set(seen) == {("alice", "web1"), ("alice", "web2"), ("bob", "db1")}
        assert seen["alice", "web1"].online
        assert seen["bob", "db1"].online
        assert not seen["alice", "web2"].online
        last_seen = seen["alice", "web2"].last_seen
        assert last_seen is not None
        assert 0 < time.time() - last_seen < 600
        # Own agents first, then granted ones.
        assert [a.owner for a in answer.agents] == ["alice", "alice", "bob"]
        # Agent tokens may reach nothing, so they list nothing.
        assert (await _list(web1)).agents == ()


async def test_list_agents_pages_a_long_list(control: Harness) -> None:
    for i in range(AGENTS_PER_PAGE * 2 + 3):
        async with session(
            control.info, await control.token("alice", agent=f"a{i:02d}"), f"a{i:02d}"
        ) as agent:
            await agent.announce(sync=False)
            await agent.send(agent.client.disconnect())
            await agent.expect_closed()
    async with session(control.info, await control.token("alice"), "laptop") as alice:
        request_id, data = alice.client.list_agents()
        await alice.send(data)
        pages = []
        while not pages or pages[-1].more:
            message = await alice.recv()
            assert isinstance(message, AgentList)
            pages.append(message)
        # receive() hands back each page, and the whole list with the last one.
        assert [len(p.agents) for p in pages] == [AGENTS_PER_PAGE, AGENTS_PER_PAGE, 35]
        assert [a.name for a in pages[-1].agents] == [f"a{i:02d}" for i in range(35)]
        assert all(p.id == request_id for p in pages)
