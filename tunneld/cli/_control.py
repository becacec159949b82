"""``tunneld control``: run the control plane; manage its users, tokens and grants;
list task reports.

The ``user``/``token``/``grant`` subcommands open the data directory's database
directly (WAL mode lets them run while a server is up; a revoked token's session is
closed by the server's revocation poll).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunneld.cli._common import Subparsers, lazy_handler
from tunneld.config import parse_host_port
from tunneld.control._records import MAX_LIST_LIMIT, TASK_STATES

__all__ = ["register"]


def _host_port(text: str) -> object:
    try:
        return parse_host_port(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Subcommands repeat these with SUPPRESS defaults so `control --data-dir D user list`
    # and `control user list --data-dir D` both work without one overriding the other.
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config", type=Path, metavar="FILE", default=default, help="TOML config file"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=default,
        help="state directory (default: [control].data_dir)",
    )


def register(sub: Subparsers) -> None:
    control = sub.add_parser(
        "control",
        help="run the control plane (coordinator, DERP relay, STUN); manage users and tokens",
        description=(
            "Without a subcommand: serve the coordinator, DERP relay, STUN, /healthz, "
            "/metrics and the dashboard at /. With one: manage users, tokens and grants, "
            "or list task reports, in the data directory."
        ),
    )
    _common(control, top=True)
    control.add_argument(
        "--listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="HTTP listen address (default: [control].listen, 127.0.0.1:7420; port 0 = any)",
    )
    control.add_argument(
        "--stun-listen",
        type=_host_port,
        metavar="HOST:PORT",
        help="STUN (UDP) listen address (default: [control].stun_listen)",
    )
    control.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="once serving, atomically write JSON with the bound URLs, keys and pid",
    )
    control.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_serve"))
    groups = control.add_subparsers(dest="control_command", metavar="SUBCOMMAND")

    user = groups.add_parser("user", help="add and list users")
    user_cmds = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = user_cmds.add_parser("add", help="add a user")
    add.add_argument("name", help="user name (letters, digits, '.', '_', '-')")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read a login password from stdin (one line); else the user has none",
    )
    _common(add, top=False)
    add.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_user_add"))
    ulist = user_cmds.add_parser("list", help="list users")
    _common(ulist, top=False)
    ulist.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_user_list"))

    token = groups.add_parser("token", help="create, list and revoke bearer tokens")
    token_cmds = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_cmds.add_parser("create", help="create a token and print it once")
    create.add_argument("--user", required=True, help="the user the token speaks for")
    create.add_argument(
        "--agent", help="make an agent token: its node is this one agent of the user"
    )
    create.add_argument(
        "--expires", metavar="DURATION", help='lifetime like "30d" or "12h" (default: never)'
    )
    _common(create, top=False)
    create.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_token_create"))
    tlist = token_cmds.add_parser("list", help="list tokens (ids only, never secrets)")
    _common(tlist, top=False)
    tlist.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_token_list"))
    revoke = token_cmds.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id", help="the token id shown by `token list`")
    _common(revoke, top=False)
    revoke.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_token_revoke"))

    grant = groups.add_parser("grant", help="let a user reach another user's agents")
    grant_cmds = grant.add_subparsers(dest="grant_command", metavar="ACTION", required=True)
    gadd = grant_cmds.add_parser("add", help="grant USER access to OWNER's AGENT ('*': all)")
    gadd.add_argument("--user", required=True, help="who gets access")
    gadd.add_argument("--owner", required=True, help="whose agent")
    gadd.add_argument("--agent", required=True, help="agent name, or '*' for all of them")
    _common(gadd, top=False)
    gadd.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_grant_add"))
    gremove = grant_cmds.add_parser(
        "remove", help="take back a grant (exactly as added); callers lose access within seconds"
    )
    gremove.add_argument("--user", required=True, help="who had access")
    gremove.add_argument("--owner", required=True, help="whose agent")
    gremove.add_argument("--agent", required=True, help="agent name, or '*'")
    _common(gremove, top=False)
    gremove.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_grant_remove"))
    glist = grant_cmds.add_parser("list", help="list grants")
    _common(glist, top=False)
    glist.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_grant_list"))

    tasks = groups.add_parser(
        "tasks",
        help="list task reports (report_task), newest first",
        description="Task reports of every user, newest first, from the data directory.",
    )
    tasks.add_argument("--agent", help="only reports about this agent")
    tasks.add_argument("--state", choices=TASK_STATES, help="only reports in this state")
    tasks.add_argument(
        "--limit",
        type=int,
        default=50,
        metavar="N",
        help=f"at most N reports (1..{MAX_LIST_LIMIT}, default 50)",
    )
    tasks.add_argument("--json", action="store_true", help='one JSON object: {"tasks": [...]}')
    _common(tasks, top=False)
    tasks.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_tasks_list"))
    client = groups.add_parser("client", help="add, list and remove OAuth clients")
    client_cmds = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)
    cadd = client_cmds.add_parser(
        "add",
        help="register an OAuth client (its id is NAME); a secret is printed once",
        description=(
            "Register an OAuth 2.1 client. Public clients (the default) authenticate "
            "with PKCE only; --confidential ones get a secret, printed once. A resource "
            "server (a daemon validating MCP tokens) is --introspect, which implies "
            "--confidential and needs no redirect URI."
        ),
    )
    cadd.add_argument("name", help="client id (letters, digits, '.', '_', '-')")
    cadd.add_argument(
        "--redirect-uri",
        action="append",
        default=[],
        metavar="URI",
        help="an exact redirect URI (https, or http on loopback); repeatable",
    )
    cadd.add_argument("--confidential", action="store_true", help="give the client a secret")
    cadd.add_argument(
        "--introspect",
        action="store_true",
        help="may call /oauth2/introspect (for resource servers); implies --confidential",
    )
    cadd.add_argument(
        "--scope",
        default=None,
        help="space-separated scopes it may be granted (default: all of them)",
    )
    cadd.add_argument("--display-name", help="name shown on the consent page (default: NAME)")
    _common(cadd, top=False)
    cadd.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_client_add"))
    clist = client_cmds.add_parser("list", help="list OAuth clients (never secrets)")
    _common(clist, top=False)
    clist.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_client_list"))
    cremove = client_cmds.add_parser(
        "remove", help="remove a client; its codes and tokens stop working at once"
    )
    cremove.add_argument("id", help="the client id shown by `client list`")
    _common(cremove, top=False)
    cremove.set_defaults(func=lazy_handler("tunneld.cli._control_run", "_client_remove"))
