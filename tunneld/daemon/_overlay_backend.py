"""The tunnel table's backend over the real :class:`~tunneld.net.overlay.Overlay`."""

from __future__ import annotations

from typing import Final

import trio

from tunneld.daemon._tunnels import AgentOfflineError, UnknownAgentError, UnreachableError
from tunneld.net.overlay import Overlay, PeerStatus

__all__ = ["OverlayTunnels", "find_peer"]

# The overlay offers no "peer changed" event publicly; its status is cheap to poll.
_POLL_SECONDS: Final = 0.05


def find_peer(overlay: Overlay, reference: str) -> PeerStatus | None:
    """The status of the peer ``reference`` names (node id, name or ``owner/name``)."""
    peers = overlay.status().get("peers")
    for peer in peers if isinstance(peers, list) else ():
        if isinstance(peer, PeerStatus) and reference in (
            peer.id,
            peer.name,
            f"{peer.owner}/{peer.name}",
        ):
            return peer
    return None


class OverlayTunnels:
    """:class:`~tunneld.daemon.TunnelBackend` for an :class:`Overlay`.

    The peer id is the agent reference itself (the overlay resolves names). The
    coordinator answers ``not_found`` alike for unknown agents and agents we may not
    reach (so as not to reveal which exist): both become :class:`UnknownAgentError`.
    """

    def __init__(self, overlay: Overlay) -> None:
        self._overlay = overlay
        self._errors_before: dict[str, object] = {}

    async def add_tunnel(self, agent: str) -> str:
        self._errors_before[agent] = self._overlay.last_coordinator_error
        await self._overlay.add_tunnel(agent)
        return agent

    async def wait_reachable(self, peer: str, deadline: float) -> None:
        before = self._errors_before.pop(peer, None)
        while True:
            error = self._overlay.last_coordinator_error
            if error is not None and error is not before and error.peer == peer:
                if error.code == "not_found":
                    raise UnknownAgentError(
                        f"no agent {peer!r} that this node may reach", agent=peer
                    )
                raise UnreachableError(
                    f"the coordinator refused the tunnel to {peer!r}: {error.message}"
                    f" ({error.code})",
                    agent=peer,
                )
            status = find_peer(self._overlay, peer)
            if status is not None and status.handshake:
                return
            if trio.current_time() >= deadline:
                if status is None or not status.online:
                    raise AgentOfflineError(f"agent {peer!r} is offline", agent=peer)
                raise UnreachableError(
                    f"agent {peer!r} is online but no WireGuard handshake completed"
                    " (no working path over the relay or UDP)",
                    agent=peer,
                )
            await trio.sleep(min(_POLL_SECONDS, max(0.0, deadline - trio.current_time())))

    async def remove_tunnel(self, peer: str) -> None:
        await self._overlay.remove_tunnel(peer)
