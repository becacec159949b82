"""The official MCP clients as real peers of our server, over loopback HTTP.

- the ``mcp`` Python SDK (2.x) ``Client`` in ``legacy`` mode (initialize + session)
  and in its default ``auto`` mode (``server/discover``, the stateless 2026-07-28
  revision), in this process on the same trio loop;
- the TypeScript SDK (``@modelcontextprotocol/sdk``) run by node ≥ 22 from the tools
  dir (``TUNNELD_NODE22_BIN``, else ``PATH``), skipped with a reason when absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types
import pytest
import trio
from _mcp_support import (
    ROOT,
    conformance_daemon,
    conformance_plugin_installed,  # noqa: F401 (a fixture)
    conformance_registry,
    serve_mcp,
)
from mcp.client.client import Client

HERE = Path(__file__).resolve().parent


def _expected_annotations() -> dict[str, dict[str, Any]]:
    return {tool.name: tool.to_json()["annotations"] for tool in conformance_registry()}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_python_sdk_lists_and_calls(mode: str) -> None:
    expected = _expected_annotations()
    progress: list[float] = []
    sampled: list[Any] = []

    async def sampling(context: Any, params: Any) -> mcp_types.CreateMessageResult:
        sampled.append(params)
        return mcp_types.CreateMessageResult(
            role="assistant",
            content=mcp_types.TextContent(type="text", text="forty-two"),
            model="test-model",
        )

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with serve_mcp(conformance_registry()) as served:
        with trio.fail_after(60):
            async with Client(served.url, mode=mode, sampling_callback=sampling) as client:
                session = client.session
                if mode == "auto":
                    assert session.discover_result is not None
                else:
                    assert session.initialize_result is not None
                    assert served.server.sessions == 1
                listed = await client.list_tools()
                got = {
                    tool.name: tool.annotations.model_dump(by_alias=True, exclude_none=True)
                    for tool in listed.tools
                    if tool.annotations is not None
                }
                assert got == expected
                result = await client.call_tool("test_simple_text", {})
                assert not result.is_error
                assert result.content[0].text == "This is a simple text response for testing."
                result = await client.call_tool(
                    "test_tool_with_progress", {}, progress_callback=on_progress
                )
                assert not result.is_error
                assert progress == [0, 50, 100]
                result = await client.call_tool("test_sampling", {"prompt": "6*7?"})
                if mode == "legacy":
                    assert not result.is_error
                    assert result.content[0].text == "LLM response: forty-two"
                    assert len(sampled) == 1
                else:
                    # The stateless revision has no server→client requests: a clear error.
                    assert result.is_error
                    assert "server-to-client" in result.content[0].text
                bad = await client.call_tool("test_sampling", {"prompt": 7})
                assert bad.is_error
                assert "'prompt'" in bad.content[0].text
    assert served.server.calls == 4


def _node22() -> tuple[str, Path] | None:
    """(node binary, node_modules dir holding @modelcontextprotocol/sdk), or None."""
    bin_dir = os.environ.get("TUNNELD_NODE22_BIN")
    candidates = [bin_dir] if bin_dir else []
    candidates += [str(ROOT / ".ci" / "tools" / "node_modules" / ".bin")]
    for directory in candidates:
        node = Path(directory) / "node"
        if node.exists():
            return str(node), Path(directory).parent
    node_path = shutil.which("node")
    if node_path is None:
        return None
    return node_path, Path(node_path).resolve().parent.parent / "lib" / "node_modules"


def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    return int(out.stdout.strip().lstrip("v").split(".")[0] or 0)


@pytest.fixture
def node22() -> tuple[str, Path]:
    # A sync fixture: a skip raised inside a trio test loses its reason in the report.
    found = _node22()
    if found is None:
        pytest.skip("node not found (set TUNNELD_NODE22_BIN or run .ci/run's tools install)")
    node, modules = found
    if _node_major(node) < 22:
        pytest.skip(f"{node} is older than node 22 (set TUNNELD_NODE22_BIN)")
    if not (modules / "@modelcontextprotocol" / "sdk").is_dir():
        pytest.skip(f"@modelcontextprotocol/sdk is not installed in {modules}")
    return found


async def _run_ts_client(node22: tuple[str, Path], url: str) -> None:
    node, modules = node22
    expected = _expected_annotations()
    with trio.fail_after(120):
        result = await trio.run_process(
            [node, str(HERE / "mcp_ts_client.mjs"), url],
            capture_stdout=True,
            capture_stderr=True,
            env={**os.environ, "NODE_PATH": str(modules)},
            check=False,
            cwd=str(modules.parent),
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert report["annotations"] == expected
    assert report["call"]["content"][0]["text"] == "This is a simple text response for testing."
    assert report["progress"] == [0, 50, 100]
    assert report["sampling"]["content"][0]["text"] == "LLM response: from-typescript"
    assert report["sessionId"]


async def test_typescript_sdk_lists_and_calls(node22: tuple[str, Path]) -> None:
    async with serve_mcp(conformance_registry()) as served:
        await _run_ts_client(node22, served.url)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tunneld-ts-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("conformance_plugin_installed")
async def test_typescript_sdk_through_the_daemon(
    node22: tuple[str, Path], nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    async with conformance_daemon(nursery, tmp_path, short_dir) as url:
        await _run_ts_client(node22, url)
