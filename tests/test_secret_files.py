"""One rule for every secret file we read (keys, tokens, login and introspection files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunneld._files import SecretFileError, read_secret_file


def _secret(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_a_private_file_is_read_with_its_stat(tmp_path: Path) -> None:
    path = _secret(tmp_path / "s", b"tok\n")
    data, st = read_secret_file(path, what="token file", max_bytes=100)
    assert data == b"tok\n"
    assert st.st_size == 4


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o700 | 0o001])
def test_any_group_or_other_permission_is_refused(tmp_path: Path, mode: int) -> None:
    # Write or execute bits for group/others are refused too, as ssh does for keys.
    path = _secret(tmp_path / "s", b"tok_hidden", mode)
    with pytest.raises(SecretFileError) as info:
        read_secret_file(path, what="token file", max_bytes=100)
    message = str(info.value)
    assert message == (
        f"token file {path} is accessible by group or others (mode {mode:04o});"
        f" it holds a secret: run chmod 600 {path}"
    )
    assert "tok_hidden" not in message


def test_a_symlink_is_judged_by_its_target(tmp_path: Path) -> None:
    target = _secret(tmp_path / "target", b"tok", 0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretFileError, match="accessible by group or others"):
        read_secret_file(link, what="token file", max_bytes=100)
    target.chmod(0o600)
    assert read_secret_file(link, what="token file", max_bytes=100)[0] == b"tok"


def test_missing_directory_and_oversized_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match=r"^cannot read key file .*absent: No such file"):
        read_secret_file(tmp_path / "absent", what="key file", max_bytes=10)
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match=r"key file .*dir is not a regular file"):
        read_secret_file(folder, what="key file", max_bytes=10)
    big = _secret(tmp_path / "big", b"x" * 11)
    with pytest.raises(SecretFileError, match=r"key file .*big is over 10 bytes"):
        read_secret_file(big, what="key file", max_bytes=10)
    assert read_secret_file(_secret(tmp_path / "ok", b"x" * 10), what="k", max_bytes=10)[0]


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    # Opening a FIFO would block until a writer comes: the type is checked first.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretFileError, match="is not a regular file"):
        read_secret_file(fifo, what="token file", max_bytes=10)
