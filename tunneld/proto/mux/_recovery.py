"""Loss detection (RFC 9002): RTT, PTO, packet/time thresholds, and pacing.

The congestion window and pacing rate come from a controller (``_cc.py``): RFC
9002's NewReno, or the BBR-style ``_bbr.py`` (``MuxConfig.congestion_control``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tunneld.proto.mux._bbr import Bbr
from tunneld.proto.mux._cc import CongestionController, NewReno
from tunneld.proto.mux._config import (
    K_GRANULARITY,
    K_PACING_BURST_PACKETS,
    K_PACKET_THRESHOLD,
    K_PERSISTENT_CONGESTION_THRESHOLD,
    K_TIME_THRESHOLD,
    MuxConfig,
)
from tunneld.proto.mux._events import Path

__all__ = ["LossRecovery", "SentPacket", "make_controller"]

# A retransmittable frame record: (kind, stream_id, offset, length, fin); see _connection.
FrameRecord = tuple[int, int, int, int, bool]


class SentPacket:
    """What we remember about one sent packet until it is acked or declared lost."""

    __slots__ = (
        "ack_eliciting",
        "app_limited",
        "delivered",
        "delivered_time",
        "first_sent_time",
        "frames",
        "in_flight",
        "is_probe",
        "path",
        "pn",
        "size",
        "time",
    )

    def __init__(
        self,
        pn: int,
        time: float,
        size: int,
        ack_eliciting: bool,
        in_flight: bool,
        is_probe: bool,
        path: Path | None,
        frames: list[FrameRecord],
    ) -> None:
        self.pn = pn
        self.time = time
        self.size = size
        self.ack_eliciting = ack_eliciting
        self.in_flight = in_flight
        self.is_probe = is_probe
        self.path = path
        self.frames = frames
        # Delivery-rate stamps (_rate.py), set by the controller when it is sent.
        self.delivered = 0
        self.delivered_time = 0.0
        self.first_sent_time = 0.0
        self.app_limited = False


def make_controller(config: MuxConfig, mss: int) -> CongestionController:
    """A fresh controller of the kind ``config.congestion_control`` names."""
    if config.congestion_control == "newreno":
        return NewReno(config, mss)
    return Bbr(config, mss)


class LossRecovery:
    """Sent-packet history, RTT estimate, loss/PTO timers and pacing.

    The window and pacing rate are the controller's (``cc``), fresh on every path.

    ``reliable`` (the current path runs over TCP) turns off time-threshold loss and
    raises the PTO floor to ``config.reliable_pto_floor``.
    """

    def __init__(self, config: MuxConfig) -> None:
        self._config = config
        self.mss = config.max_datagram_size
        self.max_in_flight = 0  # the current path's cap (0: none)
        self.max_ack_delay = config.max_ack_delay
        self.reliable = False
        self.sent: dict[int, SentPacket] = {}  # ascending packet numbers (insertion order)
        self.bytes_in_flight = 0
        self.probe_bytes_in_flight = 0
        self.ack_eliciting_in_flight = 0
        self.largest_acked = -1
        self.time_of_last_ack_eliciting = 0.0
        self.loss_time: float | None = None
        self.pto_count = 0
        self._reset_rtt()
        self._reset_congestion()

    # -- RTT (RFC 9002 section 5) ---------------------------------------------------

    def _reset_rtt(self) -> None:
        initial = self._config.initial_rtt
        self.has_rtt_sample = False
        self.latest_rtt = 0.0
        self.min_rtt = math.inf
        self.smoothed_rtt = initial
        self.rttvar = initial / 2
        self.first_rtt_sample_time = 0.0

    def _update_rtt(self, latest: float, ack_delay: float, now: float) -> None:
        self.latest_rtt = latest
        if not self.has_rtt_sample:
            self.has_rtt_sample = True
            self.first_rtt_sample_time = now
            self.min_rtt = latest
            self.smoothed_rtt = latest
            self.rttvar = latest / 2
            return
        self.min_rtt = min(self.min_rtt, latest)
        ack_delay = min(ack_delay, self.max_ack_delay)
        adjusted = latest
        if latest >= self.min_rtt + ack_delay:
            adjusted = latest - ack_delay
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted

    def pto_interval(self) -> float:
        """The PTO without backoff: srtt + max(4 rttvar, granularity) + max ack delay."""
        pto = self.smoothed_rtt + max(4 * self.rttvar, K_GRANULARITY) + self.max_ack_delay
        if self.reliable:
            pto = max(pto, self._config.reliable_pto_floor)
        return pto

    # -- congestion control (RFC 9002 section 7; the controller in _cc.py) ----------

    @property
    def cwnd(self) -> int:
        """The congestion window in bytes."""
        return self.cc.cwnd

    @cwnd.setter
    def cwnd(self, value: int) -> None:
        self.cc.cwnd = value

    def _reset_congestion(self) -> None:
        self.cc = make_controller(self._config, self.mss)
        self._pacer_tokens = float(K_PACING_BURST_PACKETS * self.mss)
        self._pacer_time: float | None = None

    def set_mss(self, mss: int) -> None:
        """The largest datagram from now on (the controller's window floors follow)."""
        self.mss = mss
        self.cc.mss = mss

    def on_path_change(self, reliable: bool) -> None:
        """A new path: RTT and congestion state start over (RFC 9000 section 9.4)."""
        self.reliable = reliable
        self._reset_rtt()
        self._reset_congestion()
        self.pto_count = 0

    def congestion_room(self) -> int:
        """Bytes that may still be put in flight without exceeding the window.

        On a reliable path with a cap (the DERP relay: TCP underneath) the window is
        the cap: TCP does the congestion control there and no loss ever reaches us, so
        the controller's model only sees RTT samples inflated by scheduling and TCP
        queueing; with one quiet min-RTT sample its window collapsed to its floor
        (4 datagrams) for seconds. The cap is what protects the relay's queue.
        """
        if self.reliable and self.max_in_flight:
            return self.max_in_flight - self.bytes_in_flight
        cwnd = self.cc.cwnd
        window = min(cwnd, self.max_in_flight) if self.max_in_flight else cwnd
        return window - self.bytes_in_flight

    def on_app_limited(self) -> None:
        """The window had room but nothing was waiting to be sent."""
        self.cc.on_app_limited(self.bytes_in_flight)

    # -- pacing (RFC 9002 section 7.7) ------------------------------------------------

    def _pacing_rate(self) -> float:
        return self.cc.pacing_rate(self.smoothed_rtt)

    def _pacer_refill(self, now: float) -> None:
        burst = K_PACING_BURST_PACKETS * self.mss
        if self._pacer_time is not None and self._pacer_tokens < burst:
            self._pacer_tokens = min(
                burst, self._pacer_tokens + (now - self._pacer_time) * self._pacing_rate()
            )
        self._pacer_time = now

    def pacing_delay(self, now: float) -> float | None:
        """None if a full packet may go now, else the time at which it may.

        "Full" is at most the congestion window: waiting for a whole datagram's worth
        of tokens while the window is smaller than one datagram (big datagrams on a
        path whose window is still small, e.g. right after path MTU discovery raised
        them) would stall for a round trip or more at the window's own pacing rate.
        """
        if self.reliable and self.max_in_flight:
            return None  # no pacing where the window is the cap (congestion_room)
        self._pacer_refill(now)
        need = min(self.mss, self.cc.cwnd)
        # One byte of slack: float rounding must not leave a timer that never fires.
        if self._pacer_tokens + 1.0 >= need:
            return None
        wait = (need - self._pacer_tokens) / self._pacing_rate()
        if wait < K_GRANULARITY:
            return None
        return now + wait

    # -- sending -------------------------------------------------------------------

    def on_packet_sent(self, packet: SentPacket) -> None:
        if packet.in_flight:
            self.cc.on_packet_sent(packet, self.bytes_in_flight)
            self.sent[packet.pn] = packet
            self.bytes_in_flight += packet.size
            if packet.is_probe:
                self.probe_bytes_in_flight += packet.size
            if packet.ack_eliciting:
                self.ack_eliciting_in_flight += 1
                self.time_of_last_ack_eliciting = packet.time
            self._pacer_tokens -= packet.size

    def _remove(self, packet: SentPacket) -> None:
        self.bytes_in_flight -= packet.size
        if packet.is_probe:
            self.probe_bytes_in_flight -= packet.size
        if packet.ack_eliciting:
            self.ack_eliciting_in_flight -= 1

    # -- acknowledgements (RFC 9002 section 6 and appendix A.7) ----------------------

    def on_ack_received(
        self,
        ranges: Iterable[tuple[int, int]],
        largest: int,
        ack_delay: float,
        now: float,
        current_path: Path | None,
    ) -> tuple[list[SentPacket], list[SentPacket]]:
        """Process ACK ranges (inclusive ``(low, high)``); returns (newly acked, lost)."""
        sent = self.sent
        acked: list[SentPacket] = []
        if sent:
            first_outstanding = next(iter(sent))
            for low, high in ranges:
                low = max(low, first_outstanding)
                for pn in range(low, high + 1):
                    packet = sent.pop(pn, None)
                    if packet is not None:
                        acked.append(packet)
        if largest > self.largest_acked:
            self.largest_acked = largest
        if not acked:
            return acked, []
        newest = max(acked, key=lambda p: p.pn)
        rtt_sample = None
        if newest.pn == largest and any(p.ack_eliciting for p in acked):
            rtt_sample = now - newest.time
            self._update_rtt(rtt_sample, ack_delay, now)
        on_path: list[SentPacket] = []
        for packet in acked:
            self._remove(packet)
            if packet.path == current_path:
                on_path.append(packet)
        if on_path:
            if on_path[-1].pn < newest.pn:
                on_path.sort(key=lambda p: p.pn)
            self.cc.on_ack(on_path, now, self.bytes_in_flight, rtt_sample, self.smoothed_rtt)
        lost = self.detect_lost(now, current_path)
        self.pto_count = 0
        return acked, lost

    def detect_lost(self, now: float, current_path: Path | None) -> list[SentPacket]:
        """Declare packets lost by packet or (unreliable paths only) time threshold."""
        self.loss_time = None
        lost: list[SentPacket] = []
        largest_acked = self.largest_acked
        loss_delay = max(K_TIME_THRESHOLD * max(self.latest_rtt, self.smoothed_rtt), K_GRANULARITY)
        for pn, packet in self.sent.items():
            if pn > largest_acked:
                break
            if largest_acked - pn >= K_PACKET_THRESHOLD or (
                not self.reliable and packet.time + loss_delay <= now
            ):
                lost.append(packet)
            elif not self.reliable:
                candidate = packet.time + loss_delay
                if self.loss_time is None or candidate < self.loss_time:
                    self.loss_time = candidate
        if lost:
            self._on_packets_lost(lost, now, current_path)
        return lost

    def _on_packets_lost(
        self, lost: list[SentPacket], now: float, current_path: Path | None
    ) -> None:
        for packet in lost:
            del self.sent[packet.pn]
            self._remove(packet)
        on_path = [p for p in lost if p.path == current_path and p.ack_eliciting]
        if not on_path:
            return
        self.cc.on_congestion_loss(on_path, now, self.bytes_in_flight)
        # Persistent congestion (RFC 9002 section 7.6), simplified: the lost packets
        # span more than 3 PTOs and were sent after the first RTT sample.
        if self.has_rtt_sample:
            eligible = [p for p in on_path if p.time > self.first_rtt_sample_time]
            if len(eligible) >= 2:
                span = eligible[-1].time - eligible[0].time
                if span > self.pto_interval() * K_PERSISTENT_CONGESTION_THRESHOLD:
                    self.cc.on_persistent_congestion(now)

    # -- timers -------------------------------------------------------------------

    def loss_detection_timer(self) -> float | None:
        """When ``on_loss_detection_timeout`` must run (None: nothing to wait for)."""
        if self.loss_time is not None:
            return self.loss_time
        if not self.ack_eliciting_in_flight:
            return None
        backoff: int = 2**self.pto_count
        return self.time_of_last_ack_eliciting + self.pto_interval() * backoff

    def on_loss_detection_timeout(
        self, now: float, current_path: Path | None
    ) -> tuple[list[SentPacket], bool]:
        """Run the loss timer; returns (lost packets, whether to send PTO probes)."""
        if self.loss_time is not None and now >= self.loss_time:
            return self.detect_lost(now, current_path), False
        timer = self.loss_detection_timer()
        if timer is None or now < timer:
            return [], False
        # Cap the exponent so backoff arithmetic stays bounded; idle timeout ends it.
        self.pto_count = min(self.pto_count + 1, 16)
        return [], True
