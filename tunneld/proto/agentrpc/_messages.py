"""agentrpc messages: frozen dataclasses and their strict msgpack encoding.

Client → agent frames are maps with an ``op`` key; agent → client frames are maps with a
``type`` key. Decoding checks every field's type and range and rejects unknown fields, so
a handler only ever sees well-formed values; anything else raises ``RemoteProtocolError``
whose reason names the message and the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tunneld.proto.agentrpc._errors import RemoteProtocolError
from tunneld.proto.agentrpc._framing import MAX_FRAME_SIZE, frame

__all__ = [
    "Cancel",
    "CheckPortRequest",
    "ClientFrame",
    "CommitPartRequest",
    "DiscardPartRequest",
    "EditFileRequest",
    "Error",
    "ExecRequest",
    "Exit",
    "FileEdit",
    "HashFileRequest",
    "ListDirRequest",
    "ProcessListRequest",
    "ProcessOutputRequest",
    "ProcessSignalRequest",
    "ReadFileRequest",
    "Request",
    "Response",
    "Result",
    "StatRequest",
    "Stderr",
    "StdinData",
    "StdinEof",
    "Stdout",
    "WriteFileRequest",
    "WritePartRequest",
    "decode_client_frame",
    "decode_response",
    "encode",
]

MAX_PATH_LENGTH = 4096
MAX_ARGV = 4096
MAX_EDITS = 1000
SHA256_HEX_LENGTH = 64

# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """Run a command: exactly one of ``argv`` (no shell) or ``shell`` (``/bin/sh -c``).

    ``stdin`` is sent whole; ``stream_stdin`` means the client follows with ``stdin``
    frames and a ``stdin_eof``. ``background`` answers at once with ``result{id, pid}``
    and keeps the output in a bounded buffer (see ``process_output``). ``timeout`` is in
    seconds; ``None`` takes the agent's default.
    """

    argv: tuple[str, ...] | None = None
    shell: str | None = None
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    stdin: bytes | None = None
    stream_stdin: bool = False
    background: bool = False


@dataclass(frozen=True, slots=True)
class ProcessListRequest:
    """List the agent's background processes (running and recently finished)."""


@dataclass(frozen=True, slots=True)
class ProcessOutputRequest:
    """Read a background process's combined output from absolute byte ``offset``."""

    id: str
    offset: int = 0
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class ProcessSignalRequest:
    """Send ``signal`` (a number, or a name such as ``"TERM"``/``"SIGTERM"``) to its group."""

    id: str
    signal: int | str


@dataclass(frozen=True, slots=True)
class ReadFileRequest:
    """Read up to ``limit`` bytes (capped by the agent's max read size) from ``offset``."""

    path: str
    offset: int = 0
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class WriteFileRequest:
    """Replace ``path`` atomically with ``data`` (temp file + rename); ``mode`` like 0o644."""

    path: str
    data: bytes
    mode: int | None = None


@dataclass(frozen=True, slots=True)
class FileEdit:
    """Replace the single exact occurrence of ``search`` with ``replace``."""

    search: str
    replace: str


@dataclass(frozen=True, slots=True)
class EditFileRequest:
    """Apply ``edits`` in order to a UTF-8 file; all or nothing."""

    path: str
    edits: tuple[FileEdit, ...]


@dataclass(frozen=True, slots=True)
class ListDirRequest:
    """List a directory's entries (symlinks are reported, not followed)."""

    path: str


@dataclass(frozen=True, slots=True)
class StatRequest:
    """Describe one path (after resolving symlinks inside the roots)."""

    path: str


@dataclass(frozen=True, slots=True)
class WritePartRequest:
    """Write ``data`` at ``offset`` into the partial file of ``path`` (chunked uploads).

    The partial file lives beside ``path`` until ``commit_part`` renames it over
    ``path``; ``offset`` 0 starts it afresh, a larger one must not exceed its size.
    """

    path: str
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CommitPartRequest:
    """Check the partial file of ``path`` has ``size`` bytes and ``sha256`` (hex), then
    fsync it, set ``mode`` and rename it over ``path``."""

    path: str
    size: int
    sha256: str
    mode: int | None = None


@dataclass(frozen=True, slots=True)
class DiscardPartRequest:
    """Remove the partial file of ``path`` if there is one."""

    path: str


@dataclass(frozen=True, slots=True)
class HashFileRequest:
    """SHA-256 of ``path`` (or of its partial file), of at most the first ``length`` bytes."""

    path: str
    length: int | None = None
    partial: bool = False


@dataclass(frozen=True, slots=True)
class CheckPortRequest:
    """Is something listening on TCP ``port`` on the agent host (any local address)?"""

    port: int


@dataclass(frozen=True, slots=True)
class StdinData:
    """A chunk of stdin for the running foreground ``exec`` (with ``stream_stdin``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StdinEof:
    """Close the running foreground ``exec``'s stdin."""


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the running foreground ``exec`` (its process group is killed)."""


Request = (
    ExecRequest
    | ProcessListRequest
    | ProcessOutputRequest
    | ProcessSignalRequest
    | ReadFileRequest
    | WriteFileRequest
    | EditFileRequest
    | ListDirRequest
    | StatRequest
    | WritePartRequest
    | CommitPartRequest
    | DiscardPartRequest
    | HashFileRequest
    | CheckPortRequest
)
ClientFrame = Request | StdinData | StdinEof | Cancel

# -------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class Result:
    """Success; ``value``'s keys depend on the request (documented in docs/agentrpc.md)."""

    value: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Error:
    """Failure: a stable ``code`` (see ``ErrorCode``) and a human message saying what/where."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Stdout:
    """A chunk of a foreground exec's standard output."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Stderr:
    """A chunk of a foreground exec's standard error."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Exit:
    """The foreground exec ended: ``code`` if it exited, ``signal`` if a signal killed it."""

    code: int | None
    signal: int | None
    timed_out: bool = False


Response = Result | Error | Stdout | Stderr | Exit

# --------------------------------------------------------------------------- encoding


def _to_wire(message: ClientFrame | Response) -> dict[str, Any]:
    match message:
        case ExecRequest():
            out: dict[str, Any] = {"op": "exec"}
            if message.argv is not None:
                out["argv"] = list(message.argv)
            if message.shell is not None:
                out["shell"] = message.shell
            if message.cwd is not None:
                out["cwd"] = message.cwd
            if message.env:
                out["env"] = dict(message.env)
            if message.timeout is not None:
                out["timeout"] = float(message.timeout)
            if message.stdin is not None:
                out["stdin"] = message.stdin
            if message.stream_stdin:
                out["stream_stdin"] = True
            if message.background:
                out["background"] = True
            return out
        case ProcessListRequest():
            return {"op": "process_list"}
        case ProcessOutputRequest():
            out = {"op": "process_output", "id": message.id, "offset": message.offset}
            if message.limit is not None:
                out["limit"] = message.limit
            return out
        case ProcessSignalRequest():
            return {"op": "process_signal", "id": message.id, "signal": message.signal}
        case ReadFileRequest():
            out = {"op": "read_file", "path": message.path, "offset": message.offset}
            if message.limit is not None:
                out["limit"] = message.limit
            return out
        case WriteFileRequest():
            out = {"op": "write_file", "path": message.path, "data": message.data}
            if message.mode is not None:
                out["mode"] = message.mode
            return out
        case EditFileRequest():
            edits = [{"search": e.search, "replace": e.replace} for e in message.edits]
            return {"op": "edit_file", "path": message.path, "edits": edits}
        case ListDirRequest():
            return {"op": "list_dir", "path": message.path}
        case StatRequest():
            return {"op": "stat", "path": message.path}
        case WritePartRequest():
            return {
                "op": "write_part",
                "path": message.path,
                "offset": message.offset,
                "data": message.data,
            }
        case CommitPartRequest():
            out = {
                "op": "commit_part",
                "path": message.path,
                "size": message.size,
                "sha256": message.sha256,
            }
            if message.mode is not None:
                out["mode"] = message.mode
            return out
        case DiscardPartRequest():
            return {"op": "discard_part", "path": message.path}
        case HashFileRequest():
            out = {"op": "hash_file", "path": message.path}
            if message.length is not None:
                out["length"] = message.length
            if message.partial:
                out["partial"] = True
            return out
        case CheckPortRequest():
            return {"op": "check_port", "port": message.port}
        case StdinData():
            return {"op": "stdin", "data": message.data}
        case StdinEof():
            return {"op": "stdin_eof"}
        case Cancel():
            return {"op": "cancel"}
        case Result():
            return {"type": "result", "value": dict(message.value)}
        case Error():
            return {"type": "error", "code": message.code, "message": message.message}
        case Stdout():
            return {"type": "stdout", "data": message.data}
        case Stderr():
            return {"type": "stderr", "data": message.data}
        case Exit():
            return {
                "type": "exit",
                "code": message.code,
                "signal": message.signal,
                "timed_out": message.timed_out,
            }
    raise TypeError(f"not an agentrpc message: {message!r}")


def encode(message: ClientFrame | Response, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """One complete frame (length prefix + msgpack map) for ``message``.

    Raises:
        ValueError: the encoded message exceeds ``max_frame_size`` (e.g. a write_file
            payload too large to send in one frame).
    """
    payload = msgpack.packb(_to_wire(message), use_bin_type=True)
    assert isinstance(payload, bytes)
    return frame(payload, max_frame_size=max_frame_size)


# --------------------------------------------------------------------------- decoding


def _unpack(payload: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many unrelated types; all mean "malformed"
        raise RemoteProtocolError(f"frame is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"frame is a msgpack {type(obj).__name__}, expected a map")
    return obj


class _Fields:
    """Typed access to one decoded map; every failure names the message and the key."""

    def __init__(self, kind: str, data: dict[str, Any], tag: str) -> None:
        self.kind = kind
        self.data = data
        self.used = {tag}

    def fail(self, key: str, expected: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{self.kind}: field {key!r} must be {expected}")

    def _get(self, key: str, required: bool) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise RemoteProtocolError(f"{self.kind}: missing field {key!r}")
            return None
        return self.data[key]

    def text(self, key: str, *, required: bool = True, max_len: int | None = None) -> str | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, str) or "\x00" in value:
            raise self.fail(key, "a string without NUL")
        if max_len is not None and len(value) > max_len:
            raise self.fail(key, f"at most {max_len} characters")
        return value

    def path(self, key: str = "path") -> str:
        value = self.text(key, max_len=MAX_PATH_LENGTH)
        assert value is not None
        if not value:
            raise self.fail(key, "a non-empty path")
        return value

    def any_text(self, key: str) -> str:
        value = self._get(key, True)
        if not isinstance(value, str):
            raise self.fail(key, "a string")
        return value

    def blob(self, key: str, *, required: bool = True) -> bytes | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if not isinstance(value, bytes):
            raise self.fail(key, "binary data")
        return value

    def integer(
        self, key: str, *, required: bool = True, low: int = 0, high: int = 2**63 - 1
    ) -> int | None:
        value = self._get(key, required)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"an integer in [{low}, {high}]")
        return value

    def optional_int(self, key: str) -> int | None:
        value = self._get(key, True)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, "an integer or nil")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def finish(self) -> None:
        extra = sorted(str(k) for k in self.data if k not in self.used)
        if extra:
            raise RemoteProtocolError(f"{self.kind}: unknown field {extra[0]!r}")


def _exec(f: _Fields) -> ExecRequest:
    argv_raw = f._get("argv", False)
    argv: tuple[str, ...] | None = None
    if argv_raw is not None:
        if (
            not isinstance(argv_raw, list)
            or not 1 <= len(argv_raw) <= MAX_ARGV
            or not all(isinstance(a, str) and "\x00" not in a for a in argv_raw)
        ):
            raise f.fail("argv", f"a list of 1 to {MAX_ARGV} strings without NUL")
        argv = tuple(argv_raw)
    shell = f.text("shell", required=False)
    if (argv is None) == (shell is None):
        raise RemoteProtocolError("exec: exactly one of 'argv' or 'shell' is required")
    cwd = f.text("cwd", required=False, max_len=MAX_PATH_LENGTH)
    env_raw = f._get("env", False)
    env: dict[str, str] = {}
    if env_raw is not None:
        if not isinstance(env_raw, dict) or not all(
            isinstance(k, str)
            and k
            and "=" not in k
            and "\x00" not in k
            and isinstance(v, str)
            and "\x00" not in v
            for k, v in env_raw.items()
        ):
            raise f.fail("env", "a map of variable names to strings")
        env = dict(env_raw)
    timeout_raw = f._get("timeout", False)
    timeout: float | None = None
    if timeout_raw is not None:
        if (
            isinstance(timeout_raw, bool)
            or not isinstance(timeout_raw, (int, float))
            or not math.isfinite(timeout_raw)
            or timeout_raw <= 0
        ):
            raise f.fail("timeout", "a positive number of seconds")
        timeout = float(timeout_raw)
    stdin = f.blob("stdin", required=False)
    stream_stdin = f.flag("stream_stdin")
    background = f.flag("background")
    if stream_stdin and stdin is not None:
        raise RemoteProtocolError("exec: 'stdin' and 'stream_stdin' are mutually exclusive")
    if stream_stdin and background:
        raise RemoteProtocolError("exec: 'stream_stdin' is not available with 'background'")
    return ExecRequest(argv, shell, cwd, env, timeout, stdin, stream_stdin, background)


def _edit_file(f: _Fields) -> EditFileRequest:
    path = f.path()
    raw = f._get("edits", True)
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_EDITS:
        raise f.fail("edits", f"a list of 1 to {MAX_EDITS} edits")
    edits = []
    for i, item in enumerate(raw):
        sub = _Fields(f"edit_file: edits[{i}]", item if isinstance(item, dict) else {}, "")
        if not isinstance(item, dict):
            raise RemoteProtocolError(f"edit_file: edits[{i}] must be a map")
        search = sub.any_text("search")
        if not search:
            raise sub.fail("search", "a non-empty string")
        edits.append(FileEdit(search, sub.any_text("replace")))
        sub.finish()
    return EditFileRequest(path, tuple(edits))


def _signal(f: _Fields) -> ProcessSignalRequest:
    ident = f.text("id")
    assert ident is not None
    value = f._get("signal", True)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise f.fail("signal", "a signal number or name")
    if isinstance(value, int) and not 1 <= value <= 64:
        raise f.fail("signal", "a signal number in [1, 64]")
    if isinstance(value, str) and not (0 < len(value) <= 16 and value.isascii()):
        raise f.fail("signal", "a signal name such as 'TERM'")
    return ProcessSignalRequest(ident, value)


def _commit_part(f: _Fields) -> CommitPartRequest:
    path = f.path()
    size = f.integer("size")
    digest = f.text("sha256", max_len=SHA256_HEX_LENGTH)
    assert size is not None
    assert digest is not None
    if len(digest) != SHA256_HEX_LENGTH or digest.strip("0123456789abcdef"):
        raise f.fail("sha256", "64 lowercase hex digits")
    return CommitPartRequest(path, size, digest, f.integer("mode", required=False, high=0o7777))


def _str(value: str | None) -> str:
    assert value is not None
    return value


def _int(value: int | None) -> int:
    assert value is not None
    return value


_CLIENT: dict[str, Callable[[_Fields], ClientFrame]] = {
    "exec": _exec,
    "process_list": lambda f: ProcessListRequest(),
    "process_output": lambda f: ProcessOutputRequest(
        _str(f.text("id", max_len=64)),
        f.integer("offset", required=False) or 0,
        f.integer("limit", required=False),
    ),
    "process_signal": _signal,
    "read_file": lambda f: ReadFileRequest(
        f.path(), f.integer("offset", required=False) or 0, f.integer("limit", required=False)
    ),
    "write_file": lambda f: WriteFileRequest(
        f.path(),
        f.blob("data") or b"",
        f.integer("mode", required=False, high=0o7777),
    ),
    "edit_file": _edit_file,
    "list_dir": lambda f: ListDirRequest(f.path()),
    "stat": lambda f: StatRequest(f.path()),
    "write_part": lambda f: WritePartRequest(
        f.path(), f.integer("offset") or 0, f.blob("data") or b""
    ),
    "commit_part": _commit_part,
    "discard_part": lambda f: DiscardPartRequest(f.path()),
    "hash_file": lambda f: HashFileRequest(
        f.path(), f.integer("length", required=False), f.flag("partial")
    ),
    "check_port": lambda f: CheckPortRequest(_int(f.integer("port", low=1, high=65535))),
    "stdin": lambda f: StdinData(f.blob("data") or b""),
    "stdin_eof": lambda f: StdinEof(),
    "cancel": lambda f: Cancel(),
}


def decode_client_frame(payload: bytes) -> ClientFrame:
    """Decode one client → agent frame payload (without its length prefix).

    Raises:
        RemoteProtocolError: not msgpack, not a map, unknown ``op``, a missing, unknown or
            mistyped field; the reason names the op and the field.
    """
    data = _unpack(payload)
    op = data.get("op")
    if not isinstance(op, str):
        raise RemoteProtocolError("request: field 'op' must be a string")
    decoder = _CLIENT.get(op)
    if decoder is None:
        raise RemoteProtocolError(f"request: unknown op {op[:40]!r}")
    fields = _Fields(op, data, "op")
    message = decoder(fields)
    fields.finish()
    return message


def _exit(f: _Fields) -> Exit:
    code = f.optional_int("code")
    sig = f.optional_int("signal")
    return Exit(code, sig, f.flag("timed_out"))


def _result(f: _Fields) -> Result:
    value = f._get("value", True)
    if not isinstance(value, dict):
        raise f.fail("value", "a map")
    return Result(value)


_RESPONSES: dict[str, Callable[[_Fields], Response]] = {
    "result": _result,
    "error": lambda f: Error(_str(f.text("code", max_len=64)), f.any_text("message")),
    "stdout": lambda f: Stdout(f.blob("data") or b""),
    "stderr": lambda f: Stderr(f.blob("data") or b""),
    "exit": _exit,
}


def decode_response(payload: bytes) -> Response:
    """Decode one agent → client frame payload (without its length prefix).

    Raises:
        RemoteProtocolError: not msgpack, not a map, unknown ``type``, or a bad field.
    """
    data = _unpack(payload)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RemoteProtocolError("response: field 'type' must be a string")
    decoder = _RESPONSES.get(kind)
    if decoder is None:
        raise RemoteProtocolError(f"response: unknown type {kind[:40]!r}")
    fields = _Fields(kind, data, "type")
    message = decoder(fields)
    fields.finish()
    return message
