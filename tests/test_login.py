"""`tunneld login` and the OAuth refresh token provider, end to end.

A real control plane on loopback; `tunneld login` as a real subprocess; the "browser" is
a real HTTP client that logs in with the user's password, posts the consent form with
its CSRF token and follows the redirect to the login's loopback port; a real
`tunneld run` joins the overlay with [daemon] login_file.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._control_support import Harness, running_server
from tests._daemon_support import RUN, daemon_config
from tests._oauth_support import Browser, add_password_user, hidden_fields
from tunneld.credentials import (
    LoginError,
    LoginRecord,
    OAuthRefreshTokenProvider,
    TokenUnavailableError,
    login,
    read_login_file,
    token_provider_for,
    write_login_file,
)
from tunneld.credentials._oauth import _parse
from tunneld.oauth import CSRF_FIELD

WAIT = 60.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-login-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _wait(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not predicate():  # noqa: ASYNC110 (polls state the server owns)
            await trio.sleep(0.05)


async def _read_authorize_url(stream: trio.abc.ReceiveStream) -> str:
    """The URL `tunneld login` prints on stderr (one line of its own)."""
    buffer = b""
    with trio.fail_after(WAIT):
        while True:
            lines = buffer.decode(errors="replace").splitlines(keepends=True)
            for line in lines:
                if "/oauth2/authorize?" in line and line.endswith("\n"):
                    return line.strip()
            chunk = await stream.receive_some(4096)
            assert chunk, f"tunneld login exited early: {buffer!r}"
            buffer += chunk


async def _browser_logs_in(base_url: str, authorize_url: str, user: str, password: str) -> str:
    """What the user does in the browser; returns the loopback page's text."""
    browser = Browser(base_url)
    try:
        first = await browser.get(authorize_url)
        assert first.status_code == 303, first.text  # not logged in yet: to /login
        assert first.headers["location"].startswith("/login"), first.headers
        done = await browser.login(user, password)
        assert done.status_code == 303, done.text
        consent = await browser.get(authorize_url)
        assert consent.status_code == 200, consent.text
        assert "node" in consent.text
        fields = hidden_fields(consent.text)
        assert fields.get(CSRF_FIELD), fields
        approved = await browser.post_form("/oauth2/authorize", {**fields, "decision": "approve"})
        assert approved.status_code == 303, approved.text
        redirect = approved.headers["location"]
        assert redirect.startswith("http://127.0.0.1:"), redirect
        async with httpx.AsyncClient(timeout=WAIT) as loopback:
            page = await loopback.get(redirect)
        assert page.status_code == 200, page.text
        return page.text
    finally:
        await browser.aclose()


async def _tunneld_login(h: Harness, out: Path, env: dict[str, str]) -> None:
    """Run `tunneld login` as a subprocess and drive its browser half."""
    command = [
        sys.executable,
        "-m",
        "tunneld",
        "login",
        "--control",
        h.info.url,
        "--out",
        str(out),
        "--no-browser",
        "--timeout",
        str(WAIT),
    ]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                command,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                check=False,
            )
        )
        assert process.stderr is not None
        assert process.stdout is not None
        url = await _read_authorize_url(process.stderr)
        assert url.startswith(f"{h.info.url}/oauth2/authorize?"), url
        assert "scope=node" in url
        assert "code_challenge_method=S256" in url
        text = await _browser_logs_in(h.info.url, url, "alice", "correct horse")
        assert "Logged in" in text
        with trio.fail_after(WAIT):
            await process.wait()
        out_text = (await process.stdout.receive_some(65536)).decode()
        assert process.returncode == 0, out_text
        assert "Logged in" in out_text


async def test_login_then_daemon_joins_then_refresh_and_revocation(
    short_dir: Path, tmp_path: Path
) -> None:
    async with (
        trio.open_nursery() as nursery,
        running_server(nursery, tmp_path, relay=True) as h,
    ):
        await add_password_user(h.store, "alice", "correct horse")
        out = short_dir / "cfg" / "login.json"
        env = {**os.environ, "BROWSER": "true"}
        await _tunneld_login(h, out, env)

        # The file: 0600, for this control plane, with both tokens.
        mode = stat.S_IMODE(os.stat(out).st_mode)
        assert mode == 0o600, oct(mode)
        record = read_login_file(out)
        assert record.control_url == h.info.url
        assert record.refresh_token.startswith("tndrt_")
        assert record.access_token.startswith("tndat_")
        assert record.expires_at > time.time() + 60

        # The coordinator accepts the access token as alice's client node, and its
        # own /api/v1/nodes too; a plain MCP token (no `node` scope) is refused.
        provider = token_provider_for(section="daemon", login_file=str(out))
        assert isinstance(provider, OAuthRefreshTokenProvider)
        access = await provider()
        assert access == record.access_token
        status, _, _ = await h.get("/api/v1/nodes", access)
        assert status == 200

        # A real daemon joins the overlay with the login file.
        config = daemon_config(
            short_dir, h.info.url, socket=short_dir / "api.sock", login_file=out, mcp_listen=""
        )
        daemon_env = {k: v for k, v in os.environ.items() if k != "TUNNELD_TOKEN"}
        daemon = await nursery.start(
            functools.partial(
                trio.run_process,
                [*RUN, str(config)],
                stdin=subprocess.DEVNULL,
                env=daemon_env,
                check=False,
            )
        )
        try:
            coordinator = h.server.coordinator

            def alice_online() -> bool:
                return any(
                    s.principal.user == "alice" and s.principal.agent is None
                    for s in coordinator._sessions
                )

            await _wait(alice_online)
            # The session is listed before its update_self is stored: wait for the node.
            with trio.fail_after(WAIT):
                while not (nodes := await h.store.list_nodes()):  # noqa: ASYNC110 (the store)
                    await trio.sleep(0.05)
            assert [(n.owner, n.kind, n.name) for n in nodes] == [("alice", "client", "laptop")]

            # Refresh: rotates, persists (0600), the old refresh token is dead.
            forced = OAuthRefreshTokenProvider(out, margin=10**9)
            new_access = await forced()
            rotated = read_login_file(out)
            assert new_access == rotated.access_token != record.access_token
            assert rotated.refresh_token != record.refresh_token
            assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
            status, _, _ = await h.get("/api/v1/nodes", new_access)
            assert status == 200
            # The daemon's session survives the rotation (same grant).
            await trio.sleep(0.3)
            assert alice_online()

            # `tunneld logout` revokes the login (RFC 7009) and deletes the file: the
            # daemon's session closes (revocation poll) and the provider says what to do.
            result = await trio.run_process(
                [sys.executable, "-m", "tunneld", "logout", "--out", str(out)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert f"Logged out of {h.info.url}" in result.stdout.decode()
            assert not out.exists()
            write_login_file(out, rotated)  # the stale copy a provider may still hold
            await _wait(lambda: not alice_online())
            with pytest.raises(TokenUnavailableError, match="run `tunneld login"):
                await forced()
            status, _, _ = await h.get("/api/v1/nodes", new_access)
            assert status == 401
            # The daemon keeps running (it retries with backoff), but cannot rejoin.
            await trio.sleep(0.5)
            assert not alice_online()
            assert daemon.returncode is None
        finally:
            daemon.terminate()
            with trio.move_on_after(WAIT):
                await daemon.wait()
        h.server.shutdown()


async def test_token_for_another_audience_or_scope_is_refused(tmp_path: Path) -> None:
    from tests._oauth_support import OAuthFlow

    async with trio.open_nursery() as nursery, running_server(nursery, tmp_path) as h:
        await add_password_user(h.store, "alice", "correct horse")
        browser = Browser(h.info.url)
        flow = OAuthFlow(h.info.url, browser)
        try:
            done = await browser.login("alice", "correct horse")
            assert done.status_code == 303
            redirect = "http://127.0.0.1:51999/cb"
            client = await flow.register(redirect)
            # Right scope, wrong audience (an MCP endpoint).
            other = await flow.tokens_for(
                client["client_id"], redirect, scope="node", resource="http://127.0.0.1:1/mcp"
            )
            # Right audience, no `node` scope.
            mcp = await flow.tokens_for(
                client["client_id"], redirect, scope="mcp:tools", resource=h.info.url
            )
            good = await flow.tokens_for(
                client["client_id"], redirect, scope="node", resource=h.info.url
            )
        finally:
            await flow.aclose()
            await browser.aclose()
        for token in (other["access_token"], mcp["access_token"], good["refresh_token"]):
            status, _, _ = await h.get("/api/v1/nodes", token)
            assert status == 401
        status, _, body = await h.get("/api/v1/nodes", good["access_token"])
        assert status == 200, body
        h.server.shutdown()


async def test_login_file_problems_are_clear(short_dir: Path) -> None:
    path = short_dir / "login.json"
    with pytest.raises(TokenUnavailableError, match="run `tunneld login`"):
        OAuthRefreshTokenProvider(path).check()
    path.write_text(json.dumps({"control_url": "http://127.0.0.1:1"}))
    path.chmod(0o644)
    with pytest.raises(TokenUnavailableError, match="chmod 600"):
        OAuthRefreshTokenProvider(path).check()
    path.chmod(0o600)
    with pytest.raises(TokenUnavailableError, match="issuer is missing"):
        OAuthRefreshTokenProvider(path).check()


async def _login_in_process(
    h: Harness, nursery: trio.Nursery
) -> tuple[trio.MemoryReceiveChannel[str], dict[str, object], list[str]]:
    urls_in, urls_out = trio.open_memory_channel[str](1)
    outcome: dict[str, object] = {}
    opened: list[str] = []  # the URLs the "browser launcher" was given

    async def run() -> None:
        try:
            outcome["record"] = await login(
                h.info.url,
                announce=urls_in.send_nowait,
                open_browser=opened.append,
                browser_timeout=WAIT,
            )
        except LoginError as exc:
            outcome["error"] = str(exc)

    nursery.start_soon(run)
    return urls_out, outcome, opened


async def _approved_redirect(h: Harness, url: str) -> str:
    browser = Browser(h.info.url)
    try:
        assert (await browser.login("alice", "correct horse")).status_code == 303
        consent = await browser.get(url)
        assert consent.status_code == 200, consent.text
        approved = await browser.post_form(
            "/oauth2/authorize", {**hidden_fields(consent.text), "decision": "approve"}
        )
        assert approved.status_code == 303, approved.text
        return str(approved.headers["location"])
    finally:
        await browser.aclose()


def _with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(changes)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def test_login_checks_state_and_iss(tmp_path: Path) -> None:
    async with (
        trio.open_nursery() as nursery,
        running_server(nursery, tmp_path) as h,
        httpx.AsyncClient(timeout=WAIT) as loopback,
    ):
        await add_password_user(h.store, "alice", "correct horse")
        urls, outcome, opened = await _login_in_process(h, nursery)
        with trio.fail_after(WAIT):
            url = await urls.receive()
        redirect = await _approved_redirect(h, url)
        assert opened == [url]
        # A redirect with another state is not ours: refused, the login keeps waiting.
        stray = await loopback.get(_with_query(redirect, state="not-ours"))
        assert stray.status_code == 400
        assert outcome == {}
        # Our state but another issuer (a mix-up attack, RFC 9207): the login fails.
        mixed = await loopback.get(_with_query(redirect, iss="https://evil.example"))
        assert mixed.status_code == 400
        with trio.fail_after(WAIT):
            while not outcome:  # noqa: ASYNC110 (the login task sets it)
                await trio.sleep(0.02)
        assert "iss mismatch" in str(outcome.get("error")), outcome

        # The user says no: the error reaches the terminal, nothing is stored.
        urls, outcome, _ = await _login_in_process(h, nursery)
        with trio.fail_after(WAIT):
            url = await urls.receive()
        browser = Browser(h.info.url)
        try:
            assert (await browser.login("alice", "correct horse")).status_code == 303
            consent = await browser.get(url)
            denied = await browser.post_form(
                "/oauth2/authorize", {**hidden_fields(consent.text), "decision": "deny"}
            )
        finally:
            await browser.aclose()
        assert denied.status_code == 303, denied.text
        assert (await loopback.get(denied.headers["location"])).status_code == 400
        with trio.fail_after(WAIT):
            while not outcome:  # noqa: ASYNC110 (the login task sets it)
                await trio.sleep(0.02)
        assert "access_denied" in str(outcome.get("error")), outcome
        h.server.shutdown()


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "control_url",
                        "issuer",
                        "token_endpoint",
                        "client_id",
                        "refresh_token",
                        "access_token",
                        "expires_at",
                        "scope",
                        "x",
                    ]
                ),
                inner,
                max_size=9,
            )
        ),
        max_leaves=20,
    )
)
def test_login_file_parser_never_crashes(doc: object) -> None:
    message: str | None = None
    try:
        record = _parse(json.dumps(doc), "login file F")
    except TokenUnavailableError as exc:
        message = str(exc)
    if message is not None:
        assert "login file F" in message
    else:
        assert isinstance(record.expires_at, float)
        assert record.access_token
        assert record.refresh_token


def test_logout_keeps_the_file_when_the_control_plane_is_away(short_dir: Path) -> None:
    # A login whose control plane does not answer: the grant may still be live, so the
    # file stays unless the user says --forget.
    out = short_dir / "login.json"
    record = LoginRecord(
        control_url="http://127.0.0.1:9",
        issuer="http://127.0.0.1:9",
        token_endpoint="http://127.0.0.1:9/oauth2/token",
        client_id="c",
        refresh_token="tndrt_x",
        access_token="tndat_x",
        expires_at=time.time() + 3600,
    )
    write_login_file(out, record)
    command = [sys.executable, "-m", "tunneld", "logout", "--out", str(out)]
    kept = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, check=False)
    assert kept.returncode == 1
    assert "logout failed: cannot reach the control plane at http://127.0.0.1:9" in kept.stderr
    assert f"the login file {out} is kept" in kept.stderr
    assert "tndrt_x" not in kept.stderr
    assert out.exists()
    forced = subprocess.run(
        [*command, "--forget"], capture_output=True, text=True, timeout=WAIT, check=False
    )
    assert forced.returncode == 0, forced.stderr
    assert "deleting" in forced.stderr
    assert not out.exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=WAIT, check=False)
    assert again.returncode == 1
    assert "not logged in: cannot read login file" in again.stderr
