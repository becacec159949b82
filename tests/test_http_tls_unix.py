"""tunneld.http over TLS (self-signed cert made in the test) and over Unix sockets."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio_websocket
from _http_support import RawClient, request_bytes

from tunneld.http import (
    HttpLimits,
    HttpServer,
    PeerCredentials,
    Request,
    Response,
    Router,
    open_unix_listener,
)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: ``(cert_path, key_path)``."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:  # pragma: no cover - fallback when cryptography is missing
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key_path), "-out", str(cert_path)],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def whoami(request: Request) -> Response:
    credentials = request.peer_credentials
    return Response.json(
        {
            "tls": request.tls,
            "peer": str(request.peer),
            "credentials": list(credentials) if isinstance(credentials, tuple) else None,
        }
    )


async def echo_websocket(request: Request, websocket: trio_websocket.WebSocketConnection) -> None:
    await websocket.send_message(await websocket.get_message())


async def numbers(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for n in range(3):
            yield f"{n}\n".encode()
            await trio.sleep(0.01)

    return Response.stream(chunks(), content_type="application/x-ndjson")


async def dial(request: Request, stream: trio.abc.Stream) -> None:
    """Echo until EOF, then half-close: what ``ssh -o ProxyCommand`` needs."""
    while data := await stream.receive_some():
        await stream.send_all(data)
    assert isinstance(stream, trio.abc.HalfCloseableStream)
    await stream.send_eof()


def make_router() -> Router:
    router = Router()
    router.upgrade("/v0/dial", "tunneld-stream", dial)
    router.route("GET", "/whoami", whoami)
    router.route("GET", "/numbers", numbers)
    router.websocket("/ws", echo_websocket, subprotocols=["derp"])
    return router


async def test_tls_round_trip(nursery: trio.Nursery, tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = HttpServer(
        make_router(), ssl_context=server_context, limits=HttpLimits(head_timeout=0.5)
    )
    _host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    client_context = ssl.create_default_context(cafile=str(cert))

    def get() -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context, timeout=5)
        try:
            conn.request("GET", "/whoami")
            response = conn.getresponse()
            first = response.read()
            # Keep-alive over TLS, also after a streamed (chunked) response.
            conn.request("GET", "/numbers")
            assert conn.getresponse().read() == b"0\n1\n2\n"
            conn.request("GET", "/whoami")
            assert conn.getresponse().read() == first
            return response.status, first
        finally:
            conn.close()

    status, body = await trio.to_thread.run_sync(get)
    assert status == 200
    assert json.loads(body)["tls"] is True

    async with trio_websocket.open_websocket_url(
        f"wss://127.0.0.1:{port}/ws", ssl_context=client_context, subprotocols=["derp"]
    ) as websocket:
        assert websocket.subprotocol == "derp"
        await websocket.send_message("over tls")
        assert await websocket.get_message() == "over tls"

    # A client that never starts the TLS handshake is dropped after head_timeout.
    silent = await RawClient.connect(port)
    with trio.fail_after(3):
        assert await silent.read_to_eof() == b""

    # A client that is not speaking TLS is dropped; the server keeps serving.
    plain = await RawClient.connect(port)
    await plain.send(request_bytes("GET", "/whoami"))
    assert await plain.read_to_eof() == b""
    assert (await trio.to_thread.run_sync(get))[0] == 200


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
async def test_unix_socket_with_peer_credentials(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "tunneld.sock"
    path.touch()
    with pytest.raises(FileExistsError, match="not a socket"):
        await open_unix_listener(path)
    path.unlink()

    listener = await open_unix_listener(path, mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    server = HttpServer(make_router())
    addresses = await nursery.start(server.serve, [listener])
    assert addresses == [str(path)]

    stream = await trio.open_unix_socket(str(path))
    client = RawClient(stream)
    await client.send(request_bytes("GET", "/whoami"))
    data = (await client.read_response()).json()
    assert isinstance(data, dict)
    assert data["tls"] is False
    if sys.platform == "linux":
        assert data["credentials"] == [os.getpid(), os.getuid(), os.getgid()]
        assert PeerCredentials(*data["credentials"]).uid == os.getuid()
    await client.aclose()

    # curl --unix-socket works (a separate process: its own pid, our uid).
    result = await trio.run_process(
        ["curl", "-s", "--unix-socket", str(path), "http://localhost/whoami"],
        capture_stdout=True,
    )
    data = json.loads(result.stdout)
    if sys.platform == "linux":
        pid, uid, _gid = data["credentials"]
        assert pid not in (0, os.getpid())
        assert uid == os.getuid()

    # The raw upgrade (tunneld dial) over the Unix socket, with half-close both ways.
    stream = await trio.open_unix_socket(str(path))
    client = RawClient(stream)
    await client.send(
        request_bytes("POST", "/v0/dial", {"Connection": "Upgrade", "Upgrade": "tunneld-stream"})
    )
    assert (await client.read_head())[0] == 101
    await client.send(b"SSH-2.0-test\r\n")
    await stream.send_eof()
    assert await client.read_to_eof() == b"SSH-2.0-test\r\n"
    await client.aclose()

    # A stale socket file (from a crashed daemon) is replaced.
    server.shutdown(1)
    assert path.exists()
    again = await open_unix_listener(path)
    await again.aclose()
