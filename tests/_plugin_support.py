"""Throw-away plugin packages: a module plus a dist-info with a ``tunneld`` entry point.

Written into a directory that the test puts on ``sys.path`` (or ``PYTHONPATH`` for a
subprocess), so discovery goes through the real ``importlib.metadata`` entry points,
exactly as for a pip-installed plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

# A plugin that records every hook call in the file named by its config's "journal".
RECORDING_PLUGIN = """
from tunneld.hookspecs import hookimpl
from tunneld.mcp import READ_ONLY, Tool

TOOLS = {tools!r}

def _journal(config, event):
    if "journal" in config:
        with open(config["journal"], "a") as f:
            f.write(f"{{__name__}} {{event}}\\n")

async def _echo(ctx, args):
    return f"{{ctx.plugin}}:{{args.get('text', '')}}"

@hookimpl
def register_tools(register, config):
    _journal(config, "register_tools")
    for name in TOOLS:
        schema = {{"type": "object", "properties": {{"text": {{"type": "string"}}}}}}
        register(Tool(name=name, description="echo", handler=_echo, annotations=READ_ONLY,
                      input_schema=schema))

@hookimpl
async def startup(config):
    _journal(config, "startup")

@hookimpl
async def shutdown(config):
    _journal(config, "shutdown")
"""


def make_plugin(
    root: Path,
    name: str,
    source: str,
    *,
    module: str | None = None,
    entry_point: str | None = None,
) -> str:
    """Write module ``module`` (default ``tp_NAME``) with ``source`` and a dist-info whose
    entry point ``NAME`` in group ``tunneld`` names ``entry_point`` (default the module).
    Returns the module name."""
    module = module or f"tp_{name}"
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist = root / f"tunneld_test_{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: tunneld-test-{name}\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(f"[tunneld]\n{name} = {entry_point or module}\n")
    (dist / "RECORD").write_text("")
    importlib.invalidate_caches()
    sys.modules.pop(module, None)
    return module


def recording_plugin(root: Path, name: str, tools: list[str]) -> str:
    """A plugin ``name`` registering echo tools ``tools`` and journaling its hooks."""
    return make_plugin(root, name, RECORDING_PLUGIN.format(tools=tools))


# First-party plugins that load by default once installed (the README set-up installs
# them). Tests of the plugin machinery hide them, so that a registry holds only the
# plugins the test writes (and the opt-in ones it enables).
DEFAULT_ON_PLUGINS = ("workspace", "report_task")
DISABLE_DEFAULT_ON = (
    "[plugins]\ndisable = [" + ", ".join(f'"{n}"' for n in DEFAULT_ON_PLUGINS) + "]\n"
)


def hide_default_on_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``importlib.metadata`` (in this process) not list :data:`DEFAULT_ON_PLUGINS`."""
    real = importlib.metadata.entry_points

    def entry_points(**params: Any) -> Any:
        found = real(**params)
        if params.get("group") != "tunneld":
            return found
        return importlib.metadata.EntryPoints(
            ep for ep in found if ep.name not in DEFAULT_ON_PLUGINS
        )

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
