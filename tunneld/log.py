"""Structured logging: ``log.info("tunnel.acquired", agent="web1", leases=2)``.

Fields are typed (``LogValue``), so passing an object, bytes or a :class:`Secret` is a
type error under mypy rather than a surprise in production. Output is ``key=value``
text on a terminal and JSON lines under journald (``JOURNAL_STREAM``) or when asked.
Field names that look like credentials are redacted whatever their value.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
import time
from typing import Final, TextIO

__all__ = ["LogValue", "Logger", "Secret", "get_logger", "setup_logging"]

LogValue = str | int | float | bool | None

_FIELDS_ATTR: Final = "tunneld_fields"
# Records are made without the caller's file and line (see Logger._log).
_NO_FILE: Final = "(unknown file)"
_REDACTED: Final = "[redacted]"
# A value with one of these is quoted (JSON string syntax) in key=value lines.
_NEEDS_QUOTES: Final = re.compile(r'[ "=\\\n\t]')
_SECRET_WORDS: Final = ("token", "password", "secret", "private", "psk", "authorization", "cookie")
_SECRET_KEY: Final = re.compile("|".join(_SECRET_WORDS), re.IGNORECASE)
_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class Secret:
    """A credential carried through the program without ever being printed.

    ``str()``/``repr()`` show ``[redacted]``; :meth:`reveal` returns the value for the
    one place that must send it. It is not a ``LogValue``, so logging it is a type error.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the wire; never for messages or logs."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_REDACTED})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    # One regex search, not a generator over the words: this runs for every field of
    # every line and was a third of a short line's formatting. Cached: field names
    # are keyword names from the code, a small set, each seen on many lines.
    return _SECRET_KEY.search(key) is not None


class Logger:
    """A named logger with bound context fields. Cheap to create; no global state."""

    __slots__ = ("_bound", "_logger")

    def __init__(self, name: str, bound: dict[str, LogValue] | None = None) -> None:
        self._logger = logging.getLogger(name)
        self._bound: dict[str, LogValue] = bound or {}

    def bind(self, **fields: LogValue) -> Logger:
        """A logger that adds ``fields`` to every record."""
        return Logger(self._logger.name, {**self._bound, **fields})

    def debug(self, event: str, /, **fields: LogValue) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, /, **fields: LogValue) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, /, **fields: LogValue) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, /, **fields: LogValue) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, /, **fields: LogValue) -> None:
        """Log at error level with the current exception's traceback."""
        self._log(logging.ERROR, event, fields, exc_info=True)

    def _log(
        self, level: int, event: str, fields: dict[str, LogValue], exc_info: bool = False
    ) -> None:
        logger = self._logger
        if logger.isEnabledFor(level):
            # The record is made here and handed to ``handle`` (what Logger.log does
            # after it), skipping ``findCaller``: its stack walk was a fifth of a
            # line's cost, for a file and line no formatter of ours prints.
            record = logger.makeRecord(
                logger.name,
                level,
                _NO_FILE,
                0,
                event,
                (),
                sys.exc_info() if exc_info else None,
                extra={_FIELDS_ATTR: {**self._bound, **fields} if self._bound else fields},
            )
            logger.handle(record)


def get_logger(name: str) -> Logger:
    """The :class:`Logger` for ``name`` (a dotted module name, usually ``__name__``)."""
    return Logger(name)


def _shown(key: str, value: LogValue) -> LogValue:
    """``value`` as a line may show it: redacted under a credential-like key."""
    return _REDACTED if value is not None and _is_secret_key(key) else value


def _fields(record: logging.LogRecord) -> dict[str, LogValue]:
    raw: dict[str, LogValue] = getattr(record, _FIELDS_ATTR, {})
    return {k: _shown(k, v) for k, v in raw.items()}


def _quote(value: LogValue) -> str:
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)  # digits, sign, '.', 'e', inf or nan: never quoted
    text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text) is not None or not text.isprintable():
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """``2026-11-27T06:20:52.123Z info tunnel.acquired agent=web1 leases=2``."""

    def __init__(self) -> None:
        super().__init__()
        # The formatted second of the last record: lines come many per second, and
        # strftime was a good part of a short line's cost.
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        parts = [
            f"{self._stamp}.{int(record.msecs):03d}Z",
            record.levelname.lower(),
            record.getMessage(),
        ]
        # A plain loop, not _fields() and a generator: one pass, no dict built per line.
        raw: dict[str, LogValue] = getattr(record, _FIELDS_ATTR, {})
        for key, value in raw.items():
            parts.append(f"{key}={_quote(_shown(key, value))}")
        if record.name.startswith("tunneld.") is False:
            parts.append(f"logger={record.name}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``event``, ``logger`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        for key, value in _fields(record).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["traceback"] = self.formatException(record.exc_info)
        return json.dumps(obj, separators=(",", ":"))


def setup_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> logging.Handler:
    """Install one handler on the root logger; returns it (tests remove it again).

    ``fmt`` is ``"text"``, ``"json"`` or ``"auto"`` (JSON under journald, where
    ``JOURNAL_STREAM`` is set, text otherwise). Logs go to stderr by default.
    """
    if fmt == "auto":
        fmt = "json" if os.environ.get("JOURNAL_STREAM") else "text"
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_tunneld", False):
            root.removeHandler(old)
    handler._tunneld = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    return handler
