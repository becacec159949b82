"""Bearer tokens and passwords: generation, hashing, constant-time checks.

A token reads ``tnd_<id>_<secret>``: ``id`` (12 hex digits) is public and names the
token in ``token list``/``token revoke``; the whole string has 256 bits of secret
entropy, so a fast keyed hash (BLAKE2b-256) is enough to store it — there is nothing
to brute-force, unlike a password (RFC 6750 section 5.2 on guessable tokens).
Passwords use argon2id (libsodium's ``crypto_pwhash_str``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

import nacl.exceptions
import nacl.pwhash

__all__ = [
    "TOKEN_PREFIX",
    "NewToken",
    "hash_password",
    "hash_token",
    "new_token",
    "parse_token",
    "token_matches",
    "verify_password",
]

TOKEN_PREFIX: Final = "tnd"
_ID_HEX: Final = 12
_PERSON: Final = b"tunneld-token"


@dataclass(frozen=True, slots=True)
class NewToken:
    """A freshly minted token: ``value`` is shown once and never stored."""

    id: str
    value: str
    secret_hash: bytes


def hash_token(value: str) -> bytes:
    """The stored form of a token string (BLAKE2b-256, personalised)."""
    return hashlib.blake2b(value.encode("utf-8"), digest_size=32, person=_PERSON).digest()


def new_token() -> NewToken:
    """Mint a random token."""
    token_id = secrets.token_hex(_ID_HEX // 2)
    value = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
    return NewToken(token_id, value, hash_token(value))


def parse_token(value: str) -> str | None:
    """The id part of a well-formed token string, or None."""
    prefix, sep, rest = value.partition("_")
    token_id, sep2, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not sep or not sep2 or len(secret) < 32 or len(value) > 128:
        return None
    if len(token_id) != _ID_HEX or any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id


def token_matches(value: str, secret_hash: bytes) -> bool:
    """Whether ``value`` hashes to ``secret_hash``, compared in constant time."""
    return hmac.compare_digest(hash_token(value), secret_hash)


def hash_password(password: str) -> str:
    """An argon2id hash string (interactive limits) for storing ``password``."""
    hashed: bytes = nacl.pwhash.argon2id.str(password.encode("utf-8"))
    return hashed.decode("ascii")


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches the argon2id ``hashed`` string."""
    try:
        return bool(nacl.pwhash.argon2id.verify(hashed.encode("ascii"), password.encode("utf-8")))
    except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
        return False
