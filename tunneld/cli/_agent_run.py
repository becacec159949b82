"""``tunneld agent`` itself: the overlay node and the services it serves."""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import trio

from tunneld._address import format_address
from tunneld._files import write_file_atomic
from tunneld.agent import AgentServices
from tunneld.cli._common import apply_log_config
from tunneld.cli._node import build_overlay
from tunneld.config import load_config
from tunneld.keys import encode_key
from tunneld.log import get_logger
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay

__all__ = ["run"]

log = get_logger("tunneld.cli._agent")


def run(args: argparse.Namespace) -> int:
    """`tunneld agent`: serve until SIGINT/SIGTERM."""
    config = load_config(args.config)
    apply_log_config(args, config.log)
    settings = config.agent
    services = AgentServices(settings)

    async def on_stream(peer_id: str, service: str, stream: MuxStream) -> None:
        log.debug("agent.stream", peer=peer_id, service=service)
        await services.dispatch(service, stream)

    overlay = build_overlay(
        section="agent",
        name=settings.name,
        key_file=settings.key_file,
        control_url=settings.control_url,
        token_file=settings.token_file,
        token_env=settings.token_env,
        token_command=settings.token_command,
        token_command_timeout=settings.token_command_timeout.seconds,
        derp_region=settings.derp_region,
        udp_listen=settings.udp_listen,
        on_stream=on_stream,
    )
    try:
        trio.run(_serve, overlay, services, args.ready_file)
    finally:
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


async def _serve(overlay: Overlay, services: AgentServices, ready_file: Path | None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(services.serve)
            udp = format_address(await nursery.start(overlay.serve))
            ready = {
                "name": overlay.config.name,
                "public_key": encode_key(overlay.public_key),
                "udp": udp,
                "pid": os.getpid(),
            }
            if ready_file is not None:
                text = json.dumps(ready, indent=2) + "\n"
                await trio.to_thread.run_sync(write_file_atomic, ready_file, text)
            log.info("agent.ready", name=overlay.config.name, udp=udp)
            try:
                async for signum in signals:
                    log.info("agent.stopping", signal=signal.Signals(signum).name)
                    break
            finally:
                nursery.cancel_scope.cancel()
