"""The plugin manager: discover, load and call tool plugins (pluggy, project ``tunneld``).

Plugins are found in the ``tunneld`` entry-point group and imported lazily: nothing is
imported before :meth:`PluginManager.load`, and a disabled plugin is never imported.
An entry point may name a module (registered as is) or a class (instantiated once
without arguments and kept while the plugin stays enabled, so hooks can share state
without module-level singletons). ``ENABLED_BY_DEFAULT = False`` on the module or
class makes a plugin opt-in: it loads only when named in ``[plugins] enable`` or by
``tunneld run --plugin NAME``; ``[plugins] disable`` wins over both.

Each hook implementation is called on its own, with its plugin's ``[plugins.NAME]``
table as ``config``, so every error is attributed to the plugin that raised it. A
plugin that fails (import, hook, duplicate name, start-up) is logged, listed in
:meth:`PluginManager.status` and skipped; with ``strict`` the load raises
:class:`PluginError` instead, naming every failed plugin.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import pluggy
import trio

from tunneld import hookspecs
from tunneld.config import PluginsConfig
from tunneld.log import get_logger
from tunneld.mcp import (
    DuplicateNameError,
    Prompt,
    Registry,
    Resource,
    ResourceTemplate,
    Tool,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_NAMES",
    "PluginError",
    "PluginManager",
    "PluginProblem",
]

log = get_logger(__name__)

ENTRY_POINT_GROUP: Final = "tunneld"
DEFAULT_STARTUP_TIMEOUT: Final = 30.0
DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0

Stage = Literal[
    "discover",
    "import",
    "register",
    "register_tools",
    "register_resources",
    "register_prompts",
    "duplicate",
    "startup",
    "shutdown",
]
_REGISTER_HOOKS: Final = ("register_tools", "register_resources", "register_prompts")
HOOK_NAMES: Final = (*_REGISTER_HOOKS, "startup", "shutdown")
"""Every hook of :mod:`tunneld.hookspecs` (docs and tests check each is covered)."""


class PluginError(Exception):
    """Plugins failed and ``[plugins] strict = true``: start-up (or the reload) fails.

    The message names every failed plugin, the stage and the error.
    """

    def __init__(self, problems: Sequence[PluginProblem]) -> None:
        self.problems = list(problems)
        lines = "; ".join(p.describe() for p in self.problems)
        super().__init__(f"plugin(s) failed with [plugins] strict = true: {lines}")


@dataclass(frozen=True, slots=True)
class PluginProblem:
    """One plugin that was skipped, and why."""

    plugin: str
    stage: Stage
    error: str

    def describe(self) -> str:
        return f"plugin {self.plugin!r} failed in {self.stage}: {self.error}"

    def to_json(self) -> dict[str, str]:
        return {"plugin": self.plugin, "stage": self.stage, "error": self.error}


@dataclass(slots=True)
class _Plugin:
    """A plugin that imported and registered cleanly."""

    name: str
    obj: object
    module: str
    version: str
    tools: list[Tool] = field(default_factory=list)
    resources: list[Resource | ResourceTemplate] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    started: bool = False
    from_class: bool = False
    # The pluggy manager the plugin was registered with (its hook implementations).
    manager: pluggy.PluginManager | None = None


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _discover() -> tuple[dict[str, importlib.metadata.EntryPoint], list[PluginProblem]]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    problems: list[PluginProblem] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        first = found.get(ep.name)
        if first is None:
            found[ep.name] = ep
        elif first.value != ep.value:
            # The same distribution seen twice on sys.path is not a clash; two are.
            problems.append(
                PluginProblem(
                    ep.name,
                    "discover",
                    f"entry point {ep.name!r} is defined twice ({first.value!r} and"
                    f" {ep.value!r}); using {first.value!r}",
                )
            )
    return found, problems


def _enabled_by_default(obj: object) -> bool:
    return bool(getattr(obj, "ENABLED_BY_DEFAULT", True))


class PluginManager:
    """Loads the plugins ``settings`` select and builds the MCP :class:`Registry`.

    ``extra_enable``: opt-in plugins to load besides ``settings.enable`` (``tunneld run
    --plugin NAME``; kept across reloads). ``allowed_tools``: ``[mcp] allowed_tools``.

    Use: :meth:`load` (sync; imports and registration), then ``await``
    :meth:`startup`; :meth:`reload` on SIGHUP; :meth:`shutdown` at exit.
    """

    def __init__(
        self,
        settings: PluginsConfig,
        *,
        allowed_tools: Sequence[str] = (),
        extra_enable: Sequence[str] = (),
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.allowed_tools = tuple(allowed_tools)
        self.extra_enable = tuple(extra_enable)
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.registry = Registry()
        self.problems: list[PluginProblem] = []
        self._plugins: dict[str, _Plugin] = {}
        self._available: list[str] = []
        # Objects of class entry points, one per plugin while it stays enabled.
        self._instances: dict[str, object] = {}

    # -- public ---------------------------------------------------------------------

    @property
    def plugins(self) -> list[str]:
        """Names of the plugins whose tools are being served, in load order."""
        return list(self._plugins)

    @property
    def configs(self) -> dict[str, Mapping[str, Any]]:
        """Each loaded plugin's ``[plugins.NAME]`` table (``ToolContext.config``)."""
        return {name: self._config(name) for name in self._plugins}

    def load(self) -> Registry:
        """Discover, import and register the selected plugins; returns the new registry.

        Does not call ``startup`` hooks (see :meth:`startup`).

        Raises:
            PluginError: with ``strict``, if any plugin failed; nothing is changed then.
        """
        plugins, problems, available = self._load_all(self.settings, self.extra_enable)
        if problems and self.settings.strict:
            raise PluginError(problems)
        self._commit(plugins, problems, available)
        return self.registry

    async def startup(self) -> None:
        """Call the ``startup`` hook of every loaded plugin not yet started; may be async.

        A plugin whose start-up raises (or exceeds ``startup_timeout``) is reported
        and its tools are withdrawn.

        Raises:
            PluginError: with ``strict``, if a start-up failed.
        """
        failed: list[PluginProblem] = []
        for plugin in list(self._plugins.values()):
            if plugin.started:
                continue
            try:
                with trio.fail_after(self.startup_timeout):
                    await self._call_lifecycle(plugin, "startup")
            except trio.TooSlowError:
                failed.append(
                    PluginProblem(
                        plugin.name,
                        "startup",
                        f"startup did not finish within {self.startup_timeout:g}s",
                    )
                )
            except Exception as exc:
                failed.append(PluginProblem(plugin.name, "startup", _error_text(exc)))
            else:
                plugin.started = True
                log.info("plugin.started", plugin=plugin.name)
        if failed:
            for problem in failed:
                self._report(problem)
                self._plugins.pop(problem.plugin, None)
                self._instances.pop(problem.plugin, None)
            self.problems.extend(failed)
            self.registry = self._build_registry(self._plugins.values(), [])
            if self.settings.strict:
                raise PluginError(failed)

    async def shutdown(self) -> None:
        """Call ``shutdown`` on every started plugin, shielded, each within ``shutdown_timeout``.

        Never raises: failures are logged. Safe to call from a cancelled scope.
        """
        plugins = [p for p in self._plugins.values() if p.started]
        await self._shutdown(plugins)

    async def reload(
        self,
        settings: PluginsConfig | None = None,
        *,
        allowed_tools: Sequence[str] | None = None,
    ) -> Registry:
        """Load again with ``settings`` (default: the current ones); returns the new registry.

        Plugins still enabled keep their state (no second ``startup``); newly enabled
        ones start, newly disabled ones shut down. Every ``register_*`` hook runs again
        with the new config.

        Raises:
            PluginError: with (the new) ``strict`` and any failure; nothing changed then
                unless the failure was a new plugin's start-up.
        """
        settings = self.settings if settings is None else settings
        plugins, problems, available = self._load_all(settings, self.extra_enable)
        if problems and settings.strict:
            raise PluginError(problems)
        self.settings = settings
        if allowed_tools is not None:
            self.allowed_tools = tuple(allowed_tools)
        gone = [p for name, p in self._plugins.items() if name not in plugins and p.started]
        for name, plugin in plugins.items():
            old = self._plugins.get(name)
            plugin.started = old is not None and old.started
        await self._shutdown(gone)
        for plugin in gone:
            self._instances.pop(plugin.name, None)
        self._commit(plugins, problems, available)
        await self.startup()
        log.info("plugins.reloaded", plugins=",".join(self._plugins), failed=len(self.problems))
        return self.registry

    def status(self) -> dict[str, object]:
        """For ``GET /v0/status``: loaded plugins, failed ones (name, stage, error), others."""
        return {
            "loaded": [
                {
                    "name": p.name,
                    "module": p.module,
                    "version": p.version,
                    "started": p.started,
                    "tools": sorted(t.name for t in p.tools if t.name in self.registry.tools),
                    "resources": len(p.resources),
                    "prompts": len(p.prompts),
                }
                for p in self._plugins.values()
            ],
            "failed": [p.to_json() for p in self.problems],
            "available": list(self._available),
            "strict": self.settings.strict,
        }

    # -- loading --------------------------------------------------------------------

    def _config(self, name: str, settings: PluginsConfig | None = None) -> Mapping[str, Any]:
        tables = (settings or self.settings).tables
        return tables.get(name, {})

    def _load_all(
        self, settings: PluginsConfig, extra_enable: Sequence[str]
    ) -> tuple[dict[str, _Plugin], list[PluginProblem], list[str]]:
        entry_points, problems = _discover()
        disabled = set(settings.disable)
        asked = [n for n in (*settings.enable, *extra_enable) if n not in disabled]
        for name in dict.fromkeys(asked):
            if name not in entry_points:
                installed = ", ".join(sorted(entry_points)) or "none"
                problems.append(
                    PluginProblem(
                        name,
                        "discover",
                        f"plugin {name!r} is enabled but not installed (no entry point"
                        f" {name!r} in group {ENTRY_POINT_GROUP!r}; installed: {installed})",
                    )
                )
        manager = pluggy.PluginManager(hookspecs.PROJECT)
        manager.add_hookspecs(hookspecs)
        plugins: dict[str, _Plugin] = {}
        available: list[str] = []
        for name in sorted(entry_points):
            if name in disabled:
                available.append(name)
                continue
            ep = entry_points[name]
            try:
                loaded = ep.load()
                obj = self._instantiate(name, loaded)
            except Exception as exc:
                problems.append(PluginProblem(name, "import", _error_text(exc)))
                continue
            if name not in asked and not _enabled_by_default(obj):
                available.append(name)
                continue
            plugin = _Plugin(
                name=name,
                obj=obj,
                module=ep.value,
                version=ep.dist.version if ep.dist is not None else "",
                from_class=isinstance(loaded, type),
            )
            problem = self._register(manager, plugin, self._config(name, settings))
            if problem is not None:
                problems.append(problem)
                continue
            plugins[name] = plugin
        for name in settings.tables:
            if name not in plugins and name not in {p.plugin for p in problems}:
                log.info("plugins.config_unused", plugin=name)
        registry_problems: list[PluginProblem] = []
        self._build_registry(plugins.values(), registry_problems)
        for problem in registry_problems:
            plugins.pop(problem.plugin, None)
        return plugins, problems + registry_problems, available

    def _instantiate(self, name: str, loaded: object) -> object:
        if not isinstance(loaded, type):
            return loaded
        instance = self._instances.get(name)
        if type(instance) is not loaded:
            instance = loaded()
        return instance

    def _register(
        self, manager: pluggy.PluginManager, plugin: _Plugin, config: Mapping[str, Any]
    ) -> PluginProblem | None:
        name = plugin.name
        try:
            manager.register(plugin.obj, name=name)
        except Exception as exc:
            return PluginProblem(name, "register", _error_text(exc))
        for caller in manager.get_hookcallers(plugin.obj) or []:
            if caller.spec is None:
                return PluginProblem(
                    name,
                    "register",
                    f"implements {caller.name!r}, which is not a tunneld hook"
                    f" (known: {', '.join(HOOK_NAMES)})",
                )
        sinks: dict[str, Callable[[Any], None]] = {
            "register_tools": self._sink(plugin.tools, Tool, "register_tools"),
            "register_resources": self._sink(
                plugin.resources, (Resource, ResourceTemplate), "register_resources"
            ),
            "register_prompts": self._sink(plugin.prompts, Prompt, "register_prompts"),
        }
        for hook in _REGISTER_HOOKS:
            try:
                for impl in _impls(manager, hook, name):
                    _call(impl, {"register": sinks[hook], "config": config})
            except Exception as exc:
                return PluginProblem(name, hook, _error_text(exc))
        plugin.tools = [dataclasses.replace(t, plugin=name) for t in plugin.tools]
        plugin.resources = [dataclasses.replace(r, plugin=name) for r in plugin.resources]
        plugin.prompts = [dataclasses.replace(p, plugin=name) for p in plugin.prompts]
        plugin.manager = manager
        return None

    @staticmethod
    def _sink(into: list[Any], kind: type | tuple[type, ...], hook: str) -> Callable[[Any], None]:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)

        def register(entry: Any) -> None:
            if not isinstance(entry, kind):
                raise TypeError(f"{hook}: register() takes a {names}, got {type(entry).__name__}")
            into.append(entry)

        return register

    def _build_registry(
        self, plugins: Iterable[_Plugin], problems: list[PluginProblem], *, warn: bool = False
    ) -> Registry:
        """Merge the plugins' entries in order; a plugin with a clash is left out whole."""
        registry = Registry()
        for plugin in plugins:
            trial = Registry()
            trial.tools = dict(registry.tools)
            trial.resources = dict(registry.resources)
            trial.templates = dict(registry.templates)
            trial.prompts = dict(registry.prompts)
            try:
                for tool in plugin.tools:
                    trial.add_tool(tool)
                for resource in plugin.resources:
                    trial.add_resource(resource)
                for prompt in plugin.prompts:
                    trial.add_prompt(prompt)
            except DuplicateNameError as exc:
                problems.append(PluginProblem(plugin.name, "duplicate", str(exc)))
                continue
            registry = trial
        unknown = set(self.allowed_tools) - set(registry.tools)
        if unknown and warn:
            log.warning("plugins.allowed_tools_unknown", tools=",".join(sorted(unknown)))
        registry.restrict_tools(self.allowed_tools)
        return registry

    def _commit(
        self, plugins: dict[str, _Plugin], problems: list[PluginProblem], available: list[str]
    ) -> None:
        for problem in problems:
            self._report(problem)
        self._plugins = plugins
        self.problems = problems
        self._available = available
        for name, plugin in plugins.items():
            if plugin.from_class:
                self._instances[name] = plugin.obj
        self.registry = self._build_registry(plugins.values(), [], warn=True)
        log.info(
            "plugins.loaded",
            plugins=",".join(plugins),
            tools=len(self.registry.tools),
            failed=len(problems),
        )

    def _report(self, problem: PluginProblem) -> None:
        log.warning(
            "plugin.failed", plugin=problem.plugin, stage=problem.stage, error=problem.error
        )

    # -- lifecycle ------------------------------------------------------------------

    async def _call_lifecycle(self, plugin: _Plugin, hook: str) -> None:
        if plugin.manager is None:
            return
        for impl in _impls(plugin.manager, hook, plugin.name):
            result = _call(impl, {"config": self._config(plugin.name)})
            if inspect.isawaitable(result):
                await result

    async def _shutdown(self, plugins: Sequence[_Plugin]) -> None:
        for plugin in plugins:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.shutdown_timeout
                try:
                    await self._call_lifecycle(plugin, "shutdown")
                except Exception as exc:
                    self._report(PluginProblem(plugin.name, "shutdown", _error_text(exc)))
            if scope.cancelled_caught:
                self._report(
                    PluginProblem(
                        plugin.name,
                        "shutdown",
                        f"shutdown did not finish within {self.shutdown_timeout:g}s",
                    )
                )
            plugin.started = False


def _impls(manager: pluggy.PluginManager, hook: str, plugin: str) -> list[Any]:
    caller = getattr(manager.hook, hook)
    return [impl for impl in caller.get_hookimpls() if impl.plugin_name == plugin]


def _call(impl: Any, kwargs: Mapping[str, Any]) -> Any:
    # pluggy passes only the arguments an implementation names, by position.
    return impl.function(*[kwargs[name] for name in impl.argnames])
