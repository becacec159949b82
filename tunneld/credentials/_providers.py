"""Token providers: where a node gets the bearer token it shows the control plane.

A provider is any ``async () -> str`` (``tunneld.net.overlay.TokenProvider``); the overlay
calls it before every coordinator connect, so a rotated token takes effect on the next
reconnect. A provider that cannot produce a token raises ``TokenUnavailableError``,
an ``OSError``: the overlay's connect loop already treats those as "try again after
backoff" and shows the message in ``tunneld status``, so a token file fixed by an
operator is picked up without a restart. Messages say what is wrong and how to fix it
and never contain the token.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import trio

from tunneld._files import SecretFileError, read_secret_file
from tunneld.log import get_logger

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_TOKEN_ENV",
    "CommandTokenProvider",
    "EnvironmentTokenProvider",
    "FileTokenProvider",
    "StaticTokenProvider",
    "TokenUnavailableError",
    "check_token",
]

log = get_logger(__name__)

DEFAULT_TOKEN_ENV: Final = "TUNNELD_TOKEN"
DEFAULT_COMMAND_TIMEOUT: Final = 10.0
# A token is one line; anything much longer is not a token but a mistake (a key file, a
# whole config) that we should not send to a server.
MAX_TOKEN_LENGTH: Final = 8192
_MAX_COMMAND_OUTPUT: Final = 64 * 1024


class TokenUnavailableError(OSError):
    """No usable token right now; the message says where it was looked for and why not."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_token(token: str, where: str) -> str:
    """``token`` with surrounding whitespace removed, if it can be a bearer token.

    Raises:
        TokenUnavailableError: empty, several lines, spaces or control characters inside,
            or longer than ``MAX_TOKEN_LENGTH`` (``where`` names the source).
    """
    value = token.strip()
    if not value:
        raise TokenUnavailableError(f"{where} is empty: expected a token")
    if len(value) > MAX_TOKEN_LENGTH:
        raise TokenUnavailableError(f"{where} holds {len(value)} characters: not a token")
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise TokenUnavailableError(
            f"{where} does not hold one token (several lines, spaces or non-ASCII characters)"
        )
    return value


class StaticTokenProvider:
    """Always the same token (given in code: tests, embedded setups)."""

    def __init__(self, token: str) -> None:
        self._token = check_token(token, "the static token")

    async def __call__(self) -> str:
        return self._token


class EnvironmentTokenProvider:
    """The token in environment variable ``name`` (``TUNNELD_TOKEN`` by default), read at
    every call; ``environ`` defaults to ``os.environ``."""

    def __init__(self, name: str = DEFAULT_TOKEN_ENV, environ: Mapping[str, str] | None = None):
        self.name = name
        self._environ = os.environ if environ is None else environ

    def check(self) -> None:
        """Raise ``TokenUnavailableError`` now if a call would."""
        check_token(self._environ.get(self.name, ""), f"environment variable {self.name}")

    async def __call__(self) -> str:
        await trio.lowlevel.checkpoint()
        return check_token(self._environ.get(self.name, ""), f"environment variable {self.name}")


class FileTokenProvider:
    """The token in ``path``, re-read whenever the file changes (inode, size, mtime or mode).

    A file that group or others can read is refused, as for key files: the token is a
    password. So is a symlink whose target is that loose, since the target is checked.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int, int, int] | None = None
        self._token: str | None = None

    def _read(self) -> str:
        where = f"token file {self.path}"
        try:
            raw, st = read_secret_file(self.path, what="token file", max_bytes=MAX_TOKEN_LENGTH + 2)
        except SecretFileError as exc:
            raise TokenUnavailableError(str(exc)) from None
        seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
        if seen == self._seen and self._token is not None:
            return self._token
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise TokenUnavailableError(f"{where} is not ASCII text: not a token") from None
        token = check_token(text, where)
        if self._seen is not None:
            log.info("credentials.token_file_changed", path=str(self.path))
        self._seen, self._token = seen, token
        return token

    def check(self) -> None:
        """Raise ``TokenUnavailableError`` now if a call would (missing, loose, empty)."""
        self._read()

    async def __call__(self) -> str:
        return await trio.to_thread.run_sync(self._read)


class CommandTokenProvider:
    """The token a command prints on stdout (e.g. a secret manager's CLI), run at every call.

    ``argv`` runs directly (no shell) with our environment; it must exit 0 within
    ``timeout`` seconds and print one token. Its stderr is passed on to ours, not into
    error messages, since a secret manager may print anything there.
    """

    def __init__(self, argv: Sequence[str], *, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        if not argv or not argv[0]:
            raise ValueError("the token command is empty")
        if timeout <= 0:
            raise ValueError("the token command's timeout must be > 0")
        self.argv = tuple(argv)
        self.timeout = timeout

    async def __call__(self) -> str:
        where = f"token command {self.argv[0]!r}"
        try:
            with trio.fail_after(self.timeout):
                returncode, stdout = await _run_capped(self.argv, _MAX_COMMAND_OUTPUT)
        except trio.TooSlowError:
            raise TokenUnavailableError(
                f"{where} did not finish within {self.timeout:g}s (it was killed)"
            ) from None
        except OSError as exc:
            raise TokenUnavailableError(f"cannot run {where}: {exc.strerror or exc}") from None
        if stdout is None:
            raise TokenUnavailableError(
                f"{where} printed over {_MAX_COMMAND_OUTPUT} bytes: not a token (it was killed)"
            )
        if returncode != 0:
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
            )
            raise TokenUnavailableError(f"{where} {how} (its stderr went to ours)")
        try:
            text = stdout.decode("ascii")
        except UnicodeDecodeError:
            raise TokenUnavailableError(f"{where} printed non-ASCII output: not a token") from None
        return check_token(text, f"the output of {where}")


async def _run_capped(argv: Sequence[str], cap: int) -> tuple[int, bytes | None]:
    """Run ``argv`` (stdin empty, stderr ours); its exit status and stdout, or None for
    stdout once it printed more than ``cap`` bytes (it is killed then: we never hold
    more than ``cap`` bytes of it). Cancellation kills it too.
    """
    process = await trio.lowlevel.open_process(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    stdout = process.stdout
    assert stdout is not None
    try:
        out = bytearray()
        while chunk := await stdout.receive_some(cap + 1 - len(out)):
            out += chunk
            if len(out) > cap:
                return -1, None
        return await process.wait(), bytes(out)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await stdout.aclose()
