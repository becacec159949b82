"""Building the ``tunneld`` parser, or running a client command's code path, loads no
server stack: `tunneld dial` runs once per ssh connection (a ProxyCommand), and every
CLI invocation builds the whole parser."""

from __future__ import annotations

import subprocess
import sys

# The daemon's, control server's and agent's stacks: only their own commands load them.
HEAVY = (
    "tunneld.net.overlay",
    "tunneld.control._server",
    "tunneld.control._coordinator",
    "tunneld.mcp",
    "tunneld.oauth._daemon",
    "tunneld.plugins",
    "tunneld.agent._services",
)


def loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return set(out.split())


def test_building_the_parser_loads_no_server_stack() -> None:
    loaded = loaded_after("from tunneld.cli import build_parser\nbuild_parser()")
    assert not loaded & set(HEAVY)


def test_the_dial_client_loads_no_server_stack() -> None:
    loaded = loaded_after(
        "from tunneld.cli import build_parser\n"
        "args = build_parser().parse_args(['dial', 'web1', '22'])\n"
        "from tunneld.daemon._client import LocalApiClient\n"
        "from tunneld.agent.client import AgentClient\n"
        "from tunneld.agent.transfer import download\n"
    )
    assert not loaded & set(HEAVY)


def test_a_server_command_still_finds_its_stack() -> None:
    # The lazy handlers resolve: the names they import exist.
    loaded = loaded_after(
        "import tunneld.cli._control_run, tunneld.cli._agent_run, tunneld.cli._daemon_run"
    )
    assert {"tunneld.control._server", "tunneld.net.overlay", "tunneld.mcp"} <= loaded
