"""``tunneld bench noise``: WireGuard handshakes/s and transport MB/s through the core.

Baselines measured in the same run: for the data path, the raw pynacl
ChaCha20-Poly1305 calls alone (encrypt + decrypt of the padded payload); also the
raw ``cryptography`` AEAD, which the core's transport uses. For handshakes, the raw
handshake primitives (the four steps as pure functions, no core bookkeeping).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
)

from tunneld.bench import BenchResult
from tunneld.keys import generate_private_key
from tunneld.proto.noise import (
    WireGuardCore,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
    derive_transport_keys,
    dh,
    public_key,
    tai64n,
)
from tunneld.proto.noise._crypto import nonce_for_counter

__all__ = ["add_arguments", "run"]

_WALL0 = 1_800_000_000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="time spent on each case (default 1.0)"
    )
    parser.add_argument(
        "--payload", type=int, default=1400, help="transport payload bytes (default 1400)"
    )


def _rate(body: Callable[[int], None], seconds: float) -> float:
    """Operations per second of ``body(i)``, run in batches for ``seconds``."""
    body(0)  # warm up
    done = 0
    batch = 16
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            body(done)
            done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed
        batch = min(batch * 2, 4096)


def _pair() -> tuple[WireGuardCore, WireGuardCore]:
    a = WireGuardCore(generate_private_key())
    b = WireGuardCore(generate_private_key())
    a.add_peer(b.public_key)
    b.add_peer(a.public_key)
    return a, b


def _handshake_core(seconds: float) -> float:
    a, b = _pair()

    def one(i: int) -> None:
        now = 10.0 + 6.0 * i  # past RekeyTimeout each time, so a new initiation is allowed
        wall = _WALL0 + now
        a.initiate(b.public_key, now, wall)
        for out in a.datagrams_to_send(now):
            b.receive_datagram(out.data, b"a", now, wall)
        for out in b.datagrams_to_send(now):
            a.receive_datagram(out.data, b"b", now, wall)
        for out in a.datagrams_to_send(now):  # the keepalive that confirms the keys
            b.receive_datagram(out.data, b"a", now, wall)
        while a.next_event() is not None or b.next_event() is not None:
            pass

    return _rate(one, seconds)


def _handshake_raw(seconds: float) -> float:
    a_priv, b_priv = generate_private_key(), generate_private_key()
    a_pub, b_pub = public_key(a_priv), public_key(b_priv)
    ss_a, ss_b = dh(a_priv, b_pub), dh(b_priv, a_pub)
    psk = bytes(32)

    def one(i: int) -> None:
        eph_a, eph_b = os.urandom(32), os.urandom(32)
        init = create_initiation(
            local_static_public=a_pub,
            remote_static=b_pub,
            static_static=ss_a,
            ephemeral_private=eph_a,
            sender_index=i & 0xFFFFFFFF,
            timestamp=tai64n(_WALL0 + i),
        )
        seen = consume_initiation(
            init.message,  # type: ignore[arg-type]
            local_static_private=b_priv,
            local_static_public=b_pub,
            static_static_for=lambda _pk: ss_b,
        )
        resp = create_response(
            chain_key=seen.chain_key,
            hash=seen.hash,
            remote_ephemeral=seen.remote_ephemeral,
            remote_static=a_pub,
            preshared_key=psk,
            ephemeral_private=eph_b,
            sender_index=1,
            receiver_index=seen.sender,
        )
        ck, _ = consume_response(
            resp.message,  # type: ignore[arg-type]
            chain_key=init.chain_key,
            hash=init.hash,
            local_ephemeral_private=eph_a,
            local_static_private=a_priv,
            preshared_key=psk,
        )
        derive_transport_keys(ck, initiator=True)
        derive_transport_keys(resp.chain_key, initiator=False)

    return _rate(one, seconds)


def _transport_nacl(payload: bytes, seconds: float) -> float:
    key = os.urandom(32)

    def one(i: int) -> None:
        nonce = nonce_for_counter(i)
        sealed = crypto_aead_chacha20poly1305_ietf_encrypt(payload, None, nonce, key)
        crypto_aead_chacha20poly1305_ietf_decrypt(sealed, None, nonce, key)

    return _rate(one, seconds)


def _transport_cryptography(payload: bytes, seconds: float) -> float:
    cipher = ChaCha20Poly1305(os.urandom(32))

    def one(i: int) -> None:
        nonce = nonce_for_counter(i)
        cipher.decrypt(nonce, cipher.encrypt(nonce, payload, None), None)

    return _rate(one, seconds)


def _transport_core(payload: bytes, seconds: float) -> float:
    a, b = _pair()
    wall = _WALL0 + 10.0
    a.initiate(b.public_key, 10.0, wall)
    for _ in range(2):
        for out in a.datagrams_to_send(10.0):
            b.receive_datagram(out.data, b"a", 10.0, wall)
        for out in b.datagrams_to_send(10.0):
            a.receive_datagram(out.data, b"b", 10.0, wall)
    while a.next_event() is not None or b.next_event() is not None:
        pass
    peer = b.public_key

    def one(i: int) -> None:
        a.send(peer, payload, 11.0, wall)
        for out in a.datagrams_to_send(11.0):
            b.receive_datagram(out.data, b"a", 11.0, wall)
        b.next_event()

    rate = _rate(one, seconds)
    b.datagrams_to_send(11.0)  # keepalive timers may have queued nothing; drain anyway
    return rate


def run(args: argparse.Namespace) -> BenchResult:
    payload = os.urandom(args.payload)
    padded = payload + bytes(-len(payload) % 16)
    megabytes = len(padded) / 1e6
    seconds = args.seconds

    nacl = _transport_nacl(padded, seconds)
    crypto = _transport_cryptography(padded, seconds)
    core = _transport_core(payload, seconds)
    hs_raw = _handshake_raw(seconds)
    hs_core = _handshake_core(seconds)

    rows: list[dict[str, object]] = [
        {
            "case": "transport raw pynacl AEAD (baseline)",
            "mb_per_s": nacl * megabytes,
            "ratio_vs_baseline": 1.0,
        },
        {
            "case": "transport raw cryptography AEAD",
            "mb_per_s": crypto * megabytes,
            "ratio_vs_baseline": crypto / nacl,
        },
        {
            "case": "transport through core (send+receive)",
            "mb_per_s": core * megabytes,
            "ratio_vs_baseline": core / nacl,
        },
        {
            "case": "handshake raw primitives (baseline)",
            "ops_per_s": hs_raw,
            "ratio_vs_baseline": 1.0,
        },
        {
            "case": "handshake through core (4 datagrams)",
            "ops_per_s": hs_core,
            "ratio_vs_baseline": hs_core / hs_raw,
        },
    ]
    return BenchResult(
        title=f"WireGuard core: {args.payload}-byte payloads, {seconds:g} s per case",
        columns=["case", "mb_per_s", "ops_per_s", "ratio_vs_baseline"],
        rows=rows,
        notes=[
            "Transport MB/s count the padded payload once per encrypt+decrypt.",
            "Transport ratios are against raw pynacl ChaCha20-Poly1305; handshake ratios "
            "against the handshake's pure functions without the core's bookkeeping.",
            "The core's transport AEAD is cryptography's ChaCha20Poly1305.",
        ],
    )
