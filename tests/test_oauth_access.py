"""Per-caller authorization (issue 8 item 3): the control plane's /api/v1/access and
the daemon-side AccessClient, over real HTTP against a real control server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from _control_support import Harness, running_server

from tunneld.control import NodeRecord
from tunneld.oauth import AccessCheckError, AccessClient


@dataclass
class Env:
    harness: Harness
    daemon_token: str
    clock: list[float]
    client: AccessClient


async def _agent(harness: Harness, owner: str, name: str) -> None:
    user = await harness.store.get_user(owner)
    assert user is not None
    now = time.time()
    record = NodeRecord(
        id=f"n-{owner}-{name}",
        user_id=user.id,
        owner=owner,
        kind="agent",
        name=name,
        node_key=bytes(32),
        endpoints=(),
        home_relay=None,
        as_of=now,
        last_seen=now,
        online=True,
    )
    await harness.store.upsert_node(record, "t")


@pytest.fixture
async def env(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Env]:
    async with running_server(nursery, tmp_path) as harness:
        for name in ("alice", "bob", "ops"):
            await harness.user(name)
        await _agent(harness, "alice", "dev")
        await _agent(harness, "bob", "build")
        await _agent(harness, "bob", "dev")
        # The shared daemon runs as "ops", which may reach every agent of both users.
        await harness.store.add_grant("ops", "alice", "*", time.time())
        await harness.store.add_grant("ops", "bob", "*", time.time())
        token = await harness.token("ops")
        clock = [0.0]

        async def provide() -> str:
            return token

        client = AccessClient(harness.info.url, provide, clock=lambda: clock[0])
        yield Env(harness, token, clock, client)


async def test_own_agent_is_allowed(env: Env) -> None:
    decision = await env.client.decide("alice", "alice/dev")
    assert decision.allowed
    assert decision.agent == "alice/dev"
    # A bare name means one's own agent first, even when another user has one too.
    own = await env.client.decide("alice", "dev")
    assert own.allowed
    assert own.agent == "alice/dev"
    assert (await env.client.decide("bob", "dev")).agent == "bob/dev"


async def test_attack_user_a_reaching_user_b_agent(env: Env) -> None:
    assert not await env.client.may_reach("alice", "bob/build")
    assert not await env.client.may_reach("alice", "build")
    assert not await env.client.may_reach("alice", "n-bob-build")  # by node id
    assert not await env.client.may_reach("alice", "bob/dev")


async def test_grant_then_removal_takes_effect_after_max_age(env: Env) -> None:
    assert not await env.client.may_reach("alice", "bob/build")
    await env.harness.store.add_grant("alice", "bob", "build", time.time())
    env.clock[0] += 6.0
    assert await env.client.may_reach("alice", "bob/build")
    asked = env.client.requests
    assert await env.client.may_reach("alice", "bob/build")
    assert env.client.requests == asked  # cached
    await env.harness.store.remove_grant("alice", "bob", "build")
    env.clock[0] += 6.0  # past the control plane's max_age (5 s)
    assert not await env.client.may_reach("alice", "bob/build")


async def test_the_asking_daemon_must_reach_the_agent_too(env: Env) -> None:
    await env.harness.user("carol")
    await _agent(env.harness, "carol", "vault")
    await env.harness.store.add_grant("alice", "carol", "vault", time.time())
    # alice may reach carol/vault, but this daemon's user (ops) may not: refused, with
    # the same answer as for an agent that does not exist.
    decision = await env.client.decide("alice", "carol/vault")
    assert not decision.allowed
    assert decision.reason == "not_found"
    assert decision.agent is None


async def test_unknown_subject_and_agent(env: Env) -> None:
    assert (await env.client.decide("mallory", "alice/dev")).reason == "unknown_subject"
    assert (await env.client.decide("alice", "alice/nope")).reason == "not_found"


async def test_agent_tokens_and_bad_tokens_cannot_ask(env: Env) -> None:
    agent_token = await env.harness.token("alice", agent="dev")
    for token in (agent_token, "tnd_000000000000_" + "x" * 43):

        async def provide(value: str = token) -> str:
            return value

        client = AccessClient(env.harness.info.url, provide)
        with pytest.raises(AccessCheckError):
            await client.may_reach("alice", "alice/dev")


async def test_control_plane_down_fails_closed() -> None:
    async def provide() -> str:
        return "tnd_x"

    client = AccessClient("http://127.0.0.1:9", provide, timeout=5)
    with pytest.raises(AccessCheckError):
        await client.may_reach("alice", "alice/dev")


async def test_bad_queries(env: Env) -> None:
    headers = {"Authorization": f"Bearer {env.daemon_token}"}
    async with httpx.AsyncClient(base_url=env.harness.info.url, timeout=10) as http:
        for query in (
            "",
            "?subject=alice",
            "?agent=dev",
            "?subject=&agent=dev",
            "?subject=a&subject=b&agent=dev",
        ):
            answer = await http.get("/api/v1/access" + query, headers=headers)
            assert answer.status_code == 400, query
        assert (await http.get("/api/v1/access?subject=a&agent=b")).status_code == 401
