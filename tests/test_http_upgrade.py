"""WebSocket and raw ``Connection: Upgrade`` routes of tunneld.http, over real sockets."""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket
from _http_support import RawClient, capture_http_log, request_bytes, start_server

from tunneld.http import Request, Response, Router


async def echo_websocket(request: Request, websocket: trio_websocket.WebSocketConnection) -> None:
    await websocket.send_message(
        json.dumps(
            {
                "subprotocol": websocket.subprotocol,
                "path": request.path,
                "user": request.query_one("user"),
            }
        )
    )
    while True:
        message = await websocket.get_message()
        await websocket.send_message(message)


async def require_token(request: Request) -> Response | None:
    if request.headers.get("authorization") != "Bearer good":
        return Response.error(
            401, "missing or wrong token", headers=[("WWW-Authenticate", "Bearer")]
        )
    return None


def make_router() -> Router:
    router = Router()
    router.websocket("/ws", echo_websocket, subprotocols=["derp", "derp-old"])
    router.websocket("/strict", echo_websocket, subprotocols=["derp"], require_subprotocol=True)
    router.websocket("/private", echo_websocket, authorize=require_token)
    return router


async def test_websocket_echo_negotiates_server_preferred_subprotocol(
    nursery: trio.Nursery,
) -> None:
    _server, port = await start_server(nursery, make_router())
    with capture_http_log() as logs:
        await check_echo(port)
        # The server logs the close after its side of the closing handshake finished.
        for _ in range(500):
            if logs.events("http.websocket_closed"):
                break
            await trio.sleep(0.01)
    (closed,) = logs.events("http.websocket_closed")
    assert closed["path"] == "/ws"
    assert closed["code"] == 1000
    (access,) = logs.events("http.request")
    assert (access["status"], access["path"]) == (101, "/ws")

    # No subprotocol offered and none required: accepted without one.
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as websocket:
        assert json.loads(await websocket.get_message())["subprotocol"] is None


async def check_echo(port: int) -> None:
    async with trio_websocket.open_websocket_url(
        f"ws://127.0.0.1:{port}/ws?user=ann", subprotocols=["derp-old", "derp", "other"]
    ) as websocket:
        hello = json.loads(await websocket.get_message())
        assert hello == {"subprotocol": "derp", "path": "/ws", "user": "ann"}
        assert websocket.subprotocol == "derp"
        await websocket.send_message(b"\x00binary\xff")
        assert await websocket.get_message() == b"\x00binary\xff"
        await websocket.send_message("text")
        assert await websocket.get_message() == "text"


async def test_websocket_wrong_subprotocol_is_400(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/strict", subprotocols=["nope"]
        ):
            pass  # pragma: no cover
    assert rejected.value.status_code == 400
    assert rejected.value.body is not None
    error = json.loads(rejected.value.body)["error"]
    assert error["code"] == "subprotocol_required"
    assert "derp" in error["message"]


async def test_websocket_authorize_rejection_is_401(nursery: trio.Nursery) -> None:
    _server, port = await start_server(nursery, make_router())
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}/private", extra_headers=[(b"Authorization", b"Bearer bad")]
        ):
            pass  # pragma: no cover
    assert rejected.value.status_code == 401
    assert (b"www-authenticate", b"Bearer") in [(k.lower(), v) for k, v in rejected.value.headers]

    async with trio_websocket.open_websocket_url(
        f"ws://127.0.0.1:{port}/private", extra_headers=[(b"Authorization", b"Bearer good")]
    ) as websocket:
        assert json.loads(await websocket.get_message())["path"] == "/private"


async def test_plain_get_on_websocket_route_is_426_and_connection_survives(
    nursery: trio.Nursery,
) -> None:
    _server, port = await start_server(nursery, make_router())
    client = await RawClient.connect(port)
    await client.send(request_bytes("GET", "/ws"))
    response = await client.read_response()
    assert response.status == 426
    assert response.header("upgrade") == "websocket"
    # A bad handshake (no key) is refused by us, before wsproto sees it.
    await client.send(
        request_bytes(
            "GET",
            "/ws",
            {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"},
        )
    )
    response = await client.read_response()
    assert response.status == 400
    assert "Sec-WebSocket-Key" in response.json()["error"]["message"]  # type: ignore[index]
    await client.send(
        request_bytes(
            "GET",
            "/ws",
            {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "8",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
    )
    response = await client.read_response()
    assert response.status == 426
    assert response.header("sec-websocket-version") == "13"
    await client.aclose()


async def test_shutdown_closes_websockets_with_1001(nursery: trio.Nursery) -> None:
    server, port = await start_server(nursery, make_router())
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as websocket:
        await websocket.get_message()
        server.shutdown(5)
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(5):
                await websocket.get_message()
        assert closed.value.reason.code == 1001


async def test_websocket_handler_crash_closes_1011(nursery: trio.Nursery) -> None:
    async def crash(request: Request, websocket: trio_websocket.WebSocketConnection) -> None:
        await websocket.get_message()
        raise RuntimeError("bug")

    router = Router()
    router.websocket("/crash", crash)
    _server, port = await start_server(nursery, router)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/crash") as websocket:
        await websocket.send_message("go")
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(5):
                await websocket.get_message()
        assert closed.value.reason.code == 1011


async def shout(request: Request, stream: trio.abc.Stream) -> None:
    """Upper-cases bytes until EOF, then says how many it saw and half-closes."""
    assert request.json() == {"agent": "web1", "port": 22}
    total = 0
    while data := await stream.receive_some(4096):
        total += len(data)
        await stream.send_all(data.upper())
    await stream.send_all(f"[{total} bytes]".encode())
    assert isinstance(stream, trio.abc.HalfCloseableStream)
    await stream.send_eof()


async def refuse_unknown_agent(request: Request) -> Response | None:
    if request.json() != {"agent": "web1", "port": 22}:
        return Response.error(404, "no such agent")
    return None


async def test_raw_upgrade_carries_bytes_both_ways(nursery: trio.Nursery) -> None:
    router = Router()
    router.upgrade("/v0/dial", "tunneld-stream", shout, authorize=refuse_unknown_agent)
    _server, port = await start_server(nursery, router)

    client = await RawClient.connect(port)
    body = json.dumps({"agent": "web1", "port": 22}).encode()
    # Bytes sent right after the request, before the 101, must reach the handler first.
    await client.send(
        request_bytes(
            "POST", "/v0/dial", {"Connection": "Upgrade", "Upgrade": "tunneld-stream"}, body
        )
        + b"early "
    )
    status, _reason, headers = await client.read_head()
    assert status == 101
    assert ("Upgrade", "tunneld-stream") in headers
    assert await client.read_exactly(6) == b"EARLY "
    await client.send(b"ssh-2.0")
    assert await client.read_exactly(7) == b"SSH-2.0"
    assert isinstance(client.stream, trio.SocketStream)
    await client.stream.send_eof()
    assert await client.read_to_eof() == b"[13 bytes]"


async def test_raw_upgrade_refusals(nursery: trio.Nursery) -> None:
    router = Router()
    router.upgrade("/v0/dial", "tunneld-stream", shout, authorize=refuse_unknown_agent)
    _server, port = await start_server(nursery, router)
    client = await RawClient.connect(port)
    upgrade = {"Connection": "Upgrade", "Upgrade": "tunneld-stream"}

    await client.send(request_bytes("POST", "/v0/dial", upgrade, b'{"agent": "db9"}'))
    response = await client.read_response()
    assert response.status == 404
    assert response.json() == {"error": {"code": "not_found", "message": "no such agent"}}

    await client.send(request_bytes("POST", "/v0/dial", body=b"{}"))
    response = await client.read_response()
    assert response.status == 426
    assert response.header("upgrade") == "tunneld-stream"

    await client.send(request_bytes("GET", "/v0/dial", upgrade))
    response = await client.read_response()
    assert response.status == 405
    assert response.header("allow") == "OPTIONS, POST"
    await client.aclose()
