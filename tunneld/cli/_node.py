"""What `tunneld run` and `tunneld agent` share: building this host's overlay node."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from tunneld._address import websocket_base
from tunneld.cli._common import CliError
from tunneld.config import HostPort
from tunneld.keys import load_or_create_key_file
from tunneld.net.overlay import Overlay, OverlayConfig, StreamHandler
from tunneld.tokens import token_provider

__all__ = ["build_overlay"]


def _token_provider(
    token_file: str, *, key: str, token_command: str = ""
) -> Callable[[], Awaitable[str]]:
    # tunneld.tokens: re-read on every coordinator connect, so a rotated token file or
    # secret takes effect. Group/other-readable token files only warn (for now).
    try:
        return token_provider(token_file=token_file, token_command=token_command, strict_file=False)
    except ValueError as exc:
        if not token_file and not token_command:
            raise CliError(f"no token: set {key} or the TUNNELD_TOKEN variable") from None
        raise CliError(f"{key.rpartition('.')[0]}.{exc}") from None


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
    token_command: str = "",
) -> Overlay:
    """The overlay node described by a config ``section`` (``daemon`` or ``agent``).

    The private key is read from ``key_file`` or created there (0600) on first run.

    Raises:
        CliError: a bad control URL or no token source (the message names the key).
        BadKeyError: an unreadable key file or one others may read.
    """
    base = websocket_base(control_url)  # [section].control_url is checked by the config
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
        _token_provider(token_file, key=f"[{section}].token_file", token_command=token_command),
        on_stream=on_stream,
    )
