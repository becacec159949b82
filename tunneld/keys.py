"""Curve25519 keys in WireGuard's format (32 bytes, standard base64), and key files.

``tunneld keygen | tunneld pubkey`` gives the same strings as ``wg genkey | wg pubkey``.
Key files are written mode 0600 and refused when group or others may read them.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from pathlib import Path

from nacl.bindings import crypto_scalarmult_base

from tunneld._files import SecretFileError, read_secret_file, write_file_atomic

# A key file holds 44 characters of base64; anything much bigger is not a key file.
_MAX_KEY_FILE = 1024

__all__ = [
    "KEY_SIZE",
    "BadKeyError",
    "decode_key",
    "encode_key",
    "generate_private_key",
    "load_or_create_key_file",
    "public_key",
    "read_key_file",
    "write_key_file",
]

KEY_SIZE = 32


class BadKeyError(ValueError):
    """A key string or key file that cannot be used; the message says why and where."""


def generate_private_key() -> bytes:
    """A new random Curve25519 private key, clamped as ``wg genkey`` does."""
    key = bytearray(secrets.token_bytes(KEY_SIZE))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(private: bytes) -> bytes:
    """The Curve25519 public key of ``private`` (X25519 with the base point)."""
    if len(private) != KEY_SIZE:
        raise BadKeyError(f"a private key is {KEY_SIZE} bytes, got {len(private)}")
    return bytes(crypto_scalarmult_base(private))


def encode_key(key: bytes) -> str:
    """WireGuard's text form: standard base64 with padding (44 characters)."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str, *, what: str = "key") -> bytes:
    """Parse WireGuard's base64 key text; raises BadKeyError naming ``what``."""
    stripped = text.strip()
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise BadKeyError(
            f"{what}: not base64 (expected 44 characters like `wg genkey` prints)"
        ) from None
    if len(raw) != KEY_SIZE:
        raise BadKeyError(f"{what}: decodes to {len(raw)} bytes, expected {KEY_SIZE}")
    return raw


def write_key_file(path: Path, key: bytes) -> None:
    """Write ``key`` as base64 text to ``path``, mode 0600, atomically (temp + rename)."""
    write_file_atomic(path, encode_key(key) + "\n", mode=0o600, encoding="ascii")


def read_key_file(path: Path, *, what: str = "private key") -> bytes:
    """Read a base64 key file, refusing one that group or others can read.

    Raises:
        BadKeyError: missing/unreadable file, loose permissions, or bad contents.
    """
    try:
        raw, _ = read_secret_file(path, what=f"{what} file", max_bytes=_MAX_KEY_FILE)
        text = raw.decode("ascii")
    except SecretFileError as exc:
        raise BadKeyError(str(exc)) from None
    except UnicodeDecodeError:
        raise BadKeyError(f"{what} file {path} is not base64 text") from None
    return decode_key(text, what=f"{path}")


def load_or_create_key_file(path: Path, *, what: str = "private key") -> tuple[bytes, bool]:
    """The key in ``path``, or a new one written there (0600, parent made) on first use.

    Returns:
        The private key and whether it was just created.

    Raises:
        BadKeyError: the file exists but is unreadable, too open or malformed.
    """
    created = not path.exists()
    if created:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_key_file(path, generate_private_key())
    return read_key_file(path, what=what), created
