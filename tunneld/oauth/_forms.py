"""Parsers for what browsers and OAuth clients send: form bodies, query strings, cookies.

Strict on purpose: OAuth parameters must not repeat (RFC 6749 section 3.1), text must
be UTF-8, and the number and size of fields is bounded. Every failure is a
:class:`FormError` whose message names the field; the endpoints turn it into the
protocol's own error (``invalid_request``, a 400 page).
"""

from __future__ import annotations

import urllib.parse
from typing import Final

from tunneld.http import Request

__all__ = [
    "FORM_CONTENT_TYPE",
    "FormError",
    "media_type",
    "parse_cookies",
    "parse_form",
    "request_form",
    "request_query",
]

FORM_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"
MAX_FIELDS: Final = 64
MAX_VALUE_CHARS: Final = 8192
_MAX_COOKIES: Final = 64


class FormError(ValueError):
    """A malformed form, query string or cookie header; the message says where."""


def parse_form(data: str | bytes, *, max_fields: int = MAX_FIELDS) -> dict[str, str]:
    """``application/x-www-form-urlencoded`` text (a body or a query string) as a dict.

    Raises:
        FormError: not UTF-8 (before or after percent-decoding), more than
            ``max_fields`` fields, a value over 8192 characters, or a name given twice.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormError(f"form is not UTF-8 (byte {exc.start})") from None
    try:
        pairs = urllib.parse.parse_qsl(
            data,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=max_fields,
            separator="&",
        )
    except UnicodeDecodeError:
        raise FormError("form holds percent-encoded bytes that are not UTF-8") from None
    except ValueError:
        raise FormError(f"form has more than {max_fields} fields") from None
    result: dict[str, str] = {}
    for name, value in pairs:
        if name in result:
            # RFC 6749 section 3.1: "Request and response parameters MUST NOT be
            # included more than once."
            raise FormError(f"parameter {name[:64]!r} is given more than once")
        if len(value) > MAX_VALUE_CHARS:
            raise FormError(f"parameter {name[:64]!r} is longer than {MAX_VALUE_CHARS} characters")
        result[name] = value
    return result


def media_type(content_type: str | None) -> str:
    """The lower-cased media type of a ``Content-Type`` value, without parameters."""
    if content_type is None:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def request_form(request: Request) -> dict[str, str]:
    """The request body as a form.

    Raises:
        FormError: the body is not ``application/x-www-form-urlencoded`` or is malformed.
    """
    if not request.body:
        return {}  # an empty form needs no Content-Type (browsers and clients omit it)
    kind = media_type(request.headers.get("content-type"))
    if kind != FORM_CONTENT_TYPE:
        raise FormError(f"expected Content-Type {FORM_CONTENT_TYPE}, got {kind or 'none'!r}")
    return parse_form(request.body)


def request_query(request: Request) -> dict[str, str]:
    """The raw request-target's query string as a form (so repeats are caught).

    Raises:
        FormError: malformed query.
    """
    _, _, query = request.target.partition("?")
    return parse_form(query.partition("#")[0])


def parse_cookies(header: str | None) -> dict[str, str]:
    """``Cookie: a=1; b=2`` as a dict (RFC 6265 section 5.4); the first of a repeated
    name wins, pairs without ``=`` are skipped, double-quoted values are unquoted.

    Raises:
        FormError: more than 64 cookies.
    """
    result: dict[str, str] = {}
    if not header:
        return result
    pieces = header.split(";")
    if len(pieces) > _MAX_COOKIES:
        raise FormError(f"more than {_MAX_COOKIES} cookies")
    for piece in pieces:
        name, sep, value = piece.strip().partition("=")
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        result.setdefault(name, value)
    return result
