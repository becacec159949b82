"""Files replaced whole (readers see the old content or the new, never a torn write) and
secret files read with one permission rule."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = ["SecretFileError", "read_secret_file", "write_file_atomic"]


class SecretFileError(ValueError):
    """A secret file we refuse to use; the message names the file, never its content."""


def read_secret_file(
    path: str | os.PathLike[str], *, what: str, max_bytes: int
) -> tuple[bytes, os.stat_result]:
    """The content of the secret file ``path`` and the ``stat`` it was checked with.

    One rule for every secret we read (keys, tokens, login files), as ssh has for its
    keys: a regular file (a symlink's target is checked) that neither group nor others
    can access at all, of at most ``max_bytes`` bytes. ``what`` names the file in
    messages ("token file", "private key file").

    Raises:
        SecretFileError: missing or unreadable, not a regular file, accessible by group
            or others (the message says the chmod to run), or too big.
    """
    where = f"{what} {os.fspath(path)}"
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SecretFileError(f"cannot read {where}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"{where} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecretFileError(
            f"{where} is accessible by group or others (mode {mode:04o}); it holds a"
            f" secret: run chmod 600 {os.fspath(path)}"
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SecretFileError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise SecretFileError(f"{where} is over {max_bytes} bytes: not what it should hold")
    return data, st


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
