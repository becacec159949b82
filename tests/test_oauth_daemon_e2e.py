"""OAuth end to end through the daemon: a real control plane (authorization server),
real `tunneld agent` processes of two users, a daemon (resource server) shared by both
users' MCP callers, tokens obtained through the browser flow.

Attacks covered here: a token for another resource used at the daemon, a query-string
token, and user A's token calling a tool on user B's agent through the shared daemon.
"""

from __future__ import annotations

import functools
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests._control_support import Harness, running_server
from tests._mcp_client import McpAnswer, RawMcpClient
from tests._oauth_support import Browser, OAuthFlow, add_cli_client, add_password_user
from tunneld.config import Config, DaemonConfig, Duration, McpConfig
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.keys import generate_private_key
from tunneld.net.overlay import Overlay, OverlayConfig
from tunneld.oauth._daemon import build_daemon_oauth
from tunneld.plugins import PluginManager

WAIT = 30.0
REDIRECT = "http://127.0.0.1:51777/cb"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-oauth-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def agent_process(
    nursery: trio.Nursery, h: Harness, tmp: Path, owner: str, name: str, workspace: Path
) -> AsyncIterator[trio.Process]:
    token_file = tmp / f"{name}.token"
    token_file.write_text(await h.token(owner, agent=name) + "\n")
    token_file.chmod(0o600)
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
        with trio.fail_after(WAIT):
            while not await trio.Path(ready).exists():
                assert process.returncode is None, "the agent exited before it was ready"
                await trio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            await process.wait()


class BearerClient(RawMcpClient):
    """The raw MCP client, sending one bearer token with every request."""

    def __init__(self, target: str, token: str | None) -> None:
        super().__init__(target)
        self.token = token

    async def post(
        self, message: dict[str, Any], *, headers: dict[str, str] | None = None
    ) -> McpAnswer:
        auth = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        return await super().post(message, headers={**auth, **(headers or {})})


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "oauth-e2e", "version": "0"},
    },
}


async def _stat(client: BearerClient, agent: str, path: str) -> dict[str, Any]:
    with trio.fail_after(WAIT * 2):
        answer = await client.request(
            "tools/call", {"name": "example_stat", "arguments": {"agent": agent, "path": path}}
        )
    result: dict[str, Any] = answer["result"]
    return result


async def test_oauth_callers_reach_only_their_agents_through_a_shared_daemon(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        for user in ("alice", "bob"):
            await add_password_user(h.store, user, f"{user}-pw")
        await h.user("ops")  # the daemon's own user reaches both users' agents
        await h.store.add_grant("ops", "alice", "*", time.time())
        await h.store.add_grant("ops", "bob", "*", time.time())
        rs_secret = await add_cli_client(h.store, "laptop-rs", introspect=True)
        secret_file = short_dir / "rs.secret"
        secret_file.write_text(f"{rs_secret}\n")
        secret_file.chmod(0o600)
        workspaces = {}
        for owner, agent in (("alice", "web1"), ("bob", "build")):
            workspaces[agent] = tmp_path / agent
            workspaces[agent].mkdir()
            (workspaces[agent] / f"{owner}.txt").write_text(f"{owner}'s file\n")

        daemon_token = await h.token("ops")

        async def provide() -> str:
            return daemon_token

        overlay = Overlay(
            OverlayConfig(
                name="laptop",
                private_key=generate_private_key(),
                coordinate_url=h.info.coordinate_url,
                derp_url=h.info.derp_url,
                udp_host="127.0.0.1",
            ),
            provide,
        )
        mcp = McpConfig(
            listen="127.0.0.1:0",
            authorization_server=h.info.url,
            introspection_client_id="laptop-rs",
            introspection_secret_file=str(secret_file),
        )
        holder: list[Daemon] = []
        oauth = build_daemon_oauth(
            mcp,
            control_url=h.info.url,
            node_token=provide,
            mcp_url=lambda: holder[0].mcp_url,
        )
        daemon = Daemon(
            overlay,
            DaemonConfig(socket_group="", connect_timeout=Duration(60.0)),
            notifier=Notifier({}),
            mcp=mcp,
            plugins=PluginManager(Config().plugins, extra_enable=["example"]),
            mcp_authenticate=oauth.authenticator,
            mcp_routes=oauth.mount,
            agent_access_check=oauth.access_check,
        )
        holder.append(daemon)
        async with (
            agent_process(nursery, h, short_dir, "alice", "web1", workspaces["web1"]),
            agent_process(nursery, h, short_dir, "bob", "build", workspaces["build"]),
        ):
            listener = await open_api_listener(short_dir / "api.sock", mode=0o600)
            await nursery.start(daemon.run, [listener])
            try:
                assert daemon.mcp_url is not None
                url = daemon.mcp_url
                target = url.removeprefix("http://").removesuffix("/mcp")

                # Discovery: 401 pointing at RFC 9728 metadata naming this URL.
                anonymous = await BearerClient(target, None).post(INITIALIZE)
                assert anonymous.status == 401
                challenge = anonymous.headers["www-authenticate"]
                assert "oauth-protected-resource/mcp" in challenge
                async with httpx.AsyncClient(timeout=10) as http:
                    base = url.removesuffix("/mcp")
                    prm = (
                        await http.get(base + "/.well-known/oauth-protected-resource/mcp")
                    ).json()
                assert prm["resource"] == url
                assert prm["authorization_servers"] == [h.info.url]

                tokens: dict[str, dict[str, Any]] = {}
                for user in ("alice", "bob"):
                    browser = Browser(h.info.url)
                    flow = OAuthFlow(h.info.url, browser)
                    try:
                        client = await flow.register(REDIRECT)
                        assert (await browser.login(user, f"{user}-pw")).status_code == 303
                        tokens[user] = await flow.tokens_for(
                            client["client_id"], REDIRECT, resource=url
                        )
                        if user == "alice":
                            tokens["elsewhere"] = await flow.tokens_for(
                                client["client_id"],
                                REDIRECT,
                                resource="https://other-daemon.example:7421/mcp",
                            )
                    finally:
                        await flow.aclose()
                        await browser.aclose()

                # A token minted for another resource does not work here.
                other = await BearerClient(target, tokens["elsewhere"]["access_token"]).post(
                    INITIALIZE
                )
                assert other.status == 401
                assert 'error="invalid_token"' in other.headers["www-authenticate"]
                # Nor does a good token in the query string.
                sneaky = BearerClient(target, None)
                sneaky.path = f"/mcp?access_token={tokens['alice']['access_token']}"
                assert (await sneaky.post(INITIALIZE)).status == 400

                alice = BearerClient(target, tokens["alice"]["access_token"])
                await alice.initialize()
                bob = BearerClient(target, tokens["bob"]["access_token"])
                await bob.initialize()

                own = await _stat(alice, "web1", str(workspaces["web1"] / "alice.txt"))
                assert not own.get("isError"), own
                assert own["structuredContent"]["size"] == len("alice's file\n")
                theirs = await _stat(bob, "bob/build", str(workspaces["build"] / "bob.txt"))
                assert not theirs.get("isError"), theirs

                # User A's token calling a tool on user B's agent: refused before any
                # tunnel is acquired for it, though the daemon itself may reach it.
                for ref in ("bob/build", "build"):
                    attack = await _stat(alice, ref, str(workspaces["build"] / "bob.txt"))
                    assert attack.get("isError") is True, attack
                    text = " ".join(c.get("text", "") for c in attack["content"])
                    assert "bob's file" not in text
                    assert "may not reach" in text or "not_permitted" in text, text
                # And the other way round.
                reverse = await _stat(bob, "alice/web1", str(workspaces["web1"] / "alice.txt"))
                assert reverse.get("isError") is True, reverse

                # A grant makes it reachable (after the control plane's max_age).
                await h.store.add_grant("alice", "bob", "build", time.time())
                assert oauth.access is not None
                oauth.access.forget("alice")
                granted = await _stat(alice, "bob/build", str(workspaces["build"] / "bob.txt"))
                assert not granted.get("isError"), granted
            finally:
                daemon.stop()
