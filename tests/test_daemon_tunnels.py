"""TunnelTable: refcounted leases, idle expiry, cancellation, errors (fake overlay edge)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from _daemon_support import FakeOverlay

from tunneld.daemon import (
    AgentOfflineError,
    NotPermittedError,
    TunnelBackendError,
    TunnelError,
    TunnelState,
    TunnelTable,
    TunnelTableClosedError,
    UnknownAgentError,
    UnreachableError,
)


async def start(nursery: trio.Nursery, backend: FakeOverlay, **kwargs: float) -> TunnelTable:
    table = TunnelTable(backend, **kwargs)
    await nursery.start(table.run)
    return table


async def test_concurrent_leases_share_one_tunnel(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeOverlay()
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend, idle_timeout=60)
        peers: list[str] = []
        all_held = trio.Event()
        release = trio.Event()

        async def hold() -> None:
            async with table.acquire("alpha") as lease:
                peers.append(lease.peer)
                if len(peers) == 50:
                    all_held.set()
                await release.wait()

        async with trio.open_nursery() as holders:
            for _ in range(50):
                holders.start_soon(hold)
            await all_held.wait()
            assert table.leases("alpha") == 50
            [info] = table.tunnels()
            assert info.state is TunnelState.ACTIVE
            release.set()
        assert peers == ["peer-alpha"] * 50
        assert backend.count("add") == 1
        assert table.leases("alpha") == 0
        assert table.tunnels()[0].state is TunnelState.IDLE
        nursery.cancel_scope.cancel()


async def test_idle_expiry_removes_tunnel(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeOverlay()
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend, idle_timeout=300)
        async with table.acquire("alpha"):
            pass
        released = trio.current_time()
        await trio.sleep(299)
        assert backend.count("remove") == 0
        assert table.tunnels()[0].state is TunnelState.IDLE
        await trio.sleep(2)
        assert backend.count("remove") == 1
        assert table.tunnels() == []
        assert backend.live == set()
        assert trio.current_time() - released >= 300
        # A later acquire builds a fresh tunnel.
        async with table.acquire("alpha"):
            assert backend.count("add") == 2
        nursery.cancel_scope.cancel()


async def test_reacquire_during_grace_is_instant(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeOverlay(connect_delay=5.0)
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend, idle_timeout=300)
        async with table.acquire("alpha"):
            pass
        await trio.sleep(200)
        before = trio.current_time()
        async with table.acquire("alpha") as lease:
            assert trio.current_time() == before  # no connect wait at all
            assert lease.peer == "peer-alpha"
            await trio.sleep(1000)  # held past the old idle deadline: not removed
            assert backend.count("remove") == 0
        assert backend.count("add") == 1
        await trio.sleep(301)
        assert backend.count("remove") == 1
        nursery.cancel_scope.cancel()


async def test_cancelled_mid_acquire_leaks_nothing(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeOverlay(connect_delay=10.0)
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend, idle_timeout=30)
        with trio.move_on_after(2) as scope:
            async with table.acquire("alpha"):
                pytest.fail("acquired before the peer was reachable")
        assert scope.cancelled_caught
        assert table.leases("alpha") == 0
        # The connect completes in the background, then idles out.
        await trio.sleep(9 + 31)
        assert table.tunnels() == []
        assert backend.count("remove") == 1
        assert backend.live == set()
        nursery.cancel_scope.cancel()


async def test_crashed_holder_releases(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeOverlay()
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend, idle_timeout=30)
        with pytest.raises(RuntimeError, match="boom"):
            async with table.acquire("alpha"):
                raise RuntimeError("boom")
        assert table.leases("alpha") == 0
        with trio.move_on_after(5):
            async with table.acquire("alpha"):
                await trio.sleep_forever()
        assert table.leases("alpha") == 0
        assert table.tunnels()[0].state is TunnelState.IDLE
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownAgentError("no agent named 'ghost'"), "unknown_agent"),
        (NotPermittedError("not allowed to reach 'ghost'"), "not_permitted"),
        (AgentOfflineError("'ghost' is offline"), "agent_offline"),
        (OSError("socket exploded"), "backend_error"),
    ],
)
async def test_failing_backend_gives_error_and_no_state(
    autojump_clock: trio.abc.Clock, error: Exception, code: str
) -> None:
    backend = FakeOverlay()
    backend.errors["ghost"] = error
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend)
        failures: list[TunnelError] = []

        async def try_acquire() -> None:
            try:
                async with table.acquire("ghost"):
                    pytest.fail("acquired a failing agent")
            except TunnelError as exc:
                failures.append(exc)

        async with trio.open_nursery() as tries:
            for _ in range(3):
                tries.start_soon(try_acquire)
        assert [f.code for f in failures] == [code] * 3
        assert all(f.agent == "ghost" for f in failures)
        assert "ghost" in str(failures[0]) or code == "backend_error"
        if code == "backend_error":
            assert isinstance(failures[0], TunnelBackendError)
            assert "socket exploded" in failures[0].message
        assert backend.count("add") == 1
        assert table.tunnels() == []
        # The next acquire tries again (no cached failure).
        with pytest.raises(TunnelError):
            async with table.acquire("ghost"):
                pass
        assert backend.count("add") == 2
        nursery.cancel_scope.cancel()


async def test_unreachable_peer_times_out_and_is_removed(
    autojump_clock: trio.abc.Clock,
) -> None:
    backend = FakeOverlay()
    backend.never_reachable.add("peer-far")
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend, connect_timeout=15)
        with pytest.raises(UnreachableError) as info:
            async with table.acquire("far"):
                pass
        assert info.value.code == "unreachable"
        assert "'far'" in info.value.message
        await trio.sleep(3)  # the connect task gives up (with its slack) and cleans up
        assert ("remove", "peer-far") in backend.calls
        assert table.tunnels() == []
        assert backend.live == set()
        nursery.cancel_scope.cancel()


async def test_shutdown_removes_tunnels_and_refuses(autojump_clock: trio.abc.Clock) -> None:
    backend = FakeOverlay()
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend)
        async with table.acquire("alpha"), table.acquire("beta"):
            nursery.cancel_scope.cancel()
    assert backend.live == set()
    with pytest.raises(TunnelTableClosedError):
        async with table.acquire("alpha"):
            pass


async def test_acquire_during_removal_waits_for_fresh_tunnel(
    autojump_clock: trio.abc.Clock,
) -> None:
    backend = FakeOverlay()

    async def slow_remove(peer: str) -> None:
        backend.calls.append(("remove", peer))
        await trio.sleep(3)
        backend.live.discard(peer)

    backend.remove_tunnel = slow_remove  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        table = await start(nursery, backend, idle_timeout=10)
        async with table.acquire("alpha"):
            pass
        await trio.sleep(11)  # removal in flight
        assert table.tunnels()[0].state is TunnelState.REMOVING
        async with table.acquire("alpha"):
            assert backend.calls[-1][0] == "wait"
            assert backend.count("add") == 2
            assert backend.count("remove") == 1
            assert "peer-alpha" in backend.live
        nursery.cancel_scope.cancel()
