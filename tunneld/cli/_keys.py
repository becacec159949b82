"""``tunneld keygen`` and ``tunneld pubkey``: WireGuard-format Curve25519 keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunneld.cli._common import CliError, Subparsers
from tunneld.keys import decode_key, encode_key, generate_private_key, public_key, write_key_file


def register(sub: Subparsers) -> None:
    keygen = sub.add_parser(
        "keygen",
        help="print a new private key (WireGuard base64 format)",
        description=(
            "Print a new Curve25519 private key in WireGuard's base64 format, like `wg genkey`."
        ),
    )
    keygen.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help=(
            "write the key to FILE (mode 0600, atomically; refuses an existing"
            " FILE) and print its public key instead"
        ),
    )
    keygen.set_defaults(func=_keygen)
    pubkey = sub.add_parser(
        "pubkey",
        help="read a private key on stdin, print its public key",
        description=(
            "Read a base64 private key on stdin and print its public key, like `wg pubkey`."
        ),
    )
    pubkey.set_defaults(func=_pubkey)


def _keygen(args: argparse.Namespace) -> int:
    key = generate_private_key()
    if args.out is not None:
        if args.out.exists():
            raise CliError(f"{args.out}: already exists; refusing to overwrite a key")
        write_key_file(args.out, key)
        print(encode_key(public_key(key)))
        return 0
    print(encode_key(key))
    return 0


def _pubkey(_: argparse.Namespace) -> int:
    text = sys.stdin.read()
    private = decode_key(text, what="private key on stdin")
    print(encode_key(public_key(private)))
    return 0
