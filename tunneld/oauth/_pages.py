"""HTML pages of the browser flows: one layout, escaped text, anti-framing headers."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Final

from tunneld.http import Response

__all__ = ["PAGE_HEADERS", "escape", "hidden_fields", "html_page"]

# Every page refuses to be framed (clickjacking of login and consent: RFC 9700 section
# 4.16) and to be cached; scripts are not needed at all.
PAGE_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
    ("Referrer-Policy", "same-origin"),
    ("X-Content-Type-Options", "nosniff"),
)

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;"
    "color:#222}form{margin:1rem 0}label{display:block;margin:.6rem 0 .2rem}"
    "input[type=text],input[type=password]{width:100%;padding:.4rem;box-sizing:border-box}"
    "button{padding:.45rem 1rem;margin-right:.5rem}.error{color:#a00}code{background:#eee;"
    "padding:0 .2rem}ul{padding-left:1.2rem}"
)


def escape(text: object) -> str:
    """``text`` safe inside HTML element content and double-quoted attributes."""
    return html.escape(str(text), quote=True)


def hidden_fields(fields: Iterable[tuple[str, str]]) -> str:
    """``<input type=hidden>`` elements for ``(name, value)`` pairs, escaped."""
    return "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        for name, value in fields
    )


def html_page(
    title: str,
    body_html: str,
    *,
    status: int = 200,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """A complete page: ``title`` is escaped here, ``body_html`` must be escaped already.

    Carries :data:`PAGE_HEADERS` (no framing, no caching) plus ``headers``.
    """
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)} · tunneld</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body_html}</body></html>"
    )
    return Response.html(document, status=status, headers=[*PAGE_HEADERS, *headers])
