"""Random secrets and their stored form.

Every secret the authorization server hands out (session ids, client secrets, codes,
access and refresh tokens) carries 256 random bits, so a fast keyed hash is enough to
store it: there is nothing to brute-force (RFC 6750 section 5.2). Each kind hashes with
its own BLAKE2b personalisation so a value of one kind never matches another's row.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Literal

__all__ = ["SecretKind", "derive", "new_secret", "secret_hash", "secrets_equal"]

SecretKind = Literal["session", "client", "code", "access", "refresh", "state", "login"]

# Prefixes make a leaked value recognisable (secret scanners, logs) and keep kinds apart.
_PREFIX: dict[SecretKind, str] = {
    "session": "",
    "client": "tndcs_",
    "code": "tndac_",
    "access": "tndat_",
    "refresh": "tndrt_",
    "state": "",
    "login": "",
}


def new_secret(kind: SecretKind) -> str:
    """A fresh random value of ``kind``: its prefix and 43 URL-safe characters (256 bits)."""
    return _PREFIX[kind] + secrets.token_urlsafe(32)


def secret_hash(kind: SecretKind, value: str) -> bytes:
    """The stored form of ``value`` (BLAKE2b-256 personalised by ``kind``)."""
    person = f"tunneld-{kind}".encode()
    return hashlib.blake2b(value.encode("utf-8"), digest_size=32, person=person).digest()


def derive(key: str, label: str) -> str:
    """A value bound to secret ``key`` (keyed BLAKE2b of ``label``), URL-safe base64."""
    digest = hashlib.blake2b(
        label.encode("utf-8"), key=hashlib.sha256(key.encode("utf-8")).digest(), digest_size=32
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def secrets_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two strings (False when either is not ASCII-safe)."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
