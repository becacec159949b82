"""STUN client: ask a STUN server which address and port our UDP socket appears as."""

from __future__ import annotations

import secrets

import trio

from tunneld.proto.stun import (
    RemoteProtocolError,
    build_binding_request,
    parse_binding_response,
)

__all__ = ["stun_binding"]

# RFC 5389 section 7.2.1: retransmit with an RTO starting at 500 ms, doubling.
_INITIAL_RTO = 0.5


async def _resolve(server: tuple[str, int]) -> tuple[int, tuple[str, int]]:
    host, port = server
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve STUN server {host}:{port}")
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


async def stun_binding(
    server: tuple[str, int],
    *,
    sock: trio.socket.SocketType | None = None,
    timeout: float = 3.0,  # noqa: ASYNC109 - one deadline spanning the retransmissions
) -> tuple[str, int]:
    """Send a Binding request to ``server`` and return our reflexive ``(host, port)``.

    Args:
        server: the STUN server's ``(host, port)``.
        sock: a bound UDP socket to ask for (its mapping is what matters, e.g. the
            overlay's socket); a temporary one is opened and closed when omitted. When
            a socket is passed, datagrams that are not our answer are read and dropped,
            so do not share it with a running reader.
        timeout: give up after this many seconds; requests are retransmitted with a
            doubling RTO starting at 500 ms (RFC 5389 section 7.2.1).

    Raises:
        TimeoutError: no valid answer within ``timeout``.
        OSError: the server cannot be resolved or the socket fails.

    Cancellation: safe; a temporary socket is closed.
    """
    family, address = await _resolve(server)
    own = sock is None
    udp = sock if sock is not None else trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    try:
        transaction_id = secrets.token_bytes(12)
        request = build_binding_request(transaction_id, software="tunneld")
        with trio.move_on_after(timeout):
            rto = _INITIAL_RTO
            while True:
                await udp.sendto(request, address)
                with trio.move_on_after(rto):
                    while True:
                        data, _ = await udp.recvfrom(2048)
                        try:
                            response = parse_binding_response(data)
                        except RemoteProtocolError:
                            continue
                        if response.transaction_id == transaction_id:
                            return response.address
                rto *= 2
        raise TimeoutError(f"no STUN answer from {server[0]}:{server[1]} within {timeout} s")
    finally:
        if own:
            udp.close()
