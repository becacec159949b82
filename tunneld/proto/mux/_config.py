"""Limits and tunables of a mux connection (every bound is named here)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CONGESTION_CONTROLLERS",
    "K_GRANULARITY",
    "K_INITIAL_WINDOW_PACKETS",
    "K_LOSS_REDUCTION",
    "K_MIN_WINDOW_PACKETS",
    "K_PACING_BURST_PACKETS",
    "K_PACING_GAIN",
    "K_PACKET_THRESHOLD",
    "K_PERSISTENT_CONGESTION_THRESHOLD",
    "K_TIME_THRESHOLD",
    "MAX_CALL_ME_MAYBE_ENDPOINTS",
    "MAX_CLOSE_REASON",
    "MAX_ENDPOINT_LENGTH",
    "MAX_OUTSTANDING_PROBES",
    "MAX_PROBE_SIZE",
    "MAX_SERVICE_LENGTH",
    "MIN_DATAGRAM_SIZE",
    "MuxConfig",
]

# RFC 9002 section 6.1 / appendix A.2 and B.2 (values from SPECS.md "mux").
K_PACKET_THRESHOLD = 3
K_TIME_THRESHOLD = 9 / 8
K_GRANULARITY = 0.001
K_PERSISTENT_CONGESTION_THRESHOLD = 3
K_INITIAL_WINDOW_PACKETS = 10
K_MIN_WINDOW_PACKETS = 2
K_LOSS_REDUCTION = 0.5
K_PACING_GAIN = 1.25
K_PACING_BURST_PACKETS = 10

MIN_DATAGRAM_SIZE = 256
MAX_SERVICE_LENGTH = 255
MAX_CLOSE_REASON = 255
MAX_CALL_ME_MAYBE_ENDPOINTS = 32
MAX_ENDPOINT_LENGTH = 64
MAX_OUTSTANDING_PROBES = 16
# Largest padded PATH_PROBE packet: a UDP datagram's payload is at most 65,535 bytes.
MAX_PROBE_SIZE = 65535
CONGESTION_CONTROLLERS = ("bbr", "newreno")


@dataclass(frozen=True, slots=True)
class MuxConfig:
    """Tunables of one connection; both sides should use the same values.

    Sizes are bytes, durations seconds.
    """

    max_datagram_size: int = 1200
    initial_stream_window: int = 256 * 1024
    max_stream_window: int = 6 * 1024 * 1024
    connection_window_factor: float = 1.5
    max_concurrent_streams: int = 100
    stream_send_buffer: int = 4 * 1024 * 1024
    connection_send_buffer: int = 8 * 1024 * 1024
    idle_timeout: float = 30.0
    keepalive_interval: float | None = 10.0
    initial_rtt: float = 0.333
    max_ack_delay: float = 0.025
    ack_eliciting_threshold: int = 2
    max_ack_ranges: int = 64
    reliable_pto_floor: float = 1.0
    max_congestion_window: int = 16 * 1024 * 1024
    autotune_rtts: float = 4.0
    close_pto_multiplier: int = 3
    # "bbr" (model-based, loss-tolerant; see _bbr.py) or "newreno" (RFC 9002).
    congestion_control: str = "bbr"

    def __post_init__(self) -> None:
        if self.max_datagram_size < MIN_DATAGRAM_SIZE:
            raise ValueError(f"max_datagram_size must be >= {MIN_DATAGRAM_SIZE}")
        if not 0 < self.initial_stream_window <= self.max_stream_window:
            raise ValueError("need 0 < initial_stream_window <= max_stream_window")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be >= 1")
        if self.stream_send_buffer < 1 or self.connection_send_buffer < 1:
            raise ValueError("send buffers must be positive")
        if self.congestion_control not in CONGESTION_CONTROLLERS:
            choices = ", ".join(CONGESTION_CONTROLLERS)
            raise ValueError(f"congestion_control must be one of {choices}")
