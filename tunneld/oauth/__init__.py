"""OAuth 2.1 for tunneld: the control plane's authorization server, browser login
sessions, and the building blocks of a resource server (the daemon's MCP endpoint).

See docs/oauth.md.
"""

from __future__ import annotations

from tunneld.oauth._forms import (
    FormError,
    parse_cookies,
    parse_form,
    request_form,
    request_query,
)
from tunneld.oauth._pages import PAGE_HEADERS, escape, hidden_fields, html_page
from tunneld.oauth._session import CSRF_FIELD, BrowserSessions, SessionUser, safe_next

__all__ = [
    "CSRF_FIELD",
    "PAGE_HEADERS",
    "BrowserSessions",
    "FormError",
    "SessionUser",
    "escape",
    "hidden_fields",
    "html_page",
    "parse_cookies",
    "parse_form",
    "request_form",
    "request_query",
    "safe_next",
]
