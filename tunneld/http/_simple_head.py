"""A recognizer for the plainest request heads, for the raw-upgrade fast path.

A warm ``tunneld dial`` is one short request (``POST /v0/dial`` with ``Upgrade``) whose
head arrives whole in the connection's first read. Driving h11 for it (a connection
state machine, event objects, header validation on the way in and again for the 101)
was a measured part of the whole dial's CPU (``tunneld bench dial``), so the server
first offers that first read to :func:`parse_simple_head`.

It is not a second HTTP parser: it accepts only a strict subset of what h11 accepts
and answers ``None`` for everything else, and the server then hands the very same
bytes to h11 as before. The subset: one complete head (``CRLF CRLF``) of visible
ASCII; the request line ``method SP /path SP HTTP/1.1``; fields ``name: value`` with
no obsolete line folding, no bare CR or LF, no control or non-ASCII bytes; exactly one
``Host``; no ``Transfer-Encoding`` or ``Expect``; ``Content-Length`` absent or ``0``
(no body). For any head it accepts, h11 yields the same method, target, version and
fields, byte for byte (tests/test_http_simple_head.py fuzzes that against h11).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tunneld._http_grammar import TOKEN_PATTERN

__all__ = ["SimpleHead", "parse_simple_head"]

# RFC 9110 §5.6.2 token (a method or a field name).
_TOKEN: Final = TOKEN_PATTERN.encode("ascii")
# RFC 9112 §3: method SP request-target SP HTTP-version; only origin-form targets
# (RFC 9112 §3.2.1) of visible ASCII and only HTTP/1.1.
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") (/[!-~]*) HTTP/1\.1")
# RFC 9112 §5: field-name ":" OWS field-value OWS, the value of visible ASCII with
# inner spaces and tabs (a subset of h11's field-content, which also admits
# control characters and obs-text).
_FIELD: Final = re.compile(rb"(" + _TOKEN + rb"):[ \t]*((?:[!-~]+(?:[ \t]+[!-~]+)*)?)[ \t]*")


@dataclass(frozen=True, slots=True)
class SimpleHead:
    """A request head :func:`parse_simple_head` accepted.

    Shaped like h11's ``Request``: ``headers`` are ``(name, value)`` with the name as
    sent (h11's ``raw_items()``); ``end`` is the offset just past the head's blank line.
    """

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    end: int


def parse_simple_head(data: bytes, max_bytes: int) -> SimpleHead | None:
    """The head at the start of ``data`` if it is in the plain subset, else None.

    ``max_bytes`` bounds where the head's end is looked for (a longer head is None,
    and h11 then applies the server's limits). Never raises for any input.
    """
    end = data.find(b"\r\n\r\n", 0, max_bytes)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = lengths = 0
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            return None
        name, value = field.group(1, 2)
        lowered = name.lower()
        if lowered == b"host":
            hosts += 1
        elif lowered == b"content-length":
            if value != b"0":
                return None
            lengths += 1
        elif lowered in (b"transfer-encoding", b"expect"):
            return None
        headers.append((name, value))
    # h11 refuses an HTTP/1.1 request without exactly one Host.
    if hosts != 1 or lengths > 1:
        return None
    return SimpleHead(request.group(1), request.group(2), headers, end + 4)
