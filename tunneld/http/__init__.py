"""tunneld's one HTTP/1.1 server: h11 on trio, with WebSocket and raw upgrades.

Used by the control plane (coordinator, DERP over WebSocket, REST, metrics), the
daemon's Unix-socket local API and the MCP endpoint (streamed SSE responses)::

    router = Router()
    router.route("GET", "/v0/agents/{name}", get_agent)
    router.websocket("/derp", serve_derp, subprotocols=["derp"], require_subprotocol=True)
    server = HttpServer(router, limits=HttpLimits(max_body_bytes=64 * 1024))
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
"""

from __future__ import annotations

from tunneld.http._headers import Headers
from tunneld.http._limits import HttpLimits
from tunneld.http._messages import (
    Handler,
    HttpError,
    LastChunk,
    Request,
    Response,
    format_sse,
    status_code_slug,
)
from tunneld.http._router import (
    Authorizer,
    Router,
    UpgradeHandler,
    WebSocketHandler,
)
from tunneld.http._server import HttpServer
from tunneld.http._socket_stream import DirectSocketStream, raise_notsent_lowat
from tunneld.http._streams import HalfCloseableReplayStream, ReplayStream
from tunneld.http._unix import PeerCredentials, open_unix_listener, peer_credentials

__all__ = [
    "Authorizer",
    "DirectSocketStream",
    "HalfCloseableReplayStream",
    "Handler",
    "Headers",
    "HttpError",
    "HttpLimits",
    "HttpServer",
    "LastChunk",
    "PeerCredentials",
    "ReplayStream",
    "Request",
    "Response",
    "Router",
    "UpgradeHandler",
    "WebSocketHandler",
    "format_sse",
    "open_unix_listener",
    "peer_credentials",
    "raise_notsent_lowat",
    "status_code_slug",
]
