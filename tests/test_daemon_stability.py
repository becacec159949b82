"""Resource stability: many dial/close cycles through one daemon leak nothing.

A real control server and an in-process echo agent; an in-process ``Daemon`` serving
its real Unix socket; each cycle dials ``echo`` with ``LocalApiClient.dial``, exchanges
a few bytes and closes. Afterwards file descriptors, trio tasks, leases and memory (RSS)
are back at their baseline, and the whole run used exactly one tunnel (one
``add_tunnel``).

CI runs a 1,000-cycle slice; ``TUNNELD_SLOW=1`` runs the full 10,000 cycles (about
ten times as long, which is too long for every CI run).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests._agent_support import poll_pause
from tests._control_support import Harness, running_server
from tunneld.config import DaemonConfig, Duration
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.daemon._client import LocalApiClient
from tunneld.keys import generate_private_key
from tunneld.net.mux import MuxStream
from tunneld.net.overlay import Overlay, OverlayConfig

WAIT = 30.0
CYCLES = 10_000 if os.environ.get("TUNNELD_SLOW") else 1_000
WARMUP = 100
RSS_GROWTH_LIMIT = 32 * 1024 * 1024  # generous: allocator slack, not a leak per cycle


class CountingOverlay(Overlay):
    """The real overlay; counts ``add_tunnel`` calls (the daemon's tunnel setups)."""

    add_calls = 0

    async def add_tunnel(self, peer: str) -> None:
        self.add_calls += 1
        await super().add_tunnel(peer)


async def echo(peer: str, service: str, stream: MuxStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)
        await stream.send_eof()


def config(h: Harness, name: str) -> OverlayConfig:
    return OverlayConfig(
        name=name,
        private_key=generate_private_key(),
        coordinate_url=h.info.coordinate_url,
        derp_url=h.info.derp_url,
        udp_host="127.0.0.1",
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def task_count() -> int:
    count = 0
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo = [root]
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


def rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-stab-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_dial_close_cycles_return_to_baseline(
    nursery: trio.Nursery, tmp_path: Path, socket_dir: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        agent_token = await h.token("alice", agent="web1")
        user_token = await h.token("alice")

        async def agent_token_provider() -> str:
            return agent_token

        async def user_token_provider() -> str:
            return user_token

        agent = Overlay(config(h, "web1"), agent_token_provider, on_stream=echo)
        await nursery.start(agent.serve)
        laptop = CountingOverlay(config(h, "laptop"), user_token_provider)
        # A long idle timeout: the one tunnel must stay up between cycles.
        settings = DaemonConfig(socket_group="", idle_timeout=Duration(3600.0))
        daemon = Daemon(laptop, settings, notifier=Notifier({}))
        path = socket_dir / "tunneld.sock"
        listener = await open_api_listener(path, mode=0o600)
        client = LocalApiClient(path)
        with trio.CancelScope() as scope:
            await nursery.start(daemon.run, [listener])
            try:

                async def cycle(i: int) -> None:
                    stream = await client.dial("web1", "echo")
                    payload = i.to_bytes(4, "big")
                    await stream.send_all(payload)
                    await stream.send_eof()
                    received = b""
                    while data := await stream.receive_some(65536):
                        received += data
                    await stream.aclose()
                    assert received == payload

                async def settled() -> tuple[int, int]:
                    # Closing is asynchronous on the daemon's side (its dial task ends
                    # when the agent's half-close arrives): wait until the lease is gone.
                    while daemon.tunnels.leases("web1"):
                        await poll_pause()
                    for _ in range(5):  # let finished tasks and closes run to completion
                        await poll_pause()
                    gc.collect()
                    return open_fds(), task_count()

                with trio.fail_after(WAIT):
                    for i in range(WARMUP):
                        await cycle(i)
                    base_fds, base_tasks = await settled()
                base_rss = rss()

                with trio.fail_after(WAIT + CYCLES * 0.05):
                    for i in range(CYCLES):
                        await cycle(i)
                with trio.fail_after(WAIT):
                    while (await settled()) != (base_fds, base_tasks):
                        await poll_pause()
                fds, tasks = await settled()
                assert fds == base_fds
                assert tasks == base_tasks
                assert daemon.tunnels.leases("web1") == 0
                [tunnel] = daemon.tunnels.tunnels()
                assert tunnel.agent == "web1"
                assert laptop.add_calls == 1
                assert rss() - base_rss < RSS_GROWTH_LIMIT
            finally:
                scope.cancel()
