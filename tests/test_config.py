"""The config loader: typed sections, human units, and errors that say where."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunneld.config import (
    ByteSize,
    Config,
    ConfigError,
    Duration,
    HostPort,
    format_duration,
    from_mapping,
    load_config,
    parse_byte_size,
    parse_duration,
    parse_host_port,
)


@dataclass(frozen=True)
class _Inner:
    cert: Path | None = None


def _positive(value: Duration) -> None:
    if value.seconds <= 0:
        raise ValueError("expected a positive duration")


@dataclass(frozen=True)
class _Section:
    idle_timeout: Duration = field(default=Duration(300), metadata={"check": _positive})
    window: ByteSize = ByteSize(262144)
    listen: HostPort = HostPort("127.0.0.1", 7421)
    names: tuple[str, ...] = ()
    enabled: bool = True
    tls: _Inner = field(default_factory=_Inner)
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Top:
    daemon: _Section = field(default_factory=_Section)


def _load(data: dict[str, object]) -> _Top:
    return from_mapping(_Top, data, source="config.toml")


def test_values_with_units_convert_to_their_types() -> None:
    top = _load(
        {
            "daemon": {
                "idle_timeout": "1h30m",
                "window": "6MiB",
                "listen": "[::1]:0",
                "names": ["a", "b"],
                "tls": {"cert": "/etc/cert.pem"},
                "extra": {"anything": 1},
            }
        }
    )
    assert top.daemon.idle_timeout == Duration(5400)
    assert top.daemon.window == ByteSize(6 * 2**20)
    assert top.daemon.listen == HostPort("::1", 0)
    assert top.daemon.names == ("a", "b")
    assert top.daemon.tls.cert == Path("/etc/cert.pem")
    assert top.daemon.extra == {"anything": 1}


def test_absent_tables_take_defaults() -> None:
    assert _load({}) == _Top()


def test_wrong_type_names_file_key_and_expectation() -> None:
    with pytest.raises(ConfigError) as info:
        _load({"daemon": {"idle_timeout": 12}})
    assert str(info.value) == (
        'config.toml: [daemon].idle_timeout: expected a duration like "5m", got 12'
    )


def test_unknown_key_suggests_the_close_match() -> None:
    with pytest.raises(
        ConfigError,
        match=r"\[daemon\]\.idel_timeout: unknown key \(did you "
        r"mean idle_timeout\?\)",
    ):
        _load({"daemon": {"idel_timeout": "5m"}})


def test_unknown_table_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"config.toml: \[deamon\]: unknown key"):
        _load({"deamon": {}})


def test_nested_table_key_path_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\[daemon.tls\]\.cert: expected a path string, got 5"):
        _load({"daemon": {"tls": {"cert": 5}}})


def test_list_item_errors_name_the_index() -> None:
    with pytest.raises(ConfigError, match=r"\[daemon\]\.names\[1\]: expected a string, got 2"):
        _load({"daemon": {"names": ["a", 2]}})


def test_field_check_rejects_bad_values() -> None:
    with pytest.raises(
        ConfigError, match=r"\[daemon\]\.idle_timeout: expected a positive duration, got '0s'"
    ):
        _load({"daemon": {"idle_timeout": "0s"}})


def test_bool_is_not_an_integer() -> None:
    @dataclass(frozen=True)
    class Counts:
        n: int = 1

    with pytest.raises(ConfigError, match="expected an integer, got True"):
        from_mapping(Counts, {"n": True}, source="c.toml")


def test_literal_choices_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[log]\nlevel = "loud"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: [log].level: expected one of 'debug', 'info', 'warning', 'error', got 'loud'"
    )


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[log\nlevel = 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: invalid TOML: .*line 1"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "absent.toml")


def test_no_file_means_defaults() -> None:
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800), ("1.5s", 1.5)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text).seconds == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m5", "5 minutes", "-5s", "5s garbage"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)).seconds == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [(65536, 65536), ("64KiB", 65536), ("1.5MB", 1_500_000), ("6MiB", 6 * 2**20), ("10 B", 10)],
)
def test_sizes_parse(value: int | str, size: int) -> None:
    assert parse_byte_size(value) == ByteSize(size)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7421", HostPort("127.0.0.1", 7421)),
        ("[::1]:0", HostPort("::1", 0)),
        ("example.org:443", HostPort("example.org", 443)),
    ],
)
def test_host_ports_parse(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "::1:80", "host:99999", "[::1]80", "h:p"])
def test_bad_host_ports_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not HOST:PORT"):
        parse_host_port(text)


@given(st.text(max_size=30))
def test_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_duration, parse_byte_size, parse_host_port):
        try:
            parse(text)
        except ValueError:
            pass


def test_control_urls_must_be_http_or_https(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[agent]\ncontrol_url = "control.example.org:7420"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: [agent].control_url: expected an http:// or https:// URL, "
        "got 'control.example.org:7420'"
    )
