"""The agentrpc error hierarchy and the stable error codes carried in ``error`` responses."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AgentRpcError", "ErrorCode", "RemoteProtocolError"]


class AgentRpcError(Exception):
    """Base of every error the agentrpc codec raises (local misuse raises it directly)."""


class RemoteProtocolError(AgentRpcError):
    """Bytes from the peer are not a valid agentrpc frame or message.

    ``reason`` is a short, log-safe description naming the message and the field, e.g.
    ``"exec: field 'timeout' must be a positive number"``. The receiving side answers
    with an ``error{code: "invalid_request"}`` frame carrying it and closes the stream:
    after a framing error the byte stream cannot be resynchronised.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ErrorCode(StrEnum):
    """Stable ``error.code`` values; clients branch on these, never on the message text."""

    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    PATH_OUTSIDE_ROOTS = "path_outside_roots"
    DENIED = "denied"  # the agent's config forbids this operation or service
    INVALID_REQUEST = "invalid_request"
    TIMEOUT = "timeout"
    TOO_LARGE = "too_large"
    AMBIGUOUS_EDIT = "ambiguous_edit"
    SEARCH_NOT_FOUND = "search_not_found"
    IS_A_DIRECTORY = "is_a_directory"
    NOT_A_DIRECTORY = "not_a_directory"
    NO_SUCH_PROCESS = "no_such_process"
    TOO_MANY_PROCESSES = "too_many_processes"
    CONNECT_FAILED = "connect_failed"
    UNKNOWN_SERVICE = "unknown_service"
    IO_ERROR = "io_error"
    INTERNAL = "internal"
    VERIFY_FAILED = "verify_failed"  # commit_part: the partial file's size or hash differs
