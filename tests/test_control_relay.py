"""tunneld control with its DERP relay and STUN server wired in, over real sockets."""

from __future__ import annotations

import base64
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_websocket
from _control_support import WAIT, read_json, running_server, session

from tunneld.keys import generate_private_key, public_key, read_key_file
from tunneld.net.derp import DerpClient, DerpConnectError
from tunneld.net.stun import stun_binding
from tunneld.proto.coord import PeerUpdateKind
from tunneld.proto.derp import ClientConnection, ConnectionState, PeerGone, RecvPacket


class _RawRelayClient:
    """A bare DERP client on the sans-IO core (independent of tunneld.net.derp)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, core: ClientConnection) -> None:
        self.ws = ws
        self.core = core

    async def _pump(self) -> None:
        message = await self.ws.get_message()
        assert isinstance(message, bytes)
        self.core.receive_data(message)
        if outgoing := self.core.data_to_send():
            await self.ws.send_message(outgoing)

    async def send_packet(self, dst: bytes, data: bytes) -> None:
        self.core.send_packet(dst, data)
        await self.ws.send_message(self.core.data_to_send())

    async def next_packet(self) -> RecvPacket:
        event = await self.next_event(RecvPacket)
        assert isinstance(event, RecvPacket)
        return event

    async def next_event(self, kind: type) -> object:
        with trio.fail_after(WAIT):
            while True:
                event = self.core.next_event()
                if isinstance(event, kind):
                    return event
                if event is None:
                    await self._pump()

    async def closed(self) -> trio_websocket.CloseReason:
        with trio.fail_after(WAIT):
            while True:
                try:
                    await self._pump()
                except trio_websocket.ConnectionClosed as exc:
                    return exc.reason


@asynccontextmanager
async def _relay(url: str, private: bytes) -> AsyncIterator[_RawRelayClient]:
    async with trio_websocket.open_websocket_url(url, subprotocols=["derp"]) as ws:
        client = _RawRelayClient(ws, ClientConnection(private))
        with trio.fail_after(WAIT):
            while client.core.state is not ConnectionState.CONNECTED:
                await client._pump()
        yield client


async def _handshake(ws: trio_websocket.WebSocketConnection, core: ClientConnection) -> None:
    """Run a DERP client handshake by hand until the relay closes the WebSocket."""
    with trio.fail_after(WAIT):
        while True:
            message = await ws.get_message()
            assert isinstance(message, bytes)
            core.receive_data(message)
            if outgoing := core.data_to_send():
                await ws.send_message(outgoing)


async def test_relay_admits_registered_nodes_and_counts_traffic(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        info = h.info
        key_file = tmp_path / "derp.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        relay_public = public_key(read_key_file(key_file))
        assert info.derp_public_key == base64.b64encode(relay_public).decode()
        assert info.stun is not None
        host, _, port = info.stun.rpartition(":")
        assert await stun_binding((host, int(port)), timeout=WAIT) == (
            "127.0.0.1",
            pytest.approx(0, abs=65535),
        )

        await h.user("alice")
        client_token = await h.token("alice")
        agent_token = await h.token("alice", agent="web1")
        client_private, agent_private = generate_private_key(), generate_private_key()
        async with (
            session(info, client_token, "laptop") as client,
            session(info, agent_token, "web1") as agent,
        ):
            client.node_key = public_key(client_private)
            agent.node_key = public_key(agent_private)
            await client.announce()
            await agent.announce()
            await client.send(client.client.add_tunnel("web1"))
            await client.expect_update(PeerUpdateKind.NODE)
            await agent.expect_update(PeerUpdateKind.NODE)

            # A key the coordinator never saw is refused by the relay.
            async with trio_websocket.open_websocket_url(
                info.derp_url, subprotocols=["derp"]
            ) as ws:
                core = ClientConnection(generate_private_key())
                with pytest.raises(trio_websocket.ConnectionClosed) as refused:
                    await _handshake(ws, core)
                assert refused.value.reason.code == 1008
                assert "not authorized" in (refused.value.reason.reason or "")

            async with (
                _relay(info.derp_url, client_private) as client_relay,
                _relay(info.derp_url, agent_private) as agent_relay,
            ):
                assert client_relay.core.server_key == relay_public
                await client_relay.send_packet(agent.node_key, b"handshake initiation")
                event = await agent_relay.next_packet()
                assert (event.src, event.data) == (client.node_key, b"handshake initiation")

                # A packet to a key that is not here is dropped, counted, and answered
                # with PEER_GONE.
                await client_relay.send_packet(b"\x09" * 32, b"lost")
                await client_relay.next_event(PeerGone)

                _, _, body = await h.get("/metrics")
                text = body.decode()
                assert 'tunneld_relay_drops_total{reason="unknown_dest"} 1.0' in text
                assert "tunneld_stun_requests_total 1.0" in text
                assert "tunneld_relay_clients 2.0" in text
                assert "tunneld_relay_packets_relayed_total 1.0" in text
                assert "tunneld_relay_bytes_relayed_total 20.0" in text
                _, _, body = await h.get("/healthz")
                assert read_json(body)["relay_clients"] == 2

                # Revoking the client's token ends its coordinator session and its relay
                # connection.
                await h.store.revoke_token(client_token.split("_")[1], time.time())
                await client.expect_closed()
                closed = await client_relay.closed()
                assert closed.code == 1008


async def test_overlay_derp_client_reaches_a_peer_through_the_control_relay(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        privates = {name: generate_private_key() for name in ("laptop", "web1")}
        tokens = {"laptop": await h.token("alice"), "web1": await h.token("alice", agent="web1")}
        async with (
            session(h.info, tokens["laptop"], "laptop") as laptop,
            session(h.info, tokens["web1"], "web1") as web1,
        ):
            for peer in (laptop, web1):
                peer.node_key = public_key(privates[peer.name])
                await peer.announce()
            with pytest.raises(DerpConnectError):
                async with DerpClient.connect(h.info.derp_url, generate_private_key()):
                    pass
            async with (
                DerpClient.connect(h.info.derp_url, privates["laptop"]) as a,
                DerpClient.connect(h.info.derp_url, privates["web1"]) as b,
            ):
                await a.send_packet(web1.node_key, b"ping over the relay")
                with trio.fail_after(WAIT):
                    event = await b.receive()
                    while not isinstance(event, RecvPacket):
                        event = await b.receive()
                assert (event.src, event.data) == (laptop.node_key, b"ping over the relay")


async def test_relay_waits_briefly_for_the_coordinator_to_register_a_starting_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # A starting node dials the relay and the coordinator at once; its relay handshake
    # may arrive before update_self is stored. It must be admitted, not refused.
    async with running_server(nursery, tmp_path, relay=True) as h:
        await h.user("alice")
        token = await h.token("alice")
        private = generate_private_key()
        admitted = trio.Event()

        async def join_relay() -> None:
            async with DerpClient.connect(h.info.derp_url, private) as derp:
                assert derp.server_key == public_key(read_key_file(tmp_path / "derp.key"))
                admitted.set()

        async with trio.open_nursery() as inner:
            inner.start_soon(join_relay)
            await trio.sleep(0.2)  # the relay handshake is waiting on authorization
            assert not admitted.is_set()
            async with session(h.info, token, "laptop") as node:
                node.node_key = public_key(private)
                await node.announce()
                with trio.fail_after(WAIT):
                    await admitted.wait()
