"""The dashboard over real HTTP (no browser): login redirect, CSP, the JSON state with
nodes, tunnels, relay statistics and task reports, and what each user may see."""

from __future__ import annotations

import http.cookiejar
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from _agent_support import poll_pause
from _control_support import WAIT, Harness, running_server, session

from tunneld.control._dashboard import CSP, node_path
from tunneld.control._tokens import hash_password
from tunneld.proto.coord import PeerUpdateKind


class Browser:
    """A cookie-keeping HTTP client (urllib), as a browser without JavaScript."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect
        )

    async def request(
        self, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.base + path, data=data)

        def fetch() -> tuple[int, dict[str, str], bytes]:
            try:
                with self.opener.open(request, timeout=WAIT) as response:
                    return response.status, dict(response.headers), response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, dict(exc.headers), exc.read()

        return await trio.to_thread.run_sync(fetch)

    async def login(self, user: str, password: str) -> None:
        status, _, body = await self.request("/login?next=%2F")
        assert status == 200
        csrf = re.search(rb'name="csrf_token" value="([^"]+)"', body)
        assert csrf is not None
        form = {"csrf_token": csrf.group(1).decode(), "next": "/"}
        status, headers, _ = await self.request(
            "/login", {**form, "username": user, "password": password}
        )
        assert status == 303, headers
        assert headers["Location"] == "/"

    async def state(self) -> dict[str, Any]:
        status, _, body = await self.request("/dashboard/state")
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)
        return data


@pytest.fixture
async def control(nursery: trio.Nursery, tmp_path: Path) -> Harness:  # type: ignore[misc]
    async with running_server(nursery, tmp_path, relay=True) as harness:
        for name in ("alice", "bob"):
            await harness.store.add_user(name, hash_password(f"{name} password"), time.time())
        yield harness


async def test_login_required_and_strict_headers(control: Harness) -> None:
    browser = Browser(control.info.url)
    status, headers, _ = await browser.request("/")
    assert status == 303
    assert headers["Location"] == "/login?next=%2F"
    status, _, body = await browser.request("/dashboard/state")
    assert status == 401
    assert json.loads(body)["error"]["code"] == "login_required"

    await browser.login("alice", "alice password")
    status, headers, body = await browser.request("/")
    assert status == 200
    assert headers["Content-Security-Policy"] == CSP
    assert "default-src 'self'" in CSP
    assert "frame-ancestors 'none'" in CSP
    assert "unsafe-inline" not in CSP
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Cache-Control"] == "no-store"
    page = body.decode()
    # No inline script or style anywhere: the CSP would block it.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/dashboard/app.js" defer>']
    assert "<style" not in page
    assert " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no onclick= and friends
    for path, media in (
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
        ("/favicon.ico", "image/svg+xml"),
    ):
        status, headers, body = await browser.request(path)
        assert status == 200
        assert headers["Content-Type"].startswith(media)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body


async def test_state_shows_nodes_tunnels_relay_and_tasks(control: Harness) -> None:
    browser = Browser(control.info.url)
    await browser.login("alice", "alice password")
    state = await browser.state()
    assert state["user"] == "alice"
    assert state["nodes"] == []
    assert state["tunnels"] == []
    assert state["relay"]["clients_current"] == 0
    assert state["stun"] == {"requests": 0, "responses": 0}

    client_token = await control.token("alice")
    agent_token = await control.token("alice", agent="web1")
    bob_agent = await control.token("bob", agent="box")
    async with (
        session(control.info, agent_token, "web1") as agent,
        session(control.info, client_token, "laptop") as client,
        session(control.info, bob_agent, "box") as bob,
    ):
        await agent.announce(("127.0.0.1:41000", "10.0.0.1:41000"))
        await client.announce(())
        await bob.announce()
        await client.send(client.client.add_tunnel("web1"))
        await client.expect_update(PeerUpdateKind.NODE)
        state = await browser.state()
        nodes = {n["name"]: n for n in state["nodes"]}
        assert set(nodes) == {"web1", "laptop"}  # bob's agent is not alice's to see
        assert nodes["web1"]["online"] is True
        assert nodes["web1"]["path"] == "direct (2 endpoints)"  # no DERP client here
        assert nodes["laptop"]["path"] == "coordinator only"
        assert nodes["web1"]["last_seen"] <= time.time() + 1
        assert state["tunnels"] == [
            {"src": "alice/laptop", "dst": "alice/web1", "src_online": True, "dst_online": True}
        ]
        assert state["summary"]["nodes_online"] == 3

        _, _, body = await browser.request("/")
        page = body.decode()
        assert 'data-node="alice/web1" data-online="true"' in page
        assert "alice/laptop" in page

    request = urllib.request.Request(
        control.info.url + "/api/v1/tasks",
        data=json.dumps({"state": "failure", "summary": "<script>x</script> & co"}).encode(),
        headers={"Authorization": f"Bearer {agent_token}", "Content-Type": "application/json"},
    )
    await trio.to_thread.run_sync(lambda: urllib.request.urlopen(request, timeout=WAIT).close())
    state = await browser.state()
    assert [(t["agent"], t["state"], t["summary"]) for t in state["tasks"]] == [
        ("web1", "failure", "<script>x</script> & co")
    ]
    # The agent went offline when its session closed (after the lost grace).
    with trio.fail_after(WAIT):
        while any(n["online"] for n in (await browser.state())["nodes"]):
            await poll_pause()
    _, _, body = await browser.request("/")
    page = body.decode()
    assert "&lt;script&gt;x&lt;/script&gt; &amp; co" in page
    assert "<script>x" not in page
    assert 'data-state="failure"' in page

    bob_browser = Browser(control.info.url)
    await bob_browser.login("bob", "bob password")
    bob_state = await bob_browser.state()
    assert bob_state["tasks"] == []
    assert [n["name"] for n in bob_state["nodes"]] == ["box"]


async def test_logout_ends_the_session(control: Harness) -> None:
    browser = Browser(control.info.url)
    await browser.login("alice", "alice password")
    _, _, body = await browser.request("/")
    csrf = re.search(rb'name="csrf_token" value="([^"]+)"', body)
    assert csrf is not None
    status, _, _ = await browser.request("/logout", {"csrf_token": csrf.group(1).decode()})
    assert status == 303
    status, _, _ = await browser.request("/dashboard/state")
    assert status == 401


def test_node_path() -> None:
    assert node_path(False, True, 3) == "offline"
    assert node_path(True, True, 0) == "relay"
    assert node_path(True, True, 1) == "relay + direct (1 endpoint)"
    assert node_path(True, False, 2) == "direct (2 endpoints)"
    assert node_path(True, False, 0) == "coordinator only"
