"""read_file, write_file, edit_files and list_directory."""

from __future__ import annotations

import base64
import binascii
import mimetypes
from datetime import UTC, datetime
from typing import Any, Final

from tunneld.agent.client import AgentClient, AgentError
from tunneld.mcp import ToolContext, ToolError, ToolResult
from tunneld.proto.agentrpc import FileEdit
from tunneld_workspace._errors import agent_rpc, describe_agent_error
from tunneld_workspace._output import complete_utf8_prefix
from tunneld_workspace._settings import AGENT_PROPERTY

__all__ = [
    "EDIT_FILES_INPUT",
    "EDIT_FILES_OUTPUT",
    "LIST_DIRECTORY_INPUT",
    "LIST_DIRECTORY_OUTPUT",
    "READ_FILE_INPUT",
    "READ_FILE_OUTPUT",
    "WRITE_FILE_INPUT",
    "edit_files",
    "list_directory",
    "read_file",
    "write_file",
]

_READ_DEFAULT: Final = 256 * 1024
_READ_MAX: Final = 16 * 2**20
# edit_files reads each file first so that a bad edit anywhere changes nothing anywhere;
# larger files are left to the agent's own (per-file, all-or-nothing) check.
_PRECHECK_MAX: Final = 16 * 2**20
_MAX_ENTRIES: Final = 1000

_PATH: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": 4096,
    "description": "A path inside the agent's roots; relative paths start at the first root.",
}

READ_FILE_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "path": _PATH,
        "offset": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "Byte offset to start at (next_offset of the previous read).",
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": _READ_MAX,
            "default": _READ_DEFAULT,
            "description": "At most this many bytes (the agent may cap it lower).",
        },
        "encoding": {
            "type": "string",
            "enum": ["auto", "text", "base64"],
            "default": "auto",
            "description": (
                "auto: UTF-8 text, or base64 for binary data; text: always text (invalid "
                "bytes become U+FFFD); base64: always base64."
            ),
        },
    },
    "required": ["agent", "path"],
    "additionalProperties": False,
}

READ_FILE_OUTPUT: Final = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "offset": {"type": "integer", "minimum": 0},
        "next_offset": {"type": "integer", "minimum": 0},
        "size": {"type": "integer", "minimum": 0},
        "eof": {"type": "boolean"},
        "encoding": {"type": "string", "enum": ["text", "base64"]},
        "content": {"type": "string"},
    },
    "required": ["path", "offset", "next_offset", "size", "eof", "encoding", "content"],
    "additionalProperties": False,
}

WRITE_FILE_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "path": _PATH,
        "content": {
            "type": "string",
            "maxLength": 12 * 2**20,
            "description": "The file's new content (replaces it whole, atomically).",
        },
        "encoding": {
            "type": "string",
            "enum": ["text", "base64"],
            "default": "text",
            "description": "text: content is written as UTF-8; base64: content is decoded first.",
        },
        "mode": {
            "type": "string",
            "pattern": "^[0-7]{3,4}$",
            "description": "Permission bits in octal, e.g. 644 or 0755 (default: keep the old "
            "file's, else 644).",
        },
    },
    "required": ["agent", "path", "content"],
    "additionalProperties": False,
}

EDIT_FILES_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "edits": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1000,
            "description": (
                "Exact search/replace edits, applied in order. Each search string must occur "
                "exactly once in its file (as left by the previous edits). If any edit fails, "
                "no file is changed."
            ),
            "items": {
                "type": "object",
                "properties": {
                    "path": _PATH,
                    "search": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Text to find, exactly (whitespace included).",
                    },
                    "replace": {"type": "string", "description": "Text to put in its place."},
                },
                "required": ["path", "search", "replace"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["agent", "edits"],
    "additionalProperties": False,
}

EDIT_FILES_OUTPUT: Final = {
    "type": "object",
    "properties": {
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "edits": {"type": "integer", "minimum": 1},
                    "size": {"type": "integer", "minimum": 0},
                },
                "required": ["path", "edits", "size"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["files"],
    "additionalProperties": False,
}

LIST_DIRECTORY_INPUT: Final = {
    "type": "object",
    "properties": {
        "agent": AGENT_PROPERTY,
        "path": {**_PATH, "default": "."},
    },
    "required": ["agent"],
    "additionalProperties": False,
}

LIST_DIRECTORY_OUTPUT: Final = {
    "type": "object",
    "properties": {
        "path": {"type": "string"},
        "entries": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string", "enum": ["file", "dir", "symlink", "other"]},
                    "size": {"type": "integer", "minimum": 0},
                    "mode": {"type": "string"},
                    "mtime": {"type": "string"},
                },
                "required": ["name", "type", "size", "mode", "mtime"],
                "additionalProperties": False,
            },
        },
        "total": {"type": "integer", "minimum": 0},
        "truncated": {"type": "boolean"},
    },
    "required": ["path", "entries", "total", "truncated"],
    "additionalProperties": False,
}


def _is_text(data: bytes, eof: bool) -> bool:
    if b"\x00" in data:
        return False
    keep = len(data) if eof else complete_utf8_prefix(data)
    try:
        data[:keep].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def read_file(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """A slice of a file: text when it is UTF-8, else base64 (or as asked)."""
    agent, path = str(args["agent"]), str(args["path"])
    offset = int(args.get("offset", 0))
    limit = int(args.get("limit", _READ_DEFAULT))
    async with agent_rpc(ctx, agent, "read_file") as client:
        result = await client.read_file(path, offset, limit)
    data = result.data
    encoding = str(args.get("encoding", "auto"))
    if encoding == "auto":
        encoding = "text" if _is_text(data, result.eof) else "base64"
    keep = len(data)
    if encoding == "text":
        if not result.eof:
            keep = complete_utf8_prefix(data) or len(data)
        content = data[:keep].decode("utf-8", errors="replace")
    else:
        content = base64.b64encode(data).decode("ascii")
    next_offset = offset + keep
    eof = next_offset >= result.size
    structured = {
        "path": path,
        "offset": offset,
        "next_offset": next_offset,
        "size": result.size,
        "eof": eof,
        "encoding": encoding,
        "content": content,
    }
    whole = offset == 0 and eof
    if offset >= result.size and offset > 0:
        return ToolResult.text(
            f"(offset {offset} is at or past the end of {path}, which has {result.size} bytes)",
            structured=structured,
        )
    if encoding == "text":
        text = (
            content
            if whole
            else (
                f"{content}\n[bytes {offset}-{next_offset} of {result.size} in {path}"
                + ("]" if eof else f"; read on with offset={next_offset}]")
            )
        )
        return ToolResult.text(text or f"({path} is empty)", structured=structured)
    header = f"{path} is binary ({result.size} bytes); bytes {offset}-{next_offset} as base64" + (
        "" if eof else f" (read on with offset={next_offset})"
    )
    blocks: list[dict[str, Any]] = [{"type": "text", "text": f"{header}:\n{content}"}]
    mime, _ = mimetypes.guess_type(path)
    if whole and mime is not None and mime.startswith("image/") and data:
        blocks.append({"type": "image", "data": content, "mimeType": mime})
    return ToolResult(content=tuple(blocks), structured=structured)


async def write_file(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """Replace a file atomically with the given content."""
    agent, path = str(args["agent"]), str(args["path"])
    content = str(args["content"])
    if args.get("encoding", "text") == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ToolError("write_file: content is not valid base64") from None
    else:
        data = content.encode("utf-8")
    mode = int(str(args["mode"]), 8) if "mode" in args else None
    hints = {
        "not_found": "the parent directory must exist: create it first "
        "(execute_command with mkdir -p)",
    }
    async with agent_rpc(ctx, agent, "write_file", hints) as client:
        try:
            await client.write_file(path, data, mode)
        except ValueError:
            # The request did not fit in one agentrpc frame; nothing was sent.
            raise ToolError(
                f"write_file: {len(data)} bytes is too large for one write to the agent"
            ) from None
        written = await client.stat(path)
    return ToolResult.text(f"Wrote {len(data)} bytes to {path} (mode {written.mode:04o}).")


def _preview(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _check_edits(path: str, text: str, edits: list[tuple[int, FileEdit]]) -> list[str]:
    """The problems the agent would report, all of them, for ``edits`` applied in order."""
    problems = []
    for index, edit in edits:
        count = text.count(edit.search)
        if count == 1:
            text = text.replace(edit.search, edit.replace, 1)
        elif count == 0:
            problems.append(
                f"{path}: edits[{index}]: search string not found: {_preview(edit.search)}"
            )
        else:
            problems.append(
                f"{path}: edits[{index}]: search string occurs {count} times, it must be "
                f"unique (include more surrounding text): {_preview(edit.search)}"
            )
    return problems


async def _read_all(client: AgentClient, path: str) -> bytes | None:
    """The whole file, or ``None`` if it is larger than the pre-check reads."""
    chunks: list[bytes] = []
    offset = 0
    while True:
        part = await client.read_file(path, offset)
        if part.size > _PRECHECK_MAX:
            return None
        chunks.append(part.data)
        offset += len(part.data)
        if part.eof or not part.data:
            return b"".join(chunks)


async def edit_files(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """Exact search/replace edits across several files; a failing edit changes nothing."""
    agent = str(args["agent"])
    groups: dict[str, list[tuple[int, FileEdit]]] = {}
    for index, item in enumerate(args["edits"]):
        edit = FileEdit(str(item["search"]), str(item["replace"]))
        groups.setdefault(str(item["path"]), []).append((index, edit))
    async with agent_rpc(ctx, agent, "edit_files") as client:
        problems: list[str] = []
        for path, edits in groups.items():
            try:
                raw = await _read_all(client, path)
            except AgentError as exc:
                problems.append(f"{path}: cannot read it ({exc.code}): {exc.message}")
                continue
            if raw is None:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{path}: not UTF-8 text (byte {exc.start}); cannot edit it")
                continue
            problems += _check_edits(path, text, edits)
        if problems:
            raise ToolError("edit_files: no file was changed:\n" + "\n".join(problems))
        done: list[dict[str, Any]] = []
        for path, edits in groups.items():
            try:
                size = await client.edit_file(path, [edit for _, edit in edits])
            except AgentError as exc:
                # Only possible if a file changed under us since the check.
                pending = [p for p in groups if p != path and p not in {d["path"] for d in done}]
                raise ToolError(
                    describe_agent_error("edit_files", agent, exc)
                    + f"\nalready edited: {', '.join(d['path'] for d in done) or 'none'}"
                    + f"\nnot attempted: {', '.join(pending) or 'none'}"
                ) from None
            done.append({"path": path, "edits": len(edits), "size": size})
    lines = [f"{d['path']}: {d['edits']} edit(s), now {d['size']} bytes" for d in done]
    return ToolResult.text(
        f"Edited {len(done)} file(s) on {agent}:\n" + "\n".join(lines),
        structured={"files": done},
    )


async def list_directory(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    """A directory's entries (symlinks shown, not followed), sorted by name."""
    agent, path = str(args["agent"]), str(args.get("path", "."))
    async with agent_rpc(ctx, agent, "list_directory") as client:
        resolved = await client.stat(path)
        entries = await client.list_dir(path)
    shown = entries[:_MAX_ENTRIES]
    rows = [
        {
            "name": e.name,
            "type": e.type,
            "size": e.size,
            "mode": f"{e.mode:04o}",
            "mtime": datetime.fromtimestamp(e.mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for e in shown
    ]
    suffix = {"dir": "/", "symlink": "@"}
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
    lines = [f"{resolved.path} ({count})"]
    lines += [
        f"{r['type']:<7} {r['mode']} {r['size']:>12} {r['mtime']}  "
        f"{r['name']}{suffix.get(str(r['type']), '')}"
        for r in rows
    ]
    truncated = len(entries) > len(shown)
    if truncated:
        lines.append(f"[... {len(entries) - len(shown)} more entries not shown]")
    structured = {
        "path": resolved.path,
        "entries": rows,
        "total": len(entries),
        "truncated": truncated,
    }
    return ToolResult.text("\n".join(lines), structured=structured)
