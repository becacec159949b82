"""Events a DERP connection core emits (frozen, slotted dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from tunneld.proto.derp._frames import PeerGoneReason

__all__ = [
    "ClientHello",
    "ClientInfo",
    "Connected",
    "DerpEvent",
    "Health",
    "KeepAlive",
    "NotePreferred",
    "PeerGone",
    "PeerPresent",
    "Ping",
    "Pong",
    "RecvPacket",
    "Restarting",
    "SendPacket",
    "ServerInfo",
]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a client says about itself in its sealed CLIENT_INFO JSON."""

    version: int
    can_ack_pings: bool = False
    is_prober: bool = False


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server says in its sealed SERVER_INFO JSON (rate hints 0 = none).

    ``send_queue_packets`` is tunneld's own field: how many packets the relay queues
    per receiving client before it drops (0: not said, as from Tailscale's derper,
    whose depth is 32). Go's decoder ignores fields it does not know, so stock
    clients are unaffected.
    """

    version: int
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0
    send_queue_packets: int = 0


# --- client side (frames from the server) ---


@dataclass(frozen=True, slots=True)
class Connected:
    """The handshake finished: the server is who ``server_key`` says."""

    server_key: bytes
    server_info: ServerInfo


@dataclass(frozen=True, slots=True)
class RecvPacket:
    """A packet relayed from ``src``."""

    src: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class PeerGone:
    """``peer`` is gone: it disconnected, or a packet for it found it not here."""

    peer: bytes
    reason: PeerGoneReason


@dataclass(frozen=True, slots=True)
class PeerPresent:
    """``peer`` is connected to this relay (mesh watchers)."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """The server is alive (sent every 60 s plus jitter)."""


@dataclass(frozen=True, slots=True)
class Health:
    """The server reports a problem with this connection; empty ``problem`` clears it."""

    problem: str


@dataclass(frozen=True, slots=True)
class Restarting:
    """The server is restarting: reconnect after ``reconnect_in_ms``, try for ``try_for_ms``."""

    reconnect_in_ms: int
    try_for_ms: int


# --- both sides ---


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer pings with 8 bytes to be echoed in a pong."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer answers our ping carrying ``data``."""

    data: bytes


# --- server side (frames from a client) ---


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A client proved it holds ``client_key``; call ``accept()`` or drop it."""

    client_key: bytes
    info: ClientInfo


@dataclass(frozen=True, slots=True)
class SendPacket:
    """The client asks to relay ``data`` to ``dst``."""

    dst: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class NotePreferred:
    """The client says whether this relay is its home relay."""

    preferred: bool


DerpEvent = (
    Connected
    | RecvPacket
    | PeerGone
    | PeerPresent
    | KeepAlive
    | Health
    | Restarting
    | Ping
    | Pong
    | ClientHello
    | SendPacket
    | NotePreferred
)
