"""The control plane's STUN server: answers Binding requests with the sender's address."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from tunneld.log import get_logger
from tunneld.proto.stun import (
    RemoteProtocolError,
    build_binding_response,
    parse_binding_request,
)

__all__ = ["StunStats", "serve_stun"]

log = get_logger(__name__)


@dataclass
class StunStats:
    """Counters of one STUN server."""

    requests: int = 0
    responses: int = 0
    bad_datagrams: int = 0
    send_errors: int = 0


async def serve_stun(
    host: str,
    port: int,
    *,
    stats: StunStats | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer STUN Binding requests on UDP ``host``:``port`` until cancelled.

    Reports ``(host, bound_port)`` through ``task_status.started`` (``port`` 0 picks a
    free one). Datagrams that are not valid Binding requests are ignored and counted in
    ``stats.bad_datagrams``; a failed send is counted and ignored.

    Raises:
        OSError: the address cannot be bound.

    Cancellation: the socket is closed.
    """
    counters = stats if stats is not None else StunStats()
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(sockaddr)
        bound = sock.getsockname()
        log.info("stun.listening", host=str(bound[0]), port=int(bound[1]))
        task_status.started((str(bound[0]), int(bound[1])))
        while True:
            try:
                data, peer = await sock.recvfrom(2048)
            except OSError:
                # ICMP errors from earlier sends surface here on some systems.
                continue
            try:
                request = parse_binding_request(data)
            except RemoteProtocolError:
                counters.bad_datagrams += 1
                continue
            counters.requests += 1
            reply = build_binding_response(request.transaction_id, (peer[0], peer[1]))
            try:
                await sock.sendto(reply, peer)
            except OSError:
                counters.send_errors += 1
                continue
            counters.responses += 1
