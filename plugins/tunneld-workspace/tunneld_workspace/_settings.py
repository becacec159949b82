"""``[plugins.workspace]``: the plugin's own config table, validated here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tunneld.config import parse_byte_size

__all__ = ["AGENT_PROPERTY", "DEFAULT_MAX_OUTPUT", "Settings", "parse_settings"]

DEFAULT_MAX_OUTPUT: Final = 64 * 1024
_MAX_OUTPUT_RANGE: Final = (1024, 16 * 2**20)

AGENT_PROPERTY: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": 253,
    "description": "The agent to act on (a name from list_agents).",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``[plugins.workspace]`` may set.

    ``max_output``: bytes of stdout and of stderr (each) that execute_command returns;
    beyond it the middle of the output is dropped and the result says how much.
    ``progress_interval``: seconds between progress/log notifications of a running
    command (not a config key: tests shorten it).
    """

    max_output: int = DEFAULT_MAX_OUTPUT
    progress_interval: float = 1.0


def parse_settings(config: Mapping[str, Any]) -> Settings:
    """Validate ``[plugins.workspace]``.

    Raises:
        ValueError: an unknown key or a bad value; the message names the key.
    """
    known = {"max_output"}
    for key in config:
        if key not in known:
            raise ValueError(
                f"[plugins.workspace]: unknown key {key!r} (known: {', '.join(sorted(known))})"
            )
    raw = config.get("max_output", DEFAULT_MAX_OUTPUT)
    low, high = _MAX_OUTPUT_RANGE
    try:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"{type(raw).__name__}")
        max_output = parse_byte_size(raw).bytes
    except ValueError as exc:
        raise ValueError(
            f'[plugins.workspace].max_output: expected a size like 65536 or "64KiB" ({exc})'
        ) from None
    if not low <= max_output <= high:
        raise ValueError(f"[plugins.workspace].max_output: expected {low}..{high} bytes")
    return Settings(max_output=max_output)
