"""``tunneld run``: the daemon itself (overlay, local API, MCP, plugins), in the foreground."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tunneld.cli._common import CliError, apply_log_config
from tunneld.cli._node import build_overlay, node_token_provider
from tunneld.config import Config, load_config
from tunneld.credentials import NoTokenSourceError, TokenUnavailableError
from tunneld.daemon import (
    Daemon,
    DaemonRunningError,
    Notifier,
    StaticTokenAuthenticator,
    default_socket_path,
    listen_fds,
    open_api_listener,
    read_token_file,
)
from tunneld.http import Request
from tunneld.mcp import Caller
from tunneld.oauth import build_daemon_oauth
from tunneld.plugins import PluginError, PluginManager

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """`tunneld run`: the daemon in the foreground until SIGTERM/SIGINT."""
    config = load_config(args.config)
    apply_log_config(args, config.log)
    settings = config.daemon
    # One provider for the overlay and the OAuth access checks: a login file's refresh
    # token rotates, so two providers refreshing it at once would revoke the login.
    node_tokens = node_token_provider(
        section="daemon",
        control_url=settings.control_url,
        token_file=settings.token_file,
        token_env=settings.token_env,
        token_command=settings.token_command,
        token_command_timeout=settings.token_command_timeout.seconds,
        login_file=settings.login_file,
    )
    overlay = build_overlay(
        section="daemon",
        name=settings.name,
        key_file=settings.key_file,
        control_url=settings.control_url,
        token_file=settings.token_file,
        derp_region=settings.derp_region,
        udp_listen=settings.udp_listen,
        tokens=node_tokens,
    )

    def reload_config() -> Config:
        return load_config(args.config)

    plugins = PluginManager(
        config.plugins, allowed_tools=config.mcp.allowed_tools, extra_enable=args.plugin
    )
    authenticate: Callable[[Request], Awaitable[Caller]] | None = None
    if config.mcp.token_file and config.mcp.authorization_server:
        raise CliError("[mcp]: set token_file or authorization_server, not both")
    if config.mcp.token_file:
        try:
            authenticate = StaticTokenAuthenticator.single(read_token_file(config.mcp.token_file))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CliError(f"[mcp].token_file {config.mcp.token_file}: {reason}") from None
    oauth = None
    if config.mcp.authorization_server:
        try:
            oauth = build_daemon_oauth(
                config.mcp,
                control_url=settings.control_url,
                node_token=node_tokens,
                mcp_url=lambda: daemon.mcp_url,
            )
        except (OSError, ValueError, NoTokenSourceError, TokenUnavailableError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CliError(f"[mcp] OAuth: {reason}") from None
        authenticate = oauth.authenticator
    daemon = Daemon(
        overlay,
        settings,
        notifier=Notifier(),
        reload_settings=reload_config if args.config else None,
        shutdown_grace=settings.shutdown_grace.seconds,
        mcp=config.mcp,
        plugins=plugins,
        mcp_authenticate=authenticate,
        mcp_resource_metadata_url=None if oauth is None else oauth.static_metadata_url,
        mcp_routes=None if oauth is None else oauth.mount,
        agent_access_check=None if oauth is None else oauth.access_check,
    )
    activated = listen_fds()
    path = args.socket or (Path(settings.socket) if settings.socket else default_socket_path())

    async def main() -> None:
        if activated:
            listeners: list[trio.abc.Listener[trio.abc.Stream]] = [a.listener for a in activated]
        else:
            try:
                listeners = [
                    await open_api_listener(
                        path, mode=settings.socket_mode, group=settings.socket_group or None
                    )
                ]
            except DaemonRunningError as exc:
                raise CliError(str(exc.strerror)) from None
            except LookupError as exc:
                raise CliError(
                    f'{exc.args[0]} (create it, or set [daemon].socket_group = "")'
                ) from None
        try:
            await daemon.run(listeners)
        except PluginError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            if exc.strerror and exc.strerror.startswith("[mcp]"):
                raise CliError(exc.strerror) from None
            raise

    trio.run(main)
    return 0
