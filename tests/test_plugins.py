"""The plugin manager against real entry points (dist-infos on sys.path, the installed example).

Every hook of tunneld.hookspecs is exercised here by name: register_tools,
register_resources, register_prompts, startup, shutdown.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests._plugin_support import (
    hide_default_on_plugins,
    make_plugin,
    recording_plugin,
)
from tunneld import hookspecs
from tunneld.config import PluginsConfig
from tunneld.plugins import HOOK_NAMES, PluginError, PluginManager


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    hide_default_on_plugins(monkeypatch)
    yield root
    for name in [m for m in sys.modules if m.startswith("tp_")]:
        del sys.modules[name]


def journal(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_hook_names_are_the_hookspecs() -> None:
    specs = {name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "tunneld_spec")}
    assert specs == set(HOOK_NAMES)


def test_broken_plugins_do_not_stop_the_others(site: Path) -> None:
    recording_plugin(site, "good", ["good_echo"])
    make_plugin(site, "broken_import", "raise RuntimeError('no such backend')\n")
    make_plugin(
        site,
        "broken_hook",
        """
        from tunneld.hookspecs import hookimpl

        @hookimpl
        def register_tools(register, config):
            raise KeyError("token_file")
        """,
    )
    make_plugin(
        site,
        "bad_tool",
        """
        from tunneld.hookspecs import hookimpl
        from tunneld.mcp import READ_ONLY, Tool

        @hookimpl
        def register_resources(register, config):
            register("not a resource")
        """,
    )
    manager = PluginManager(PluginsConfig())
    registry = manager.load()
    assert list(registry.tools) == ["good_echo"]
    assert registry.tools["good_echo"].plugin == "good"
    failed = {p["plugin"]: p for p in manager.status()["failed"]}  # type: ignore[union-attr]
    assert failed["broken_import"]["stage"] == "import"
    assert "RuntimeError: no such backend" in failed["broken_import"]["error"]
    assert failed["broken_hook"]["stage"] == "register_tools"
    assert "token_file" in failed["broken_hook"]["error"]
    assert failed["bad_tool"]["stage"] == "register_resources"
    assert "register() takes a Resource or ResourceTemplate, got str" in failed["bad_tool"]["error"]
    assert manager.plugins == ["good"]


def test_strict_fails_with_the_plugins_name(site: Path) -> None:
    recording_plugin(site, "good", ["good_echo"])
    make_plugin(site, "broken_import", "import no_such_module_anywhere\n")
    manager = PluginManager(PluginsConfig(strict=True))
    with pytest.raises(PluginError) as caught:
        manager.load()
    assert "plugin 'broken_import' failed in import" in str(caught.value)
    assert "no_such_module_anywhere" in str(caught.value)
    assert manager.plugins == []  # nothing half-loaded


def test_duplicate_tool_names_name_both_plugins(site: Path) -> None:
    recording_plugin(site, "alpha", ["shared_tool", "alpha_only"])
    recording_plugin(site, "beta", ["beta_only", "shared_tool"])
    manager = PluginManager(PluginsConfig())
    registry = manager.load()
    # Plugins merge in name order: beta is the second and is skipped whole.
    assert sorted(registry.tools) == ["alpha_only", "shared_tool"]
    (problem,) = manager.problems
    assert problem.plugin == "beta"
    assert problem.stage == "duplicate"
    assert "'shared_tool'" in problem.error
    assert "'alpha'" in problem.error
    assert "'beta'" in problem.error
    with pytest.raises(PluginError, match=r"alpha.*beta"):
        PluginManager(PluginsConfig(strict=True)).load()


def test_a_plugin_registering_one_name_twice_fails(site: Path) -> None:
    recording_plugin(site, "twice", ["again", "again"])
    manager = PluginManager(PluginsConfig())
    assert not manager.load().tools
    assert manager.problems[0].stage == "duplicate"


def test_enable_disable_and_extra_enable(site: Path, tmp_path: Path) -> None:
    make_plugin(
        site,
        "optin",
        """
        from tunneld.hookspecs import hookimpl
        from tunneld.mcp import READ_ONLY, Tool
        ENABLED_BY_DEFAULT = False

        async def _h(ctx, args):
            return "x"

        @hookimpl
        def register_tools(register, config):
            register(Tool(name="optin_tool", description="d", handler=_h,
                          annotations=READ_ONLY, input_schema={"type": "object"}))
        """,
    )
    recording_plugin(site, "always", ["always_tool"])
    # Importing this module would fail: a disabled plugin must never be imported.
    make_plugin(site, "never", "raise SystemExit('imported a disabled plugin')\n")

    default = PluginManager(PluginsConfig(disable=("never",)))
    assert sorted(default.load().tools) == ["always_tool"]
    assert "optin" in default.status()["available"]  # type: ignore[operator]
    assert "never" in default.status()["available"]  # type: ignore[operator]
    assert not default.problems

    enabled = PluginManager(PluginsConfig(enable=("optin",), disable=("never",)))
    assert sorted(enabled.load().tools) == ["always_tool", "optin_tool"]

    by_flag = PluginManager(PluginsConfig(disable=("never", "always")), extra_enable=["optin"])
    assert sorted(by_flag.load().tools) == ["optin_tool"]

    # disable wins over enable and --plugin
    off = PluginManager(
        PluginsConfig(enable=("optin",), disable=("optin", "never")), extra_enable=["optin"]
    )
    assert sorted(off.load().tools) == ["always_tool"]

    missing = PluginManager(PluginsConfig(disable=("never",)), extra_enable=["nosuch"])
    missing.load()
    (problem,) = missing.problems
    assert problem.plugin == "nosuch"
    assert "not installed" in problem.error
    assert "optin" in problem.error  # lists what is installed


def test_allowed_tools_filters(site: Path) -> None:
    recording_plugin(site, "many", ["keep_me", "drop_me"])
    manager = PluginManager(PluginsConfig(), allowed_tools=["keep_me", "not_there"])
    assert list(manager.load().tools) == ["keep_me"]


def test_example_plugin_config_validation_message(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real, pip-installed example plugin (plugins/tunneld-example).
    hide_default_on_plugins(monkeypatch)
    bad = PluginsConfig(enable=("example",), tables={"example": {"page_size": "lots"}})
    manager = PluginManager(bad)
    assert not manager.load().tools
    (problem,) = manager.problems
    assert problem.plugin == "example"
    assert problem.stage == "register_tools"
    assert problem.error == (
        "ValueError: [plugins.example].page_size: expected a size like \"64KiB\", got 'lots'"
    )
    with pytest.raises(
        PluginError, match=r"\[plugins.example\].max_pages: expected an integer >= 1"
    ):
        PluginManager(
            PluginsConfig(enable=("example",), strict=True, tables={"example": {"max_pages": 0}})
        ).load()
    good = PluginManager(
        PluginsConfig(enable=("example",), tables={"example": {"page_size": "1KiB"}})
    )
    registry = good.load()
    assert sorted(registry.tools) == ["example_count_lines", "example_stat"]
    assert list(registry.resources) == ["example://about"]
    assert list(registry.prompts) == ["example_describe_file"]
    assert all(t.plugin == "example" for t in registry)
    assert good.configs == {"example": {"page_size": "1KiB"}}


async def test_register_resources_and_register_prompts_are_tagged(site: Path) -> None:
    make_plugin(
        site,
        "rp",
        """
        from tunneld.hookspecs import hookimpl
        from tunneld.mcp import Prompt, Resource, ResourceTemplate

        async def _read(ctx, *args):
            return "text"

        async def _render(ctx, args):
            return []

        @hookimpl
        def register_resources(register, config):
            register(Resource(uri="rp://a", name="a", read=_read))
            register(ResourceTemplate(uri_template="rp://t/{id}", name="t", read=_read))

        @hookimpl
        def register_prompts(register, config):
            register(Prompt(name="rp_prompt", render=_render))
        """,
    )
    registry = PluginManager(PluginsConfig()).load()
    assert registry.resources["rp://a"].plugin == "rp"
    assert registry.templates["rp://t/{id}"].plugin == "rp"
    assert registry.prompts["rp_prompt"].plugin == "rp"


def test_an_unknown_hook_is_reported(site: Path) -> None:
    make_plugin(
        site,
        "typo",
        """
        from tunneld.hookspecs import hookimpl

        @hookimpl
        def register_tool(register, config):
            pass
        """,
    )
    manager = PluginManager(PluginsConfig())
    manager.load()
    (problem,) = manager.problems
    assert problem.stage == "register"
    assert "'register_tool', which is not a tunneld hook" in problem.error


async def test_startup_and_shutdown_hooks(site: Path, tmp_path: Path) -> None:
    log = tmp_path / "journal"
    recording_plugin(site, "rec", ["rec_tool"])
    make_plugin(
        site,
        "badstart",
        """
        from tunneld.hookspecs import hookimpl
        from tunneld.mcp import READ_ONLY, Tool

        async def _h(ctx, args):
            return "x"

        @hookimpl
        def register_tools(register, config):
            register(Tool(name="badstart_tool", description="d", handler=_h,
                          annotations=READ_ONLY, input_schema={"type": "object"}))

        @hookimpl
        async def startup(config):
            raise ConnectionError("webhook unreachable")
        """,
    )
    make_plugin(
        site,
        "slowstop",
        """
        import trio
        from tunneld.hookspecs import hookimpl

        @hookimpl
        def startup(config):
            return None  # a sync hook is fine too

        @hookimpl
        async def shutdown(config):
            await trio.sleep_forever()
        """,
    )
    settings = PluginsConfig(tables={"rec": {"journal": str(log)}})
    manager = PluginManager(settings, shutdown_timeout=0.5)
    registry = manager.load()
    assert "badstart_tool" in registry.tools
    await manager.startup()
    # A failed start-up withdraws the plugin's tools and is reported.
    assert sorted(manager.registry.tools) == ["rec_tool"]
    failed = manager.status()["failed"]
    assert failed == [
        {"plugin": "badstart", "stage": "startup", "error": "ConnectionError: webhook unreachable"}
    ]
    assert journal(log) == ["tp_rec register_tools", "tp_rec startup"]
    await manager.startup()  # idempotent: no second startup
    assert journal(log).count("tp_rec startup") == 1
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            scope.cancel()  # shutdown runs shielded even from a cancelled scope
            await manager.shutdown()
    assert journal(log)[-1] == "tp_rec shutdown"
    strict = PluginManager(PluginsConfig(strict=True, disable=("slowstop",)))
    strict.load()
    with pytest.raises(PluginError, match="plugin 'badstart' failed in startup"):
        await strict.startup()


async def test_reload_starts_new_plugins_and_stops_removed_ones(site: Path, tmp_path: Path) -> None:
    log = tmp_path / "journal"
    recording_plugin(site, "one", ["one_tool"])
    recording_plugin(site, "two", ["two_tool"])
    tables = {"one": {"journal": str(log)}, "two": {"journal": str(log)}}
    manager = PluginManager(PluginsConfig(disable=("two",), tables=tables))
    manager.load()
    await manager.startup()
    assert sorted(manager.registry.tools) == ["one_tool"]
    registry = await manager.reload(PluginsConfig(disable=("one",), tables=tables))
    assert sorted(registry.tools) == ["two_tool"]
    assert journal(log) == [
        "tp_one register_tools",
        "tp_one startup",
        "tp_two register_tools",
        "tp_one shutdown",
        "tp_two startup",
    ]
    # Still enabled across a reload: register again with the new config, no restart.
    registry = await manager.reload(
        PluginsConfig(disable=("one",), tables=tables), allowed_tools=["nothing"]
    )
    assert not registry.tools
    assert journal(log)[-1] == "tp_two register_tools"
    # A strict reload that fails changes nothing.
    make_plugin(site, "broken", "raise ImportError('half installed')\n")
    with pytest.raises(PluginError, match="broken"):
        await manager.reload(PluginsConfig(strict=True, tables=tables))
    assert manager.plugins == ["two"]
    assert journal(log)[-1] == "tp_two register_tools"
    await manager.shutdown()
    assert journal(log)[-1] == "tp_two shutdown"


async def test_a_class_entry_point_keeps_its_instance_across_reloads(site: Path) -> None:
    make_plugin(
        site,
        "klass",
        """
        from tunneld.hookspecs import hookimpl
        from tunneld.mcp import READ_ONLY, Tool

        class Plugin:
            def __init__(self):
                self.started = 0
                self.registered = 0

            @hookimpl
            def register_tools(self, register, config):
                self.registered += 1
                async def handler(ctx, args):
                    return f"started {self.started}, registered {self.registered}"
                register(Tool(name="klass_tool", description="d", handler=handler,
                              annotations=READ_ONLY, input_schema={"type": "object"}))

            @hookimpl
            async def startup(self, config):
                self.started += 1
        """,
        entry_point="tp_klass:Plugin",
    )
    manager = PluginManager(PluginsConfig())
    manager.load()
    await manager.startup()
    await manager.reload()
    registry = await manager.reload()
    handler = registry.tools["klass_tool"].handler
    assert await handler(None, {}) == "started 1, registered 3"  # type: ignore[arg-type]
    assert manager.status()["loaded"][0]["module"] == "tp_klass:Plugin"  # type: ignore[index]


def test_plugins_config_tables_and_errors(tmp_path: Path) -> None:
    from tunneld.config import ConfigError, load_config

    good = tmp_path / "good.toml"
    good.write_text(
        '[plugins]\nenable = ["example"]\nstrict = true\n'
        '[plugins.example]\npage_size = "1KiB"\n[plugins.other]\nx = [1, 2]\n'
        '[mcp]\nlisten = ""\nallowed_tools = ["example_stat"]\n'
    )
    config = load_config(good)
    assert config.plugins.enable == ("example",)
    assert config.plugins.strict is True
    assert config.plugins.tables == {"example": {"page_size": "1KiB"}, "other": {"x": [1, 2]}}
    assert config.mcp.listen == ""
    assert config.mcp.allowed_tools == ("example_stat",)
    for text, expected in [
        ("[plugins]\ngreeting = 1\n", "[plugins].greeting: unknown key; known keys: disable,"),
        ("[plugins]\ntables = 1\n", "[plugins].tables: unknown key"),
        ('[plugins]\nenable = ["a b"]\n', "[plugins].enable: expected plugin"),
        ('[mcp]\nlisten = "nowhere"\n', '[mcp].listen: expected HOST:PORT like "127.0.0.1:7421"'),
        ('[mcp]\nallowed_tools = ["no spaces"]\n', "[mcp].allowed_tools: tool name 'no spaces'"),
        ('[mcp]\nmax_request_size = "1B"\n', "[mcp].max_request_size: expected a size between"),
        ('[mcp]\nsession_idle_timeout = "0s"\n', "[mcp].session_idle_timeout: expected a duration"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(bad)
        assert expected in str(caught.value), (text, str(caught.value))
