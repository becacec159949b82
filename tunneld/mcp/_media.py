"""Media types in ``Accept`` and ``Content-Type``, parsed rather than string-compared.

RFC 9110 §8.3.1 (``type/subtype *( OWS ";" OWS parameter )``, case-insensitive type
and parameter names) and §12.5.1 (``Accept`` media ranges with ``q`` weights; ``q=0``
means "not acceptable").
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MediaType", "accepts", "parse_accept", "parse_media_type"]


@dataclass(frozen=True, slots=True)
class MediaType:
    type: str
    subtype: str
    params: dict[str, str]

    @property
    def essence(self) -> str:
        return f"{self.type}/{self.subtype}"


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_media_type(text: str) -> MediaType | None:
    """``"application/json; charset=UTF-8"`` → ``MediaType("application", "json", {...})``.

    Returns ``None`` when ``text`` is not a media type (no ``/``, empty parts).
    Parameter names are lower-cased; values keep their case (unquoted).
    """
    head, _, rest = text.partition(";")
    kind, slash, sub = head.strip().partition("/")
    kind, sub = kind.strip().lower(), sub.strip().lower()
    if not slash or not kind or not sub or " " in kind or " " in sub:
        return None
    params: dict[str, str] = {}
    for part in rest.split(";"):
        name, eq, value = part.partition("=")
        if eq and name.strip():
            params[name.strip().lower()] = _unquote(value)
    return MediaType(kind, sub, params)


def parse_accept(header: str | None) -> list[MediaType]:
    """The media ranges of an ``Accept`` value with ``q > 0``; unparseable ranges skipped."""
    if header is None:
        return []
    ranges: list[MediaType] = []
    for item in header.split(","):
        parsed = parse_media_type(item)
        if parsed is None:
            continue
        q = parsed.params.get("q", "1")
        try:
            weight = float(q)
        except ValueError:
            weight = 1.0
        if weight > 0:
            ranges.append(parsed)
    return ranges


def accepts(ranges: list[MediaType], kind: str, subtype: str) -> bool:
    """Whether one of ``ranges`` covers ``kind/subtype`` (``*/*`` and ``kind/*`` do)."""
    for media in ranges:
        if media.type == "*" and media.subtype == "*":
            return True
        if media.type == kind and media.subtype in ("*", subtype):
            return True
    return False
