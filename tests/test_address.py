from __future__ import annotations

import pytest

from tunneld._address import format_address, format_host_port, websocket_base


def test_host_port_brackets_ipv6_only() -> None:
    assert format_host_port("127.0.0.1", 7420) == "127.0.0.1:7420"
    assert format_host_port("example.org", 443) == "example.org:443"
    assert format_host_port("::1", 0) == "[::1]:0"


def test_socket_addresses_read_as_host_port() -> None:
    assert format_address(("127.0.0.1", 58140)) == "127.0.0.1:58140"
    assert format_address(("fe80::1", 51820, 0, 2)) == "[fe80::1]:51820"
    # Unix sockets: the path (or the empty name of an unbound client) as it is.
    assert format_address("/run/tunneld/agent.sock") == "/run/tunneld/agent.sock"
    assert format_address("") == ""
    assert format_address(None) == "None"


def test_websocket_base_maps_http_schemes_and_drops_the_trailing_slash() -> None:
    assert websocket_base("http://127.0.0.1:7420/") == "ws://127.0.0.1:7420"
    assert websocket_base("https://control.example.org") == "wss://control.example.org"
    with pytest.raises(ValueError, match="expected an http:// or https:// URL"):
        websocket_base("ftp://control.example.org")
