"""OAuth end to end through the daemon: a real control plane (authorization server),
real `tunneld agent` processes of two users, a daemon (resource server) shared by both
users' MCP callers, tokens obtained through the browser flow.

Attacks covered here: a token for another resource used at the daemon, a query-string
token, and user A's token calling a tool on user B's agent through the shared daemon.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests._control_support import Harness, agent_process, running_server
from tests._mcp_client import McpAnswer, RawMcpClient, in_asyncio_thread
from tests._oauth_support import (
    Browser,
    OAuthFlow,
    add_cli_client,
    add_password_user,
    hidden_fields,
    query_of,
)
from tests._plugin_support import make_plugin
from tunneld.config import Config, DaemonConfig, Duration, McpConfig
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.demo import loopback_overlay
from tunneld.oauth._daemon import DaemonOAuth, build_daemon_oauth
from tunneld.plugins import PluginManager

WAIT = 30.0
REDIRECT = "http://127.0.0.1:51777/cb"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-oauth-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


@dataclass
class World:
    h: Harness
    daemon: Daemon
    oauth: DaemonOAuth
    workspaces: dict[str, Path]

    @property
    def url(self) -> str:
        assert self.daemon.mcp_url is not None
        return self.daemon.mcp_url


@asynccontextmanager
async def shared_daemon(
    nursery: trio.Nursery,
    tmp_path: Path,
    short_dir: Path,
    plugins: tuple[str, ...] = ("example",),
) -> AsyncIterator[World]:
    """Control plane, alice's agent web1 and bob's agent build, and one daemon (user
    ops, which may reach both) serving MCP on TCP as an OAuth resource server."""
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

        overlay = loopback_overlay(h.info, "laptop", provide)
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
            plugins=PluginManager(Config().plugins, extra_enable=list(plugins)),
            mcp_authenticate=oauth.authenticator,
            mcp_routes=oauth.mount,
            agent_access_check=oauth.access_check,
        )
        holder.append(daemon)
        async with (
            agent_process(nursery, h, short_dir, "web1", workspaces["web1"], owner="alice"),
            agent_process(nursery, h, short_dir, "build", workspaces["build"], owner="bob"),
        ):
            listener = await open_api_listener(short_dir / "api.sock", mode=0o600)
            await nursery.start(daemon.run, [listener])
            try:
                yield World(h, daemon, oauth, workspaces)
            finally:
                daemon.stop()


async def test_oauth_callers_reach_only_their_agents_through_a_shared_daemon(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    async with shared_daemon(nursery, tmp_path, short_dir) as world:
        h, oauth, workspaces = world.h, world.oauth, world.workspaces
        url = world.url
        target = url.removeprefix("http://").removesuffix("/mcp")

        # Discovery: 401 pointing at RFC 9728 metadata naming this URL.
        anonymous = await BearerClient(target, None).post(INITIALIZE)
        assert anonymous.status == 401
        challenge = anonymous.headers["www-authenticate"]
        assert "oauth-protected-resource/mcp" in challenge
        async with httpx.AsyncClient(timeout=10) as http:
            base = url.removesuffix("/mcp")
            prm = (await http.get(base + "/.well-known/oauth-protected-resource/mcp")).json()
        assert prm["resource"] == url
        assert prm["authorization_servers"] == [h.info.url]

        tokens: dict[str, dict[str, Any]] = {}
        for user in ("alice", "bob"):
            browser = Browser(h.info.url)
            flow = OAuthFlow(h.info.url, browser)
            try:
                client = await flow.register(REDIRECT)
                assert (await browser.login(user, f"{user}-pw")).status_code == 303
                tokens[user] = await flow.tokens_for(client["client_id"], REDIRECT, resource=url)
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
        other = await BearerClient(target, tokens["elsewhere"]["access_token"]).post(INITIALIZE)
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


async def _sdk_with_oauth(
    url: str, control_url: str, user: str, agent: str, path: str
) -> dict[str, Any]:
    """The official SDK host: OAuthClientProvider discovers, registers, sends the user
    through login + consent (a browser stand-in), exchanges the code, calls a tool."""
    import httpx2
    from mcp import Client
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.auth import (
        AuthorizationCodeResult,
        OAuthClientInformationFull,
        OAuthClientMetadata,
        OAuthToken,
    )

    class Memory:
        def __init__(self) -> None:
            self.tokens: OAuthToken | None = None
            self.client: OAuthClientInformationFull | None = None

        async def get_tokens(self) -> OAuthToken | None:
            return self.tokens

        async def set_tokens(self, tokens: OAuthToken) -> None:
            self.tokens = tokens

        async def get_client_info(self) -> OAuthClientInformationFull | None:
            return self.client

        async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
            self.client = client_info

    landed: list[str] = []
    seen: dict[str, str] = {}

    async def redirect_handler(authorization_url: str) -> None:
        seen["authorization_url"] = authorization_url
        browser = httpx.AsyncClient(base_url=control_url, follow_redirects=False, timeout=WAIT)
        try:
            login_page = await browser.get(authorization_url)
            assert login_page.status_code == 303  # not logged in yet: to /login
            page = await browser.get(login_page.headers["location"])
            fields = hidden_fields(page.text)
            logged_in = await browser.post(
                "/login",
                data={**fields, "username": user, "password": f"{user}-pw"},
                headers={"Origin": control_url},
            )
            assert logged_in.status_code == 303, logged_in.text
            consent = await browser.get(logged_in.headers["location"])
            assert consent.status_code == 200, consent.text
            done = await browser.post(
                "/oauth2/authorize",
                data={**hidden_fields(consent.text), "decision": "approve"},
                headers={"Origin": control_url},
            )
            assert done.status_code == 303, done.text
            landed.append(done.headers["location"])
        finally:
            await browser.aclose()

    async def callback_handler() -> AuthorizationCodeResult:
        params = query_of(landed[-1])
        return AuthorizationCodeResult(
            code=params["code"], state=params.get("state"), iss=params.get("iss")
        )

    storage = Memory()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="mcp sdk host",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            scope="mcp:tools",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=WAIT) as http,
        Client(streamable_http_client(url, http_client=http), mode="legacy") as client,
    ):
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        result = await client.call_tool("example_stat", {"agent": agent, "path": path})
    assert storage.tokens is not None
    return {
        "tools": tools,
        "is_error": result.is_error,
        "structured": result.structured_content,
        "text": " ".join(getattr(c, "text", "") for c in result.content),
        "authorization_url": seen["authorization_url"],
        "scope": storage.tokens.scope,
    }


async def test_mcp_sdk_oauth_client_provider_through_the_daemon(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    async with shared_daemon(nursery, tmp_path, short_dir) as world:
        own = str(world.workspaces["web1"] / "alice.txt")
        with trio.fail_after(WAIT * 3):
            result = await in_asyncio_thread(
                lambda: _sdk_with_oauth(world.url, world.h.info.url, "alice", "web1", own)
            )
        assert "example_stat" in result["tools"]
        assert not result["is_error"], result
        assert result["structured"]["size"] == len("alice's file\n")
        asked = query_of(result["authorization_url"])
        assert asked["code_challenge_method"] == "S256"
        assert asked["resource"] == world.url
        # The same kind of host logged in as alice cannot read bob's agent.
        theirs = str(world.workspaces["build"] / "bob.txt")
        with trio.fail_after(WAIT * 3):
            attack = await in_asyncio_thread(
                lambda: _sdk_with_oauth(world.url, world.h.info.url, "alice", "bob/build", theirs)
            )
        assert attack["is_error"], attack
        assert "bob's file" not in attack["text"]


DANGER_PLUGIN = """
from tunneld.hookspecs import hookimpl
from tunneld.mcp import DESTRUCTIVE, Tool

async def _wipe(ctx, args):
    return "wiped"

@hookimpl
def register_tools(register, config):
    register(Tool(name="danger_wipe", description="destroys things", handler=_wipe,
                  annotations=DESTRUCTIVE, input_schema={"type": "object"}))
"""


async def test_attack_insufficient_scope_for_a_destructive_tool(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    make_plugin(site, "danger", DANGER_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    async with shared_daemon(nursery, tmp_path, short_dir, ("example", "danger")) as world:
        url = world.url
        target = url.removeprefix("http://").removesuffix("/mcp")
        browser = Browser(world.h.info.url)
        flow = OAuthFlow(world.h.info.url, browser)
        try:
            client = await flow.register(REDIRECT)
            assert (await browser.login("alice", "alice-pw")).status_code == 303
            read_only = await flow.tokens_for(client["client_id"], REDIRECT, resource=url)
            writer = await flow.tokens_for(
                client["client_id"], REDIRECT, scope="mcp:tools mcp:tools:write", resource=url
            )
        finally:
            await flow.aclose()
            await browser.aclose()
        call = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "danger_wipe", "arguments": {}},
        }
        reader = BearerClient(target, read_only["access_token"])
        await reader.initialize()
        listed = await reader.request("tools/list")
        assert "danger_wipe" in {t["name"] for t in listed["result"]["tools"]}
        refused = await reader.post(call)
        assert refused.status == 403
        challenge = refused.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="mcp:tools:write"' in challenge
        allowed = BearerClient(target, writer["access_token"])
        await allowed.initialize()
        result = await allowed.call_tool("danger_wipe", {})
        assert not result.get("isError"), result
