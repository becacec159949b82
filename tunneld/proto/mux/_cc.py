"""Congestion controllers behind one small interface, and RFC 9002's NewReno.

``LossRecovery`` owns the sent-packet history, RTT and loss detection and tells a
controller what happened (sent, acked, lost, persistent congestion, nothing to send);
the controller answers with a congestion window and a pacing rate. Two exist:

* ``newreno`` (RFC 9002 section 7): halves per loss episode. Under random,
  non-congestive loss p it averages about MSS / RTT x sqrt(3 / 2p) (Mathis et al.),
  so it cannot fill a long or lossy path; kept as the RFC reference.
* ``bbr`` (``_bbr.py``, the default): model-based; loss only bounds it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tunneld.proto.mux._config import (
    K_GRANULARITY,
    K_INITIAL_WINDOW_PACKETS,
    K_LOSS_REDUCTION,
    K_MIN_WINDOW_PACKETS,
    K_PACING_GAIN,
    MuxConfig,
)

if TYPE_CHECKING:
    from tunneld.proto.mux._recovery import SentPacket

__all__ = ["CongestionController", "NewReno"]


class CongestionController:
    """What loss recovery tells a controller, and what it answers.

    ``cwnd`` is the congestion window in bytes (``LossRecovery`` enforces it, and the
    path's in-flight cap, before every non-probe packet). Only packets sent on the
    current path are reported.
    """

    name = ""

    def __init__(self, config: MuxConfig, mss: int) -> None:
        self.config = config
        self.mss = mss
        self.cwnd = K_INITIAL_WINDOW_PACKETS * mss

    def on_packet_sent(self, packet: SentPacket, bytes_in_flight: int) -> None:
        """``packet`` (in flight) was sent; ``bytes_in_flight`` counts it not yet."""

    def on_ack(
        self,
        acked: list[SentPacket],
        now: float,
        bytes_in_flight: int,
        rtt_sample: float | None,
        smoothed_rtt: float,
    ) -> None:
        """``acked`` (ascending, non-empty) were newly acked; in flight is after them."""

    def on_congestion_loss(self, lost: list[SentPacket], now: float, bytes_in_flight: int) -> None:
        """Ack-eliciting packets ``lost`` (ascending, non-empty) were declared lost."""

    def on_persistent_congestion(self, now: float) -> None:
        """Nothing got through for a long time (RFC 9002 section 7.6): start over small."""
        self.cwnd = K_MIN_WINDOW_PACKETS * self.mss

    def on_app_limited(self, bytes_in_flight: int) -> None:
        """The window had room but there was nothing to send."""

    def pacing_rate(self, smoothed_rtt: float) -> float:
        """Bytes per second the pacer lets out."""
        return K_PACING_GAIN * self.cwnd / max(smoothed_rtt, K_GRANULARITY)


class NewReno(CongestionController):
    """NewReno with slow start and one halving per recovery period (RFC 9002 7.3)."""

    name = "newreno"

    def __init__(self, config: MuxConfig, mss: int) -> None:
        super().__init__(config, mss)
        self.ssthresh = math.inf
        self.recovery_start: float | None = None

    def on_ack(
        self,
        acked: list[SentPacket],
        now: float,
        bytes_in_flight: int,
        rtt_sample: float | None,
        smoothed_rtt: float,
    ) -> None:
        recovery_start = self.recovery_start
        mss = self.mss
        cwnd = self.cwnd
        for packet in acked:
            if recovery_start is not None and packet.time <= recovery_start:
                continue
            if cwnd < self.ssthresh:
                cwnd += packet.size
            else:
                cwnd += mss * packet.size // cwnd
        self.cwnd = min(cwnd, self.config.max_congestion_window)

    def on_congestion_loss(self, lost: list[SentPacket], now: float, bytes_in_flight: int) -> None:
        # Halve once per recovery period (RFC 9002 section 7.3.2).
        if self.recovery_start is not None and lost[-1].time <= self.recovery_start:
            return
        self.recovery_start = now
        self.cwnd = max(int(self.cwnd * K_LOSS_REDUCTION), K_MIN_WINDOW_PACKETS * self.mss)
        self.ssthresh = self.cwnd

    def on_persistent_congestion(self, now: float) -> None:
        super().on_persistent_congestion(now)
        self.recovery_start = now
