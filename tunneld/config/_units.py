"""Value types with human units: durations, byte sizes, host:port pairs."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunneld._address import format_host_port

__all__ = [
    "ByteSize",
    "Duration",
    "HostPort",
    "parse_byte_size",
    "parse_duration",
    "parse_host_port",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_DURATION_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_FACTOR = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A non-negative span of time; written in config as "250ms", "30s", "5m", "1h30m", "7d"."""

    seconds: float

    def __str__(self) -> str:
        return format_duration(self.seconds)


@dataclass(frozen=True, slots=True, order=True)
class ByteSize:
    """A number of bytes; written in config as 65536, "64KiB", "1.5MB", "6MiB"."""

    bytes: int

    def __int__(self) -> int:
        return self.bytes


@dataclass(frozen=True, slots=True)
class HostPort:
    """An address to listen on or connect to: "127.0.0.1:7421", "[::1]:0", "example.org:443"."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_host_port(self.host, self.port)


def parse_duration(text: str) -> Duration:
    """Parse "1h30m" and friends; raises ValueError on anything else."""
    compact = text.replace(" ", "")
    if not compact:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(f"not a duration: {text!r}")
    return Duration(total)


def format_duration(seconds: float) -> str:
    """The shortest exact config spelling of a duration (used in --help and errors)."""
    for unit, factor in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    return f"{seconds:g}s"


def parse_byte_size(value: int | str) -> ByteSize:
    """Parse 65536, "64KiB", "1.5 MB"; raises ValueError on anything else."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative size")
        return ByteSize(value)
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a size: {value!r}")
    factor = _SIZE_FACTOR[(match.group(2) or "b").lower()]
    return ByteSize(int(float(match.group(1)) * factor))


def parse_host_port(text: str) -> HostPort:
    """Parse "host:port" or "[v6]:port"; the port must be 0-65535 (0 picks a free one)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"not HOST:PORT: {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"not HOST:PORT: {text!r}")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return HostPort(host, int(port_text))
