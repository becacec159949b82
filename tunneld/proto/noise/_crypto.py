"""WireGuard's primitives (whitepaper section 5.4): HASH, MAC, HMAC, KDF, DH, AEAD, TAI64N.

Everything here is a pure function of its arguments. pynacl supplies X25519 and the
(X)ChaCha20-Poly1305 constructions; ``hashlib.blake2s`` supplies BLAKE2s, keyed for
MAC and wrapped by the standard ``hmac`` module for HMAC-BLAKE2s (RFC 2104 over
BLAKE2s-256 with its 64-byte block, as the whitepaper and wireguard-go use).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_decrypt,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError

__all__ = [
    "CONSTRUCTION",
    "IDENTIFIER",
    "INITIAL_CHAIN_KEY",
    "INITIAL_HASH",
    "KEY_SIZE",
    "LABEL_COOKIE",
    "LABEL_MAC1",
    "TAG_SIZE",
    "TIMESTAMP_SIZE",
    "AuthenticationFailed",
    "aead_open",
    "aead_seal",
    "clamp",
    "dh",
    "hash_",
    "hmac_blake2s",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "mix_hash",
    "nonce_for_counter",
    "public_key",
    "tai64n",
    "tai64n_decode",
    "xaead_open",
    "xaead_seal",
    "zero",
]

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
KEY_SIZE = 32
TAG_SIZE = 16
TIMESTAMP_SIZE = 12

# TAI64N label: 2^62 + 10 (the TAI-UTC offset TAI64 fixes at the 1970 epoch).
_TAI64_BASE = (1 << 62) + 10
# wireguard-go zeroes the low 24 bits of the nanoseconds (~16.8 ms granularity) so the
# timestamp does not leak a fine-grained clock; the recorded exchange shows it too.
_WHITENER_MASK = 0x00FFFFFF


class AuthenticationFailed(Exception):
    """An AEAD tag did not verify (internal; callers turn it into RemoteProtocolError)."""


def hash_(data: bytes) -> bytes:
    """HASH(x): unkeyed BLAKE2s-256."""
    return hashlib.blake2s(data).digest()


def mix_hash(h: bytes, data: bytes) -> bytes:
    """H := HASH(H ‖ data)."""
    return hashlib.blake2s(h + data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, x): keyed BLAKE2s with a 16-byte digest (mac1, mac2, cookie)."""
    return hashlib.blake2s(data, key=key, digest_size=16).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC(key, x) over BLAKE2s-256."""
    return hmac.digest(key, data, hashlib.blake2s)


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1: the first HKDF output (HMAC-BLAKE2s)."""
    prk = hmac_blake2s(key, data)
    return hmac_blake2s(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2: the first two HKDF outputs."""
    prk = hmac_blake2s(key, data)
    t1 = hmac_blake2s(prk, b"\x01")
    return t1, hmac_blake2s(prk, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3: the first three HKDF outputs."""
    prk = hmac_blake2s(key, data)
    t1 = hmac_blake2s(prk, b"\x01")
    t2 = hmac_blake2s(prk, t1 + b"\x02")
    return t1, t2, hmac_blake2s(prk, t2 + b"\x03")


INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = mix_hash(INITIAL_CHAIN_KEY, IDENTIFIER)


def clamp(private: bytes) -> bytes:
    """A Curve25519 private key clamped as wireguard-go's ``newPrivateKey`` does."""
    key = bytearray(private)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(private: bytes) -> bytes:
    """X25519 public key of ``private``."""
    return bytes(crypto_scalarmult_base(private))


def dh(private: bytes, public: bytes) -> bytes:
    """X25519 shared secret; raises AuthenticationFailed for an all-zero result.

    libsodium refuses low-order points itself (it raises), which WireGuard also
    rejects (wireguard-go checks the shared secret is not zero).
    """
    try:
        shared = bytes(crypto_scalarmult(private, public))
    except Exception:  # nacl raises RuntimeError for low-order points
        raise AuthenticationFailed("dh: low-order point") from None
    if shared == bytes(32):
        raise AuthenticationFailed("dh: zero shared secret")
    return shared


_NONCE = struct.Struct("<4xQ")


def nonce_for_counter(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce: 4 zero bytes ‖ 64-bit little-endian counter."""
    return _NONCE.pack(counter)


_ZERO_NONCE = bytes(12)


def aead_seal(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    """AEAD(key, counter, plain, aad): ChaCha20-Poly1305 (RFC 8439) with the counter nonce."""
    nonce = _ZERO_NONCE if counter == 0 else _NONCE.pack(counter)
    return bytes(crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key))


def aead_open(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    """Inverse of aead_seal; raises AuthenticationFailed when the tag does not verify."""
    nonce = _ZERO_NONCE if counter == 0 else _NONCE.pack(counter)
    try:
        return bytes(crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key))
    except CryptoError:
        raise AuthenticationFailed("aead") from None


def xaead_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XAEAD: XChaCha20-Poly1305 with a 24-byte random nonce (cookie replies)."""
    return bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key))


def xaead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Inverse of xaead_seal; raises AuthenticationFailed when the tag does not verify."""
    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key))
    except CryptoError:
        raise AuthenticationFailed("xaead") from None


def tai64n(wall: float, *, whiten: bool = True) -> bytes:
    """TAI64N of UNIX time ``wall``: BE64(seconds + 2^62 + 10) ‖ BE32(nanoseconds).

    With ``whiten`` (the default, as wireguard-go) the low 24 bits of the
    nanoseconds are cleared.
    """
    seconds, nanos = divmod(round(wall * 1_000_000_000), 1_000_000_000)
    if whiten:
        nanos &= ~_WHITENER_MASK
    return struct.pack(">QI", _TAI64_BASE + seconds, nanos)


def tai64n_decode(stamp: bytes) -> tuple[int, int]:
    """(UNIX seconds, nanoseconds) of a 12-byte TAI64N label."""
    label, nanos = struct.unpack(">QI", stamp)
    return label - _TAI64_BASE, nanos


def zero(buffer: bytearray | None) -> None:
    """Overwrite ``buffer`` with zeros in place (best effort; see the package docs)."""
    if buffer is not None:
        buffer[:] = bytes(len(buffer))
