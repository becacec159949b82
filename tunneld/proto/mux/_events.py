"""Events reported by ``Connection.next_event`` (frozen, slotted dataclasses)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = [
    "CallMeMaybe",
    "ConnectionClosed",
    "Event",
    "Path",
    "PathResponse",
    "StopSending",
    "StreamOpened",
    "StreamReadable",
    "StreamReset",
    "StreamWritable",
    "StreamsAvailable",
]


@dataclass(frozen=True, slots=True)
class Path:
    """An opaque path to the peer (the relay, or one direct UDP endpoint).

    ``key`` identifies the path; ``reliable`` marks a path with a reliable transport
    underneath (the DERP relay runs over TCP): time-threshold loss detection is off
    there and the PTO has a higher floor, so the mux never retransmits on top of TCP.
    ``address`` is how this side sees the peer on the path; it is echoed in
    PATH_RESPONSE as the observed address and is not part of the path's identity.
    ``max_datagram_size`` (not part of the identity either) overrides the config's
    datagram size while sending on this path; the receiver accepts any size.
    ``max_in_flight`` caps the bytes in flight there (0: no cap beyond the window).
    """

    key: Hashable
    reliable: bool = False
    address: bytes = field(default=b"", compare=False)
    # Largest datagram to send while this is the current path (0: the config's
    # ``max_datagram_size``). The relay carries big packets over TCP, where every
    # datagram costs a fixed amount of work end to end: bigger ones mean fewer of them.
    max_datagram_size: int = field(default=0, compare=False)
    # Most bytes in flight on this path (0: only the congestion window). A relay that
    # queues a bounded number of packets per client never drops if we stay below it.
    max_in_flight: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened ``stream_id`` asking for ``service`` (e.g. ``tcp:22``, ``rpc``)."""

    stream_id: int
    service: str


@dataclass(frozen=True, slots=True)
class StreamReadable:
    """New bytes (or the end of the stream) can be read with ``read_stream``."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamWritable:
    """Send-buffer space freed up on a stream whose last write was cut short."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset its sending direction; unread bytes are gone."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StopSending:
    """The peer will not read more; our sending direction was reset with its code."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StreamsAvailable:
    """The peer raised MAX_STREAMS: ``open_stream`` may succeed again."""

    max_streams: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection ended: by the peer's CLOSE, ours, an error or idle timeout."""

    error_code: int
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class PathResponse:
    """A PATH_PROBE was answered on ``path``; ``observed_address`` is how the peer saw us."""

    path: Path
    challenge: bytes
    observed_address: bytes
    rtt: float


@dataclass(frozen=True, slots=True)
class CallMeMaybe:
    """The peer's candidate endpoints (opaque encoded addresses) to probe."""

    endpoints: tuple[bytes, ...]


Event = (
    StreamOpened
    | StreamReadable
    | StreamWritable
    | StreamReset
    | StopSending
    | StreamsAvailable
    | ConnectionClosed
    | PathResponse
    | CallMeMaybe
)
