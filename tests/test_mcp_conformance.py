"""The official MCP conformance suite against our server with the conformance plugin.

Runs ``conformance server --url …`` (``@modelcontextprotocol/conformance@0.1.16``,
which needs node ≥ 22) against a standalone McpServer serving the ``conformance``
plugin's registry, and against a real ``tunneld run --plugin conformance`` (with a
real control plane), and requires every check to pass: the active suite plus the
pending scenarios (``--suite all``: SSE polling, JSON Schema 2020-12). The tools
come from ``TUNNELD_NODE22_BIN`` (``.ci/run`` installs them into ``.ci/tools``),
else ``PATH``; without them the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from _mcp_support import (
    ROOT,
    conformance_daemon,
    conformance_plugin_installed,  # noqa: F401 (a fixture)
    conformance_registry,
    serve_mcp,
)

SUITE_VERSION = "0.1.16"


def _tools_bin() -> Path | None:
    configured = os.environ.get("TUNNELD_NODE22_BIN")
    candidates = [Path(configured)] if configured else []
    candidates.append(ROOT / ".ci" / "tools" / "node_modules" / ".bin")
    for directory in candidates:
        if (directory / "conformance").exists() and (directory / "node").exists():
            return directory
    found = shutil.which("conformance")
    return Path(found).parent if found else None


def _skip_reason(bin_dir: Path | None) -> str | None:
    if bin_dir is None:
        return (
            "conformance suite not installed: run .ci/run (installs node@22 and"
            f" @modelcontextprotocol/conformance@{SUITE_VERSION} into .ci/tools) or set"
            " TUNNELD_NODE22_BIN"
        )
    node = bin_dir / "node" if (bin_dir / "node").exists() else Path(shutil.which("node") or "")
    try:
        version = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"no runnable node next to {bin_dir}"
    if int(version.lstrip("v").split(".")[0]) < 22:
        return f"the conformance suite needs node >= 22, found {version}"
    return None


@pytest.fixture
def bin_dir() -> Path:
    # A sync fixture: a skip raised inside a trio test loses its reason in the report.
    found = _tools_bin()
    reason = _skip_reason(found)
    if reason is not None:
        pytest.skip(reason)
    assert found is not None
    return found


async def _run_suite(bin_dir: Path, url: str) -> None:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with trio.fail_after(600):
        result = await trio.run_process(
            [str(bin_dir / "conformance"), "server", "--url", url, "--suite", "all"],
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )
    output = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
    summary = re.search(r"Total: (\d+) passed, (\d+) failed", output)
    assert summary is not None, output[-3000:]
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert failed == 0, output[-5000:]
    assert result.returncode == 0, output[-3000:]
    # 0.1.16's full server suite has 32 scenarios and 46 checks; fewer means skipped ones.
    assert passed >= 46, output[-3000:]
    assert "WARNING" not in output, output[-5000:]


async def test_official_conformance_suite_passes(bin_dir: Path) -> None:
    async with serve_mcp(conformance_registry(), host="127.0.0.1") as served:
        await _run_suite(bin_dir, served.url)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: keep them out of pytest's deep tmp.
    path = Path(tempfile.mkdtemp(prefix="tunneld-conf-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("conformance_plugin_installed")
async def test_official_conformance_suite_passes_against_the_daemon(
    bin_dir: Path, nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    async with conformance_daemon(nursery, tmp_path, short_dir) as url:
        await _run_suite(bin_dir, url)
