"""Client and server DERP v2 connection cores (sans-IO, h11 shape).

Bytes go in with ``receive_data``; events come out of ``next_event``; bytes to write
come out of ``data_to_send``. Neither core reads a clock or does I/O; keep-alive and
ping timing belong to the adapter.

State transitions (derp.go, "Protocol flow"); any RemoteProtocolError moves to CLOSED
and every later ``receive_data`` raises the same error again:

    client: AWAIT_SERVER_KEY --SERVER_KEY/send CLIENT_INFO--> AWAIT_SERVER_INFO
            AWAIT_SERVER_INFO --SERVER_INFO/Connected--> CONNECTED
    server: (sends SERVER_KEY) AWAIT_CLIENT_INFO --CLIENT_INFO/ClientHello--> AWAIT_ACCEPT
            AWAIT_ACCEPT --accept()/send SERVER_INFO--> CONNECTED

In the handshake states any other frame type is an error. Once CONNECTED, frame types
a side does not handle are skipped, as derper and its client do, so newer peers can
add frames.
"""

from __future__ import annotations

import enum
import struct
from collections import deque

from nacl.bindings import crypto_scalarmult_base

from tunneld.proto.derp._errors import (
    CLOSE_POLICY_VIOLATION,
    LocalProtocolError,
    RemoteProtocolError,
)
from tunneld.proto.derp._events import (
    ClientHello,
    ClientInfo,
    Connected,
    DerpEvent,
    Health,
    KeepAlive,
    NotePreferred,
    PeerGone,
    PeerPresent,
    Ping,
    Pong,
    RecvPacket,
    Restarting,
    SendPacket,
    ServerInfo,
)
from tunneld.proto.derp._frames import (
    KEY_LEN,
    MAGIC,
    MAX_PACKET_SIZE,
    NONCE_LEN,
    PING_LEN,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    PeerGoneReason,
    encode_frame,
    frame_header,
    frame_name,
)
from tunneld.proto.derp._info import (
    encode_client_info,
    encode_server_info,
    open_box,
    parse_client_info,
    parse_server_info,
    seal_box,
)

__all__ = ["ClientConnection", "ConnectionState", "ServerConnection"]

_BOX_OVERHEAD = NONCE_LEN + 16  # nonce + Poly1305 tag
_MESH_ONLY = frozenset({FrameType.FORWARD_PACKET, FrameType.WATCH_CONNS, FrameType.CLOSE_PEER})


class ConnectionState(enum.Enum):
    """Where a connection core is in the DERP handshake."""

    AWAIT_SERVER_KEY = "await_server_key"
    AWAIT_SERVER_INFO = "await_server_info"
    AWAIT_CLIENT_INFO = "await_client_info"
    AWAIT_ACCEPT = "await_accept"
    CONNECTED = "connected"
    CLOSED = "closed"


def _public_key(private_key: bytes) -> bytes:
    if len(private_key) != KEY_LEN:
        raise ValueError(f"a private key is {KEY_LEN} bytes, got {len(private_key)}")
    return bytes(crypto_scalarmult_base(private_key))


def _need(frame: Frame, minimum: int, what: str) -> None:
    if len(frame.payload) < minimum:
        raise RemoteProtocolError(
            f"{frame_name(frame.type)}: {len(frame.payload)} bytes is too short for {what} "
            f"({minimum} needed)"
        )


class _Core:
    __slots__ = (
        "_decoder",
        "_error",
        "_events",
        "_outgoing",
        "_private_key",
        "public_key",
        "state",
    )

    # The packet frame this side receives (SEND_PACKET at a server, RECV_PACKET at a
    # client) and its event: the hot path, decoded with one copy of the packet.
    _PACKET_FRAME: FrameType | None = None
    _PACKET_EVENT: type[SendPacket] | type[RecvPacket] | None = None

    def __init__(self, private_key: bytes, state: ConnectionState) -> None:
        self._private_key = private_key
        self.public_key = _public_key(private_key)
        self.state = state
        self._decoder = FrameDecoder()
        self._events: deque[DerpEvent] = deque()
        # Frame pieces (headers, keys, packets) joined by data_to_send: one copy each.
        self._outgoing: list[bytes] = []
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer (any split; ``b""`` just processes buffered bytes).

        Raises:
            RemoteProtocolError: the peer broke the protocol; the connection is CLOSED
                and every later call raises the same error.
        """
        if self._error is not None:
            raise self._error
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("receive_data on a closed connection")
        decoder = self._decoder
        decoder.feed(data)
        packet_frame = self._PACKET_FRAME
        events = self._events
        try:
            while self._ready_for_frames():
                found = decoder.next_view()
                if found is None:
                    break
                kind, payload = found
                if (
                    kind == packet_frame
                    and len(payload) >= KEY_LEN
                    and self.state is ConnectionState.CONNECTED
                ):
                    assert self._PACKET_EVENT is not None
                    events.append(
                        self._PACKET_EVENT(bytes(payload[:KEY_LEN]), bytes(payload[KEY_LEN:]))
                    )
                    continue
                self._handle_frame(Frame(kind, bytes(payload)))
        except RemoteProtocolError as exc:
            self._error = exc
            self.state = ConnectionState.CLOSED
            raise

    def next_event(self) -> DerpEvent | None:
        """The next event, or ``None`` when none is pending."""
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        """Bytes queued for the peer since the last call (possibly empty)."""
        outgoing = self.data_to_send_parts()
        return outgoing[0] if len(outgoing) == 1 else b"".join(outgoing)

    def data_to_send_parts(self) -> list[bytes]:
        """As :meth:`data_to_send`, as the pieces to write one after another (frame
        headers, keys, packets): a writer that gathers them saves joining them."""
        outgoing = self._outgoing
        self._outgoing = []
        return outgoing

    def _ready_for_frames(self) -> bool:
        return True

    def _handle_frame(self, frame: Frame) -> None:
        raise NotImplementedError

    def _unexpected(self, frame: Frame, expected: FrameType) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"handshake: expected {frame_name(expected)}, got {frame_name(frame.type)}"
        )

    def _require_connected(self, action: str) -> None:
        if self.state is not ConnectionState.CONNECTED:
            raise LocalProtocolError(f"cannot {action} in state {self.state.name}")

    def _ping_payload(self, data: bytes) -> bytes:
        if len(data) != PING_LEN:
            raise LocalProtocolError(f"ping data must be {PING_LEN} bytes, got {len(data)}")
        return data

    def _send(self, frame_type: FrameType, payload: bytes) -> None:
        self._outgoing.append(encode_frame(frame_type, payload))

    def ping(self, data: bytes) -> None:
        """Queue a PING carrying 8 bytes; raises LocalProtocolError before CONNECTED."""
        self._require_connected("ping")
        self._send(FrameType.PING, self._ping_payload(data))

    def pong(self, data: bytes) -> None:
        """Queue a PONG echoing 8 bytes; raises LocalProtocolError before CONNECTED."""
        self._require_connected("pong")
        self._send(FrameType.PONG, self._ping_payload(data))


class ClientConnection(_Core):
    """The client end: answers SERVER_KEY with a sealed CLIENT_INFO, then relays.

    Args:
        private_key: the node's 32-byte Curve25519 private key (its DERP address is the
            public key).
        auto_pong: answer every server PING with a PONG (the Ping event is still emitted).
    """

    __slots__ = ("_auto_pong", "server_info", "server_key")

    _PACKET_FRAME = FrameType.RECV_PACKET
    _PACKET_EVENT = RecvPacket

    def __init__(self, private_key: bytes, *, auto_pong: bool = True) -> None:
        super().__init__(private_key, ConnectionState.AWAIT_SERVER_KEY)
        self._auto_pong = auto_pong
        self.server_key: bytes | None = None
        self.server_info: ServerInfo | None = None

    def _handle_frame(self, frame: Frame) -> None:
        if self.state is ConnectionState.AWAIT_SERVER_KEY:
            self._on_server_key(frame)
        elif self.state is ConnectionState.AWAIT_SERVER_INFO:
            self._on_server_info(frame)
        else:
            self._on_frame(frame)

    def _on_server_key(self, frame: Frame) -> None:
        if frame.type != FrameType.SERVER_KEY:
            raise self._unexpected(frame, FrameType.SERVER_KEY)
        _need(frame, len(MAGIC) + KEY_LEN, "magic and server key")
        if frame.payload[: len(MAGIC)] != MAGIC:
            raise RemoteProtocolError(
                f"handshake: SERVER_KEY magic is {frame.payload[: len(MAGIC)].hex()}, "
                f"expected {MAGIC.hex()} (not a DERP server?)"
            )
        # Bytes after the key are reserved for future use (derp.go) and ignored.
        self.server_key = frame.payload[len(MAGIC) : len(MAGIC) + KEY_LEN]
        info = encode_client_info(ClientInfo(version=PROTOCOL_VERSION, can_ack_pings=True))
        sealed = seal_box(self._private_key, self.server_key, info)
        self._send(FrameType.CLIENT_INFO, self.public_key + sealed)
        self.state = ConnectionState.AWAIT_SERVER_INFO

    def _on_server_info(self, frame: Frame) -> None:
        if frame.type != FrameType.SERVER_INFO:
            raise self._unexpected(frame, FrameType.SERVER_INFO)
        assert self.server_key is not None
        plain = open_box(self._private_key, self.server_key, frame.payload, what="server info")
        self.server_info = parse_server_info(plain)
        self.state = ConnectionState.CONNECTED
        self._events.append(Connected(self.server_key, self.server_info))

    def _on_frame(self, frame: Frame) -> None:
        payload = frame.payload
        kind = frame.type
        if kind == FrameType.RECV_PACKET:
            _need(frame, KEY_LEN, "a source key")
            self._events.append(RecvPacket(payload[:KEY_LEN], payload[KEY_LEN:]))
        elif kind == FrameType.KEEP_ALIVE:
            self._events.append(KeepAlive())
        elif kind == FrameType.PEER_GONE:
            _need(frame, KEY_LEN, "a peer key")
            # Older servers send no reason byte; reasons we do not know yet are
            # treated as a disconnect, which is the safe reading of "gone".
            code = payload[KEY_LEN] if len(payload) > KEY_LEN else 0
            reason = (
                PeerGoneReason(code)
                if code in PeerGoneReason._value2member_map_
                else PeerGoneReason.DISCONNECTED
            )
            self._events.append(PeerGone(payload[:KEY_LEN], reason))
        elif kind == FrameType.PEER_PRESENT:
            _need(frame, KEY_LEN, "a peer key")
            self._events.append(PeerPresent(payload[:KEY_LEN]))
        elif kind == FrameType.PING:
            _need(frame, PING_LEN, "ping data")
            data = payload[:PING_LEN]
            self._events.append(Ping(data))
            if self._auto_pong:
                self._send(FrameType.PONG, data)
        elif kind == FrameType.PONG:
            _need(frame, PING_LEN, "pong data")
            self._events.append(Pong(payload[:PING_LEN]))
        elif kind == FrameType.HEALTH:
            self._events.append(Health(payload.decode("utf-8", errors="replace")))
        elif kind == FrameType.RESTARTING:
            _need(frame, 8, "two durations")
            reconnect_in, try_for = struct.unpack_from(">II", payload)
            self._events.append(Restarting(reconnect_in, try_for))
        # Anything else (a repeated SERVER_INFO, frames from the future) is skipped.

    def send_packet(self, dst: bytes, data: bytes) -> None:
        """Queue SEND_PACKET of ``data`` to the node with public key ``dst``.

        Raises:
            LocalProtocolError: not CONNECTED, a key that is not 32 bytes, or a packet
                over 64 KiB.
        """
        self._require_connected("send a packet")
        if len(dst) != KEY_LEN:
            raise LocalProtocolError(f"destination key must be {KEY_LEN} bytes, got {len(dst)}")
        if len(data) > MAX_PACKET_SIZE:
            raise LocalProtocolError(
                f"packet of {len(data)} bytes exceeds DERP's maximum of {MAX_PACKET_SIZE}"
            )
        # Header and key, then the packet as it is: data_to_send joins them (one copy).
        self._outgoing.append(frame_header(FrameType.SEND_PACKET, KEY_LEN + len(data)) + dst)
        self._outgoing.append(data)

    def note_preferred(self, preferred: bool) -> None:
        """Queue NOTE_PREFERRED: whether this relay is our home relay."""
        self._require_connected("note preferred")
        self._send(FrameType.NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


class ServerConnection(_Core):
    """The server end of one client connection.

    Queues SERVER_KEY at once; after a valid CLIENT_INFO emits :class:`ClientHello` and
    waits in AWAIT_ACCEPT (bytes that arrive meanwhile stay buffered) until
    :meth:`accept`. Mesh frames are refused: this server has no mesh key.
    """

    __slots__ = ("client_info", "client_key")

    _PACKET_FRAME = FrameType.SEND_PACKET
    _PACKET_EVENT = SendPacket

    def __init__(self, private_key: bytes) -> None:
        super().__init__(private_key, ConnectionState.AWAIT_CLIENT_INFO)
        self.client_key: bytes | None = None
        self.client_info: ClientInfo | None = None
        self._send(FrameType.SERVER_KEY, MAGIC + self.public_key)

    def _ready_for_frames(self) -> bool:
        return self.state is not ConnectionState.AWAIT_ACCEPT

    def accept(self, server_info: ServerInfo | None = None) -> None:
        """Admit the client: queue the sealed SERVER_INFO and move to CONNECTED.

        Frames already buffered are processed by the next ``receive_data`` (call it
        with ``b""`` to process them now).

        Raises:
            LocalProtocolError: not in AWAIT_ACCEPT.
        """
        if self.state is not ConnectionState.AWAIT_ACCEPT:
            raise LocalProtocolError(f"cannot accept in state {self.state.name}")
        assert self.client_key is not None
        info = server_info or ServerInfo(version=PROTOCOL_VERSION)
        sealed = seal_box(self._private_key, self.client_key, encode_server_info(info))
        self._send(FrameType.SERVER_INFO, sealed)
        self.state = ConnectionState.CONNECTED

    def _handle_frame(self, frame: Frame) -> None:
        if self.state is ConnectionState.AWAIT_CLIENT_INFO:
            self._on_client_info(frame)
        else:
            self._on_frame(frame)

    def _on_client_info(self, frame: Frame) -> None:
        if frame.type != FrameType.CLIENT_INFO:
            raise self._unexpected(frame, FrameType.CLIENT_INFO)
        _need(frame, KEY_LEN + _BOX_OVERHEAD, "client key, nonce and box")
        client_key = frame.payload[:KEY_LEN]
        plain = open_box(self._private_key, client_key, frame.payload[KEY_LEN:], what="client info")
        info = parse_client_info(plain)
        self.client_key = client_key
        self.client_info = info
        self.state = ConnectionState.AWAIT_ACCEPT
        self._events.append(ClientHello(client_key, info))

    def _on_frame(self, frame: Frame) -> None:
        payload = frame.payload
        kind = frame.type
        if kind == FrameType.SEND_PACKET:
            _need(frame, KEY_LEN, "a destination key")
            self._events.append(SendPacket(payload[:KEY_LEN], payload[KEY_LEN:]))
        elif kind == FrameType.NOTE_PREFERRED:
            if len(payload) != 1:
                raise RemoteProtocolError(
                    f"{frame_name(kind)}: payload is {len(payload)} bytes, expected 1"
                )
            self._events.append(NotePreferred(payload != b"\x00"))
        elif kind == FrameType.PING:
            _need(frame, PING_LEN, "ping data")
            self._events.append(Ping(payload[:PING_LEN]))
        elif kind == FrameType.PONG:
            _need(frame, PING_LEN, "pong data")
            self._events.append(Pong(payload[:PING_LEN]))
        elif kind in _MESH_ONLY:
            raise RemoteProtocolError(
                f"{frame_name(kind)}: mesh frames need a mesh key; this relay has none",
                close_code=CLOSE_POLICY_VIOLATION,
            )
        # KEEP_ALIVE and unknown types are skipped (derper's handleUnknownFrame).
