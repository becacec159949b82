"""Known answers: the KDF vectors and a real exchange recorded against wireguard-go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _noise_support import ScriptedRng

from tunneld.proto.noise import (
    CONSTRUCTION,
    IDENTIFIER,
    INITIAL_CHAIN_KEY,
    INITIAL_HASH,
    DataReceived,
    HandshakeCompleted,
    WireGuardCore,
    compute_mac1,
    consume_initiation,
    consume_response,
    create_initiation,
    derive_transport_keys,
    dh,
    hash_,
    hmac_blake2s,
    kdf1,
    kdf2,
    kdf3,
    mac1_key,
    parse_initiation,
    parse_response,
    public_key,
    tai64n,
    tai64n_decode,
)

# Copies of the project's shared known answers (SPECS.md), kept with the tests so CI has them.
VECTORS = Path(__file__).resolve().parent / "vectors"
KDF = json.loads((VECTORS / "kdf.json").read_text())
EXCHANGE = json.loads((VECTORS / "wireguard-go-exchange.json").read_text())


def x(name: str) -> bytes:
    return bytes.fromhex(EXCHANGE[name])


SENDER_INDEX = int.from_bytes(x("initiator_sender_index"), "little")
# A wall time whose whitened TAI64N is the recorded timestamp.
RECORDED_WALL = 1795758472.2516583


@pytest.mark.parametrize("vector", KDF["vectors"], ids=lambda v: v["key"] or "empty")
def test_kdf_known_answers(vector: dict[str, str]) -> None:
    key, data = bytes.fromhex(vector["key"]), bytes.fromhex(vector["input"])
    t1, t2, t3 = (bytes.fromhex(vector[t]) for t in ("t1", "t2", "t3"))
    assert kdf1(key, data) == t1
    assert kdf2(key, data) == (t1, t2)
    assert kdf3(key, data) == (t1, t2, t3)
    prk = hmac_blake2s(key, data)
    assert hmac_blake2s(prk, b"\x01") == t1


def test_construction_strings_give_initial_chain_key_and_hash() -> None:
    assert CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"
    assert hash_(CONSTRUCTION) == INITIAL_CHAIN_KEY
    assert hash_(INITIAL_CHAIN_KEY + IDENTIFIER) == INITIAL_HASH


def test_recorded_keys_are_consistent() -> None:
    assert public_key(x("initiator_static_private")) == x("initiator_static_public")
    assert public_key(x("responder_static_private")) == x("responder_static_public")
    assert public_key(x("initiator_ephemeral_private")) == x("initiator_ephemeral_public")


def test_tai64n_matches_recorded_timestamp() -> None:
    assert tai64n(RECORDED_WALL) == x("tai64n_timestamp")
    seconds, nanos = tai64n_decode(x("tai64n_timestamp"))
    assert seconds == 1795758472
    assert nanos & 0xFFFFFF == 0  # whitened like wireguard-go
    assert tai64n(0.0) == bytes.fromhex("400000000000000a00000000")


def _initiation_pieces() -> bytes:
    isp, rsp = x("initiator_static_private"), x("responder_static_public")
    out = create_initiation(
        local_static_public=public_key(isp),
        remote_static=rsp,
        static_static=dh(isp, rsp),
        ephemeral_private=x("initiator_ephemeral_private"),
        sender_index=SENDER_INDEX,
        timestamp=x("tai64n_timestamp"),
    )
    raw = out.message.to_bytes()
    return raw[:116] + compute_mac1(mac1_key(rsp), raw) + bytes(16)


def test_low_level_initiation_is_byte_identical() -> None:
    assert _initiation_pieces() == x("initiation_message")


def test_responder_side_consumes_recorded_initiation() -> None:
    rpriv, ipub = x("responder_static_private"), x("initiator_static_public")
    consumed = consume_initiation(
        parse_initiation(x("initiation_message")),
        local_static_private=rpriv,
        local_static_public=public_key(rpriv),
        static_static_for=lambda pk: dh(rpriv, pk) if pk == ipub else None,
    )
    assert consumed.peer_static == ipub
    assert consumed.timestamp == x("tai64n_timestamp")
    assert consumed.sender == SENDER_INDEX
    assert consumed.remote_ephemeral == x("initiator_ephemeral_public")


def test_low_level_response_gives_recorded_keys() -> None:
    isp, rsp = x("initiator_static_private"), x("responder_static_public")
    out = create_initiation(
        local_static_public=public_key(isp),
        remote_static=rsp,
        static_static=dh(isp, rsp),
        ephemeral_private=x("initiator_ephemeral_private"),
        sender_index=SENDER_INDEX,
        timestamp=x("tai64n_timestamp"),
    )
    response = x("response_message")
    assert compute_mac1(mac1_key(public_key(isp)), response) == response[60:76]
    chain_key, _ = consume_response(
        parse_response(response),
        chain_key=out.chain_key,
        hash=out.hash,
        local_ephemeral_private=x("initiator_ephemeral_private"),
        local_static_private=isp,
        preshared_key=x("preshared_key"),
    )
    send, receive = derive_transport_keys(chain_key, initiator=True)
    assert send == x("initiator_sending_key")
    assert receive == x("initiator_receiving_key")
    assert derive_transport_keys(chain_key, initiator=False) == (receive, send)


def test_core_reproduces_the_recorded_exchange() -> None:
    rng = ScriptedRng(script=[x("initiator_ephemeral_private"), x("initiator_sender_index")])
    core = WireGuardCore(x("initiator_static_private"), rng=rng)
    responder = x("responder_static_public")
    core.add_peer(responder, preshared_key=x("preshared_key"))
    first = EXCHANGE["first_transport_sent_by_initiator"]
    # The ICMP echo request is 47 bytes; the core pads it to 48 and stages it.
    ping = bytes.fromhex(first["plaintext_padded"])[:47]
    core.send(responder, ping, 10.0, RECORDED_WALL)
    (initiation,) = core.datagrams_to_send(10.0)
    assert initiation.peer == responder
    assert initiation.data == x("initiation_message")
    assert rng.draws[:2] == [32, 4]

    core.receive_datagram(x("response_message"), b"peer", 10.1, RECORDED_WALL + 0.1)
    assert core.next_event() == HandshakeCompleted(responder, True)
    (transport,) = core.datagrams_to_send(10.1)
    assert transport.data == bytes.fromhex(first["packet"])  # staged ping, not a keepalive

    keepalive, reply = EXCHANGE["transport_received_from_responder"]
    core.receive_datagram(bytes.fromhex(keepalive["packet"]), b"peer", 10.2, RECORDED_WALL)
    assert core.next_event() is None  # keepalives are not events
    core.receive_datagram(bytes.fromhex(reply["packet"]), b"peer", 10.3, RECORDED_WALL)
    assert core.next_event() == DataReceived(responder, bytes.fromhex(reply["plaintext"]))
