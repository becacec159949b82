"""tunneld control over TLS: https/wss URLs, a real certificate made by openssl."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trio_websocket
from _control_support import WAIT, running_server

from tunneld.proto.coord import CoordinatorClient, PeerUpdate

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_listener_serves_wss_coordinator(nursery: trio.Nursery, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    async with running_server(nursery, tmp_path, tls_cert=str(cert), tls_key=str(key)) as h:
        assert h.info.url.startswith("https://127.0.0.1:")
        assert h.info.coordinate_url.startswith("wss://127.0.0.1:")
        await h.user("alice")
        agent_token = await h.token("alice", agent="web1")
        context = ssl.create_default_context(cafile=str(cert))
        headers = [(b"Authorization", f"Bearer {agent_token}".encode())]
        async with trio_websocket.open_websocket_url(
            h.info.coordinate_url, context, extra_headers=headers, connect_timeout=WAIT
        ) as ws:
            coord = CoordinatorClient()
            await ws.send_message(coord.update_self(name="web1", node_key=b"\x07" * 32))
            await ws.send_message(coord.ready_for_handshake("nobody"))
            with trio.fail_after(WAIT):
                reply = coord.receive(await ws.get_message())  # type: ignore[arg-type]
            assert not isinstance(reply, PeerUpdate)
            assert reply.code == "not_found"
