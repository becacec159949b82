"""Package facades that import their submodules on first use (PEP 562).

A command such as ``tunneld dial`` (an ssh ProxyCommand, run once per connection)
needs the daemon's small API client, not the overlay, MCP and OAuth stacks behind the
``tunneld.daemon`` facade; importing those cost over a second per run. A lazy facade
keeps ``from tunneld.daemon import Daemon`` working and type-checked (the facade also
imports every name under ``TYPE_CHECKING``) while loading ``_run`` only when asked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each public name to
    the submodule (relative to ``package``, e.g. ``"_run"``) that defines it.

    A name is imported on first access and then cached in the package's namespace, so
    later lookups are plain attribute reads. An unknown name raises ``AttributeError``.
    """

    def __getattr__(name: str) -> Any:
        submodule = exports.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{submodule}")
        value = getattr(module, name)
        vars(importlib.import_module(package))[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*exports, *vars(importlib.import_module(package))})

    return __getattr__, __dir__
