"""Browser login sessions (tunneld.oauth.BrowserSessions) over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from _oauth_support import Browser, add_password_user, hidden_fields

from tunneld.control import SqliteStore
from tunneld.http import HttpServer, Request, Response, Router
from tunneld.oauth import CSRF_FIELD, BrowserSessions, html_page, request_form, safe_next


class App:
    def __init__(self, sessions: BrowserSessions) -> None:
        self.sessions = sessions

    async def whoami(self, request: Request) -> Response:
        user = await self.sessions.current_user(request)
        if user is None:
            return self.sessions.login_redirect(request)
        return html_page(
            "Hello",
            f"<p>user={user.name}</p>"
            f'<input type="hidden" name="{CSRF_FIELD}" value="{user.csrf_token}">',
        )

    async def act(self, request: Request) -> Response:
        user = await self.sessions.current_user(request)
        if user is None:
            return Response.text("login first", status=401)
        if not self.sessions.check_csrf(request, user, request_form(request).get(CSRF_FIELD)):
            return Response.text("csrf", status=403)
        return Response.text(f"done for {user.name}")


@pytest.fixture
async def app_url(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[str, App]]:
    store = await SqliteStore.open(tmp_path / "control.db")
    await add_password_user(store, "alice", "correct horse", cheap=False)
    await store.add_user("nopass", None, 0.0)
    url = ""
    sessions = BrowserSessions(store, base_url=lambda: url, login_burst=50)
    app = App(sessions)
    router = Router()
    sessions.mount(router)
    router.route("GET", "/whoami", app.whoami)
    router.route("POST", "/act", app.act)
    server = HttpServer(router)
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    url = f"http://{host}:{port}"
    yield url, app
    server.shutdown(0)
    await store.aclose()


async def test_login_then_current_user_and_csrf_bound_post(app_url: tuple[str, App]) -> None:
    url, _ = app_url
    browser = Browser(url)
    try:
        first = await browser.get("/whoami")
        assert first.status_code == 303
        assert first.headers["location"] == "/login?next=%2Fwhoami"
        done = await browser.login("alice", "correct horse", "/whoami")
        assert done.status_code == 303
        assert done.headers["location"] == "/whoami"
        cookie = next(c for c in done.headers.get_list("set-cookie") if "tunneld_session=" in c)
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback
        page = await browser.get("/whoami")
        assert page.status_code == 200
        assert "user=alice" in page.text
        token = hidden_fields(page.text)[CSRF_FIELD]
        ok = await browser.post_form("/act", {CSRF_FIELD: token})
        assert ok.status_code == 200
        assert ok.text == "done for alice"
        # Without the token, with a wrong one, or from another origin: refused.
        assert (await browser.post_form("/act", {})).status_code == 403
        tampered = token[:-1] + ("B" if token.endswith("A") else "A")
        assert (await browser.post_form("/act", {CSRF_FIELD: tampered})).status_code == 403
        evil = await browser.post_form("/act", {CSRF_FIELD: token}, origin="https://evil.example")
        assert evil.status_code == 403
    finally:
        await browser.aclose()


async def test_csrf_token_of_another_session_is_refused(app_url: tuple[str, App]) -> None:
    url, _ = app_url
    one, two = Browser(url), Browser(url)
    try:
        await one.login("alice", "correct horse")
        await two.login("alice", "correct horse")
        token_one = hidden_fields((await one.get("/whoami")).text)[CSRF_FIELD]
        token_two = hidden_fields((await two.get("/whoami")).text)[CSRF_FIELD]
        assert token_one != token_two
        assert (await two.post_form("/act", {CSRF_FIELD: token_one})).status_code == 403
        assert (await two.post_form("/act", {CSRF_FIELD: token_two})).status_code == 200
    finally:
        await one.aclose()
        await two.aclose()


async def test_wrong_password_unknown_user_and_passwordless_user_fail(
    app_url: tuple[str, App],
) -> None:
    url, _ = app_url
    browser = Browser(url)
    try:
        for user, password in [("alice", "wrong"), ("mallory", "x"), ("nopass", "")]:
            answer = await browser.login(user, password)
            assert answer.status_code == 401, (user, answer.status_code)
            assert "Wrong user name or password" in answer.text
            assert "tunneld_session" not in answer.headers.get("set-cookie", "")
        assert (await browser.get("/whoami")).status_code == 303
    finally:
        await browser.aclose()


async def test_login_post_without_login_cookie_is_login_csrf(app_url: tuple[str, App]) -> None:
    url, _ = app_url
    attacker_page = Browser(url)
    victim = Browser(url)
    try:
        fields = hidden_fields((await attacker_page.get("/login")).text)
        # The victim's browser has no login cookie: a cross-site auto-submitted login
        # form (to log the victim in as the attacker) fails.
        answer = await victim.post_form(
            "/login", {**fields, "username": "alice", "password": "correct horse"}, origin=None
        )
        assert answer.status_code == 403
        assert (await victim.get("/whoami")).status_code == 303
    finally:
        await attacker_page.aclose()
        await victim.aclose()


async def test_login_pages_refuse_framing(app_url: tuple[str, App]) -> None:
    url, _ = app_url
    browser = Browser(url)
    try:
        page = await browser.get("/login")
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
    finally:
        await browser.aclose()


async def test_logout_ends_the_session_and_needs_csrf(app_url: tuple[str, App]) -> None:
    url, _ = app_url
    browser = Browser(url)
    try:
        await browser.login("alice", "correct horse")
        token = hidden_fields((await browser.get("/whoami")).text)[CSRF_FIELD]
        assert (await browser.post_form("/logout", {})).status_code == 403
        assert (await browser.get("/whoami")).status_code == 200
        out = await browser.post_form("/logout", {CSRF_FIELD: token})
        assert out.status_code == 303
        assert (await browser.get("/whoami")).status_code == 303
    finally:
        await browser.aclose()


async def test_login_replaces_a_planted_session(app_url: tuple[str, App]) -> None:
    url, _ = app_url
    first, victim = Browser(url), Browser(url)
    try:
        await first.login("alice", "correct horse")
        planted = first.client.cookies["tunneld_session"]
        fields = hidden_fields((await victim.get("/login")).text)
        for cookie in first.client.cookies.jar:
            if cookie.name == "tunneld_session":
                victim.client.cookies.jar.set_cookie(cookie)
        answer = await victim.post_form(
            "/login", {**fields, "username": "alice", "password": "correct horse"}
        )
        assert answer.status_code == 303
        assert victim.client.cookies["tunneld_session"] != planted
        assert (await victim.get("/whoami")).status_code == 200
        # The planted id died with the login.
        assert (await first.get("/whoami")).status_code == 303
    finally:
        await first.aclose()
        await victim.aclose()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dash?x=1", "/dash?x=1"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/a\r\nLocation: x", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_safe_next_refuses_open_redirects(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


async def test_login_next_never_leaves_the_server(app_url: tuple[str, App]) -> None:
    url, _ = app_url
    browser = Browser(url)
    try:
        answer = await browser.login("alice", "correct horse", "//evil.example/x")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"
    finally:
        await browser.aclose()
