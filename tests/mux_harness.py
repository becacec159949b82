"""Test helpers for the mux core: an application model driving two cores in the simulator."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tunneld.proto.mux import (
    Connection,
    ConnectionClosed,
    ErrorCode,
    MuxConfig,
    Path,
    StreamOpened,
    StreamReset,
)
from tunneld.proto.mux._sim import Link, LinkConfig, Simulation

PATH = Path("link")


class InvariantChecker(Simulation):
    """A simulation that checks the congestion window every time a side sends."""

    def flush(self) -> None:
        for sender, index in ((self.a, 0), (self.b, 1)):
            while True:
                before = sender.bytes_in_flight
                probe_before = sender.probe_bytes_in_flight
                datagrams = sender.datagrams_to_send(self.now)
                grown = sender.bytes_in_flight - before
                probe_grown = sender.probe_bytes_in_flight - probe_before
                if grown - probe_grown > 0:
                    # Non-probe packets went out: they must have fit the window.
                    assert sender.bytes_in_flight <= sender.congestion_window, (
                        sender.bytes_in_flight,
                        sender.congestion_window,
                    )
                for data, path in datagrams:
                    assert len(data) <= sender.config.max_datagram_size
                    pair = self.links.get(path)
                    if pair is not None:
                        pair[index].send(data, self.now)
                if len(datagrams) < 64:
                    break


def check_bounds(conn: Connection) -> None:
    """Memory stays within the configured limits."""
    config = conn.config
    assert conn.send_buffered <= config.connection_send_buffer
    assert conn.ack_ranges_tracked <= config.max_ack_ranges
    assert conn.sent_packets_tracked <= config.max_congestion_window // 64 + 64
    for stream_id in conn.stream_ids():
        buffered = conn.receive_buffered(stream_id)
        # Never more than was advertised (credit beyond what the app read).
        assert buffered <= conn.receive_credit(stream_id)
        assert buffered <= config.max_stream_window


@dataclass
class Side:
    """The application on one side: what it wrote and read per stream."""

    conn: Connection
    rng: random.Random
    outgoing: dict[int, bytes] = field(default_factory=dict)
    written: dict[int, int] = field(default_factory=dict)
    incoming: dict[int, bytearray] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    services: dict[int, str] = field(default_factory=dict)
    closed: list[ConnectionClosed] = field(default_factory=list)
    resets: dict[int, int] = field(default_factory=dict)
    eofs: set[int] = field(default_factory=set)

    def pump(self) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            if isinstance(event, StreamOpened):
                self.incoming[event.stream_id] = bytearray()
                self.services[event.stream_id] = event.service
            elif isinstance(event, ConnectionClosed):
                self.closed.append(event)
            elif isinstance(event, StreamReset):
                self.resets[event.stream_id] = event.error_code
        for stream_id, data in self.outgoing.items():
            done = self.written[stream_id]
            if done < len(data) or (done == len(data) and stream_id not in self.finished):
                if stream_id not in conn.stream_ids():
                    continue
                chunk = data[done : done + self.rng.randint(1, 65536)]
                end = done + len(chunk) == len(data)
                accepted = conn.send_stream_data(stream_id, chunk, end_stream=end)
                self.written[stream_id] = done + accepted
                if end and accepted == len(chunk):
                    self.finished.add(stream_id)
        for stream_id, got in self.incoming.items():
            if stream_id in self.resets or stream_id not in conn.stream_ids():
                continue
            while stream_id not in self.eofs:
                data, eof = conn.read_stream(stream_id, self.rng.randint(1, 100_000))
                got += data
                if eof:
                    self.eofs.add(stream_id)
                if not data:
                    break


def make_pair(
    link: LinkConfig,
    seed: int,
    config: MuxConfig | None = None,
    reverse: LinkConfig | None = None,
) -> tuple[InvariantChecker, Side, Side]:
    config = config or MuxConfig()
    rng = random.Random(seed)
    a = Connection(is_initiator=True, config=config, path=PATH)
    b = Connection(is_initiator=False, config=config, path=PATH)
    sim = InvariantChecker(a, b)
    sim.add_path(PATH, Link(link, random.Random(rng.random())), Link(reverse or link, rng))
    return sim, Side(a, random.Random(seed + 1)), Side(b, random.Random(seed + 2))


def open_with_data(side: Side, service: str, data: bytes) -> int:
    stream_id = side.conn.open_stream(service)
    side.outgoing[stream_id] = data
    side.written[stream_id] = 0
    side.incoming[stream_id] = bytearray()
    return stream_id


def no_errors(side: Side) -> bool:
    return all(event.error_code == ErrorCode.NO_ERROR for event in side.closed)


class SharedBottleneck:
    """Several connection pairs whose a -> b (and b -> a) traffic share one link each.

    Each pair moves one bulk stream a -> b from ``starts[i]`` on; a datagram is tagged
    with its pair's index on the shared link (a byte the link model ignores).
    """

    def __init__(
        self, link: LinkConfig, configs: list[MuxConfig], starts: list[float], seed: int = 1
    ) -> None:
        rng = random.Random(seed)
        self.forward = Link(link, random.Random(rng.random()))
        self.backward = Link(link, rng)
        self.pairs = [
            (
                Connection(is_initiator=True, config=config, path=PATH),
                Connection(is_initiator=False, config=config, path=PATH),
            )
            for config in configs
        ]
        self.starts = starts
        self.streams = [a.open_stream("bulk") for a, _ in self.pairs]
        self.peer_streams: list[int | None] = [None] * len(self.pairs)
        self.received = [0] * len(self.pairs)
        self.now = 0.0

    def _flush(self) -> None:
        chunk = bytes(256 * 1024)
        for index, (a, b) in enumerate(self.pairs):
            if self.now < self.starts[index]:
                continue
            while a.send_stream_data(self.streams[index], chunk) == len(chunk):
                pass
            for conn, link in ((a, self.forward), (b, self.backward)):
                while True:
                    datagrams = conn.datagrams_to_send(self.now)
                    for data, _path in datagrams:
                        link.send(bytes([index]) + data, self.now)
                    if len(datagrams) < 64:
                        break

    def run(self, until: float) -> None:
        """Advance the virtual clock to ``until``, reading everything that arrives."""
        while self.now < until:
            self._flush()
            times = [until]
            for a, b in self.pairs:
                times += [t for t in (a.get_timer(), b.get_timer()) if t is not None]
            for link in (self.forward, self.backward):
                arrival = link.next_arrival()
                if arrival is not None:
                    times.append(arrival)
            self.now = max(self.now, min(times))
            for data in self.forward.pop_due(self.now):
                self.pairs[data[0]][1].receive_datagram(data[1:], PATH, self.now)
            for data in self.backward.pop_due(self.now):
                self.pairs[data[0]][0].receive_datagram(data[1:], PATH, self.now)
            for index, (a, b) in enumerate(self.pairs):
                for conn in (a, b):
                    timer = conn.get_timer()
                    if timer is not None and timer <= self.now:
                        conn.handle_timer(self.now)
                while (event := b.next_event()) is not None:
                    if isinstance(event, StreamOpened):
                        self.peer_streams[index] = event.stream_id
                peer = self.peer_streams[index]
                if peer is not None:
                    while data := b.read_stream(peer, 1 << 22)[0]:
                        self.received[index] += len(data)
