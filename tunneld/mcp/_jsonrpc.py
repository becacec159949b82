"""JSON-RPC 2.0 messages as MCP uses them: parsing and building, sans-IO.

:func:`parse_message` turns one HTTP body into a request, notification or response,
and raises :class:`JsonRpcError` (never anything else) for bad input, carrying the
JSON-RPC error code and the HTTP status the transport answers with. Batches are
refused: MCP removed them in 2025-06-18.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "RESOURCE_NOT_FOUND",
    "SERVER_BUSY",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "JsonRpcError",
    "McpError",
    "Message",
    "Notification",
    "Request",
    "RequestId",
    "Response",
    "encode",
    "error_message",
    "notification_message",
    "parse_message",
    "request_message",
    "result_message",
]

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
RESOURCE_NOT_FOUND: Final = -32002  # MCP "Resource not found"
HEADER_MISMATCH: Final = -32020  # 2026-07-28: a routing header disagrees with the body
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022  # 2026-07-28
SERVER_BUSY: Final = -32000  # implementation-defined: a per-session limit was hit

RequestId = str | int


class McpError(Exception):
    """A method failed with a JSON-RPC error (``code``, ``message``, optional ``data``)."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class JsonRpcError(McpError):
    """A message could not be accepted at all; the transport answers ``http_status``.

    ``id`` is the request id when it could be read (else ``None``, sent as ``null``).
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        http_status: int = 400,
        id: RequestId | None = None,
        data: object = None,
    ) -> None:
        super().__init__(code, message, data)
        self.http_status = http_status
        self.id = id

    def to_json(self) -> dict[str, Any]:
        """The JSON-RPC error message for this failure."""
        return error_message(self.id, self.code, self.message, self.data)


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    """A client's answer to a server→client request: ``result`` or ``error``."""

    id: RequestId
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


Message = Request | Notification | Response


def _reject_constant(name: str) -> float:
    # NaN and Infinity are not JSON (RFC 8259 §6); Python accepts them by default.
    raise ValueError(f"{name} is not valid JSON")


def _valid_id(value: object) -> bool:
    # JSON-RPC allows numbers; MCP narrows ids to strings and integers (no null).
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return False
    return isinstance(value, str | int)


def parse_message(body: bytes) -> Message:
    """Parse one JSON-RPC message from an HTTP body.

    Raises:
        JsonRpcError: -32700 (not UTF-8 / not JSON) or -32600 (a batch, not an object,
            a bad ``jsonrpc``/``id``/``method``/``params``), all with HTTP status 400.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRpcError(
            PARSE_ERROR, f"Parse error: body is not UTF-8 (byte {exc.start})"
        ) from None
    try:
        decoded = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsonRpcError(
            PARSE_ERROR, f"Parse error: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise JsonRpcError(PARSE_ERROR, "Parse error: nesting is too deep") from None
    except ValueError as exc:
        # NaN/Infinity (refused above) and oversized integer literals raise ValueError.
        raise JsonRpcError(PARSE_ERROR, f"Parse error: {str(exc)[:120]}") from None
    return message_from_json(decoded)


def message_from_json(decoded: object) -> Message:
    """Classify an already-decoded JSON value; raises :class:`JsonRpcError` (-32600)."""
    if isinstance(decoded, list):
        raise JsonRpcError(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if not isinstance(decoded, dict):
        raise JsonRpcError(
            INVALID_REQUEST,
            f"Invalid Request: expected a JSON object, got {type(decoded).__name__}",
        )
    raw_id = decoded.get("id")
    msg_id: RequestId | None = raw_id if _valid_id(raw_id) else None
    if decoded.get("jsonrpc") != "2.0":
        raise JsonRpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', id=msg_id)
    if "method" in decoded:
        method = decoded["method"]
        if not isinstance(method, str) or not method:
            raise JsonRpcError(
                INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string', id=msg_id
            )
        params = decoded.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise JsonRpcError(
                INVALID_REQUEST, 'Invalid Request: "params" must be an object', id=msg_id
            )
        if "id" not in decoded:
            return Notification(method, params)
        if msg_id is None:
            raise JsonRpcError(
                INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer'
            )
        return Request(msg_id, method, params)
    if msg_id is None:
        raise JsonRpcError(
            INVALID_REQUEST,
            'Invalid Request: a message without "method" must be a response with an "id"',
        )
    has_result, has_error = "result" in decoded, "error" in decoded
    if has_result == has_error:
        raise JsonRpcError(
            INVALID_REQUEST,
            'Invalid Request: a response needs exactly one of "result" and "error"',
            id=msg_id,
        )
    if has_result:
        result = decoded["result"]
        if not isinstance(result, dict):
            raise JsonRpcError(
                INVALID_REQUEST, 'Invalid Request: "result" must be an object', id=msg_id
            )
        return Response(msg_id, result=result)
    error = decoded["error"]
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or isinstance(error.get("code"), bool)
        or not isinstance(error.get("message"), str)
    ):
        raise JsonRpcError(
            INVALID_REQUEST,
            'Invalid Request: "error" must be an object with an integer "code" and a'
            ' string "message"',
            id=msg_id,
        )
    return Response(msg_id, error=error)


def result_message(id: RequestId, result: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "result": dict(result)}


def error_message(
    id: RequestId | None, code: int, message: str, data: object = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": error}


def request_message(id: RequestId, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": dict(params)}


def notification_message(method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = dict(params)
    return message


def _default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        raise TypeError("bytes are not JSON; base64-encode them into a content block")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(message: Mapping[str, Any]) -> str:
    """``message`` as compact JSON text (no NaN/Infinity: they are not JSON)."""
    return json.dumps(
        message, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
    )


def is_finite_number(value: object) -> bool:
    """A JSON number that is not a bool and not NaN/Infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)
