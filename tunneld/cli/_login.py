"""``tunneld login`` / ``tunneld logout``: this machine's daemon as a user of the control
plane (OAuth), and the end of that login."""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from pathlib import Path

import trio

from tunneld.cli._common import CliError, Subparsers
from tunneld.config import load_config
from tunneld.credentials import (
    LoginError,
    TokenUnavailableError,
    default_login_file,
    login,
    logout,
    read_login_file,
    write_login_file,
)

__all__ = ["register"]


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "login",
        help="log this machine's daemon in to the control plane in a browser (OAuth)",
        description=(
            "Log in to the control plane in a browser (OAuth authorization code + PKCE,"
            " redirect to a loopback port on this machine) and store the login (a refresh"
            " token, mode 0600) for `tunneld run`: set [daemon].login_file to the file."
            " The daemon then joins the overlay as your user, without a `tnd_` token."
            " Without --client-id a public client is registered first (RFC 7591)."
        ),
    )
    parser.add_argument(
        "--control",
        metavar="URL",
        help="the control plane's public URL (default: [daemon].control_url of --config)",
    )
    _add_login_file_arguments(parser, "where to store the login")
    parser.add_argument(
        "--client-id",
        default="",
        metavar="ID",
        help="use this registered public client (`tunneld control client add`)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        metavar="N",
        help="loopback port for the redirect (default: any free one; with --client-id, the"
        " port of its registered redirect URI http://127.0.0.1:N/callback)",
    )
    parser.add_argument(
        "--no-browser",
        action="store_true",
        help="only print the URL to open (the default without a graphical display)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the browser (default: 300)",
    )
    parser.set_defaults(func=_login, default_log_level="warning")

    out = sub.add_parser(
        "logout",
        help="revoke this machine's login at the control plane and delete the login file",
        description=(
            "Revoke the login that `tunneld login` stored (RFC 7009: its refresh token, which"
            " ends the whole grant, so the daemon's coordinator session closes within the"
            " control plane's revocation poll) and delete the login file. If the control"
            " plane cannot be reached the file is kept, unless --forget."
        ),
    )
    _add_login_file_arguments(out, "the login file")
    out.add_argument(
        "--forget",
        action="store_true",
        help="delete the login file even when the revocation fails (the grant may stay live)",
    )
    out.set_defaults(func=_logout, default_log_level="warning")


def _add_login_file_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--out and --config, which ``_login_file`` reads."""
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help=(
            f"{what} (default: [daemon].login_file of --config, else"
            " $XDG_CONFIG_HOME/tunneld/login.json)"
        ),
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")


def _login_file(args: argparse.Namespace) -> Path:
    out: Path | None = args.out
    if out is None and args.config is not None:
        daemon = load_config(args.config).daemon
        if daemon.login_file:
            out = Path(daemon.login_file)
    return out if out is not None else default_login_file()


def _graphical() -> bool:
    # Without a display, webbrowser would start a console browser (lynx, w3m) in our
    # terminal; the printed URL is the better answer there (e.g. over ssh).
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def _login(args: argparse.Namespace) -> int:
    control: str | None = args.control
    if args.config is not None:
        control = control or load_config(args.config).daemon.control_url
    if not control:
        raise CliError("--control URL is required (or --config with [daemon].control_url)")
    if not control.startswith(("http://", "https://")):
        raise CliError(f"--control: expected an http(s) URL, got {control!r}")
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port: expected 0..65535, got {args.port}")
    if args.timeout <= 0:
        raise CliError("--timeout: expected a positive number of seconds")
    target = _login_file(args)

    def announce(url: str) -> None:
        print(f"Open this URL in a browser to log in:\n\n    {url}\n", file=sys.stderr, flush=True)

    try:
        record = trio.run(
            lambda: login(
                control,
                client_id=args.client_id,
                port=args.port,
                open_browser=None if args.no_browser or not _graphical() else webbrowser.open,
                announce=announce,
                browser_timeout=args.timeout,
            )
        )
    except LoginError as exc:
        raise CliError(f"login failed: {exc}") from None
    try:
        write_login_file(target, record)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}") from None
    print(f"Logged in to {record.control_url}; login stored in {target}")
    print(f'Use it with `tunneld run`: [daemon] login_file = "{target}"')
    return 0


def _logout(args: argparse.Namespace) -> int:
    target = _login_file(args)
    try:
        record = read_login_file(target)
    except TokenUnavailableError as exc:
        raise CliError(f"not logged in: {exc}") from None
    try:
        trio.run(logout, record)
    except LoginError as exc:
        if not args.forget:
            raise CliError(
                f"logout failed: {exc}; the login file {target} is kept (--forget deletes it"
                " anyway, leaving the grant live until it expires or an operator revokes it)"
            ) from None
        print(f"tunneld: warning: {exc}; deleting {target} anyway", file=sys.stderr)
    else:
        print(f"Logged out of {record.control_url}: the login is revoked")
    try:
        target.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CliError(f"cannot delete {target}: {exc.strerror or exc}") from None
    print(f"Deleted {target}")
    return 0
