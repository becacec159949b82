"""TOML → frozen dataclasses, with errors that name the file, the key path and the expectation.

Every config section is a frozen dataclass whose field types drive conversion:
``bool``, ``int``, ``float``, ``str``, ``Path``, ``Duration``, ``ByteSize``, ``HostPort``,
``X | None``, ``tuple[X, ...]``, ``Literal[...]``, nested section dataclasses and
``dict[str, object]`` (free-form tables, e.g. a plugin's own section validated by the plugin).
A field's ``metadata={"check": fn}`` runs ``fn(value)`` after conversion; it raises
``ValueError`` with the expectation text to reject a value.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from tunneld.config._units import (
    ByteSize,
    Duration,
    HostPort,
    parse_byte_size,
    parse_duration,
    parse_host_port,
)

__all__ = ["ConfigError", "from_mapping", "read_toml"]

T = TypeVar("T")


class ConfigError(Exception):
    """A config file that cannot be used; the message names file, key path and expectation."""


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def read_toml(path: Path) -> dict[str, Any]:
    """Read and parse a TOML file; raises ConfigError naming the file and the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str) -> T:
    """Build the dataclass ``cls`` from parsed TOML ``data``.

    Raises:
        ConfigError: on unknown keys, wrong types or bad values, as
            ``source: [section].key: expected …, got …``.
    """
    try:
        return _build(cls, data, "")
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc.path}: {exc.message}") from None


def _key_path(section: str, key: str) -> str:
    if not section:
        return f"[{key}]"
    return f"[{section}].{key}"


def _build(cls: type[T], data: Mapping[str, Any], section: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    # A field marked ``extra_tables`` ([plugins]) takes every unknown key whose value is
    # a table, by name: ``[plugins.example]`` → ``tables["example"]``.
    extra = next((n for n, f in fields.items() if f.metadata.get("extra_tables")), None)
    if extra is not None:
        del fields[extra]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields and extra is not None:
            if not isinstance(value, dict):
                known = ", ".join(sorted(fields))
                raise _Invalid(
                    _key_path(section, key),
                    f"unknown key; known keys: {known}, and [{section}.NAME] tables"
                    f" (got {_show(value)})",
                )
            kwargs.setdefault(extra, {})[key] = dict(value)
            continue
        if name not in fields:
            suggestion = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean {suggestion[0]}?)" if suggestion else ""
            known = ", ".join(sorted(fields)) or "none"
            raise _Invalid(_key_path(section, key), f"unknown key{hint}; known keys: {known}")
        field = fields[name]
        sub_section = f"{section}.{key}" if section else key
        converted = _convert(hints[name], value, _key_path(section, key), sub_section)
        check = field.metadata.get("check")
        if check is not None:
            try:
                check(converted)
            except ValueError as exc:
                raise _Invalid(_key_path(section, key), f"{exc}, got {_show(value)}") from None
        kwargs[name] = converted
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [
            n
            for n, f in fields.items()
            if n not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        where = f"[{section}]" if section else "top level"
        raise _Invalid(where, f"missing required key(s): {', '.join(missing)}") from exc


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expect(path: str, what: str, value: object) -> _Invalid:
    return _Invalid(path, f"expected {what}, got {_show(value)}")


def _convert(tp: Any, value: Any, path: str, section: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _convert(args[0], value, path, section)
        raise TypeError(f"unsupported config type {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            return _raise(_expect(path, "one of " + ", ".join(repr(c) for c in choices), value))
        return value
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _expect(path, "a list", value)
        return tuple(_convert(item_tp, v, f"{path}[{i}]", section) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _expect(path, "a table", value)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise _expect(path, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expect(path, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _expect(path, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _expect(path, "a string", value)
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise _expect(path, "a path string", value)
        return Path(value).expanduser()
    if tp is Duration:
        if not isinstance(value, str):
            raise _expect(path, 'a duration like "5m"', value)
        try:
            return parse_duration(value)
        except ValueError:
            raise _expect(path, 'a duration like "5m"', value) from None
    if tp is ByteSize:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _expect(path, 'a size like "64KiB"', value)
        try:
            return parse_byte_size(value)
        except ValueError:
            raise _expect(path, 'a size like "64KiB"', value) from None
    if tp is HostPort:
        if not isinstance(value, str):
            raise _expect(path, 'HOST:PORT like "127.0.0.1:7421"', value)
        try:
            return parse_host_port(value)
        except ValueError:
            raise _expect(path, 'HOST:PORT like "127.0.0.1:7421"', value) from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise _expect(path, "a table", value)
        return _build(tp, value, section)
    raise TypeError(f"unsupported config type {tp}")


def _raise(exc: Exception) -> Any:
    raise exc
