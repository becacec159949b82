"""The control server's default relay and STUN server, and ``[control]``'s relay limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tunneld.config._sections import ControlConfig
from tunneld.control._derp_relay import DerpRelay, RelayLimits
from tunneld.control._server import RelayFactory, StunServe
from tunneld.control._stun import serve_stun

__all__ = ["default_relay_factory", "default_stun_serve", "relay_limits"]


def relay_limits(config: ControlConfig) -> RelayLimits:
    """The relay's limits with what ``[control]`` sets (``relay_rate_limit``,
    ``relay_queue_packets``)."""
    return RelayLimits(
        bytes_per_second=int(config.relay_rate_limit * 1024 * 1024),
        send_queue_packets=config.relay_queue_packets,
    )


def default_relay_factory(limits: RelayLimits | None = None) -> RelayFactory:
    """Builds the DERP relay served at ``/derp`` (``limits``: ``RelayLimits()``)."""

    def build(private_key: bytes, authorize: Callable[[bytes], Awaitable[bool]]) -> DerpRelay:
        return DerpRelay(private_key, authorize=authorize, limits=limits)

    return build


def default_stun_serve() -> StunServe:
    """The STUN server run on ``[control].stun_listen``."""
    return serve_stun
