"""OAuth refresh tokens as a node's credentials: the login file and its token provider.

``tunneld login`` (``tunneld.credentials._login``) stores what an authorization-code
login produced in a 0600 JSON file; :class:`OAuthRefreshTokenProvider` turns that file
into access tokens for the coordinator, refreshing them when they are near expiry.
Refresh tokens rotate (docs/oauth.md): every refresh returns a new one and kills the
old, so the new file is written (atomically) before the new access token is used;
a crash between the two leaves a file whose refresh token still works.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

import trio

from tunneld._files import SecretFileError, read_secret_file, write_file_atomic
from tunneld.credentials._providers import TokenUnavailableError, check_token
from tunneld.log import get_logger

__all__ = [
    "LOGIN_SCOPE",
    "LoginRecord",
    "OAuthRefreshTokenProvider",
    "default_login_file",
    "read_login_file",
    "write_login_file",
]

log = get_logger(__name__)

LOGIN_SCOPE: Final = "node"
# Refresh this long before the access token expires, so a connect never sends one that
# dies on the way.
DEFAULT_MARGIN: Final = 60.0
DEFAULT_TIMEOUT: Final = 30.0
_MAX_FILE: Final = 64 * 1024


def default_login_file(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/tunneld/login.json`` (``~/.config`` when unset)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "tunneld" / "login.json"


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """What a login file holds. ``expires_at`` is the access token's (Unix seconds)."""

    control_url: str
    issuer: str
    token_endpoint: str
    client_id: str
    refresh_token: str
    access_token: str
    expires_at: float
    scope: str = LOGIN_SCOPE

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def _parse(text: str, where: str) -> LoginRecord:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise TokenUnavailableError(f"{where} is not JSON ({exc}): run `tunneld login`") from None
    if not isinstance(doc, dict):
        raise TokenUnavailableError(f"{where}: expected a JSON object: run `tunneld login`")
    fields: dict[str, object] = {}
    for name in ("control_url", "issuer", "token_endpoint", "client_id", "scope"):
        value = doc.get(name, LOGIN_SCOPE if name == "scope" else None)
        if not isinstance(value, str) or not value:
            raise TokenUnavailableError(f"{where}: {name} is missing: run `tunneld login`")
        fields[name] = value
    for name in ("refresh_token", "access_token"):
        fields[name] = check_token(str(doc.get(name) or ""), f"{where}: {name}")
    expires = doc.get("expires_at")
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        raise TokenUnavailableError(f"{where}: expires_at must be a number")
    fields["expires_at"] = float(expires)
    return LoginRecord(**fields)  # type: ignore[arg-type]


def read_login_file(path: Path) -> LoginRecord:
    """The record in ``path``.

    Raises:
        TokenUnavailableError: missing, accessible by group or others, not a regular
            file, or not a login file (the message says what to run).
    """
    where = f"login file {path}"
    try:
        raw, _ = read_secret_file(path, what="login file", max_bytes=_MAX_FILE)
    except SecretFileError as exc:
        hint = " (run `tunneld login`)" if str(exc).startswith("cannot read") else ""
        raise TokenUnavailableError(f"{exc}{hint}") from None
    return _parse(raw.decode("utf-8", errors="replace"), where)


def write_login_file(path: Path, record: LoginRecord) -> None:
    """Write ``record`` to ``path`` atomically with mode 0600 (parents made 0700).

    Raises:
        OSError: the directory or file cannot be written.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file_atomic(path, record.to_json(), mode=0o600)


class OAuthRefreshTokenProvider:
    """Access tokens from the login file at ``path``, refreshed near expiry.

    The file is re-read at every call (a new ``tunneld login`` takes effect at the next
    connect). One provider per file: two processes refreshing one file would race, and
    the loser's use of the rotated refresh token revokes the whole login (reuse
    detection), after which ``tunneld login`` must be run again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        margin: float = DEFAULT_MARGIN,
        timeout: float = DEFAULT_TIMEOUT,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.margin = margin
        self.timeout = timeout
        self._wall = wall_clock
        self._lock = trio.Lock()

    def check(self) -> LoginRecord:
        """The file's record now, or ``TokenUnavailableError`` (see :func:`read_login_file`)."""
        return read_login_file(self.path)

    async def __call__(self) -> str:
        """A valid access token.

        Raises:
            TokenUnavailableError: the file is unusable, the refresh was refused (the
                message says to run ``tunneld login`` again) or the control plane
                could not be reached (the overlay retries after backoff).

        Cancellation: safe; a refresh cancelled before its answer arrived leaves the
        file as it was (if the server rotated meanwhile, the next refresh fails with
        the "run tunneld login again" error).
        """
        async with self._lock:
            record = await trio.to_thread.run_sync(read_login_file, self.path)
            if record.expires_at - self.margin > self._wall():
                return record.access_token
            fresh = await self._refresh(record)
            try:
                await trio.to_thread.run_sync(write_login_file, self.path, fresh)
            except OSError as exc:
                raise TokenUnavailableError(
                    f"cannot save the refreshed login to {self.path}:"
                    f" {exc.strerror or exc}; run `tunneld login` again once it is writable"
                ) from None
            log.info("credentials.login_refreshed", path=str(self.path))
            return fresh.access_token

    async def _refresh(self, record: LoginRecord) -> LoginRecord:
        # Imported here: tunneld.oauth pulls in the control plane and MCP packages, which
        # a node that never uses a login file need not load.
        from tunneld.oauth._http_client import HttpClientError, post_form

        form = {
            "grant_type": "refresh_token",
            "refresh_token": record.refresh_token,
            "client_id": record.client_id,
        }
        now = self._wall()
        try:
            with trio.fail_after(self.timeout):
                reply = await post_form(record.token_endpoint, form)
        except trio.TooSlowError:
            raise TokenUnavailableError(
                f"refreshing the login in {self.path}: no answer from"
                f" {record.token_endpoint} within {self.timeout:g}s"
            ) from None
        except HttpClientError as exc:
            raise TokenUnavailableError(f"refreshing the login in {self.path}: {exc}") from None
        try:
            answer = json.loads(reply.body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise TokenUnavailableError(
                f"refreshing the login in {self.path}: {record.token_endpoint} answered"
                f" {reply.status} without a JSON object"
            )
        if reply.status != 200:
            error = str(answer.get("error", ""))[:64]
            if error in ("invalid_grant", "invalid_client", "unauthorized_client"):
                raise TokenUnavailableError(
                    f"the login in {self.path} is no longer valid (its refresh token was"
                    f" revoked, expired or already used: {error}): run"
                    f" `tunneld login --control {record.control_url}` again"
                )
            raise TokenUnavailableError(
                f"refreshing the login in {self.path}: {record.token_endpoint} answered"
                f" {reply.status} {error or 'without an error code'}"
            )
        access = check_token(str(answer.get("access_token") or ""), "the refreshed access token")
        refresh = check_token(
            str(answer.get("refresh_token") or record.refresh_token), "the new refresh token"
        )
        expires_in = answer.get("expires_in")
        ttl = float(expires_in) if isinstance(expires_in, (int, float)) else 3600.0
        return replace(
            record, access_token=access, refresh_token=refresh, expires_at=now + max(ttl, 0.0)
        )
