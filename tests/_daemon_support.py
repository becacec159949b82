"""Shared pieces of the daemon tests: the fake overlay edge."""

from __future__ import annotations

import trio


class FakeOverlay:
    """The edge: records calls; agents listed in ``errors`` fail add_tunnel."""

    def __init__(self, *, connect_delay: float = 1.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.connect_delay = connect_delay
        self.errors: dict[str, Exception] = {}
        self.never_reachable: set[str] = set()
        self.live: set[str] = set()

    async def add_tunnel(self, agent: str) -> str:
        self.calls.append(("add", agent))
        await trio.sleep(0.1)
        if agent in self.errors:
            raise self.errors[agent]
        peer = f"peer-{agent}"
        self.live.add(peer)
        return peer

    async def wait_reachable(self, peer: str, deadline: float) -> None:
        self.calls.append(("wait", peer))
        if peer in self.never_reachable:
            await trio.sleep_forever()
        await trio.sleep(self.connect_delay)

    async def remove_tunnel(self, peer: str) -> None:
        self.calls.append(("remove", peer))
        await trio.sleep(0.1)
        self.live.discard(peer)

    def count(self, kind: str) -> int:
        return sum(1 for call, _ in self.calls if call == kind)
