"""The token, revocation and introspection endpoints' logic (RFC 6749 section 4.1.3,
section 6, RFC 7636 section 4.6, RFC 8707, RFC 7009, RFC 7662).

Every answer carries ``Cache-Control: no-store`` (RFC 6749 section 5.1). Error
descriptions never contain a secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tunneld.control._store import SqliteStore
from tunneld.http import Response
from tunneld.log import get_logger
from tunneld.oauth._authorize import pkce_matches, resource_problem, verifier_well_formed
from tunneld.oauth._secret import new_secret, secret_hash
from tunneld.oauth._settings import OAuthSettings
from tunneld.oauth._storage import (
    Client,
    NewToken,
    TokenRow,
    add_tokens,
    lookup_token,
    redeem_code,
    revoke_family,
    revoke_token,
    rotate_refresh,
)

__all__ = [
    "NO_STORE",
    "GrantContext",
    "exchange_code",
    "find_token",
    "introspection_answer",
    "new_family",
    "oauth_error",
    "refresh",
    "revoke",
]

log = get_logger(__name__)

NO_STORE = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))


def oauth_error(
    status: int, error: str, description: str, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    """An RFC 6749 section 5.2 error body, not cacheable."""
    return Response.json(
        {"error": error, "error_description": description},
        status=status,
        headers=[*NO_STORE, *headers],
    )


@dataclass(frozen=True, slots=True)
class GrantContext:
    """What every grant needs: storage, settings, the issuer and the time."""

    store: SqliteStore
    settings: OAuthSettings
    issuer: str
    now: float


async def _issue(
    ctx: GrantContext,
    client: Client,
    family: str,
    user_id: int,
    scope: tuple[str, ...],
    audience: str | None,
    rotate_from: bytes | None = None,
) -> Response:
    access = new_secret("access")
    refresh_value = new_secret("refresh")
    rows = [
        NewToken(
            secret_hash("access", access),
            "access",
            family,
            client.id,
            user_id,
            scope,
            audience,
            ctx.now,
            ctx.now + ctx.settings.access_token_ttl,
        ),
        NewToken(
            secret_hash("refresh", refresh_value),
            "refresh",
            family,
            client.id,
            user_id,
            scope,
            audience,
            ctx.now,
            ctx.now + ctx.settings.refresh_token_ttl,
        ),
    ]
    if rotate_from is None:
        await ctx.store.run(add_tokens, ctx.store.db, rows, ctx.now)
    else:
        outcome = await ctx.store.run(rotate_refresh, ctx.store.db, rotate_from, rows, ctx.now)
        if outcome == "reused":
            log.warning("oauth.refresh_reuse", client=client.id, family=family)
            return oauth_error(400, "invalid_grant", "refresh token was already used")
        if outcome != "rotated":
            return oauth_error(400, "invalid_grant", "refresh token is invalid or expired")
    body: dict[str, object] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": int(ctx.settings.access_token_ttl),
        "refresh_token": refresh_value,
        "scope": " ".join(scope),
    }
    return Response.json(body, headers=NO_STORE)


async def exchange_code(ctx: GrantContext, client: Client, form: Mapping[str, str]) -> Response:
    """``grant_type=authorization_code``."""
    code = form.get("code")
    if not code:
        return oauth_error(400, "invalid_request", "code is required")
    # Redeemed (marked used) before any other check: a code gets one try, so a wrong
    # verifier cannot be retried against it.
    row, replayed = await ctx.store.run(
        redeem_code, ctx.store.db, secret_hash("code", code), ctx.now
    )
    if row is None:
        return oauth_error(400, "invalid_grant", "unknown authorization code")
    if replayed:
        log.warning("oauth.code_replay", client=client.id, family=row.family)
        return oauth_error(
            400, "invalid_grant", "authorization code was already used; its tokens are revoked"
        )
    if row.client_id != client.id:
        return oauth_error(400, "invalid_grant", "authorization code was issued to another client")
    if ctx.now >= row.expires_at:
        return oauth_error(400, "invalid_grant", "authorization code has expired")
    verifier = form.get("code_verifier")
    if verifier is None:
        return oauth_error(400, "invalid_grant", "code_verifier is required (PKCE)")
    if not verifier_well_formed(verifier) or not pkce_matches(verifier, row.code_challenge):
        return oauth_error(400, "invalid_grant", "code_verifier does not match code_challenge")
    if form.get("redirect_uri") != row.redirect_uri:
        return oauth_error(
            400, "invalid_grant", "redirect_uri differs from the authorization request's"
        )
    audience = row.resource
    resource = form.get("resource")
    if resource is not None:
        problem = resource_problem(resource, ctx.settings)
        if problem is not None or (row.resource is not None and resource != row.resource):
            return oauth_error(
                400, "invalid_target", problem or "resource differs from the authorized one"
            )
        audience = resource
    log.info("oauth.token_issued", client=client.id, user=row.user, grant="authorization_code")
    return await _issue(ctx, client, row.family, row.user_id, row.scope, audience)


async def refresh(ctx: GrantContext, client: Client, form: Mapping[str, str]) -> Response:
    """``grant_type=refresh_token``: rotate, possibly narrowing the scope."""
    value = form.get("refresh_token")
    if not value:
        return oauth_error(400, "invalid_request", "refresh_token is required")
    token_hash = secret_hash("refresh", value)
    row = await ctx.store.run(lookup_token, ctx.store.db, token_hash)
    if row is None or row.kind != "refresh" or row.client_id != client.id:
        return oauth_error(400, "invalid_grant", "refresh token is invalid")
    scope = row.scope
    requested = form.get("scope")
    if requested is not None:
        wanted = tuple(dict.fromkeys(requested.split()))
        if not wanted or any(s not in row.scope for s in wanted):
            return oauth_error(400, "invalid_scope", "scope exceeds the original grant")
        scope = wanted
    resource = form.get("resource")
    if resource is not None and resource != row.audience:
        return oauth_error(400, "invalid_target", "resource differs from the original grant")
    # rotate_refresh re-checks the row inside one transaction, so two racing uses of one
    # refresh token cannot both win.
    return await _issue(
        ctx, client, row.family, row.user_id, scope, row.audience, rotate_from=token_hash
    )


async def find_token(ctx: GrantContext, value: str) -> tuple[bytes, TokenRow] | None:
    """The stored token ``value`` names (kind from its prefix), or None."""
    if value.startswith("tndat_"):
        token_hash = secret_hash("access", value)
    elif value.startswith("tndrt_"):
        token_hash = secret_hash("refresh", value)
    else:
        return None
    row = await ctx.store.run(lookup_token, ctx.store.db, token_hash)
    return None if row is None else (token_hash, row)


async def revoke(ctx: GrantContext, client: Client, form: Mapping[str, str]) -> Response:
    """RFC 7009: 200 whether or not the token existed; only the owning client's tokens."""
    value = form.get("token")
    if not value:
        return oauth_error(400, "invalid_request", "token is required")
    found = await find_token(ctx, value)
    # A token of another client is treated like an unknown one (section 2.2: invalid
    # tokens do not cause an error), so revocation cannot probe other clients' tokens.
    if found is not None and found[1].client_id == client.id:
        token_hash, row = found
        if row.kind == "refresh":
            # Section 2.1: revoking a refresh token also ends the grant's access tokens.
            await ctx.store.run(revoke_family, ctx.store.db, row.family, ctx.now)
        else:
            await ctx.store.run(revoke_token, ctx.store.db, token_hash, ctx.now)
        log.info("oauth.revoked", client=client.id, kind=row.kind)
    return Response(200, list(NO_STORE))


async def introspection_answer(ctx: GrantContext, form: Mapping[str, str]) -> Response:
    """RFC 7662 section 2.2 (the caller already authenticated as a resource server)."""
    value = form.get("token")
    if not value:
        return oauth_error(400, "invalid_request", "token is required")
    found = await find_token(ctx, value)
    if found is None or not found[1].active(ctx.now):
        return Response.json({"active": False}, headers=NO_STORE)
    row = found[1]
    body: dict[str, object] = {
        "active": True,
        "scope": " ".join(row.scope),
        "client_id": row.client_id,
        "username": row.user,
        "sub": row.user,
        "token_type": "Bearer" if row.kind == "access" else "refresh_token",
        "exp": int(row.expires_at),
        "iat": int(row.created_at),
        "iss": ctx.issuer,
    }
    if row.audience is not None:
        body["aud"] = row.audience
    return Response.json(body, headers=NO_STORE)


def new_family() -> str:
    """A fresh grant family id (not a secret: it only groups rows)."""
    return secrets.token_hex(16)
