"""The ``[daemon]`` config section: values, defaults and refusals."""

from __future__ import annotations

import pytest

from tunneld.config import Config, ConfigError, DaemonConfig, Duration, from_mapping


def test_daemon_section_values() -> None:
    config = from_mapping(
        Config,
        {
            "daemon": {
                "socket": "/tmp/t.sock",
                "socket_group": "",
                "socket_mode": 0o666,
                "idle_timeout": "90s",
                "connect_timeout": "2s",
            }
        },
        source="test.toml",
    )
    assert config.daemon == DaemonConfig("/tmp/t.sock", "", 0o666, Duration(90.0), Duration(2.0))
    assert Config().daemon.idle_timeout == Duration(300.0)


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("socket_mode", 0o1777, r"\[daemon\].socket_mode: expected"),
        ("idle_timeout", "-1s", r"\[daemon\].idle_timeout: expected"),
        ("connect_timeout", "0s", r"\[daemon\].connect_timeout: expected"),
    ],
)
def test_daemon_section_refuses_bad_values(key: str, value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        from_mapping(Config, {"daemon": {key: value}}, source="test.toml")
