"""Trio adapter for the mux core: one driver per connection, streams as trio streams.

``MuxConnection.run`` drives a ``tunneld.proto.mux.Connection`` over any
``DatagramTransport`` (a UDP socket, trio memory channels, later the WireGuard
overlay): it feeds received payloads in, sends what the core emits and sleeps until
the core's timer or until a stream has something new. ``MuxStream`` is a
``trio.abc.HalfCloseableStream``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from tunneld.proto.mux import (
    Connection,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionState,
    Event,
    MuxConfig,
    Path,
    StopSending,
    StreamError,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamResetError,
    StreamWritable,
)

__all__ = [
    "DEFAULT_RECEIVE_SIZE",
    "BatchDatagramTransport",
    "DatagramTransport",
    "MemoryDatagramTransport",
    "MuxConnection",
    "MuxStream",
    "UdpDatagramTransport",
]

DEFAULT_RECEIVE_SIZE = 65536
# The largest UDP payload we accept from the socket (anything larger is not ours).
_UDP_RECEIVE_SIZE = 65535
# Scheduling rounds the sender waits for more frames after a wake-up (see _sender),
# at most; it stops earlier after this many rounds in a row without new frames, and
# at once when every stream with frames waiting has its FIN queued
# (Connection.pending_streams_final). Not one quiet round: a writer's send_all
# yields once and its next receive (which finds the peer's FIN) yields once more
# before it queues its own FIN. Not two: a daemon piping a dial reads the client's
# bytes, queues them, then waits on the socket for the client's EOF, and in about
# one dial in five that wait took a third round, so the FIN left alone in a second
# datagram (and the peer's answer, too, half as often). Waiting for the FIN costs
# nothing once it comes; the extra round only delays a packet no FIN follows.
_CORK_ROUNDS = 5
_CORK_QUIET_ROUNDS = 3
# Datagrams the sender asks the core for at a time.
_SEND_BATCH = 64


class DatagramTransport(Protocol):
    """Carries mux payloads: unreliable, unordered, may drop; never blocks long."""

    async def send(self, data: bytes, path: Path) -> None: ...

    async def receive(self) -> tuple[bytes, Path]: ...


class BatchDatagramTransport(DatagramTransport, Protocol):
    """A transport that can also send several datagrams in one call, in order."""

    async def send_many(self, datagrams: Sequence[tuple[bytes, Path]]) -> None: ...


class MemoryDatagramTransport:
    """One end of an in-process datagram link over trio memory channels.

    Sends never block: when the peer's queue (``max_queue`` datagrams) is full the
    datagram is dropped, like a real network would.
    """

    def __init__(
        self,
        send_channel: trio.MemorySendChannel[bytes],
        receive_channel: trio.MemoryReceiveChannel[bytes],
        path: Path,
    ) -> None:
        self._send_channel = send_channel
        self._receive_channel = receive_channel
        self.path = path
        self.dropped = 0

    @classmethod
    def pair(
        cls, path: Path | None = None, max_queue: int = 1024
    ) -> tuple[MemoryDatagramTransport, MemoryDatagramTransport]:
        path = path or Path("memory")
        a_send, b_receive = trio.open_memory_channel[bytes](max_queue)
        b_send, a_receive = trio.open_memory_channel[bytes](max_queue)
        return cls(a_send, a_receive, path), cls(b_send, b_receive, path)

    async def send(self, data: bytes, path: Path) -> None:
        try:
            self._send_channel.send_nowait(data)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped += 1
        await trio.lowlevel.checkpoint()

    async def receive(self) -> tuple[bytes, Path]:
        return await self._receive_channel.receive(), self.path


class UdpDatagramTransport:
    """A connected-style UDP transport: one trio socket, one peer address.

    Datagrams from other addresses are ignored. Send errors (e.g. ICMP unreachable
    reported on a later call) count as loss.
    """

    def __init__(self, sock: trio.socket.SocketType, peer: tuple[str, int]) -> None:
        self._sock = sock
        self._peer = peer
        self.path = Path(("udp", peer), address=f"{peer[0]}:{peer[1]}".encode())

    async def send(self, data: bytes, path: Path) -> None:
        try:
            await self._sock.sendto(data, self._peer)
        except OSError:
            pass

    async def receive(self) -> tuple[bytes, Path]:
        while True:
            try:
                data, address = await self._sock.recvfrom(_UDP_RECEIVE_SIZE)
            except OSError:
                continue
            if (address[0], address[1]) == self._peer:
                return data, self.path


class MuxConnection:
    """A mux connection driven by trio over ``transport``.

    Start ``run`` in a nursery (``await nursery.start(conn.run)``); then
    ``open_stream`` / ``accept_stream`` give ``MuxStream`` objects. ``on_event``, if
    given, receives the events streams do not consume (PathResponse, CallMeMaybe,
    ConnectionClosed, ...), synchronously from the driver. ``on_stream``, if given,
    receives each stream the peer opens, synchronously, instead of ``accept_stream``
    (a server that starts a task per stream saves the accepting task's wake-up); it
    must not raise or block.
    """

    def __init__(
        self,
        transport: DatagramTransport,
        *,
        is_initiator: bool,
        config: MuxConfig | None = None,
        path: Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_stream: Callable[[MuxStream], None] | None = None,
    ) -> None:
        self.core = Connection(is_initiator=is_initiator, config=config, path=path)
        self._transport = transport
        # A transport that takes a batch at once (BatchDatagramTransport) gets each
        # burst in one call: its per-call work (clock, route, header) is paid once.
        send_many = getattr(transport, "send_many", None)
        self._send_many: Callable[[list[tuple[bytes, Path]]], Awaitable[None]] | None = (
            send_many if callable(send_many) else None
        )
        self._on_event = on_event
        self._on_stream = on_stream
        self._streams: dict[int, MuxStream] = {}
        self._accept_send, self._accept_receive = trio.open_memory_channel[MuxStream](math.inf)
        self._kicked = trio.Event()
        # The core's timer runs in its own task under one long-lived cancel scope
        # whose deadline is moved (by the sender before it sleeps; earlier-only by
        # pokes meanwhile): a CancelScope per sender wait cost more than the rest
        # of the wait. ``_armed`` is that deadline.
        self._armed = math.inf
        self._timer_scope: trio.CancelScope | None = None
        self._changed = trio.Event()
        self.closed: ConnectionClosed | None = None
        # True only while the sender task waits for a kick: then a no_delay writer
        # may send from its own task (_send_inline); _inline_busy: one such at a time.
        self._sender_idle = False
        self._inline_busy = False

    # -- driver --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drive the connection until it is closed (or this task is cancelled).

        Cancellation stops the driver; the core then sends nothing more.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receiver)
            nursery.start_soon(self._timer)
            task_status.started()
            await self._sender()
            nursery.cancel_scope.cancel()

    async def _timer(self) -> None:
        while True:
            with trio.CancelScope(deadline=self._armed) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self._armed = math.inf
            self._kicked.set()  # the sender runs what is due and re-arms

    def _arm(self, timer: float | None) -> None:
        """Make sure the timer task fires no later than ``timer``.

        Only ever earlier: the core's timer moves later with nearly every packet (the
        PTO follows the last send), and moving a trio deadline is the dearest step of
        a small packet's path; a deadline left early wakes the sender once for nothing
        (it finds nothing due and arms the real one), far rarer than packets.
        """
        if timer is not None and timer < self._armed:
            self._armed = timer
            if self._timer_scope is not None:
                self._timer_scope.deadline = timer

    async def _receiver(self) -> None:
        core = self.core
        while core.state is not ConnectionState.CLOSED:
            data, path = await self._transport.receive()
            self.receive_datagram(data, path)

    def receive_datagram(
        self, data: bytes | memoryview, path: Path, now: float | None = None
    ) -> None:
        """Feed one received payload to the connection now (synchronously).

        A transport whose owner already runs a reader task (the overlay's UDP and
        relay readers) calls this directly instead of queueing the payload for
        ``transport.receive``: one task switch less per packet. ``now`` is
        ``trio.current_time()`` if the caller has it already. Ignored once closed.
        """
        core = self.core
        if core.state is ConnectionState.CLOSED:
            return
        core.receive_datagram(data, path, trio.current_time() if now is None else now)
        self._process_events()
        self._poke()

    async def _sender(self) -> None:
        core = self.core
        while True:
            now = trio.current_time()
            timer = core.get_timer()
            if timer is not None and timer <= now:
                core.handle_timer(now)
                self._process_events()
            datagrams = core.datagrams_to_send(now, _SEND_BATCH)
            if self._send_many is not None:
                if datagrams:
                    await self._send_many(datagrams)
            else:
                for data, path in datagrams:
                    await self._transport.send(data, path)
            self._process_events()
            if len(datagrams) == _SEND_BATCH:
                # Maybe more to send; transports need not yield, so yield here.
                await trio.lowlevel.checkpoint()
                continue
            if core.state is ConnectionState.CLOSED:
                return
            self._arm(core.get_timer())
            self._sender_idle = True
            try:
                await self._kicked.wait()
            finally:
                self._sender_idle = False
            if self._kicked.is_set():
                self._kicked = trio.Event()
                # Cork while frames keep coming (a reader about to answer, a writer
                # about to send FIN), a few scheduling rounds at most: a reply
                # then carries the ACK and data leaves with its FIN — one packet
                # instead of three for a request/response.
                # A stream's FIN ends the wait at once: after it nothing can join
                # that stream's frames, and the rounds spent looking for more were
                # a quarter of a request/response's task steps.
                quiet = 0
                for _ in range(_CORK_ROUNDS):
                    if core.pending_streams_final():
                        break
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    if self._kicked.is_set():
                        self._kicked = trio.Event()
                        quiet = 0
                    else:
                        quiet += 1
                        if quiet >= _CORK_QUIET_ROUNDS:
                            break

    def _kick(self) -> None:
        """Something changed: let the sender look for work."""
        self._kicked.set()

    def _may_send_inline(self) -> bool:
        """Whether a writer may send the core's datagrams from its own task now: the
        sender task is idle (it would only be woken to do just that, one scheduling
        round later) and every stream with frames waiting is done adding to them
        (FIN queued or no_delay), so there is nothing to cork for."""
        return (
            self._sender_idle
            and not self._inline_busy
            and self._send_many is not None
            and self.core.pending_streams_final()
        )

    async def _send_inline(self) -> None:
        """Send what the core has now from the calling task (see _may_send_inline).

        Yields only if the transport has to wait (its fast path does not). The
        sender task, if woken meanwhile, finds less or nothing to do; datagrams are
        unordered anyway.
        """
        assert self._send_many is not None
        core = self.core
        self._inline_busy = True
        try:
            datagrams = core.datagrams_to_send(trio.current_time(), _SEND_BATCH)
            if datagrams:
                await self._send_many(datagrams)
        finally:
            self._inline_busy = False
        self._process_events()
        if len(datagrams) == _SEND_BATCH or core.has_pending_output():
            self._kick()  # more than one batch, or what the pacer held back
        else:
            self._arm(core.get_timer())

    def _poke(self) -> None:
        """Wake the sender only if the core has something to send; otherwise just
        make sure the timer fires in time: a received pure ACK or a read that frees
        no credit worth announcing then costs no task switch."""
        core = self.core
        if core.has_pending_output():
            self._kicked.set()
        else:
            self._arm(core.get_timer())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _process_events(self) -> None:
        # Streams are woken one by one (their own events), not all at once: with a
        # hundred streams waiting, every packet woke all hundred tasks to find
        # nothing new. The connection-wide ``_changed`` is for open_stream and
        # wait_send_all_might_not_block, and is set for anything but data arriving.
        core = self.core
        changed = False
        streams = self._streams
        while (event := core.next_event()) is not None:
            if isinstance(event, StreamReadable):
                stream_or_none = streams.get(event.stream_id)
                if stream_or_none is not None:
                    stream_or_none._readable.set()
            else:
                changed = True
                if isinstance(event, StreamWritable):
                    stream_or_none = streams.get(event.stream_id)
                    if stream_or_none is not None:
                        stream_or_none._writable.set()
                elif isinstance(event, StreamOpened):
                    stream = MuxStream(self, event.stream_id, event.service)
                    streams[event.stream_id] = stream
                    if self._on_stream is not None:
                        self._on_stream(stream)
                    else:
                        self._accept_send.send_nowait(stream)
                elif isinstance(event, StopSending):
                    stream_or_none = streams.get(event.stream_id)
                    if stream_or_none is not None:
                        stream_or_none._send_broken = True
                        stream_or_none._writable.set()
                elif isinstance(event, StreamReset):
                    stream_or_none = streams.get(event.stream_id)
                    if stream_or_none is not None:
                        stream_or_none._receive_broken = True
                        stream_or_none._readable.set()
                elif isinstance(event, ConnectionClosed):
                    self.closed = event
                    self._accept_send.close()
                    for stream in streams.values():
                        stream._readable.set()
                        stream._writable.set()
            if self._on_event is not None:
                self._on_event(event)
        if changed:
            self._notify()

    # -- streams ------------------------------------------------------------------

    async def open_stream(self, service: str) -> MuxStream:
        """Open a stream to ``service``, waiting while the peer's stream limit is used up.

        Raises trio.BrokenResourceError once the connection is closed.
        """
        # The schedule point comes first, the kick last with no yield after it:
        # the caller's next step (a dial's 101) then runs in the same scheduling
        # round, and its first bytes still find the sender corking for them.
        await trio.lowlevel.checkpoint()
        while True:
            try:
                if self.core.can_open_stream():
                    stream_id = self.core.open_stream(service)
                    break
            except ConnectionClosedError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if self.closed is not None:
                raise trio.BrokenResourceError("mux connection closed")
            await self._wait_changed()
        stream = MuxStream(self, stream_id, service)
        self._streams[stream_id] = stream
        self._kick()
        return stream

    async def accept_stream(self) -> MuxStream:
        """The next stream the peer opened; raises trio.EndOfChannel once closed."""
        return await self._accept_receive.receive()

    async def aclose(self, error_code: int = 0, reason: str = "") -> None:
        """Close the connection (CLOSE frame); the driver ends shortly after."""
        self.core.close(error_code, reason)
        self._process_events()
        self._kick()
        await trio.lowlevel.checkpoint()

    # -- paths (the overlay decides; the core only carries the frames) ---------------

    def set_path(self, path: Path) -> None:
        """Send on ``path`` from now on (see ``Connection.set_path``)."""
        self.core.set_path(path)
        self._kick()

    def send_path_probe(self, path: Path, challenge: bytes, size: int = 0) -> None:
        """Probe ``path`` (padded to ``size`` bytes if given); the answer reaches
        ``on_event`` as a ``PathResponse``."""
        self.core.send_path_probe(path, challenge, trio.current_time(), size)
        self._kick()

    def send_call_me_maybe(self, endpoints: list[bytes]) -> None:
        """Tell the peer our candidate endpoints (reliably; latest set wins)."""
        self.core.send_call_me_maybe(endpoints)
        self._kick()

    def _forget(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)


class MuxStream(trio.abc.HalfCloseableStream):
    """One mux stream as a trio ``HalfCloseableStream``.

    ``send_all`` waits for send-buffer room (backpressure from the peer's reads);
    ``receive_some`` returns b"" at the peer's FIN. A peer reset or STOP_SENDING, or
    the connection closing, surfaces as trio.BrokenResourceError; using a stream
    after ``aclose`` raises trio.ClosedResourceError. ``aclose`` sends FIN after the
    buffered bytes and STOP_SENDING for the other direction; it does not wait.
    """

    def __init__(self, connection: MuxConnection, stream_id: int, service: str) -> None:
        self._connection = connection
        self._core = connection.core
        self.stream_id = stream_id
        self.service = service
        self._closed = False
        self._send_closed = False
        self._eof = False
        self._send_broken = False
        self._receive_broken = False
        self._send_busy = False
        self._receive_busy = False
        self._no_delay = False
        # Set (sticky) when something may have changed for this stream's reader or
        # writer; the waiter replaces it before looking again (see _wait_readable).
        self._readable = trio.Event()
        self._writable = trio.Event()

    def _connection_broken(self) -> bool:
        return self._connection.closed is not None

    async def _wait_readable(self) -> None:
        event = self._readable
        await event.wait()
        if self._readable is event:
            self._readable = trio.Event()

    async def _wait_writable(self) -> None:
        event = self._writable
        await event.wait()
        if self._writable is event:
            self._writable = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._send_busy = True
        try:
            # Queue first, yield after (as trio's SocketStream does): the sender then
            # sees these bytes together with whatever this task does next (a FIN).
            await trio.lowlevel.checkpoint_if_cancelled()
            # bytes as they are: the send buffer then keeps the object itself (no
            # copy) when it takes all of it; a view only for what is left over.
            view: bytes | memoryview = data if type(data) is bytes else memoryview(data).cast("B")
            while True:
                if self._closed or self._send_closed:
                    raise trio.ClosedResourceError("stream closed for sending")
                if self._send_broken or self._connection_broken():
                    raise trio.BrokenResourceError("peer stopped reading or connection closed")
                if not view:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
                try:
                    accepted = self._core.send_stream_data(self.stream_id, view)
                except (StreamResetError, StreamError, ConnectionClosedError) as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc
                if accepted:
                    view = memoryview(view)[accepted:] if accepted < len(view) else b""
                    connection = self._connection
                    if self._no_delay and connection._may_send_inline():
                        # One scheduling round sooner than kicking the idle sender.
                        await connection._send_inline()
                    else:
                        connection._kick()
                if view:
                    await self._wait_writable()
        finally:
            self._send_busy = False

    def send_nowait(self, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the send buffer takes now; returns how much.

        Never yields (no checkpoint): for a request/response user that sends and then
        at once waits in ``receive_some``, where ``send_all``'s schedule point would be
        a task step for nothing. Send what was not taken with ``send_all``. Raises as
        ``send_all`` does: trio.BusyResourceError while another task sends,
        trio.ClosedResourceError after ``send_eof``/``aclose``, trio.BrokenResourceError
        once the peer stopped reading or the connection closed.
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._closed or self._send_closed:
            raise trio.ClosedResourceError("stream closed for sending")
        if self._send_broken or self._connection_broken():
            raise trio.BrokenResourceError("peer stopped reading or connection closed")
        try:
            accepted = self._core.send_stream_data(self.stream_id, data)
        except (StreamResetError, StreamError, ConnectionClosedError) as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if accepted:
            self._connection._kick()
        return accepted

    async def wait_send_all_might_not_block(self) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._send_busy = True
        try:
            await trio.lowlevel.checkpoint()
            while True:
                if self._closed or self._send_closed:
                    raise trio.ClosedResourceError("stream closed for sending")
                if self._send_broken or self._connection_broken():
                    return
                try:
                    if self._core.stream_send_capacity(self.stream_id) > 0:
                        return
                except StreamError:
                    return
                await self._connection._wait_changed()
        finally:
            self._send_busy = False

    async def send_eof(self) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._send_closed:
            self._send_closed = True
            try:
                self._core.send_eof(self.stream_id)
            except (StreamError, ConnectionClosedError):
                pass
            self._connection._kick()
        # Yield only after FIN is queued: data just written by send_all and the FIN
        # then leave in one packet.
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        max_bytes = operator.index(max_bytes)
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receive_busy:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receive_busy = True
        try:
            # As trio's socket streams do: a cancel point first, then a schedule
            # point either by waiting for bytes or, when they were already there,
            # after taking them, never both (a full checkpoint before a wait was
            # a task step for nothing on every receive that blocks).
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                try:
                    data = self._try_receive(max_bytes)
                except BaseException:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    raise
                if data is not None:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return data
                await self._wait_readable()
                waited = True
        finally:
            self._receive_busy = False

    def _try_receive(self, max_bytes: int) -> bytes | None:
        """Up to ``max_bytes`` ready bytes, b"" at the end, None if nothing is ready."""
        if self._closed:
            raise trio.ClosedResourceError("stream closed")
        if self._eof:
            return b""
        if self._receive_broken:
            raise trio.BrokenResourceError("peer reset the stream")
        try:
            data, eof = self._core.read_stream(self.stream_id, max_bytes)
        except StreamError as exc:  # StreamResetError included
            raise trio.BrokenResourceError(str(exc)) from exc
        if eof:
            self._eof = True
        if data:
            # Reading frees credit the peer may be waiting for.
            self._connection._poke()
            return data
        if eof:
            return b""
        if self._connection_broken():
            raise trio.BrokenResourceError("mux connection closed")
        return None

    @property
    def no_delay(self) -> bool:
        """Whether each ``send_all`` is a whole message that leaves without waiting
        for more (like TCP_NODELAY; default False: the driver holds a packet back a
        few scheduling rounds for more frames, such as a FIN). Set it on a stream
        that carries several request/response messages."""
        return self._no_delay

    @no_delay.setter
    def no_delay(self, enabled: bool) -> None:
        self._no_delay = enabled
        try:
            self._core.set_no_delay(self.stream_id, enabled)
        except StreamError:
            pass  # the core forgot the stream: nothing left to send on it anyway

    def reusable(self) -> bool:
        """Whether this stream can carry another exchange as if just opened: not
        closed or half-closed either way, not reset or stopped, the connection up,
        and no bytes (or end of stream) received and not yet read."""
        if (
            self._closed
            or self._send_closed
            or self._eof
            or self._send_broken
            or self._receive_broken
            or self._connection_broken()
        ):
            return False
        return self._core.stream_idle(self.stream_id)

    async def aclose(self) -> None:
        self.close_nowait()
        await trio.lowlevel.checkpoint()

    def close_nowait(self) -> None:
        """``aclose`` without the checkpoint, for code that cannot await (idempotent)."""
        if not self._closed:
            self._closed = True
            core = self._core
            try:
                if not self._send_closed and not self._send_broken:
                    core.send_eof(self.stream_id)
                if not self._eof and not self._receive_broken:
                    core.stop_sending(self.stream_id, 0)
            except (StreamError, ConnectionClosedError):
                pass
            self._connection._forget(self.stream_id)
            self._connection._poke()
            self._connection._notify()
            self._readable.set()
            self._writable.set()
