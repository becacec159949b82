"""Tool plugins: discovery from the ``tunneld`` entry-point group, loading, reload.

See ``docs/plugins.md`` for writing a plugin and :mod:`tunneld.hookspecs` for the hooks.
"""

from __future__ import annotations

from tunneld._plugins import (
    ENTRY_POINT_GROUP,
    HOOK_NAMES,
    PluginError,
    PluginManager,
    PluginProblem,
)

__all__ = ["ENTRY_POINT_GROUP", "HOOK_NAMES", "PluginError", "PluginManager", "PluginProblem"]
