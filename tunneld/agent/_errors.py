"""The one exception agent operations raise; ``serve_rpc`` turns it into an ``error`` frame."""

from __future__ import annotations

import errno

from tunneld.proto.agentrpc import ErrorCode

__all__ = ["OperationError", "from_os_error"]


class OperationError(Exception):
    """A request that cannot be done: a stable ``code`` and a message naming what and where."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_ERRNO_CODES = {
    errno.ENOENT: ErrorCode.NOT_FOUND,
    errno.EACCES: ErrorCode.PERMISSION_DENIED,
    errno.EPERM: ErrorCode.PERMISSION_DENIED,
    errno.EISDIR: ErrorCode.IS_A_DIRECTORY,
    errno.ENOTDIR: ErrorCode.NOT_A_DIRECTORY,
    errno.ELOOP: ErrorCode.PATH_OUTSIDE_ROOTS,
}


def from_os_error(exc: OSError, what: str) -> OperationError:
    """Map an ``OSError`` to a stable code; ``what`` names the operation and the path."""
    code = _ERRNO_CODES.get(exc.errno or 0, ErrorCode.IO_ERROR)
    return OperationError(code, f"{what}: {exc.strerror or exc}")
