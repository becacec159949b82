"""WireGuard-format keys and key files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunneld.keys import (
    BadKeyError,
    decode_key,
    encode_key,
    generate_private_key,
    public_key,
    read_key_file,
    write_key_file,
)

# RFC 7748 section 6.1: Alice's X25519 key pair.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def test_public_key_matches_rfc7748() -> None:
    assert public_key(ALICE_PRIVATE) == ALICE_PUBLIC


def test_generated_keys_are_clamped_like_wg_genkey() -> None:
    key = generate_private_key()
    assert len(key) == 32
    assert key[0] & 7 == 0
    assert key[31] & 128 == 0
    assert key[31] & 64 == 64


def test_key_text_round_trips() -> None:
    key = generate_private_key()
    text = encode_key(key)
    assert len(text) == 44
    assert decode_key(text) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", "peer key: not base64"),
        ("AAAA", "peer key: decodes to 3 bytes, expected 32"),
    ],
)
def test_bad_key_text_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(BadKeyError, match=message):
        decode_key(text, what="peer key")


def test_key_file_is_written_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key = generate_private_key()
    write_key_file(path, key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(path) == key


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key_file(path, generate_private_key())
    path.chmod(0o640)
    with pytest.raises(
        BadKeyError,
        match=r"accessible by group or others \(mode 0640\); it holds a secret: run chmod 600",
    ):
        read_key_file(path)


def test_missing_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadKeyError, match=r"cannot read private key file .*: No such file"):
        read_key_file(tmp_path / "absent.key")


def _tunneld(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunneld", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_keygen_pipes_into_pubkey() -> None:
    private = _tunneld("keygen")
    assert private.returncode == 0
    public = _tunneld("pubkey", stdin=private.stdout)
    assert public.returncode == 0
    assert decode_key(public.stdout) == public_key(decode_key(private.stdout))


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools (wg) is not installed")
def test_pubkey_equals_wg_pubkey() -> None:
    private = _tunneld("keygen").stdout
    ours = _tunneld("pubkey", stdin=private).stdout
    theirs = subprocess.run(
        ["wg", "pubkey"], input=private, capture_output=True, text=True, check=True, timeout=10
    ).stdout
    assert ours == theirs


def test_pubkey_rejects_garbage_with_a_message() -> None:
    result = _tunneld("pubkey", stdin="garbage\n")
    assert result.returncode == 1
    assert result.stderr == (
        "tunneld: error: private key on stdin: not base64 "
        "(expected 44 characters like `wg genkey` prints)\n"
    )


def test_keygen_out_writes_a_private_file_and_prints_the_public_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    result = _tunneld("keygen", "--out", str(path))
    assert result.returncode == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert decode_key(result.stdout) == public_key(read_key_file(path))
    again = _tunneld("keygen", "--out", str(path))
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert os.stat(path).st_size == 45
