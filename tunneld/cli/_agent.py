"""``tunneld agent``: an overlay node that serves exec, file and TCP-forward streams."""

from __future__ import annotations

from pathlib import Path

from tunneld.cli._common import Subparsers, lazy_handler

__all__ = ["register"]


def register(sub: Subparsers) -> None:
    agent = sub.add_parser(
        "agent",
        help="run an agent: serve exec, files and TCP forwards to permitted callers",
        description=(
            "Join the overlay with an agent token and serve the `rpc` (exec, files) and "
            "`tcp:PORT` services that [agent] allows (everything is off by default). "
            "SIGINT/SIGTERM stop it; running commands are killed."
        ),
    )
    agent.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    agent.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help=(
            "once serving, atomically write JSON {name, public_key, udp, pid} to PATH "
            "(removed on exit)"
        ),
    )
    # The overlay and the agent's services load only when this command runs.
    agent.set_defaults(func=lazy_handler("tunneld.cli._agent_run", "run"))
