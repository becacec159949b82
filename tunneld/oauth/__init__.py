"""OAuth 2.1 for tunneld: the control plane's authorization server, browser login
sessions, and the building blocks of a resource server (the daemon's MCP endpoint).

See docs/oauth.md.
"""

from __future__ import annotations

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
