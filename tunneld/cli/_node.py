"""What `tunneld run` and `tunneld agent` share: building this host's overlay node."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tunneld._address import websocket_base
from tunneld.cli._common import CliError
from tunneld.config import HostPort
from tunneld.keys import load_or_create_key_file
from tunneld.net.overlay import Overlay, OverlayConfig, StreamHandler

__all__ = ["build_overlay"]


def _token_provider(token_file: str, *, key: str) -> Callable[[], Awaitable[str]]:
    env_token = os.environ.get("TUNNELD_TOKEN", "")
    if not token_file and not env_token:
        raise CliError(f"no token: set {key} or the TUNNELD_TOKEN variable")

    async def provide() -> str:
        # Re-read on every coordinator connect, so a rotated token file takes effect.
        if token_file:
            text = await trio.Path(token_file).read_text()
            return text.strip()
        return env_token

    return provide


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
        _token_provider(token_file, key=f"[{section}].token_file"),
        on_stream=on_stream,
    )
