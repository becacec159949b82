"""The sealed handshake messages: NaCl boxes (Curve25519, XSalsa20-Poly1305) of JSON.

Tailscale's Go structs marshal as ``{"version":2,"CanAckPings":true}`` (ClientInfo) and
``{"version":2,"TokenBucketBytesPerSecond":…,"TokenBucketBytesBurst":…}`` (ServerInfo);
Go's decoder matches names case-insensitively, so we do too. Our relay adds
``TunneldSendQueuePackets`` to SERVER_INFO (Go's decoder skips unknown names).
"""

from __future__ import annotations

import json
from typing import Any

import nacl.exceptions
import nacl.public

from tunneld.proto.derp._errors import RemoteProtocolError
from tunneld.proto.derp._events import ClientInfo, ServerInfo
from tunneld.proto.derp._frames import NONCE_LEN, PROTOCOL_VERSION

__all__ = [
    "encode_client_info",
    "encode_server_info",
    "open_box",
    "parse_client_info",
    "parse_server_info",
    "seal_box",
]


# Ours, not derper's: named so that no field Tailscale adds can mean something else.
_QUEUE_FIELD = "TunneldSendQueuePackets"


def seal_box(private_key: bytes, peer_public: bytes, message: bytes) -> bytes:
    """``nonce ‖ box(message)`` from ``private_key`` to ``peer_public``, random nonce."""
    box = nacl.public.Box(nacl.public.PrivateKey(private_key), nacl.public.PublicKey(peer_public))
    return bytes(box.encrypt(message))


def open_box(private_key: bytes, peer_public: bytes, sealed: bytes, *, what: str) -> bytes:
    """Open ``nonce ‖ box`` from ``peer_public``.

    Raises:
        RemoteProtocolError: too short, wrong key, tampered, or a low-order peer key.
    """
    if len(sealed) < NONCE_LEN + 16:
        raise RemoteProtocolError(
            f"{what}: sealed box of {len(sealed)} bytes is shorter than nonce and tag "
            f"({NONCE_LEN + 16})"
        )
    try:
        box = nacl.public.Box(
            nacl.public.PrivateKey(private_key), nacl.public.PublicKey(peer_public)
        )
        return bytes(box.decrypt(sealed))
    except nacl.exceptions.CryptoError:
        raise RemoteProtocolError(
            f"{what}: box does not open with the announced key (wrong key or tampered)"
        ) from None


def _parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"{what}: not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: JSON is a {type(value).__name__}, not an object")
    # Go's encoding/json matches field names case-insensitively.
    return {str(k).lower(): v for k, v in value.items()}


def _int_field(fields: dict[str, Any], name: str, what: str) -> int:
    value = fields.get(name.lower(), 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise RemoteProtocolError(f"{what}: {name} must be a non-negative integer")
    return value


def _bool_field(fields: dict[str, Any], name: str, what: str) -> bool:
    value = fields.get(name.lower(), False)
    if not isinstance(value, bool):
        raise RemoteProtocolError(f"{what}: {name} must be true or false")
    return value


def _check_version(version: int, what: str) -> None:
    if version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"{what}: protocol version {version} is not supported (need {PROTOCOL_VERSION})"
        )


def parse_client_info(data: bytes) -> ClientInfo:
    """Decode the JSON inside CLIENT_INFO; raises RemoteProtocolError when invalid."""
    what = "client info"
    fields = _parse_json_object(data, what)
    version = _int_field(fields, "version", what)
    _check_version(version, what)
    if fields.get("meshkey"):
        raise RemoteProtocolError(f"{what}: mesh keys are not supported by this relay")
    return ClientInfo(
        version=version,
        can_ack_pings=_bool_field(fields, "CanAckPings", what),
        is_prober=_bool_field(fields, "IsProber", what),
    )


def encode_client_info(info: ClientInfo) -> bytes:
    """The JSON Tailscale's client sends (Go field names)."""
    body: dict[str, object] = {"version": info.version, "CanAckPings": info.can_ack_pings}
    if info.is_prober:
        body["IsProber"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def parse_server_info(data: bytes) -> ServerInfo:
    """Decode the JSON inside SERVER_INFO; raises RemoteProtocolError when invalid."""
    what = "server info"
    fields = _parse_json_object(data, what)
    version = _int_field(fields, "version", what)
    _check_version(version, what)
    return ServerInfo(
        version=version,
        token_bucket_bytes_per_second=_int_field(fields, "TokenBucketBytesPerSecond", what),
        token_bucket_bytes_burst=_int_field(fields, "TokenBucketBytesBurst", what),
        send_queue_packets=_int_field(fields, _QUEUE_FIELD, what),
    )


def encode_server_info(info: ServerInfo) -> bytes:
    """The JSON derper sends, plus our queue depth (zeros omitted, as Go's ``omitempty``
    does)."""
    body: dict[str, object] = {"version": info.version}
    if info.token_bucket_bytes_per_second:
        body["TokenBucketBytesPerSecond"] = info.token_bucket_bytes_per_second
    if info.token_bucket_bytes_burst:
        body["TokenBucketBytesBurst"] = info.token_bucket_bytes_burst
    if info.send_queue_packets:
        body[_QUEUE_FIELD] = info.send_queue_packets
    return json.dumps(body, separators=(",", ":")).encode()
