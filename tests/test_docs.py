"""The docs stay true: config.example.toml, README commands and .ci/run agree with the code."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

from tunneld.cli import build_parser
from tunneld.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


def _config_keys(cls: type, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("extra_tables"):
            continue  # [plugins.NAME] tables, not a key (documented as a comment)
        tp = hints[field.name]
        path = f"{prefix}{field.name}"
        # Section tables recurse; value types such as Duration are dataclasses too but leaves.
        if isinstance(tp, type) and tp.__module__ == "tunneld.config._sections":
            keys |= _config_keys(tp, f"{path}.")
        else:
            keys.add(path)
    return keys


def _example_keys(table: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in table.items():
        if isinstance(value, dict) and not prefix.startswith("plugins."):
            keys |= _example_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_config_example_loads_cleanly() -> None:
    load_config(ROOT / "config.example.toml")


def test_config_example_documents_every_key() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    missing = _config_keys(Config) - _example_keys(example)
    assert not missing, f"keys missing from config.example.toml: {sorted(missing)}"


def test_config_example_defaults_are_the_real_defaults() -> None:
    assert load_config(ROOT / "config.example.toml") == Config()


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^(python3 .+)$", quick, re.MULTILINE)


def test_readme_quick_start_has_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("tunneld demo")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_every_command_has_help_text() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for choice in sub._choices_actions:  # type: ignore[attr-defined]
        assert choice.help, f"`tunneld {choice.dest}` has no help text"


def _hookspec_names() -> list[str]:
    from tunneld import hookspecs

    return sorted(
        name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "tunneld_spec")
    )


def test_every_hookspec_is_documented_in_the_plugin_guide() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    names = _hookspec_names()
    assert names, "no hookspecs found"
    missing = [name for name in names if f"### `{name}`" not in guide]
    assert not missing, f"hooks without a section in docs/plugins.md: {missing}"


def test_every_hookspec_has_a_test() -> None:
    tests = (ROOT / "tests" / "test_plugins.py").read_text()
    missing = [
        name
        for name in _hookspec_names()
        if f"def {name}(" not in tests and f"async def {name}(" not in tests
    ]
    assert not missing, f"hooks never implemented by a test plugin: {missing}"
