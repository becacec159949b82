"""Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation).

Each sent packet is stamped with how much had been delivered (acknowledged) when it
left, and when; an ACK then yields one rate sample: bytes delivered between the
newest acked packet's send and its ACK, over the longer of the send and the ACK
interval (the longer one, so ACK compression cannot inflate the rate). A sample
taken while the sender had nothing to send is marked app-limited: it says the path
can do *at least* that much, not that it can do no more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunneld.proto.mux._config import K_GRANULARITY

if TYPE_CHECKING:
    from tunneld.proto.mux._recovery import SentPacket

__all__ = ["DeliveryRateEstimator", "RateSample"]


class RateSample:
    """One delivery-rate sample, built from the newest packet an ACK covered."""

    __slots__ = ("delivered", "interval", "is_app_limited", "prior_delivered", "rate")

    def __init__(self) -> None:
        self.delivered = 0  # bytes delivered over the sample's interval
        self.prior_delivered = 0  # the connection's delivered count when that packet left
        self.interval = 0.0
        self.rate = 0.0  # bytes per second; 0 when the interval was too short to trust
        self.is_app_limited = False


class DeliveryRateEstimator:
    """Connection-wide delivery counters and the per-packet stamps of the draft."""

    __slots__ = ("app_limited_until", "delivered", "delivered_time", "first_sent_time")

    def __init__(self) -> None:
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        # Samples whose packets left before `delivered` reaches this are app-limited
        # (0: not app-limited).
        self.app_limited_until = 0

    def on_packet_sent(self, packet: SentPacket, bytes_in_flight: int) -> None:
        """Stamp ``packet``; ``bytes_in_flight`` is what was in flight before it."""
        if bytes_in_flight == 0:
            # Sending restarts after a quiet period: intervals start now, so the
            # silence is not counted as a slow path.
            self.first_sent_time = self.delivered_time = packet.time
        packet.first_sent_time = self.first_sent_time
        packet.delivered_time = self.delivered_time
        packet.delivered = self.delivered
        packet.app_limited = self.app_limited_until != 0

    def on_app_limited(self, bytes_in_flight: int) -> None:
        """The sender had room to send but nothing to send."""
        self.app_limited_until = max(self.delivered + bytes_in_flight, 1)

    def on_ack(
        self, newest: SentPacket, acked_bytes: int, now: float, min_rtt: float
    ) -> RateSample:
        """Account ``acked_bytes`` newly acked (``newest`` the latest sent of them).

        Returns the sample; its ``rate`` is 0 if the interval was shorter than
        ``min_rtt`` (too short to measure a path: ACK compression or a burst).
        ``min_rtt`` is infinite until the first RTT sample, so no rate before it.
        """
        self.delivered += acked_bytes
        self.delivered_time = now
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        sample = RateSample()
        sample.prior_delivered = newest.delivered
        sample.is_app_limited = newest.app_limited
        send_elapsed = newest.time - newest.first_sent_time
        ack_elapsed = now - newest.delivered_time
        # The next sample's send interval starts where this packet left.
        self.first_sent_time = newest.time
        sample.delivered = self.delivered - newest.delivered
        # No finer than the timer granularity: a burst acked "at once" (an in-process
        # or sub-millisecond path) must still give a finite rate.
        sample.interval = interval = max(send_elapsed, ack_elapsed, K_GRANULARITY)
        if interval >= min_rtt:
            sample.rate = sample.delivered / interval
        return sample
