"""``[plugins.report_task]``: where reports go and how the queue behaves, validated."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from tunneld.config import parse_duration
from tunneld.proto.coord import validate_name

__all__ = ["KEYS", "Settings", "parse_settings"]

_SECTION: Final = "[plugins.report_task]"
KEYS: Final = (
    "control_url",
    "token",
    "token_file",
    "webhook_url",
    "agent",
    "queue_size",
    "wait",
    "request_timeout",
    "max_attempts",
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated table. A reporter is configured when ``control_url`` (with a token)
    or ``webhook_url`` is set; otherwise the tool is not registered."""

    control_url: str = ""
    token: str = ""
    token_file: str = ""
    webhook_url: str = ""
    agent: str = ""
    queue_size: int = 64
    wait: float = 5.0
    request_timeout: float = 10.0
    max_attempts: int = 5

    @property
    def configured(self) -> bool:
        """Whether any reporter (control plane or webhook) is set."""
        return bool(self.control_url or self.webhook_url)

    @property
    def targets(self) -> tuple[str, ...]:
        """Names of the configured reporters, in delivery order."""
        return tuple(
            name
            for name, url in (("control", self.control_url), ("webhook", self.webhook_url))
            if url
        )

    def default_agent(self) -> str:
        """``agent``, or this host's name when it is a valid agent name, else ``"mcp"``."""
        if self.agent:
            return self.agent
        host = socket.gethostname().split(".", 1)[0]
        return host if validate_name(host) is None else "mcp"


def _url(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_SECTION}.{key}: expected a string URL, got {value!r}")
    if not value:
        return ""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"{_SECTION}.{key}: not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_SECTION}.{key}: expected an http:// or https:// URL, got {value!r}")
    return value


def _seconds(key: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'{_SECTION}.{key}: expected a duration like "5s", got {value!r}')
    try:
        seconds = float(value) if not isinstance(value, str) else parse_duration(value).seconds
    except ValueError:
        raise ValueError(
            f'{_SECTION}.{key}: expected a duration like "5s", got {value!r}'
        ) from None
    if not low <= seconds <= high:
        raise ValueError(f"{_SECTION}.{key}: expected {low:g}s to {high:g}s, got {value!r}")
    return seconds


def _integer(key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{_SECTION}.{key}: expected an integer {low}..{high}, got {value!r}")
    return value


def parse_settings(config: Mapping[str, Any]) -> Settings:
    """Check ``[plugins.report_task]``.

    Raises:
        ValueError: an unknown key or a bad value; the message names the key.
    """
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ValueError(
            f"{_SECTION}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}"
        )
    control_url = _url("control_url", config.get("control_url", ""))
    webhook_url = _url("webhook_url", config.get("webhook_url", ""))
    token = config.get("token", "")
    token_file = config.get("token_file", "")
    for key, value in (("token", token), ("token_file", token_file)):
        if not isinstance(value, str):
            raise ValueError(f"{_SECTION}.{key}: expected a string")
    if token and token_file:
        raise ValueError(f"{_SECTION}.token, token_file: set one, not both")
    if control_url and not (token or token_file):
        raise ValueError(
            f"{_SECTION}.control_url: needs a token (token_file = PATH, or token = ...)"
        )
    agent = config.get("agent", "")
    if not isinstance(agent, str) or (agent and validate_name(agent) is not None):
        raise ValueError(
            f"{_SECTION}.agent: expected an agent name (letters, digits, '.', '_', '-'),"
            f" got {agent!r}"
        )
    return Settings(
        control_url=control_url.rstrip("/"),
        token=token,
        token_file=token_file,
        webhook_url=webhook_url,
        agent=agent,
        queue_size=_integer("queue_size", config.get("queue_size", 64), 1, 10_000),
        wait=_seconds("wait", config.get("wait", "5s"), 0, 60),
        request_timeout=_seconds("request_timeout", config.get("request_timeout", "10s"), 0.1, 300),
        max_attempts=_integer("max_attempts", config.get("max_attempts", 5), 1, 100),
    )
