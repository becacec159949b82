"""Browser login sessions: the login page, the session cookie, CSRF tokens, logout.

Shared by the authorization server's consent flow and the control-plane dashboard::

    sessions = BrowserSessions(store, base_url=lambda: server.info.url)
    sessions.mount(router)                      # GET/POST /login, POST /logout
    user = await sessions.current_user(request)  # SessionUser or None
    if user is None:
        return sessions.login_redirect(request)  # 303 to /login?next=<this page>
    form = request_form(request)
    if not sessions.check_csrf(request, user, form.get("csrf_token")):
        return csrf_failure_page()

The cookie holds a random 256-bit session id; the database keeps only its hash, the
user and the expiry. It is ``HttpOnly``, ``SameSite=Lax`` and, when the request came
over TLS or the server's public URL is https, ``Secure`` with the ``__Host-`` prefix.
A form's CSRF token is derived from the session id (keyed BLAKE2b), so it is bound to
this session and needs no storage; state-changing POSTs also have their ``Origin``
checked when the browser sends one. The login form is protected against login CSRF
by a double-submit cookie (``SameSite=Strict``).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from tunneld.control._store import SqliteDatabase, SqliteStore
from tunneld.control._tokens import hash_password, verify_password
from tunneld.http import Request, Response, Router
from tunneld.log import get_logger
from tunneld.oauth._forms import FormError, parse_cookies, request_form, request_query
from tunneld.oauth._limits import SourceLimiter, source_of
from tunneld.oauth._pages import escape, hidden_fields, html_page
from tunneld.oauth._secret import derive, new_secret, secret_hash, secrets_equal

__all__ = ["CSRF_FIELD", "BrowserSessions", "SessionUser", "safe_next"]

log = get_logger(__name__)

CSRF_FIELD: Final = "csrf_token"
_SESSION_COOKIE: Final = "tunneld_session"
_LOGIN_COOKIE: Final = "tunneld_login"
_MAX_NEXT: Final = 8192


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The user a browser is logged in as. ``csrf_token`` goes in every form it posts."""

    user_id: int
    name: str
    csrf_token: str
    expires_at: float
    session_hash: bytes


def safe_next(target: str | None) -> str:
    """``target`` if it is a local path on this server, else ``"/"``.

    Only ``/…`` paths pass: never ``//host`` (scheme-relative), a backslash (browsers
    treat ``/\\host`` like ``//host``), a scheme or a control character, so the login
    page cannot be turned into an open redirector (RFC 9700 section 4.11).
    """
    if not target or len(target) > _MAX_NEXT or not target.startswith("/"):
        return "/"
    if target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return "/"
    return target


def _create(db: SqliteDatabase, id_hash: bytes, user_id: int, now: float, expires: float) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO browser_sessions (id_hash, user_id, created_at, expires_at)"
            " VALUES (?, ?, ?, ?)",
            (id_hash, user_id, now, expires),
        )


def _lookup(db: SqliteDatabase, id_hash: bytes, now: float) -> tuple[int, str, float] | None:
    with db.reading() as conn:
        row = conn.execute(
            "SELECT s.user_id, u.name, s.expires_at FROM browser_sessions s"
            " JOIN users u ON u.id = s.user_id"
            " WHERE s.id_hash = ? AND s.revoked_at IS NULL AND s.expires_at > ?",
            (id_hash, now),
        ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), float(row[2]))


def _revoke(db: SqliteDatabase, id_hash: bytes, now: float) -> None:
    with db.transaction() as conn:
        conn.execute(
            "UPDATE browser_sessions SET revoked_at = ? WHERE id_hash = ? AND revoked_at IS NULL",
            (now, id_hash),
        )
        # Expired and revoked rows serve nobody: keep the table small.
        conn.execute(
            "DELETE FROM browser_sessions WHERE expires_at < ? OR revoked_at < ?",
            (now - 86400, now - 86400),
        )


def _user_for_login(db: SqliteDatabase, name: str) -> tuple[int, str | None] | None:
    with db.reading() as conn:
        row = conn.execute("SELECT id, password_hash FROM users WHERE name = ?", (name,)).fetchone()
    return None if row is None else (int(row[0]), None if row[1] is None else str(row[1]))


class BrowserSessions:
    """Login, logout and the current user of browser requests.

    ``base_url()`` is this server's public base URL (``https://control.example``): it
    decides the expected ``Origin`` of form posts and, when https, ``Secure`` cookies.
    ``ttl`` is the session lifetime in seconds. Logins are limited per source address
    (``login_burst`` attempts, then ``login_rate`` per second).
    """

    def __init__(
        self,
        store: SqliteStore,
        *,
        base_url: Callable[[], str],
        ttl: float = 12 * 3600.0,
        login_rate: float = 0.2,
        login_burst: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._base_url = base_url
        self.ttl = ttl
        self._wall = wall_clock
        self._limiter = SourceLimiter(login_rate, login_burst)
        self._dummy_hash: str | None = None

    # --- public API -------------------------------------------------------------------

    def mount(self, router: Router) -> None:
        """Route ``GET /login``, ``POST /login`` and ``POST /logout`` on ``router``."""
        router.route("GET", "/login", self.login_page, max_body_bytes=0)
        router.route("POST", "/login", self.login_submit, max_body_bytes=16 * 1024)
        router.route("POST", "/logout", self.logout, max_body_bytes=16 * 1024)

    def secure(self, request: Request) -> bool:
        """Whether cookies for ``request`` are ``Secure`` (TLS here or an https base URL)."""
        return request.tls or self._base_url().startswith("https://")

    def cookie_name(self, request: Request, base: str = _SESSION_COOKIE) -> str:
        """The session cookie's name: ``__Host-`` prefixed when it is ``Secure``."""
        return f"__Host-{base}" if self.secure(request) else base

    async def current_user(self, request: Request) -> SessionUser | None:
        """The logged-in user of ``request`` (its session cookie), or None.

        None for no cookie, an unknown, revoked or expired session, or a malformed
        Cookie header. Raises StoreError only when the database fails.
        """
        session_id = self._cookie(request, _SESSION_COOKIE)
        if session_id is None or len(session_id) > 128:
            return None
        id_hash = secret_hash("session", session_id)
        found = await self.store.run(_lookup, self.store.db, id_hash, self._wall())
        if found is None:
            return None
        user_id, name, expires_at = found
        return SessionUser(user_id, name, derive(session_id, "csrf"), expires_at, id_hash)

    def check_csrf(self, request: Request, user: SessionUser, submitted: str | None) -> bool:
        """Whether a form post carries ``user``'s CSRF token and (if the browser sent
        one) this server's ``Origin``. Constant-time on the token."""
        if not self.origin_ok(request):
            return False
        return submitted is not None and secrets_equal(submitted, user.csrf_token)

    def origin_ok(self, request: Request) -> bool:
        """False when the request carries an ``Origin`` other than this server's."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return origin in self._own_origins(request)

    def login_redirect(self, request: Request) -> Response:
        """303 to the login page, coming back to ``request``'s target afterwards."""
        query = urllib.parse.urlencode({"next": safe_next(request.target)})
        return Response(303, [("Location", f"/login?{query}"), ("Cache-Control", "no-store")])

    # --- handlers ---------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        """``GET /login``: the form (or straight on to ``next`` when logged in already)."""
        try:
            query = request_query(request)
        except FormError as exc:
            return html_page("Bad request", f"<p class=error>{escape(exc)}</p>", status=400)
        target = safe_next(query.get("next"))
        if await self.current_user(request) is not None:
            return Response(303, [("Location", target), ("Cache-Control", "no-store")])
        return self._form(request, target, error=None, status=200)

    async def login_submit(self, request: Request) -> Response:
        """``POST /login``: check the login CSRF cookie, rate limit, verify the password."""
        try:
            form = request_form(request)
        except FormError as exc:
            return html_page("Bad request", f"<p class=error>{escape(exc)}</p>", status=400)
        target = safe_next(form.get("next"))
        expected = self._cookie(request, _LOGIN_COOKIE)
        submitted = form.get(CSRF_FIELD)
        if (
            expected is None
            or submitted is None
            or not secrets_equal(submitted, expected)
            or not self.origin_ok(request)
        ):
            log.info("session.login_csrf_refused", source=source_of(request))
            return self._form(
                request, target, error="The login form expired; please try again.", status=403
            )
        if not self._limiter.allow(source_of(request), trio.current_time()):
            log.info("session.login_rate_limited", source=source_of(request))
            return html_page(
                "Too many attempts",
                "<p class=error>Too many login attempts from your address; wait a minute.</p>",
                status=429,
                headers=[("Retry-After", str(self._limiter.retry_after()))],
            )
        name = form.get("username", "")
        password = form.get("password", "")
        user_id = await self._verify(name, password)
        if user_id is None:
            log.info("session.login_failed", user=name[:64], source=source_of(request))
            return self._form(request, target, error="Wrong user name or password.", status=401)
        old = self._cookie(request, _SESSION_COOKIE)
        now = self._wall()
        if old is not None and len(old) <= 128:
            # A fresh id at every login: a session id planted before login is useless.
            await self.store.run(_revoke, self.store.db, secret_hash("session", old), now)
        session_id = new_secret("session")
        await self.store.run(
            _create, self.store.db, secret_hash("session", session_id), user_id, now, now + self.ttl
        )
        log.info("session.login", user=name)
        return Response(
            303,
            [
                ("Location", target),
                ("Cache-Control", "no-store"),
                ("Set-Cookie", self._set_cookie(request, _SESSION_COOKIE, session_id, self.ttl)),
                ("Set-Cookie", self._set_cookie(request, _LOGIN_COOKIE, "", 0, strict=True)),
            ],
        )

    async def logout(self, request: Request) -> Response:
        """``POST /logout`` (with the CSRF token): end the session, clear the cookie."""
        user = await self.current_user(request)
        if user is not None:
            try:
                form = request_form(request)
            except FormError:
                form = {}
            if not self.check_csrf(request, user, form.get(CSRF_FIELD)):
                return html_page(
                    "Forbidden", "<p class=error>Missing or wrong CSRF token.</p>", status=403
                )
            await self.store.run(_revoke, self.store.db, user.session_hash, self._wall())
            log.info("session.logout", user=user.name)
        return Response(
            303,
            [
                ("Location", "/login"),
                ("Cache-Control", "no-store"),
                ("Set-Cookie", self._set_cookie(request, _SESSION_COOKIE, "", 0)),
            ],
        )

    # --- internals --------------------------------------------------------------------

    def _own_origins(self, request: Request) -> set[str]:
        origins = set()
        parts = urllib.parse.urlsplit(self._base_url())
        if parts.scheme and parts.netloc:
            origins.add(f"{parts.scheme}://{parts.netloc}".lower())
        host = request.headers.get("host")
        if host:
            origins.add(f"{'https' if request.tls else 'http'}://{host}".lower())
        return origins

    def _cookie(self, request: Request, base: str) -> str | None:
        try:
            cookies = parse_cookies(request.headers.get("cookie"))
        except FormError:
            return None
        value = cookies.get(self.cookie_name(request, base))
        return value or None

    def _set_cookie(
        self, request: Request, base: str, value: str, max_age: float, *, strict: bool = False
    ) -> str:
        parts = [
            f"{self.cookie_name(request, base)}={value}",
            "Path=/",
            f"Max-Age={int(max_age)}",
            "HttpOnly",
            "SameSite=Strict" if strict else "SameSite=Lax",
        ]
        if self.secure(request):
            parts.append("Secure")
        return "; ".join(parts)

    def _form(self, request: Request, target: str, *, error: str | None, status: int) -> Response:
        # A new double-submit value each time the form is shown (login CSRF defence).
        login_token = new_secret("login")
        message = f"<p class=error>{escape(error)}</p>" if error else ""
        body = (
            f'{message}<form method="post" action="/login">'
            + hidden_fields([(CSRF_FIELD, login_token), ("next", target)])
            + '<label for="username">User name</label>'
            '<input type="text" id="username" name="username" autocomplete="username" required>'
            '<label for="password">Password</label>'
            '<input type="password" id="password" name="password"'
            ' autocomplete="current-password" required>'
            '<p><button type="submit">Log in</button></p></form>'
        )
        cookie = self._set_cookie(request, _LOGIN_COOKIE, login_token, 3600, strict=True)
        return html_page("Log in", body, status=status, headers=[("Set-Cookie", cookie)])

    async def _verify(self, name: str, password: str) -> int | None:
        found = await self.store.run(_user_for_login, self.store.db, name)
        stored = None if found is None else found[1]
        if stored is None:
            # Same argon2id work as a real check, so timing does not tell which users exist.
            if self._dummy_hash is None:
                self._dummy_hash = await trio.to_thread.run_sync(hash_password, new_secret("login"))
            await trio.to_thread.run_sync(verify_password, password, self._dummy_hash)
            return None
        ok = await trio.to_thread.run_sync(verify_password, password, stored)
        return found[0] if ok and found is not None else None
