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
