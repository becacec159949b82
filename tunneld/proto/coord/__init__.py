"""Coordinator protocol (msgpack over WebSocket), sans-IO: messages and a client helper.

See docs/coordinator.md for the wire format and the session rules.
"""

from __future__ import annotations

from tunneld.proto.coord._client import CoordinatorClient, PeerState
from tunneld.proto.coord._messages import (
    MAX_ENDPOINTS,
    MAX_MESSAGE_SIZE,
    MAX_NAME_LENGTH,
    NODE_KEY_SIZE,
    AddTunnel,
    CloseCode,
    CoordError,
    Disconnect,
    Error,
    HomeRelay,
    Node,
    PeerUpdate,
    PeerUpdateKind,
    ReadyForHandshake,
    RemoteProtocolError,
    RemoveTunnel,
    Request,
    Response,
    UpdateSelf,
    decode_request,
    decode_response,
    encode,
    validate_endpoint,
    validate_name,
)

__all__ = [
    "MAX_ENDPOINTS",
    "MAX_MESSAGE_SIZE",
    "MAX_NAME_LENGTH",
    "NODE_KEY_SIZE",
    "AddTunnel",
    "CloseCode",
    "CoordError",
    "CoordinatorClient",
    "Disconnect",
    "Error",
    "HomeRelay",
    "Node",
    "PeerState",
    "PeerUpdate",
    "PeerUpdateKind",
    "ReadyForHandshake",
    "RemoteProtocolError",
    "RemoveTunnel",
    "Request",
    "Response",
    "UpdateSelf",
    "decode_request",
    "decode_response",
    "encode",
    "validate_endpoint",
    "validate_name",
]
