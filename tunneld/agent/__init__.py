"""The agent role's services (DESIGN.md: ``tunneld agent``), independent of the transport.

``AgentServices(config)`` serves streams handed to it by whatever accepted them (mux
streams from the overlay, or any ``trio.abc.HalfCloseableStream`` in tests):
``dispatch(service, stream)`` routes a stream-open service name — ``"rpc"`` (agentrpc:
exec, background processes, files) or ``"tcp:PORT"`` (a byte pipe to 127.0.0.1:PORT) —
and refuses the rest with an agentrpc ``error`` frame. ``AgentClient`` is the other end
of an ``rpc`` stream. Protocol: docs/agentrpc.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunneld._lazy import lazy_exports

if TYPE_CHECKING:
    from tunneld.agent._errors import OperationError
    from tunneld.agent._paths import PathPolicy
    from tunneld.agent._services import (
        DEFAULT_KILL_GRACE,
        DEFAULT_OUTPUT_LIMIT,
        AgentServices,
        parse_service,
    )

__all__ = [
    "DEFAULT_KILL_GRACE",
    "DEFAULT_OUTPUT_LIMIT",
    "AgentServices",
    "OperationError",
    "PathPolicy",
    "parse_service",
]

_EXPORTS = {
    "AgentServices": "_services",
    "DEFAULT_KILL_GRACE": "_services",
    "DEFAULT_OUTPUT_LIMIT": "_services",
    "OperationError": "_errors",
    "PathPolicy": "_paths",
    "parse_service": "_services",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
