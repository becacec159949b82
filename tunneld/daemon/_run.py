"""The daemon: one overlay, the tunnel table, the local API and systemd, together."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import trio

from tunneld import __version__
from tunneld.config import DaemonConfig
from tunneld.daemon._events import EventHub
from tunneld.daemon._local_api import LocalApi
from tunneld.daemon._overlay_backend import OverlayTunnels
from tunneld.daemon._systemd import Notifier
from tunneld.daemon._tunnels import TunnelTable
from tunneld.http import HttpError
from tunneld.log import get_logger
from tunneld.net.overlay import Overlay, PeerStatus

__all__ = ["Daemon"]

log = get_logger(__name__)

DEFAULT_SHUTDOWN_GRACE: Final = 5.0


class Daemon:
    """``tunneld run``: serve an :class:`Overlay` to local programs.

    ``reload_settings`` re-reads the ``[daemon]`` config (SIGHUP and ``POST
    /v0/reload``); it may raise to refuse a bad file, and the daemon keeps running
    with the old settings. Only ``idle_timeout`` and ``connect_timeout`` take effect
    on reload; the socket and the node identity need a restart.
    """

    def __init__(
        self,
        overlay: Overlay,
        settings: DaemonConfig,
        *,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], DaemonConfig] | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    ) -> None:
        self.overlay = overlay
        self.settings = settings
        self.notifier = notifier if notifier is not None else Notifier({})
        self._reload_settings = reload_settings
        self.shutdown_grace = shutdown_grace
        self.events = EventHub()
        self.tunnels = TunnelTable(
            OverlayTunnels(overlay),
            idle_timeout=settings.idle_timeout.seconds,
            connect_timeout=settings.connect_timeout.seconds,
            on_event=self.events.publish,
        )
        self.api = LocalApi(
            tunnels=self.tunnels,
            open_stream=overlay.open_stream,
            status=self._status,
            agents=self._agents,
            events=self.events.subscribe,
            reload=self._reload_endpoint,
            write_group=settings.socket_group or None,
        )
        self._stopping = False

    async def run(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        handle_signals: bool = True,
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until SIGTERM/SIGINT (with ``handle_signals``), :meth:`stop` or cancellation.

        Reports the local API's addresses once the overlay, the tunnel table and the
        API are up, which is also when ``READY=1`` goes to systemd.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.overlay.serve)
            await nursery.start(self.tunnels.run)
            addresses = await nursery.start(self._serve_api, listeners, nursery.cancel_scope)
            await nursery.start(self.notifier.run_watchdog)
            if handle_signals:
                await nursery.start(self._signals)
            self.notifier.ready(f"serving the local API on {len(listeners)} socket(s)")
            log.info("daemon.ready", name=self.overlay.config.name)
            task_status.started(addresses)

    async def _serve_api(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[list[object]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await self.api.serve(listeners, task_status=task_status)
            # Graceful: tell the coordinator our tunnels are gone while it still hears us.
            await self.tunnels.aclose()
        finally:
            # The API finished its shutdown: the rest goes with it.
            scope.cancel()

    def stop(self) -> None:
        """Begin a graceful shutdown: refuse new requests, give open ones the grace."""
        if not self._stopping:
            self._stopping = True
            self.notifier.stopping()
            log.info("daemon.stopping", grace=self.shutdown_grace)
        self.api.shutdown(self.shutdown_grace)

    async def _signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    self.stop()

    def reload(self) -> Mapping[str, object]:
        """Re-read the settings that can change at run time; says what happened."""
        self.notifier.reloading()
        try:
            if self._reload_settings is None:
                return {"reloaded": False, "reason": "no config file to reload"}
            try:
                settings = self._reload_settings()
            except Exception as exc:
                log.warning("daemon.reload_failed", error=str(exc))
                return {"reloaded": False, "reason": str(exc)}
            self.settings = settings
            self.tunnels.idle_timeout = settings.idle_timeout.seconds
            self.tunnels.connect_timeout = settings.connect_timeout.seconds
            log.info("daemon.reloaded", idle_timeout=settings.idle_timeout.seconds)
            return {"reloaded": True}
        finally:
            self.notifier.ready("reloaded")

    async def _reload_endpoint(self) -> Mapping[str, object]:
        await trio.lowlevel.checkpoint()
        result = self.reload()
        if not result.get("reloaded"):
            raise HttpError(422, str(result.get("reason")), code="reload_failed")
        return result

    def _peers(self) -> list[dict[str, object]]:
        peers = self.overlay.status().get("peers")
        return [
            dataclasses.asdict(peer)
            for peer in (peers if isinstance(peers, list) else [])
            if isinstance(peer, PeerStatus)
        ]

    def _status(self) -> Mapping[str, object]:
        node = dict(self.overlay.status())
        node["peers"] = self._peers()
        return {"version": __version__, "node": node, "watchers": self.events.subscribers}

    def _agents(self) -> list[Mapping[str, object]]:
        keys = ("name", "owner", "id", "online", "handshake", "path")
        return [{key: peer[key] for key in keys} for peer in self._peers()]
