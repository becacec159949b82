"""The authorization server: its routes on the control plane's Router.

Routes (``issuer`` is the control plane's public base URL):

* ``GET /.well-known/oauth-authorization-server`` and
  ``GET /.well-known/openid-configuration``: RFC 8414 metadata.
* ``GET /oauth2/authorize``: validate, log in (``/login``), then the consent page.
* ``POST /oauth2/authorize``: the consent form (CSRF token bound to the session).
* ``POST /oauth2/token``, ``/oauth2/revoke``, ``/oauth2/introspect``, ``/oauth2/register``.
"""

from __future__ import annotations

import hmac
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping

import trio

from tunneld.control._store import SqliteStore
from tunneld.http import Request, Response, Router
from tunneld.log import get_logger
from tunneld.oauth._authorize import (
    AuthorizationRequest,
    AuthorizeError,
    response_uri,
    validate_authorization_request,
)
from tunneld.oauth._clients import (
    ClientCredentials,
    RegistrationError,
    client_credentials,
    parse_registration,
)
from tunneld.oauth._forms import FormError, request_form, request_query
from tunneld.oauth._grants import (
    NO_STORE,
    GrantContext,
    exchange_code,
    introspection_answer,
    new_family,
    oauth_error,
    refresh,
    revoke,
)
from tunneld.oauth._limits import SourceLimiter, source_of
from tunneld.oauth._metadata import authorization_server_metadata
from tunneld.oauth._pages import escape, hidden_fields, html_page
from tunneld.oauth._secret import new_secret, secret_hash
from tunneld.oauth._session import CSRF_FIELD, BrowserSessions, SessionUser
from tunneld.oauth._settings import SCOPE_TOOLS, SCOPE_TOOLS_WRITE, OAuthSettings
from tunneld.oauth._storage import Client, CodeRow, add_client, add_code, get_client

__all__ = ["AuthorizationServer"]

log = get_logger(__name__)

_SCOPE_TEXT = {
    SCOPE_TOOLS: "list tools and call read-only tools on the agents you may reach",
    SCOPE_TOOLS_WRITE: "call tools that change things (write files, run commands)",
}
_FORM_LIMIT = 64 * 1024


class AuthorizationServer:
    """OAuth 2.1 authorization server over the control plane's SQLite store.

    ``issuer()`` returns the issuer identifier (the public base URL, no trailing
    slash); it is read per request because the bound port is known only after start.
    Browser login comes from ``sessions``.
    """

    def __init__(
        self,
        store: SqliteStore,
        sessions: BrowserSessions,
        *,
        issuer: Callable[[], str],
        settings: OAuthSettings | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.issuer = issuer
        self.settings = settings or OAuthSettings()
        self._wall = wall_clock
        per_hour = self.settings.registrations_per_hour
        self._registrations = SourceLimiter(per_hour / 3600.0, max(per_hour, 1.0))

    @property
    def registration(self) -> bool:
        """Whether dynamic client registration (RFC 7591) is on."""
        return self.settings.registrations_per_hour > 0

    def mount(self, router: Router) -> None:
        """Add the authorization server's routes to ``router``."""
        router.route("GET", "/.well-known/oauth-authorization-server", self.metadata)
        router.route("GET", "/.well-known/openid-configuration", self.metadata)
        router.route("GET", "/oauth2/authorize", self.authorize, max_body_bytes=0)
        router.route("POST", "/oauth2/authorize", self.consent, max_body_bytes=_FORM_LIMIT)
        router.route("POST", "/oauth2/token", self.token, max_body_bytes=_FORM_LIMIT)
        router.route("POST", "/oauth2/revoke", self.revoke, max_body_bytes=_FORM_LIMIT)
        router.route("POST", "/oauth2/introspect", self.introspect, max_body_bytes=_FORM_LIMIT)
        if self.registration:
            router.route("POST", "/oauth2/register", self.register, max_body_bytes=_FORM_LIMIT)

    def _ctx(self) -> GrantContext:
        return GrantContext(self.store, self.settings, self.issuer(), self._wall())

    # --- discovery --------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        """RFC 8414 section 3: the metadata document."""
        doc = authorization_server_metadata(self.issuer(), registration=self.registration)
        return Response.json(doc, headers=[("Cache-Control", "max-age=300")])

    # --- authorization endpoint -------------------------------------------------------

    async def _validate(self, params: Mapping[str, str]) -> AuthorizationRequest:
        client_id = params.get("client_id")
        client = None
        if client_id:
            client = await self.store.run(get_client, self.store.db, client_id)
        return validate_authorization_request(params, client, self.settings)

    def _refusal(self, error: AuthorizeError) -> Response:
        if error.redirect_uri is None:
            # Never redirect: the redirect URI is not trusted (or the request asked
            # for an implicit-grant response).
            body = (
                f"<p class=error>{escape(error.description)}</p>"
                f"<p>Error code: <code>{escape(error.error)}</code>. The application that "
                "sent you here is misconfigured or is not what it claims to be; nothing "
                "was sent back to it.</p>"
            )
            return html_page("Authorization failed", body, status=400)
        params = {"error": error.error, "error_description": error.description}
        if error.state is not None:
            params["state"] = error.state
        params["iss"] = self.issuer()
        return self._redirect(response_uri(error.redirect_uri, params))

    @staticmethod
    def _redirect(location: str) -> Response:
        return Response(
            303, [("Location", location), *NO_STORE, ("Referrer-Policy", "no-referrer")]
        )

    async def authorize(self, request: Request) -> Response:
        """``GET /oauth2/authorize``: validate, send to login, or show the consent page."""
        try:
            params = request_query(request)
        except FormError as exc:
            return self._refusal(AuthorizeError("invalid_request", str(exc)))
        try:
            auth = await self._validate(params)
        except AuthorizeError as exc:
            log.info("oauth.authorize_refused", error=exc.error, client=params.get("client_id"))
            return self._refusal(exc)
        user = await self.sessions.current_user(request)
        if user is None:
            return self.sessions.login_redirect(request)
        return self._consent_page(auth, user)

    def _consent_page(self, auth: AuthorizationRequest, user: SessionUser) -> Response:
        client = auth.client
        target = urllib.parse.urlsplit(auth.redirect_uri)
        origin = (
            "registered by an administrator"
            if client.origin == "cli"
            else ("registered itself; tunneld has not verified who runs it")
        )
        scopes = "".join(
            f"<li><code>{escape(s)}</code>: {escape(_SCOPE_TEXT.get(s, s))}</li>"
            for s in auth.scope
        )
        resource = (
            f"<p>Tokens will only work at <code>{escape(auth.resource)}</code>.</p>"
            if auth.resource
            else ""
        )
        body = (
            f"<p>You are logged in as <b>{escape(user.name)}</b>.</p>"
            f"<p><b>{escape(client.name)}</b> (client <code>{escape(client.id)}</code>, "
            f"{escape(origin)}) asks to act for you:</p><ul>{scopes}</ul>{resource}"
            f"<p>After you decide, you go back to <code>{escape(target.scheme)}://"
            f"{escape(target.netloc)}</code>.</p>"
            '<form method="post" action="/oauth2/authorize">'
            + hidden_fields([*auth.form_fields(), (CSRF_FIELD, user.csrf_token)])
            + '<button type="submit" name="decision" value="approve">Allow</button>'
            '<button type="submit" name="decision" value="deny">Deny</button></form>'
        )
        return html_page("Allow access?", body)

    async def consent(self, request: Request) -> Response:
        """``POST /oauth2/authorize``: the user's decision, CSRF-checked, then the code."""
        try:
            form = request_form(request)
        except FormError as exc:
            return self._refusal(AuthorizeError("invalid_request", str(exc)))
        user = await self.sessions.current_user(request)
        if user is None:
            return html_page(
                "Session expired",
                "<p class=error>Your login session ended. Start again from the application.</p>",
                status=403,
            )
        if not self.sessions.check_csrf(request, user, form.pop(CSRF_FIELD, None)):
            log.warning("oauth.consent_csrf_refused", user=user.name, source=source_of(request))
            return html_page(
                "Request refused",
                "<p class=error>The consent form was not submitted from this server's own "
                "page (missing or wrong CSRF token). Nothing was granted.</p>",
                status=403,
            )
        decision = form.pop("decision", None)
        try:
            auth = await self._validate(form)
        except AuthorizeError as exc:
            return self._refusal(exc)
        if decision != "approve":
            log.info("oauth.consent_denied", user=user.name, client=auth.client.id)
            return self._refusal(
                AuthorizeError(
                    "access_denied",
                    "the user denied the request",
                    redirect_uri=auth.redirect_uri,
                    state=auth.state,
                )
            )
        now = self._wall()
        code = new_secret("code")
        row = CodeRow(
            family=new_family(),
            client_id=auth.client.id,
            user_id=user.user_id,
            user=user.name,
            redirect_uri=auth.redirect_uri,
            scope=auth.scope,
            resource=auth.resource,
            code_challenge=auth.code_challenge,
            expires_at=now + self.settings.code_ttl,
        )
        state_hash = None if auth.state is None else secret_hash("state", auth.state)
        code_hash = secret_hash("code", code)
        await self.store.run(add_code, self.store.db, code_hash, row, state_hash, now)
        log.info("oauth.code_issued", user=user.name, client=auth.client.id)
        params = {"code": code}
        if auth.state is not None:
            params["state"] = auth.state
        params["iss"] = self.issuer()  # RFC 9207
        return self._redirect(response_uri(auth.redirect_uri, params))

    # --- token-style endpoints ----------------------------------------------------------

    async def _client(
        self, request: Request, form: Mapping[str, str]
    ) -> tuple[Client, ClientCredentials] | Response:
        creds = client_credentials(request.headers.get("authorization"), form)
        basic = [("WWW-Authenticate", 'Basic realm="tunneld"')]
        if isinstance(creds, str):
            return oauth_error(401, "invalid_client", creds, basic)
        client = await self.store.run(get_client, self.store.db, creds.client_id)
        challenge = basic if creds.method == "client_secret_basic" else []
        if client is None:
            return oauth_error(401, "invalid_client", "unknown client", challenge)
        if client.public:
            if creds.secret is not None:
                return oauth_error(
                    401, "invalid_client", "this is a public client: send no secret", challenge
                )
            return client, creds
        if creds.secret is None or client.secret_hash is None:
            return oauth_error(401, "invalid_client", "client authentication is required", basic)
        if not hmac.compare_digest(secret_hash("client", creds.secret), client.secret_hash):
            return oauth_error(401, "invalid_client", "client authentication failed", challenge)
        return client, creds

    async def _form(self, request: Request) -> dict[str, str] | Response:
        try:
            return request_form(request)
        except FormError as exc:
            return oauth_error(400, "invalid_request", str(exc))

    async def token(self, request: Request) -> Response:
        """``POST /oauth2/token`` (RFC 6749 section 3.2)."""
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        found = await self._client(request, form)
        if isinstance(found, Response):
            return found
        client, _ = found
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return await exchange_code(self._ctx(), client, form)
        if grant_type == "refresh_token":
            return await refresh(self._ctx(), client, form)
        if grant_type is None:
            return oauth_error(400, "invalid_request", "grant_type is required")
        return oauth_error(400, "unsupported_grant_type", "use authorization_code or refresh_token")

    async def revoke(self, request: Request) -> Response:
        """``POST /oauth2/revoke`` (RFC 7009)."""
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        found = await self._client(request, form)
        if isinstance(found, Response):
            return found
        return await revoke(self._ctx(), found[0], form)

    async def introspect(self, request: Request) -> Response:
        """``POST /oauth2/introspect`` (RFC 7662): confidential clients allowed to
        introspect (``client add --introspect``) only."""
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        found = await self._client(request, form)
        if isinstance(found, Response):
            return found
        client = found[0]
        if client.public or not client.introspect:
            return oauth_error(
                401,
                "invalid_client",
                "this client may not introspect tokens",
                [("WWW-Authenticate", 'Basic realm="tunneld"')],
            )
        return await introspection_answer(self._ctx(), form)

    async def register(self, request: Request) -> Response:
        """``POST /oauth2/register`` (RFC 7591), rate limited per source address."""
        source = source_of(request)
        if not self._registrations.allow(source, trio.current_time()):
            log.info("oauth.register_rate_limited", source=source)
            return Response.json(
                {"error": "rate_limited", "error_description": "too many registrations"},
                status=429,
                headers=[*NO_STORE, ("Retry-After", str(self._registrations.retry_after()))],
            )
        try:
            body = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return oauth_error(400, "invalid_client_metadata", "the body must be a JSON object")
        try:
            reg = parse_registration(body)
        except RegistrationError as exc:
            return oauth_error(400, exc.error, exc.description)
        now = self._wall()
        secret = None if reg.auth_method == "none" else new_secret("client")
        client = Client(
            id=f"dyn_{new_secret('state')[:24]}",
            name=reg.name,
            redirect_uris=reg.redirect_uris,
            auth_method=reg.auth_method,
            scope=reg.scope,
            introspect=False,
            origin="dynamic",
            created_at=now,
            secret_hash=None if secret is None else secret_hash("client", secret),
        )
        await self.store.run(add_client, self.store.db, client)
        log.info("oauth.client_registered", client=client.id, source=source)
        answer: dict[str, object] = {
            "client_id": client.id,
            "client_id_issued_at": int(now),
            "client_name": client.name,
            "redirect_uris": list(client.redirect_uris),
            "token_endpoint_auth_method": client.auth_method,
            "grant_types": list(reg.grant_types),
            "response_types": ["code"],
            "scope": " ".join(client.scope),
        }
        if secret is not None:
            answer["client_secret"] = secret
            answer["client_secret_expires_at"] = 0
        return Response.json(answer, status=201, headers=NO_STORE)
