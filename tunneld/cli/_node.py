"""What `tunneld run` and `tunneld agent` share: building this host's overlay node."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from tunneld._address import websocket_base
from tunneld.cli._common import CliError
from tunneld.config import HostPort
from tunneld.credentials import (
    DEFAULT_COMMAND_TIMEOUT,
    NoTokenSourceError,
    OAuthRefreshTokenProvider,
    TokenUnavailableError,
    token_provider_for,
)
from tunneld.keys import load_or_create_key_file
from tunneld.net.overlay import Overlay, OverlayConfig, StreamHandler, TokenProvider

__all__ = ["build_overlay", "node_token_provider"]


def build_overlay(
    *,
    section: str,
    name: str,
    key_file: Path,
    control_url: str,
    token_file: str,
    derp_region: int,
    udp_listen: HostPort,
    on_stream: StreamHandler | None = None,
    token_env: str = "",
    token_command: Sequence[str] = (),
    token_command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    login_file: str = "",
    tokens: TokenProvider | None = None,
) -> Overlay:
    """The overlay node described by a config ``section`` (``daemon`` or ``agent``).

    The private key is read from ``key_file`` or created there (0600) on first run.
    ``tokens`` (from :func:`node_token_provider`) replaces the token keys when given.

    Raises:
        CliError: a bad control URL, no token source or several, or a token file or
            variable that cannot give a token (the message names the key or file).
        BadKeyError: an unreadable key file or one others may read.
    """
    base = websocket_base(control_url)  # [section].control_url is checked by the config
    if tokens is None:
        tokens = node_token_provider(
            section=section,
            control_url=control_url,
            token_file=token_file,
            token_env=token_env,
            token_command=token_command,
            token_command_timeout=token_command_timeout,
            login_file=login_file,
        )
    return Overlay(
        OverlayConfig(
            name=name or socket.gethostname(),
            private_key=load_or_create_key_file(key_file)[0],
            coordinate_url=f"{base}/api/v1/coordinate",
            derp_url=f"{base}/derp",
            derp_region=derp_region,
            udp_host=udp_listen.host,
            udp_port=udp_listen.port,
        ),
        tokens,
        on_stream=on_stream,
    )


def node_token_provider(
    *,
    section: str,
    control_url: str,
    token_file: str = "",
    token_env: str = "",
    token_command: Sequence[str] = (),
    token_command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    login_file: str = "",
) -> TokenProvider:
    """The token provider ``[section]`` asks for (``tunneld.credentials.token_provider_for``).

    A login file must be for ``control_url``: its tokens are minted for that audience.

    Raises:
        CliError: no token source or several, one that cannot give a token now, or a
            login file for another control plane.
    """
    try:
        tokens = token_provider_for(
            section=section,
            token_file=token_file,
            token_env=token_env,
            token_command=token_command,
            token_command_timeout=token_command_timeout,
            login_file=login_file,
        )
        if isinstance(tokens, OAuthRefreshTokenProvider):
            logged_in = tokens.check().control_url
            if logged_in.rstrip("/") != control_url.rstrip("/"):
                raise CliError(
                    f"[{section}].login_file {login_file} is a login to {logged_in}, but"
                    f" [{section}].control_url is {control_url}: run"
                    f" `tunneld login --control {control_url} --out {login_file}`"
                )
    except (NoTokenSourceError, TokenUnavailableError) as exc:
        raise CliError(str(exc)) from None
    return tokens
