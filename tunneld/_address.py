"""Addresses as people write them: ``host:port`` (IPv6 hosts in brackets), base URLs."""

from __future__ import annotations

__all__ = ["format_address", "format_host", "format_host_port", "websocket_base"]


def format_host(host: str) -> str:
    """``host``, bracketed if it is an IPv6 literal (RFC 3986 §3.2.2), ready for ``:port``."""
    return f"[{host}]" if ":" in host else host


def format_host_port(host: str, port: int) -> str:
    """``host:port``, or ``[v6]:port`` for an IPv6 host."""
    return f"{format_host(host)}:{port}"


def format_address(address: object) -> str:
    """A socket address for logs and messages.

    ``(host, port, ...)`` tuples (IPv4 and IPv6 socket addresses) read as ``host:port``;
    anything else (a Unix socket path, None) as ``str()``.
    """
    if (
        isinstance(address, tuple)
        and len(address) >= 2
        and isinstance(address[0], str)
        and isinstance(address[1], int)
    ):
        return format_host_port(address[0], address[1])
    return str(address)


def websocket_base(http_url: str) -> str:
    """The ``ws://``/``wss://`` twin of an ``http://``/``https://`` base URL, no trailing slash.

    Raises:
        ValueError: ``http_url`` is not http or https.
    """
    url = http_url.rstrip("/")
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(http):
            return ws + url.removeprefix(http)
    raise ValueError("expected an http:// or https:// URL")
