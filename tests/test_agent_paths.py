"""PathPolicy: whatever the request path, the answer is a path inside a root or a refusal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.agent import OperationError, PathPolicy

_PARTS = st.sampled_from(["a", "b", "..", ".", "", "out", "loop", "abs_out", "root_link", "x"])


def _tree(base: Path) -> Path:
    root = base / "root"
    (root / "a" / "b").mkdir(parents=True)
    (base / "outside").mkdir()
    (root / "out").symlink_to(base / "outside")
    (root / "abs_out").symlink_to("/etc")
    (root / "root_link").symlink_to(root)
    (root / "a" / "loop").symlink_to("../a/loop")
    (root / "a" / "b" / "x").symlink_to("../../out")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(Path(os.path.realpath(tmp_path_factory.mktemp("paths"))))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(parts=st.lists(_PARTS, max_size=6), absolute=st.booleans())
def test_resolved_paths_stay_inside_the_roots(root: Path, parts: list[str], absolute: bool) -> None:
    policy = PathPolicy([root])
    text = "/".join(parts) or "."
    if absolute:
        text = f"{root}/{text}"
    refusal: OperationError | None = None
    try:
        resolved = policy.resolve(text)
    except OperationError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.code == "path_outside_roots"
        assert text in refusal.message
    else:
        assert resolved == root or resolved.is_relative_to(root)
        assert ".." not in parts


def test_a_root_given_through_a_symlink_is_its_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    policy = PathPolicy([tmp_path / "alias"])
    assert policy.resolve("f") == tmp_path / "real" / "f"
    assert policy.resolve(str(tmp_path / "alias" / "f")) == tmp_path / "real" / "f"
    with pytest.raises(OperationError, match="outside the agent's roots"):
        policy.resolve(str(tmp_path / "f"))


def test_a_sibling_sharing_the_roots_prefix_is_outside(tmp_path: Path) -> None:
    # The containment check compares strings: "/x/root" must not contain "/x/rootx".
    (tmp_path / "root").mkdir()
    (tmp_path / "rootx").mkdir()
    policy = PathPolicy([tmp_path / "root"])
    with pytest.raises(OperationError, match="outside the agent's roots"):
        policy.resolve(str(tmp_path / "rootx" / "f"))
    assert policy.resolve(str(tmp_path / "root")) == tmp_path / "root"
    assert PathPolicy([Path("/")]).resolve("/etc") == Path("/etc")
