"""A BBR-style model-based congestion controller that treats loss as a bound.

The model (draft-cardwell-iccrg-bbr-congestion-control, Linux ``tcp_bbr.c``):
bottleneck bandwidth = windowed max of delivery-rate samples over 10 rounds;
min RTT = windowed min over 10 s, re-measured in PROBE_RTT; pacing rate =
gain x bandwidth, window = gain x bandwidth x min RTT. Phases: STARTUP (gain 2/ln 2)
until the bandwidth stops growing 25% per round for 3 rounds; DRAIN the queue that
built; PROBE_BW cycling gains 1.25, 0.75, 1 x 6 (one min RTT each).

Why not NewReno: a random (non-congestive) 1% loss halves NewReno's window every
few round trips (the Mathis bound: about 24% of a 10 Mbit/s, 50 ms path). Here a
loss does nothing by itself. A round trip counts as *congested* when it lost
something while its smallest RTT sample stayed above ``K_QUEUE_RTT_FACTOR`` x min
RTT (a standing queue that overflows: a tail-drop queue only drops when full, and
BBR alone drains its queue every gain cycle), or when its loss was severe (more
than ``K_SEVERE_LOSS`` and at least ``K_LOSS_EVENTS`` packets: a buffer far below
one BDP overflows without adding delay). Random loss on a path we do not congest is
neither, so it costs only the lost packets. A congested round sets short-term
bounds (``_adapt_lower_bounds``): the rate bound follows what was delivered
(``bw_lo = max(bw_latest, beta x bw_lo)``), the in-flight bound backs off by beta
but not below one BDP; and delivering under beta x the model restarts the 10-round
max filter (the bandwidth dropped). The bounds are lifted at the next probe-up phase
that follows a cycle without congestion. STARTUP also ends on a round losing more
than ``K_LOSS_THRESH`` (2%) and at least ``K_LOSS_EVENTS`` packets (as BBRv2).

Known limit: connections sharing one bottleneck split it unevenly when one starts
late (BBRv1's cwnd-limited equilibrium; BBRv3's in-flight headroom is not here).

Deterministic: no randomness (PROBE_BW starts at a fixed phase of its cycle).
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import TYPE_CHECKING

from tunneld.proto.mux._cc import CongestionController
from tunneld.proto.mux._config import K_GRANULARITY, K_INITIAL_WINDOW_PACKETS, MuxConfig
from tunneld.proto.mux._rate import DeliveryRateEstimator

if TYPE_CHECKING:
    from tunneld.proto.mux._recovery import SentPacket

__all__ = ["Bbr", "BbrMode"]

K_STARTUP_GAIN = 2.885  # 2 / ln 2: doubles the delivery rate every round
K_DRAIN_GAIN = 1 / K_STARTUP_GAIN
K_CWND_GAIN = 2.0
K_PROBE_BW_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
K_PROBE_BW_START_PHASE = 2  # a cruising phase; Linux picks one at random
K_BW_FILTER_ROUNDS = 10
K_MIN_RTT_WINDOW = 10.0
K_PROBE_RTT_DURATION = 0.2
K_PROBE_RTT_CWND_GAIN = 0.5  # BBRv2: half a BDP still re-measures the min RTT
K_FULL_BW_GROWTH = 1.25
K_FULL_BW_ROUNDS = 3
K_LOSS_THRESH = 0.02  # ends STARTUP (with K_LOSS_EVENTS)
# A round's loss counts as congestion only with a standing queue (its smallest RTT
# this far above the min RTT: a tail-drop queue overflows only when full) or when
# it is too heavy to be noise (a buffer far below one BDP overflows without delay).
K_QUEUE_RTT_FACTOR = 1.25
K_SEVERE_LOSS = 0.2
K_BETA = 0.7
# Loss counted in packets before it can end STARTUP or count as severe (BBRv2's
# full-loss count): a round of a few packets losing one is noise, not a signal.
K_LOSS_EVENTS = 8
K_MIN_PIPE_PACKETS = 4
# ACK aggregation (Linux tcp_bbr.c, bbr_update_ack_aggregation): ACKs that arrive
# in bursts (a receiver descheduled for a few ms, delayed ACKs) deliver more than
# bandwidth x elapsed; the window gets that excess on top of the BDP, or the sender
# idles between bursts at a fraction of the path's rate. The excess is a max over
# two windows of K_EXTRA_ACKED_WIN_ROUNDS rounds, capped at the window and at
# K_EXTRA_ACKED_MAX_TIME of bandwidth; an epoch restarts once ACKs fall behind the
# expected rate or after K_ACK_EPOCH_RESET_BYTES.
K_EXTRA_ACKED_WIN_ROUNDS = 5
K_EXTRA_ACKED_MAX_TIME = 0.1
K_ACK_EPOCH_RESET_BYTES = 1 << 20
K_PACING_MARGIN = 0.01  # pace 1% under the estimate so a queue can drain


class BbrMode(Enum):
    """The controller's phase (module docstring)."""

    STARTUP = 0
    DRAIN = 1
    PROBE_BW = 2
    PROBE_RTT = 3


class Bbr(CongestionController):
    """The controller; see the module docstring for the model and the loss rule."""

    name = "bbr"

    def __init__(self, config: MuxConfig, mss: int) -> None:
        super().__init__(config, mss)
        self.rate = DeliveryRateEstimator()
        self.min_rtt = float("inf")
        self.min_rtt_stamp = 0.0
        self.round_count = 0
        self._next_round_delivered = 0
        self._reset_model()

    def _reset_model(self) -> None:
        self.mode = BbrMode.STARTUP
        self.pacing_gain = K_STARTUP_GAIN
        self.cwnd_gain = K_STARTUP_GAIN
        self.filled_pipe = False
        self._full_bw = 0.0
        self._full_bw_count = 0
        self._bw_samples: deque[list[float]] = deque()  # [round, max rate in that round]
        self.max_bw = 0.0
        self.bw_lo = float("inf")
        self.inflight_lo = float("inf")
        self._pacing_rate = 0.0
        self._cycle_index = K_PROBE_BW_START_PHASE
        self._cycle_stamp = 0.0
        self._probe_rtt_done: float | None = None
        self._probe_rtt_round_done = False
        self._prior_cwnd = 0
        self._loss_since_ack = False
        self._congested_since_probe = False
        self._ack_epoch_start: float | None = None
        self._ack_epoch_acked = 0
        self._extra_acked = [0, 0]  # the two windows' maxima
        self._extra_acked_index = 0
        self._extra_acked_rounds = 0
        self._start_round_counters()

    def _start_round_counters(self) -> None:
        self._round_lost = 0
        self._round_acked = 0
        self._bw_latest = 0.0
        self._inflight_latest = 0
        self._round_min_rtt = float("inf")

    # -- the model ---------------------------------------------------------------

    def bandwidth(self) -> float:
        """The bandwidth the controller paces to (bytes/s; 0 before any sample)."""
        return min(self.max_bw, self.bw_lo)

    def bdp(self, gain: float) -> int:
        """``gain`` x bandwidth x min RTT, in bytes (the initial window before a model)."""
        bw = self.bandwidth()
        if not bw or self.min_rtt == float("inf"):
            return K_INITIAL_WINDOW_PACKETS * self.mss
        # Timers and ACKs resolve no better than the granularity: a sub-millisecond
        # RTT (loopback, in-process) would otherwise make the window vanish.
        return int(gain * bw * max(self.min_rtt, K_GRANULARITY))

    def _update_max_bw(self, rate: float) -> None:
        # Old samples expire only when a new one is taken (as Linux's minmax does):
        # an application that pauses must not make the path look slow.
        samples = self._bw_samples
        oldest = self.round_count - K_BW_FILTER_ROUNDS
        while samples and samples[0][0] <= oldest:
            samples.popleft()
        if samples and samples[-1][0] == self.round_count:
            samples[-1][1] = max(samples[-1][1], rate)
        else:
            samples.append([self.round_count, rate])
        self.max_bw = max(sample[1] for sample in samples)

    # -- events from loss recovery --------------------------------------------------

    def on_packet_sent(self, packet: SentPacket, bytes_in_flight: int) -> None:
        self.rate.on_packet_sent(packet, bytes_in_flight)

    def on_app_limited(self, bytes_in_flight: int) -> None:
        self.rate.on_app_limited(bytes_in_flight)

    def on_congestion_loss(self, lost: list[SentPacket], now: float, bytes_in_flight: int) -> None:
        self._round_lost += sum(packet.size for packet in lost)
        self._loss_since_ack = True

    def on_persistent_congestion(self, now: float) -> None:
        # The model is stale (nothing got through for 3 PTOs): start over from the
        # minimum window, keeping only the delivery counters the packets in flight use.
        self._reset_model()
        super().on_persistent_congestion(now)

    def on_ack(
        self,
        acked: list[SentPacket],
        now: float,
        bytes_in_flight: int,
        rtt_sample: float | None,
        smoothed_rtt: float,
    ) -> None:
        acked_bytes = 0
        for packet in acked:
            acked_bytes += packet.size
        prior_in_flight = bytes_in_flight + acked_bytes
        newest = acked[-1]
        if rtt_sample is not None:
            self._update_min_rtt(rtt_sample, now)
            if rtt_sample < self._round_min_rtt:
                self._round_min_rtt = rtt_sample
        sample = self.rate.on_ack(newest, acked_bytes, now, self.min_rtt)
        round_start = sample.prior_delivered >= self._next_round_delivered
        if round_start:
            self._next_round_delivered = self.rate.delivered
            self.round_count += 1
        if sample.rate and (sample.rate >= self.max_bw or not sample.is_app_limited):
            self._update_max_bw(sample.rate)
        if sample.rate > self._bw_latest:
            self._bw_latest = sample.rate
        if sample.delivered > self._inflight_latest:
            self._inflight_latest = sample.delivered
        self._round_acked += acked_bytes
        self._update_ack_aggregation(acked_bytes, now, round_start)
        if round_start:
            self._on_round_end(sample.is_app_limited)
        losses = self._loss_since_ack
        self._loss_since_ack = False
        self._update_mode(now, prior_in_flight, bytes_in_flight, round_start, losses)
        self._update_pacing_rate()
        self._update_cwnd(acked_bytes)

    def _update_ack_aggregation(self, acked_bytes: int, now: float, round_start: bool) -> None:
        if round_start:
            self._extra_acked_rounds += 1
            if self._extra_acked_rounds >= K_EXTRA_ACKED_WIN_ROUNDS:
                self._extra_acked_rounds = 0
                self._extra_acked_index ^= 1
                self._extra_acked[self._extra_acked_index] = 0
        start = self._ack_epoch_start
        expected = 0.0 if start is None else self.bandwidth() * (now - start)
        if (
            start is None
            or self._ack_epoch_acked <= expected
            or self._ack_epoch_acked + acked_bytes >= K_ACK_EPOCH_RESET_BYTES
        ):
            self._ack_epoch_start = now
            self._ack_epoch_acked = 0
            expected = 0.0
        self._ack_epoch_acked += acked_bytes
        extra = min(int(self._ack_epoch_acked - expected), self.cwnd)
        if extra > self._extra_acked[self._extra_acked_index]:
            self._extra_acked[self._extra_acked_index] = extra

    def extra_acked(self) -> int:
        """The window added for ACK aggregation (0 until the pipe is filled)."""
        if not self.filled_pipe:
            return 0
        aggregated = max(self._extra_acked)
        return min(aggregated, int(self.bandwidth() * K_EXTRA_ACKED_MAX_TIME))

    def _update_min_rtt(self, rtt: float, now: float) -> None:
        expired = now > self.min_rtt_stamp + K_MIN_RTT_WINDOW
        if rtt <= self.min_rtt or expired:
            if self.min_rtt == float("inf"):
                # First sample: pace the startup by the initial window per RTT.
                initial = K_INITIAL_WINDOW_PACKETS * self.mss
                self._pacing_rate = K_STARTUP_GAIN * initial / max(rtt, K_GRANULARITY)
            self.min_rtt = rtt
            self.min_rtt_stamp = now
        if expired and self.mode is not BbrMode.PROBE_RTT and self.filled_pipe:
            self.mode = BbrMode.PROBE_RTT
            self.pacing_gain = self.cwnd_gain = 1.0
            self._prior_cwnd = self.cwnd
            self._probe_rtt_done = None

    def _on_round_end(self, app_limited: bool) -> None:
        lost = self._round_lost
        loss_rate = lost / (lost + self._round_acked) if lost else 0.0
        if self.filled_pipe:
            # A queue that stood a whole round (even through a 0.75 phase) is not
            # ours alone: someone else fills it too, or the path got slower.
            round_min_rtt = self._round_min_rtt
            queue_standing = (
                round_min_rtt != float("inf") and round_min_rtt > K_QUEUE_RTT_FACTOR * self.min_rtt
            )
            severe = loss_rate > K_SEVERE_LOSS and lost >= K_LOSS_EVENTS * self.mss
            if (queue_standing and lost) or severe:
                self._adapt_lower_bounds()
        elif loss_rate > K_LOSS_THRESH and lost >= K_LOSS_EVENTS * self.mss:
            # A queue overflowed during STARTUP: the pipe is full.
            self.filled_pipe = True
            self._adapt_lower_bounds()
        if not self.filled_pipe and not app_limited:
            if self.max_bw >= self._full_bw * K_FULL_BW_GROWTH:
                self._full_bw = self.max_bw
                self._full_bw_count = 0
            else:
                self._full_bw_count += 1
                if self._full_bw_count >= K_FULL_BW_ROUNDS:
                    self.filled_pipe = True
        self._start_round_counters()

    def _adapt_lower_bounds(self) -> None:
        # The rate bound follows what was delivered, never below it. The in-flight
        # bound backs off multiplicatively from what was in flight (queue included)
        # but not below one BDP of the (bounded) model: flows that share a full
        # queue each keep 2 BDP of their own share in flight and would split the
        # link however they happened to start; backing off drains the queue, and
        # the pacing-limited flows converge as BBR's probing makes them do.
        self._congested_since_probe = True
        if self._bw_latest and self._bw_latest < K_BETA * self.max_bw:
            # Congested while delivering far below the model: the bandwidth dropped
            # (or is shared now). The max filter would hold the old value for 10
            # rounds, each one long behind a full queue; start it over.
            self._bw_samples = deque([[float(self.round_count), self._bw_latest]])
            self.max_bw = self._bw_latest
        if self.bw_lo == float("inf"):
            self.bw_lo = self.max_bw
        if self.inflight_lo == float("inf"):
            self.inflight_lo = self.cwnd
        self.bw_lo = max(self._bw_latest, K_BETA * self.bw_lo)
        backed_off = K_BETA * min(self._inflight_latest, self.inflight_lo)
        self.inflight_lo = max(backed_off, self.bdp(1.0))

    def _update_mode(
        self,
        now: float,
        prior_in_flight: int,
        bytes_in_flight: int,
        round_start: bool,
        losses: bool,
    ) -> None:
        mode = self.mode
        if mode is BbrMode.STARTUP and self.filled_pipe:
            self.mode = mode = BbrMode.DRAIN
            self.pacing_gain = K_DRAIN_GAIN
            self.cwnd_gain = K_STARTUP_GAIN
        if mode is BbrMode.DRAIN and bytes_in_flight <= self.bdp(1.0):
            self._enter_probe_bw(now)
        elif mode is BbrMode.PROBE_BW:
            self._advance_cycle(now, prior_in_flight, losses)
        elif mode is BbrMode.PROBE_RTT:
            self._probe_rtt(now, bytes_in_flight, round_start)

    def _enter_probe_bw(self, now: float) -> None:
        self.mode = BbrMode.PROBE_BW
        self.cwnd_gain = K_CWND_GAIN
        self._cycle_index = K_PROBE_BW_START_PHASE
        self._cycle_stamp = now
        self.pacing_gain = K_PROBE_BW_GAINS[self._cycle_index]

    def _advance_cycle(self, now: float, prior_in_flight: int, losses: bool) -> None:
        gain = self.pacing_gain
        full_length = now - self._cycle_stamp > self.min_rtt
        if gain > 1.0:
            # Probed enough once in flight reaches gain x BDP, or the window when a
            # lower bound holds it below that (else the probe would never end).
            target = min(self.bdp(gain), self.cwnd - self.mss)
            advance = full_length and (losses or prior_in_flight >= target)
        elif gain < 1.0:
            advance = full_length or prior_in_flight <= self.bdp(1.0)
        else:
            advance = full_length
        if not advance:
            return
        self._cycle_index = (self._cycle_index + 1) % len(K_PROBE_BW_GAINS)
        self._cycle_stamp = now
        self.pacing_gain = K_PROBE_BW_GAINS[self._cycle_index]
        if self.pacing_gain > 1.0:
            # Probe past the short-term bounds after a cycle without congestion: they
            # may have come from a loss burst that is over or a bandwidth that is back.
            if not self._congested_since_probe:
                self.bw_lo = self.inflight_lo = float("inf")
            self._congested_since_probe = False

    def _probe_rtt(self, now: float, bytes_in_flight: int, round_start: bool) -> None:
        if self._probe_rtt_done is None:
            if bytes_in_flight <= self._probe_rtt_cwnd():
                self._probe_rtt_done = now + K_PROBE_RTT_DURATION
                self._probe_rtt_round_done = False
                self._next_round_delivered = self.rate.delivered
            return
        if round_start:
            self._probe_rtt_round_done = True
        if self._probe_rtt_round_done and now >= self._probe_rtt_done:
            self.min_rtt_stamp = now
            self.cwnd = max(self.cwnd, self._prior_cwnd)
            self._enter_probe_bw(now)

    def _probe_rtt_cwnd(self) -> int:
        return max(self.bdp(K_PROBE_RTT_CWND_GAIN), K_MIN_PIPE_PACKETS * self.mss)

    # -- outputs ------------------------------------------------------------------

    def _update_pacing_rate(self) -> None:
        bw = self.bandwidth()
        if not bw:
            return
        rate = self.pacing_gain * bw * (1.0 - K_PACING_MARGIN)
        # In STARTUP the rate only grows: one slow sample must not stall the ramp.
        if self.filled_pipe or rate > self._pacing_rate:
            self._pacing_rate = rate

    def _update_cwnd(self, acked_bytes: int) -> None:
        target = self.bdp(self.cwnd_gain) + self.extra_acked()
        cwnd = self.cwnd
        if self.filled_pipe:
            cwnd = min(cwnd + acked_bytes, target)
        elif cwnd < target or self.rate.delivered < K_INITIAL_WINDOW_PACKETS * self.mss:
            cwnd += acked_bytes
        floor = K_MIN_PIPE_PACKETS * self.mss
        cwnd = max(cwnd, floor)
        if self.inflight_lo != float("inf"):
            cwnd = min(cwnd, max(int(self.inflight_lo), floor))
        if self.mode is BbrMode.PROBE_RTT:
            cwnd = min(cwnd, self._probe_rtt_cwnd())
        self.cwnd = min(cwnd, self.config.max_congestion_window)

    def pacing_rate(self, smoothed_rtt: float) -> float:
        if self._pacing_rate:
            return self._pacing_rate
        return K_STARTUP_GAIN * self.cwnd / max(smoothed_rtt, K_GRANULARITY)
