"""Congestion controllers of the mux core on the deterministic link simulator.

The BBR-style default (``_bbr.py``) must fill a path that loses packets at random,
and still slow down when the path really is congested; NewReno stays the RFC 9002
reference. Everything here runs on the simulator's virtual clock: the numbers are
model behaviour, not speed.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from mux_harness import PATH, InvariantChecker, SharedBottleneck, make_pair, open_with_data

from tunneld.proto.mux import Connection, MuxConfig, Path
from tunneld.proto.mux._bbr import Bbr, BbrMode
from tunneld.proto.mux._cc import NewReno
from tunneld.proto.mux._recovery import LossRecovery, SentPacket
from tunneld.proto.mux._sim import LinkConfig
from tunneld.proto.mux._wire import push_varint

RATE = 1_250_000.0  # 10 Mbit/s
RTT = 0.05
BDP = RATE * RTT


Trace = list[tuple[float, int, float, BbrMode | None]]


class Bulk:
    """One bulk transfer a -> b, traced (now, cwnd, pacing rate, BBR mode) per step."""

    def __init__(self, cc: str, link: LinkConfig, seed: int = 1) -> None:
        sim, a, b = make_pair(link, seed, MuxConfig(idle_timeout=600.0, congestion_control=cc))
        open_with_data(a, "bulk", bytes(60_000_000))
        self.sim: InvariantChecker = sim
        self.a: Connection = sim.a
        self.trace: Trace = []
        self._sides = (a, b)

    def _pump(self) -> bool:
        for side in self._sides:
            side.pump()
        recovery = self.a._recovery
        controller = recovery.cc
        mode = controller.mode if isinstance(controller, Bbr) else None
        pacing = controller.pacing_rate(recovery.smoothed_rtt)
        self.trace.append((self.sim.now, recovery.cwnd, pacing, mode))
        return False

    def run(self, until: float) -> None:
        self.sim.run(until, self._pump)


def _bulk(cc: str, link: LinkConfig, seed: int = 1) -> tuple[Bulk, Connection, Trace]:
    """A bulk transfer a -> b; returns (runner, a, trace of (now, cwnd, pacing, mode))."""
    bulk = Bulk(cc, link, seed)
    return bulk, bulk.a, bulk.trace


def _run(bulk: Bulk, until: float) -> None:
    bulk.run(until)


def test_default_is_bbr_and_newreno_is_selectable() -> None:
    assert MuxConfig().congestion_control == "bbr"
    assert isinstance(LossRecovery(MuxConfig()).cc, Bbr)
    assert isinstance(LossRecovery(MuxConfig(congestion_control="newreno")).cc, NewReno)
    with pytest.raises(ValueError, match="congestion_control must be one of bbr, newreno"):
        MuxConfig(congestion_control="cubic")


def test_startup_exits_when_the_bandwidth_plateaus() -> None:
    # A deep queue (10 BDP): nothing is dropped, so only the plateau can end STARTUP.
    link = LinkConfig(delay=RTT / 2, bandwidth=RATE, queue_limit=int(10 * BDP))
    bulk, a, trace = _bulk("bbr", link)
    _run(bulk, 3.0)
    controller = a._recovery.cc
    assert isinstance(controller, Bbr)
    left_startup = next(t for t, _, _, mode in trace if mode is not BbrMode.STARTUP)
    assert left_startup < 1.0  # a handful of rounds of 50 ms
    assert bulk.sim.links[PATH][0].stats.queue_dropped == 0
    assert controller.filled_pipe
    assert controller.mode is BbrMode.PROBE_BW
    assert 0.9 * RATE <= controller.max_bw <= 1.3 * RATE
    # DRAIN emptied the queue STARTUP built: the RTT is back near the path's.
    assert a.smoothed_rtt < 1.3 * RTT


@pytest.mark.parametrize("loss", [0.01, 0.03, 0.05])
def test_random_loss_does_not_collapse_the_window(loss: float) -> None:
    link = LinkConfig(loss=loss, delay=RTT / 2, bandwidth=RATE, queue_limit=int(BDP))
    bulk, a, trace = _bulk("bbr", link, seed=7)
    _run(bulk, 8.0)
    steady = [entry for entry in trace if entry[0] >= 2.0]
    assert min(cwnd for _, cwnd, _, _ in steady) >= BDP
    assert min(pacing for _, _, pacing, _ in steady) >= 0.6 * RATE
    controller = a._recovery.cc
    assert isinstance(controller, Bbr)
    assert controller.max_bw >= 0.85 * RATE


def test_newreno_does_collapse_under_random_loss() -> None:
    # The reason BBR is the default: 3% random loss keeps NewReno's window far
    # below one bandwidth-delay product (Mathis: about 0.14 of it here).
    link = LinkConfig(loss=0.03, delay=RTT / 2, bandwidth=RATE, queue_limit=int(BDP))
    bulk, _a, trace = _bulk("newreno", link, seed=7)
    _run(bulk, 8.0)
    steady = [cwnd for now, cwnd, _, _ in trace if now >= 2.0]
    assert sum(steady) / len(steady) < 0.5 * BDP


def test_a_bandwidth_drop_overflows_the_queue_and_brings_the_rate_down() -> None:
    link = LinkConfig(delay=RTT / 2, bandwidth=RATE, queue_limit=int(BDP))
    bulk, _a, trace = _bulk("bbr", link)
    _run(bulk, 4.0)
    assert min(pacing for now, _, pacing, _ in trace if now >= 3.5) >= 0.7 * RATE
    a_to_b = bulk.sim.links[PATH][0]
    dropped_before = a_to_b.stats.queue_dropped
    new_rate = RATE / 5
    for link_dir in bulk.sim.links[PATH]:
        link_dir.config = dataclasses.replace(link_dir.config, bandwidth=new_rate)
    _run(bulk, 6.0)
    assert a_to_b.stats.queue_dropped > dropped_before  # a real overflow happened
    dropped_at_6, sent_at_6 = a_to_b.stats.queue_dropped, a_to_b.stats.sent
    _run(bulk, 8.0)
    late = [entry for entry in trace if entry[0] >= 6.0]
    # Paced at the new rate (the 1.25 probe aside), with a window near its BDP.
    assert max(pacing for _, _, pacing, _ in late) <= 1.3 * new_rate
    assert max(cwnd for _, cwnd, _, _ in late) <= 3 * new_rate * RTT
    # And the queue no longer overflows much: under 1% of what was sent.
    sent_late = a_to_b.stats.sent - sent_at_6
    assert a_to_b.stats.queue_dropped - dropped_at_6 <= 0.01 * sent_late


def test_a_shallow_queue_ends_startup_without_persistent_loss() -> None:
    # 6 KB of buffer on a 62 KB BDP: STARTUP overflows it; afterwards the model
    # (not loss) sets the rate and little is dropped.
    link = LinkConfig(delay=RTT / 2, bandwidth=RATE, queue_limit=6000)
    bulk, a, _trace = _bulk("bbr", link)
    _run(bulk, 2.0)
    a_to_b = bulk.sim.links[PATH][0]
    sent, dropped = a_to_b.stats.sent, a_to_b.stats.queue_dropped
    delivered = a_to_b.stats.bytes_delivered
    _run(bulk, 8.0)
    assert isinstance(a._recovery.cc, Bbr)
    assert a._recovery.cc.filled_pipe
    assert a_to_b.stats.queue_dropped - dropped <= 0.05 * (a_to_b.stats.sent - sent)
    assert a_to_b.stats.bytes_delivered - delivered > 0.8 * RATE * 6.0


@pytest.mark.parametrize("cc", ["bbr", "newreno"])
def test_reliable_path_gets_no_time_threshold_loss(cc: str) -> None:
    relay = Path("relay", reliable=True)
    a = Connection(is_initiator=True, path=relay, config=MuxConfig(congestion_control=cc))
    stream_id = a.open_stream("x")
    a.send_stream_data(stream_id, bytes(3000))
    assert len(a.datagrams_to_send(0.0)) == 3
    # Only the last packet is acked: on UDP the other two would soon be lost by time
    # threshold; over the relay (TCP underneath) only the packet threshold may.
    ack = bytearray()
    push_varint(ack, 0)
    ack += bytes([0x02])
    for value in (2, 0, 0, 0):
        push_varint(ack, value)
    a.receive_datagram(bytes(ack), relay, 0.1)
    timer = a.get_timer()
    assert timer is not None
    assert timer >= 0.1 + 0.9
    a.handle_timer(0.5)
    assert a.bytes_in_flight > 0  # nothing declared lost


def test_an_application_pause_keeps_the_bandwidth_estimate() -> None:
    # Rate samples taken while the application had nothing to send are app-limited:
    # 3 s (60 round trips) of a 1 KB/s trickle must not make the path look slow.
    link = LinkConfig(delay=RTT / 2, bandwidth=RATE, queue_limit=int(BDP))
    sim, a, b = make_pair(link, 4, MuxConfig(idle_timeout=600.0))
    bulk = bytes(2_500_000)
    stream_id = open_with_data(a, "bulk", bulk)

    def pump() -> bool:
        a.pump()
        b.pump()
        return len(b.incoming.get(stream_id, b"")) == len(bulk)

    assert sim.run(10.0, pump)
    controller = sim.a._recovery.cc
    assert isinstance(controller, Bbr)
    estimate = controller.max_bw
    assert estimate >= 0.9 * RATE
    trickle = sim.a.open_stream("trickle")
    next_write = [sim.now]

    def trickle_pump() -> bool:
        if sim.now >= next_write[0]:
            sim.a.send_stream_data(trickle, bytes(50))
            next_write[0] = sim.now + 0.05
        b.pump()
        return False

    end = sim.now + 3.0
    sim.run(end, trickle_pump)
    assert controller.round_count > 50  # the trickle kept rounds going
    assert controller.max_bw >= 0.9 * estimate
    assert controller.pacing_rate(sim.a.smoothed_rtt) >= 0.7 * RATE


def test_probe_rtt_relearns_a_longer_path() -> None:
    # The route grows from 50 to 80 ms RTT: no sample reaches the old min RTT again,
    # so after 10 s PROBE_RTT drains the queue and takes the new one; the window
    # follows (its BDP is larger).
    link = LinkConfig(delay=RTT / 2, bandwidth=RATE, queue_limit=int(BDP))
    bulk, a, trace = _bulk("bbr", link)
    _run(bulk, 2.0)
    for link_dir in bulk.sim.links[PATH]:
        link_dir.config = dataclasses.replace(link_dir.config, delay=0.04)
    _run(bulk, 15.0)
    controller = a._recovery.cc
    assert isinstance(controller, Bbr)
    probe_rtt = [now for now, _, _, mode in trace if mode is BbrMode.PROBE_RTT]
    assert probe_rtt
    assert min(probe_rtt) > 2.0 + 8.0
    assert max(probe_rtt) - min(probe_rtt) < 1.0  # one short visit
    assert controller.mode is BbrMode.PROBE_BW
    assert controller.min_rtt >= 0.08
    assert controller.cwnd > 1.5 * RATE * 0.08


@pytest.mark.parametrize(
    ("incumbent", "newcomer", "newcomer_floor"),
    [("bbr", "newreno", 0.15), ("bbr", "bbr", 0.08), ("newreno", "bbr", 0.15)],
)
def test_a_newcomer_on_a_shared_bottleneck_gets_a_share(
    incumbent: str, newcomer: str, newcomer_floor: float
) -> None:
    # The incumbent owns a 1 BDP queue; a second connection starts 2 s later. Its
    # losses come from a queue that really overflows, so the incumbent must give way
    # (the floors are far from fair: see docs/mux.md for the measured split).
    link = LinkConfig(delay=RTT / 2, bandwidth=RATE, queue_limit=int(BDP))
    configs = [MuxConfig(idle_timeout=600.0, congestion_control=cc) for cc in (incumbent, newcomer)]
    shared = SharedBottleneck(link, configs, starts=[0.0, 2.0])
    shared.run(6.0)
    before = list(shared.received)
    shared.run(14.0)
    share = [
        (after - start) / (RATE * 8.0) for after, start in zip(shared.received, before, strict=True)
    ]
    assert share[1] >= newcomer_floor
    assert sum(share) >= 0.9  # together they still fill the link


@pytest.mark.parametrize("cc", ["bbr", "newreno"])
def test_a_capped_reliable_path_is_windowed_by_its_cap_not_the_controller(cc: str) -> None:
    # Over the DERP relay (TCP) no loss reaches the mux and RTT samples carry the
    # relay's scheduling jitter: a collapsed model must not starve the path; its
    # in-flight cap (which protects the relay's queue) is the window, unpaced.
    mss = 1200
    recovery = LossRecovery(MuxConfig(congestion_control=cc))
    recovery.max_in_flight = 16 * mss
    recovery.on_path_change(True)
    recovery.cwnd = 4 * mss  # the model at its floor
    recovery._pacer_tokens = 0.0  # and the pacer empty
    recovery._pacer_time = 0.0
    assert recovery.congestion_room() == 16 * mss
    assert recovery.pacing_delay(0.001) is None
    # The same cap on an unreliable path only bounds the controller's window.
    recovery.on_path_change(False)
    recovery.cwnd = 4 * mss
    assert recovery.congestion_room() == 4 * mss
    recovery.max_in_flight = 0
    recovery.on_path_change(True)  # reliable without a cap: the controller decides
    recovery.cwnd = 4 * mss
    assert recovery.congestion_room() == 4 * mss


_MSS = 1200


def _bbr_with_acks_every(ack_every: float, seconds: float = 3.0) -> Bbr:
    """A window-limited sender on a 12 MB/s, 10 ms path whose ACKs arrive at
    multiples of ``ack_every`` seconds (0: each packet's own ACK time)."""
    bbr = Bbr(MuxConfig(), _MSS)
    step = 0.0005
    rtt = 0.010
    per_step = 6  # packets the bottleneck passes per step (12 MB/s)
    pending: list[tuple[float, SentPacket]] = []
    in_flight = 0
    pn = 0
    now = 0.0
    while now < seconds:
        due = [p for t, p in pending if t <= now + 1e-12]
        if due:
            pending = [(t, p) for t, p in pending if t > now + 1e-12]
            for packet in due:
                in_flight -= packet.size
            bbr.on_ack(due, now, in_flight, now - due[-1].time, rtt)
        sent = 0
        while in_flight + _MSS <= bbr.cwnd and sent < per_step:
            packet = SentPacket(pn, now, _MSS, True, True, False, None, [])
            bbr.on_packet_sent(packet, in_flight)
            in_flight += _MSS
            arrival = now + rtt
            if ack_every:
                arrival = math.ceil(arrival / ack_every - 1e-9) * ack_every
            pending.append((arrival, packet))
            pn += 1
            sent += 1
        now += step
    return bbr


def test_aggregated_acks_widen_the_window() -> None:
    # ACKs that come in 5 ms bursts (a receiver descheduled, as on a busy host)
    # deliver 5 ms of bandwidth at once: the window gets about that on top of
    # 2 x BDP (Linux BBR's extra_acked), while smooth ACKs add next to nothing.
    smooth = _bbr_with_acks_every(0.0)
    bursty = _bbr_with_acks_every(0.005)
    assert smooth.bandwidth() == pytest.approx(bursty.bandwidth(), rel=0.05)
    burst = 0.005 * bursty.bandwidth()
    assert bursty.extra_acked() >= 0.8 * burst
    assert smooth.extra_acked() <= 2 * 6 * _MSS  # one sending step's granularity
    assert bursty.cwnd >= bursty.bdp(2.0) + 0.8 * burst
    assert bursty.cwnd > smooth.cwnd
