"""Files replaced whole: readers see the old content or the new, never a torn write."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_file_atomic"]


def write_file_atomic(path: Path, text: str, *, mode: int = 0o666, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory + rename.

    The temporary file is created exclusively with ``mode`` (less the umask), so a secret
    is never readable by others, even briefly; it is fsynced before the rename and removed
    if anything fails (the exception propagates).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding=encoding) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
