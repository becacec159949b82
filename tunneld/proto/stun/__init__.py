"""STUN (RFC 5389) Binding requests and responses, sans-IO: a node's reflexive address."""

from __future__ import annotations

from tunneld.proto.stun._errors import RemoteProtocolError, StunError
from tunneld.proto.stun._message import (
    HEADER_LEN,
    MAGIC_COOKIE,
    TRANSACTION_ID_LEN,
    BindingRequest,
    BindingResponse,
    build_binding_request,
    build_binding_response,
    looks_like_stun,
    parse_binding_request,
    parse_binding_response,
)

__all__ = [
    "HEADER_LEN",
    "MAGIC_COOKIE",
    "TRANSACTION_ID_LEN",
    "BindingRequest",
    "BindingResponse",
    "RemoteProtocolError",
    "StunError",
    "build_binding_request",
    "build_binding_response",
    "looks_like_stun",
    "parse_binding_request",
    "parse_binding_response",
]
