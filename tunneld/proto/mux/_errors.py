"""The mux error hierarchy and the error codes carried by CLOSE and RESET_STREAM."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ConnectionClosedError",
    "ErrorCode",
    "MuxError",
    "RemoteProtocolError",
    "StreamError",
    "StreamLimitError",
    "StreamResetError",
]


class ErrorCode(IntEnum):
    """Transport error codes (the values of RFC 9000 section 20.1 where one exists)."""

    NO_ERROR = 0x0
    INTERNAL_ERROR = 0x1
    FLOW_CONTROL_ERROR = 0x3
    STREAM_LIMIT_ERROR = 0x4
    STREAM_STATE_ERROR = 0x5
    FINAL_SIZE_ERROR = 0x6
    FRAME_ENCODING_ERROR = 0x7
    PROTOCOL_VIOLATION = 0xA
    # Not sent on the wire: reported locally when the connection went silent.
    IDLE_TIMEOUT = 0x100
    # Application codes (CLOSE from ``Connection.close``, RESET_STREAM, STOP_SENDING)
    # start here so they never collide with transport codes.
    APPLICATION = 0x1000


class MuxError(Exception):
    """Base class of every error raised by the mux core."""


class RemoteProtocolError(MuxError):
    """The peer sent something invalid; the hint is the CLOSE to answer with.

    Never escapes ``Connection.receive_datagram``: the connection turns it into a
    CLOSE frame carrying ``error_code`` and ``reason`` and a ``ConnectionClosed`` event.
    """

    def __init__(self, error_code: ErrorCode, reason: str) -> None:
        super().__init__(f"{error_code.name}: {reason}")
        self.error_code = error_code
        self.reason = reason


class StreamError(MuxError):
    """A local call used a stream in a way its state does not allow."""


class StreamResetError(StreamError):
    """The stream direction was reset (by the peer, or after the peer's STOP_SENDING)."""

    def __init__(self, stream_id: int, error_code: int, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.error_code = error_code


class StreamLimitError(StreamError):
    """The peer's MAX_STREAMS does not allow another stream yet."""


class ConnectionClosedError(MuxError):
    """The connection is closed; ``error_code`` and ``reason`` say why."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(f"connection closed ({error_code:#x}): {reason}")
        self.error_code = error_code
        self.reason = reason
