"""Reliable multiplexed streams over encrypted datagrams (sans-IO, QUIC-like).

One ``Connection`` per peer pair turns datagram payloads into many bidirectional
byte streams with loss recovery (RFC 9002), paced congestion control (a BBR-style
model by default, NewReno as the RFC 9002 reference: ``MuxConfig.congestion_control``)
and flow control whose credit grows with bytes the application has read. The wire
format is specified in ``docs/mux.md``.
"""

from __future__ import annotations

from tunneld.proto.mux._config import MuxConfig
from tunneld.proto.mux._connection import Connection, ConnectionState
from tunneld.proto.mux._errors import (
    ConnectionClosedError,
    ErrorCode,
    MuxError,
    RemoteProtocolError,
    StreamError,
    StreamLimitError,
    StreamResetError,
)
from tunneld.proto.mux._events import (
    CallMeMaybe,
    ConnectionClosed,
    Event,
    Path,
    PathResponse,
    StopSending,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamsAvailable,
    StreamWritable,
)

__all__ = [
    "CallMeMaybe",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionState",
    "ErrorCode",
    "Event",
    "MuxConfig",
    "MuxError",
    "Path",
    "PathResponse",
    "RemoteProtocolError",
    "StopSending",
    "StreamError",
    "StreamLimitError",
    "StreamOpened",
    "StreamReadable",
    "StreamReset",
    "StreamResetError",
    "StreamWritable",
    "StreamsAvailable",
]
