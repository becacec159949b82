"""How nodes authenticate to the control plane: token providers (DESIGN.md, "Auth").

Every provider is an ``async () -> str`` (``tunneld.net.overlay.TokenProvider``):
``StaticTokenProvider`` (a fixed token), ``FileTokenProvider`` (a 0600 file, re-read
when it changes), ``EnvironmentTokenProvider`` (``$TUNNELD_TOKEN`` or another
variable) and ``CommandTokenProvider`` (what a command such as a secret manager's CLI
prints) and ``OAuthRefreshTokenProvider`` (a ``tunneld login`` file: access tokens
refreshed from a rotating refresh token). ``token_provider_for`` picks one from a
node's ``[agent]``/``[daemon]`` keys.
Failures raise ``TokenUnavailableError`` (an ``OSError``, so the overlay retries).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tunneld.credentials._login import LoginError, login, logout
from tunneld.credentials._oauth import (
    LOGIN_SCOPE,
    LoginRecord,
    OAuthRefreshTokenProvider,
    default_login_file,
    read_login_file,
    write_login_file,
)
from tunneld.credentials._providers import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_TOKEN_ENV,
    CommandTokenProvider,
    EnvironmentTokenProvider,
    FileTokenProvider,
    StaticTokenProvider,
    TokenUnavailableError,
    check_token,
)

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_TOKEN_ENV",
    "LOGIN_SCOPE",
    "CommandTokenProvider",
    "EnvironmentTokenProvider",
    "FileTokenProvider",
    "LoginError",
    "LoginRecord",
    "NoTokenSourceError",
    "OAuthRefreshTokenProvider",
    "StaticTokenProvider",
    "TokenUnavailableError",
    "check_token",
    "default_login_file",
    "login",
    "logout",
    "read_login_file",
    "token_provider_for",
    "write_login_file",
]


class NoTokenSourceError(ValueError):
    """The config names no token source, or more than one; the message names the keys."""


def token_provider_for(
    *,
    section: str,
    token_file: str = "",
    token_env: str = "",
    token_command: Sequence[str] = (),
    token_command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    environ: Mapping[str, str] | None = None,
    login_file: str = "",
) -> (
    FileTokenProvider | EnvironmentTokenProvider | CommandTokenProvider | OAuthRefreshTokenProvider
):
    """The provider ``[section]`` asks for, checked now where that is cheap.

    At most one of ``token_file``, ``token_env``, ``token_command`` and ``login_file``
    (``[daemon]`` only: a ``tunneld login`` file) may be set; with none,
    ``$TUNNELD_TOKEN`` is used. A token or login file is read (and its mode checked) and a
    variable looked up at once, so a bad setup fails at start with a clear message; a
    command runs only when the token is needed.

    Raises:
        NoTokenSourceError: several sources, or none and no ``$TUNNELD_TOKEN``.
        TokenUnavailableError: the file or variable cannot give a token now.
    """
    chosen = [
        key
        for key, value in (
            ("token_file", token_file),
            ("token_env", token_env),
            ("token_command", token_command),
            ("login_file", login_file),
        )
        if value
    ]
    if len(chosen) > 1:
        keys = " and ".join(f"[{section}].{key}" for key in chosen)
        raise NoTokenSourceError(f"set only one of {keys}")
    if login_file:
        oauth = OAuthRefreshTokenProvider(login_file)
        oauth.check()
        return oauth
    if token_file:
        provider: FileTokenProvider | EnvironmentTokenProvider = FileTokenProvider(token_file)
        provider.check()
        return provider
    if token_command:
        return CommandTokenProvider(token_command, timeout=token_command_timeout)
    if token_env:
        provider = EnvironmentTokenProvider(token_env, environ)
        provider.check()
        return provider
    fallback = EnvironmentTokenProvider(DEFAULT_TOKEN_ENV, environ)
    try:
        fallback.check()
    except TokenUnavailableError:
        raise NoTokenSourceError(
            f"no token: set [{section}].token_file or the {DEFAULT_TOKEN_ENV} variable"
        ) from None
    return fallback
