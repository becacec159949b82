"""An agentrpc frame reader/writer over any trio byte stream."""

from __future__ import annotations

import trio

from tunneld._locks import acquire_promptly
from tunneld.proto.agentrpc import MAX_FRAME_SIZE, ClientFrame, FrameDecoder, Response, encode

__all__ = ["RECEIVE_SIZE", "FramedStream"]

RECEIVE_SIZE = 65536


class FramedStream:
    """Frames on ``stream``: ``receive_payload`` for whole frames, ``send`` under a lock.

    The decoder's buffer lives here, so cancelling ``receive_payload`` loses no bytes:
    a later call continues where it left off. ``send`` may be called from several tasks
    (stdout and stderr pumps); the lock keeps frames whole.
    """

    def __init__(self, stream: trio.abc.Stream, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._send_lock = trio.Lock()

    @property
    def idle(self) -> bool:
        """Nothing is buffered: the last frame was read whole and no byte followed it."""
        return self._decoder.buffered == 0 and not self._decoder.at_eof

    async def receive_payload(self) -> bytes | None:
        """The next frame's payload, or ``None`` at a clean end of stream.

        Raises:
            RemoteProtocolError: oversized frame, or the stream ended inside a frame.
            trio.BrokenResourceError: the transport failed.
        """
        while True:
            payload = self._decoder.next_frame()
            if payload is not None:
                return payload
            if self._decoder.at_eof:
                return None
            self._decoder.receive_data(bytes(await self.stream.receive_some(RECEIVE_SIZE)))

    async def send_then_receive(self, message: Response | ClientFrame) -> None:
        """:meth:`send` for a caller that receives next (a request, an answer).

        A stream that can queue the whole frame at once without a schedule point
        (``send_nowait``, as the overlay's mux streams have) does so: the receive that
        follows is the schedule point, and ``send_all``'s own was a task step for
        nothing on both ends of every agent call. Still a cancel point.
        """
        send_nowait = getattr(self.stream, "send_nowait", None)
        lock = self._send_lock
        if send_nowait is None:
            await self.send(message)
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        data = encode(message)
        await acquire_promptly(lock)
        try:
            sent: int = send_nowait(data)
            if sent < len(data):
                await self.stream.send_all(memoryview(data)[sent:])
        finally:
            lock.release()

    async def send(self, message: Response | ClientFrame) -> None:
        """Send one whole frame; raises what the stream's ``send_all`` raises."""
        data = encode(message)
        lock = self._send_lock
        # Uncontended (nearly always: one request or answer at a time), take the lock
        # without ``acquire``'s schedule point: ``send_all`` is one already, and the
        # extra task step was one per frame on both ends of every agent call.
        await acquire_promptly(lock)
        try:
            await self.stream.send_all(data)
        finally:
            lock.release()
