"""Test helpers for the overlay tests: standalone DERP relays and a delaying TCP proxy.

Everything is real and on loopback: a :class:`~tunneld.control.DerpRelay` behind our
own HTTP server (as ``tunneld control`` mounts it), and a TCP proxy that holds every
chunk for a fixed time in each direction, standing in for a relay far away.
"""

from __future__ import annotations

import trio

from tunneld.control import DerpRelay, RelayLimits
from tunneld.http import HttpLimits, HttpServer, Router
from tunneld.keys import generate_private_key


class StandaloneRelay:
    """A DERP relay on its own HTTP server; :meth:`start` again after :meth:`kill` to
    restart it on the same port (a new process: nothing of the old state survives)."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits  # used by the next start
        self.private_key = generate_private_key()
        self.port = 0
        self.relay: DerpRelay | None = None
        self._scope: trio.CancelScope | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/derp"

    async def start(self, nursery: trio.Nursery) -> str:
        """Serve (on the previous port after a restart); returns the relay's URL."""

        async def allow(_key: bytes) -> bool:
            return True

        relay = DerpRelay(self.private_key, authorize=allow, limits=self.limits)
        router = Router()
        router.websocket(
            "/derp", relay.handle_websocket, subprotocols=["derp"], require_subprotocol=True
        )
        server = HttpServer(router, limits=HttpLimits(max_connections=256))

        async def serve(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as inner:
                    _, port = await inner.start(server.serve_tcp, "127.0.0.1", self.port)
                    task_status.started(port)

        self.port = await nursery.start(serve)
        self.relay = relay
        self.starts += 1
        return self.url

    def kill(self) -> None:
        """Stop at once: listener and every connection close, no RESTARTING frame."""
        assert self._scope is not None
        self._scope.cancel()
        self.relay = None


class DelayProxy:
    """A TCP proxy that delays every chunk by ``delay`` seconds in each direction."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        # Chunks pass through a queue released ``delay`` after arrival: latency, not a
        # cap on throughput (bounded: the queue holds at most 64 chunks).
        send, receive = trio.open_memory_channel[tuple[float, bytes]](64)

        async def release() -> None:
            async for due, data in receive:
                await trio.sleep_until(due)
                try:
                    await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release)
            async with send:
                while True:
                    try:
                        data = await source.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    if not data:
                        break
                    await send.send((trio.current_time() + self.delay, data))


def relay_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/derp"
