"""Token providers: where a node gets the bearer token it shows the control plane.

A provider is an async callable returning the token, called before every coordinator
connect (``tunneld.net.overlay.TokenProvider``), so a rotated secret takes effect on
the next reconnect without a restart::

    provider = token_provider(token_file="/etc/tunneld/node.token", token_command="")
    token = await provider()

Kinds: :class:`StaticToken`, :class:`EnvToken` (read at each call),
:class:`FileToken` (re-read when the file changes; group/other-readable files are
refused, or only warned about with ``strict=False``), :class:`CommandToken` (an
external command such as a secret manager's CLI, its answer cached for a while).
Errors are :class:`TokenError` and never contain the token.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from tunneld.log import get_logger

__all__ = [
    "CommandToken",
    "EnvToken",
    "FileToken",
    "StaticToken",
    "TokenError",
    "TokenProvider",
    "token_provider",
]

log = get_logger(__name__)

TokenProvider = Callable[[], Awaitable[str]]
_MAX_TOKEN = 4096


class TokenError(Exception):
    """No token could be had; the message says from where and why (never the token)."""


def _one_token(text: str, where: str) -> str:
    token = text.strip()
    if not token:
        raise TokenError(f"{where}: no token in it")
    if len(token) > _MAX_TOKEN or any(c.isspace() for c in token):
        raise TokenError(f"{where}: expected one token (no spaces, at most {_MAX_TOKEN} chars)")
    return token


class StaticToken:
    """Always the same token."""

    def __init__(self, token: str) -> None:
        self._token = _one_token(token, "static token")

    async def __call__(self) -> str:
        await trio.lowlevel.checkpoint()
        return self._token


class EnvToken:
    """The token in environment variable ``name``, read at each call."""

    def __init__(self, name: str = "TUNNELD_TOKEN") -> None:
        self.name = name

    async def __call__(self) -> str:
        await trio.lowlevel.checkpoint()
        return _one_token(os.environ.get(self.name, ""), f"${self.name}")


class FileToken:
    """The token in ``path``, re-read when its inode, size or mtime change.

    ``strict``: a file group or others may read is refused (TokenError); otherwise it
    is used with a warning logged once per change.
    """

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def _read(self) -> str:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise TokenError(f"{self.path}: {exc.strerror or exc}") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._seen:
            return self._token
        if st.st_mode & 0o077:
            message = (
                f"{self.path}: the token file is readable by group or others"
                f" (mode {st.st_mode & 0o777:o}; chmod 600 it)"
            )
            if self.strict:
                raise TokenError(message)
            log.warning("token.file_too_open", path=str(self.path), mode=f"{st.st_mode & 0o777:o}")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"{self.path}: cannot read: {exc}") from None
        self._token = _one_token(text, str(self.path))
        self._seen = stamp
        return self._token

    async def __call__(self) -> str:
        return await trio.to_thread.run_sync(self._read)


class CommandToken:
    """The first line a command prints (e.g. ``pass show tunneld/node``).

    The answer is reused for ``cache_seconds``; the command gets ``timeout`` seconds.
    Its stderr is passed through to ours (never parsed), so prompts stay visible.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cache_seconds: float = 300.0,
        timeout: float = 30.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not argv:
            raise ValueError("token command is empty")
        self.argv = list(argv)
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._clock = clock
        self._until = -1.0
        self._token = ""

    async def __call__(self) -> str:
        now = self._clock()
        if self._token and now < self._until:
            await trio.lowlevel.checkpoint()
            return self._token
        where = f"token command {self.argv[0]!r}"
        result = None
        with trio.move_on_after(self.timeout):
            try:
                result = await trio.run_process(
                    self.argv, capture_stdout=True, check=False, stdin=subprocess.DEVNULL
                )
            except OSError as exc:
                raise TokenError(f"{where}: cannot run: {exc.strerror or exc}") from None
        if result is None:
            raise TokenError(f"{where}: no answer within {self.timeout:g}s")
        if result.returncode != 0:
            raise TokenError(f"{where}: exited with status {result.returncode}")
        first = result.stdout.decode("utf-8", "replace").strip().splitlines()[:1]
        self._token = _one_token(first[0] if first else "", where)
        self._until = now + self.cache_seconds
        return self._token


def token_provider(
    *,
    token_file: str = "",
    token_command: str = "",
    env: str = "TUNNELD_TOKEN",
    strict_file: bool = True,
) -> TokenProvider:
    """The provider a node's config asks for: ``token_command`` (a shell-like command
    line, split with :func:`shlex.split`), else ``token_file``, else ``$env``.

    Raises:
        ValueError: none of the three is set, or the command line does not parse.
    """
    if token_command:
        try:
            argv = shlex.split(token_command)
        except ValueError as exc:
            raise ValueError(f"token_command: {exc}") from None
        if not argv:
            raise ValueError("token_command: empty")
        return CommandToken(argv)
    if token_file:
        return FileToken(token_file, strict=strict_file)
    if os.environ.get(env):
        return EnvToken(env)
    raise ValueError(f"no token source: set token_file or token_command, or ${env}")
