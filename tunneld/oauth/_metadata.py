"""Discovery documents: RFC 8414 (authorization server) and RFC 9728 (protected resource)."""

from __future__ import annotations

from collections.abc import Sequence

from tunneld.oauth._clients import AUTH_METHODS
from tunneld.oauth._settings import SCOPES

__all__ = ["authorization_server_metadata", "protected_resource_metadata"]


def authorization_server_metadata(issuer: str, *, registration: bool) -> dict[str, object]:
    """The RFC 8414 document for ``issuer`` (also served at the OIDC discovery path)."""
    doc: dict[str, object] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth2/authorize",
        "token_endpoint": f"{issuer}/oauth2/token",
        "revocation_endpoint": f"{issuer}/oauth2/revoke",
        "introspection_endpoint": f"{issuer}/oauth2/introspect",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
        ],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }
    if registration:
        doc["registration_endpoint"] = f"{issuer}/oauth2/register"
    return doc


def protected_resource_metadata(
    resource: str, authorization_servers: Sequence[str], scopes: Sequence[str] = SCOPES
) -> dict[str, object]:
    """The RFC 9728 document: ``resource`` exactly as clients must name it."""
    return {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "scopes_supported": list(scopes),
        "bearer_methods_supported": ["header"],
        "resource_name": "tunneld MCP",
    }
