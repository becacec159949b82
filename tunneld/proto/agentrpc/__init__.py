"""agentrpc: the agent service protocol, sans-IO (DESIGN.md, layers; docs/agentrpc.md).

Each frame is a 4-byte big-endian length and a msgpack map of at most ``MAX_FRAME_SIZE``
bytes. The client sends a request (``op``), the agent answers with one ``result`` or
``error`` — or, for a foreground ``exec``, ``stdout``/``stderr`` chunks then ``exit`` —
and the stream can carry the next request. ``FrameDecoder`` splits bytes into payloads;
``decode_client_frame``/``decode_response`` turn payloads into frozen dataclasses and
``encode`` does the reverse. Bad input raises ``RemoteProtocolError`` and nothing else.
"""

from __future__ import annotations

from tunneld.proto.agentrpc._errors import AgentRpcError, ErrorCode, RemoteProtocolError
from tunneld.proto.agentrpc._framing import HEADER_SIZE, MAX_FRAME_SIZE, FrameDecoder, frame
from tunneld.proto.agentrpc._messages import (
    Cancel,
    CheckPortRequest,
    ClientFrame,
    CommitPartRequest,
    DiscardPartRequest,
    EditFileRequest,
    Error,
    ExecRequest,
    Exit,
    FileEdit,
    HashFileRequest,
    ListDirRequest,
    ProcessListRequest,
    ProcessOutputRequest,
    ProcessSignalRequest,
    ReadFileRequest,
    Request,
    Response,
    Result,
    StatRequest,
    Stderr,
    StdinData,
    StdinEof,
    Stdout,
    WriteFileRequest,
    WritePartRequest,
    decode_client_frame,
    decode_response,
    encode,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME_SIZE",
    "AgentRpcError",
    "Cancel",
    "CheckPortRequest",
    "ClientFrame",
    "CommitPartRequest",
    "DiscardPartRequest",
    "EditFileRequest",
    "Error",
    "ErrorCode",
    "ExecRequest",
    "Exit",
    "FileEdit",
    "FrameDecoder",
    "HashFileRequest",
    "ListDirRequest",
    "ProcessListRequest",
    "ProcessOutputRequest",
    "ProcessSignalRequest",
    "ReadFileRequest",
    "RemoteProtocolError",
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
    "frame",
]
