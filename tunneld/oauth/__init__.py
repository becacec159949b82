"""OAuth 2.1 for tunneld: the control plane's authorization server, browser login
sessions, and the building blocks of a resource server (the daemon's MCP endpoint).

See docs/oauth.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunneld._lazy import lazy_exports

if TYPE_CHECKING:
    from tunneld.oauth._access_client import AccessCheckError, AccessClient, AccessDecision
    from tunneld.oauth._daemon import DaemonOAuth, build_daemon_oauth, read_secret_file
    from tunneld.oauth._forms import (
        FormError,
        parse_cookies,
        parse_form,
        request_form,
        request_query,
    )
    from tunneld.oauth._pages import PAGE_HEADERS, escape, hidden_fields, html_page
    from tunneld.oauth._resource import (
        BearerAuthenticator,
        ProtectedResourceMetadata,
        canonical_resource,
        resource_metadata_url,
    )
    from tunneld.oauth._server import AuthorizationServer
    from tunneld.oauth._session import CSRF_FIELD, BrowserSessions, SessionUser, safe_next
    from tunneld.oauth._settings import SCOPE_TOOLS, SCOPE_TOOLS_WRITE, SCOPES, OAuthSettings

__all__ = [
    "CSRF_FIELD",
    "PAGE_HEADERS",
    "SCOPES",
    "SCOPE_TOOLS",
    "SCOPE_TOOLS_WRITE",
    "AccessCheckError",
    "AccessClient",
    "AccessDecision",
    "AuthorizationServer",
    "BearerAuthenticator",
    "BrowserSessions",
    "DaemonOAuth",
    "FormError",
    "OAuthSettings",
    "ProtectedResourceMetadata",
    "SessionUser",
    "build_daemon_oauth",
    "canonical_resource",
    "escape",
    "hidden_fields",
    "html_page",
    "parse_cookies",
    "parse_form",
    "read_secret_file",
    "request_form",
    "request_query",
    "resource_metadata_url",
    "safe_next",
]

_EXPORTS = {
    "AccessCheckError": "_access_client",
    "AccessClient": "_access_client",
    "AccessDecision": "_access_client",
    "AuthorizationServer": "_server",
    "BearerAuthenticator": "_resource",
    "BrowserSessions": "_session",
    "CSRF_FIELD": "_session",
    "DaemonOAuth": "_daemon",
    "FormError": "_forms",
    "OAuthSettings": "_settings",
    "PAGE_HEADERS": "_pages",
    "ProtectedResourceMetadata": "_resource",
    "SCOPES": "_settings",
    "SCOPE_TOOLS": "_settings",
    "SCOPE_TOOLS_WRITE": "_settings",
    "SessionUser": "_session",
    "build_daemon_oauth": "_daemon",
    "canonical_resource": "_resource",
    "escape": "_pages",
    "hidden_fields": "_pages",
    "html_page": "_pages",
    "parse_cookies": "_forms",
    "parse_form": "_forms",
    "read_secret_file": "_daemon",
    "request_form": "_forms",
    "request_query": "_forms",
    "resource_metadata_url": "_resource",
    "safe_next": "_session",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
