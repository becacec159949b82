"""MCP end to end: a real control plane, a real `tunneld agent`, `tunneld run` with plugins.

The official ``mcp`` SDK client calls the example plugin's tools over HTTP (legacy and
auto modes) and through `tunneld mcp` (stdio, a real subprocess); the calls ride the
daemon's overlay to the agent process. Also: a broken plugin next to the example is
reported and skipped; ``strict`` makes it fail start-up; reload pushes
``tools/list_changed`` to a live session.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests._control_support import Harness, agent_process, running_server
from tests._daemon_support import daemon_config as shared_daemon_config
from tests._mcp_client import RawMcpClient, connector_as, in_asyncio_thread
from tests._plugin_support import (
    DISABLE_DEFAULT_ON,
    hide_default_on_plugins,
    make_plugin,
    recording_plugin,
)
from tunneld.config import Config, DaemonConfig, Duration, McpConfig, load_config
from tunneld.daemon import Daemon, Notifier, open_api_listener
from tunneld.daemon._client import ApiError, DaemonUnavailableError, LocalApiClient
from tunneld.demo import loopback_overlay
from tunneld.plugins import PluginManager

WAIT = 30.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes: keep them out of pytest's deep tmp.
    path = Path(tempfile.mkdtemp(prefix="tunneld-mcp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def with_path(site: Path) -> dict[str, str]:
    """The environment, with ``site`` (throw-away plugins) first on ``PYTHONPATH``."""
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def daemon_config(h: Harness, tmp: Path, socket: Path, extra: str = "") -> Path:
    """The daemon's config in ``tmp``, signing in with the token in ``tmp/daemon.token``."""
    return shared_daemon_config(
        tmp, h.info.url, socket=socket, token_file=tmp / "daemon.token", extra=extra
    )


async def wait_for_status(socket: Path, process: trio.Process) -> dict[str, Any]:
    client = LocalApiClient(socket)
    with trio.fail_after(WAIT):
        while True:
            assert process.returncode is None, "the daemon exited before it was ready"
            try:
                status = await client.request("GET", "/v0/status")
            except (DaemonUnavailableError, ApiError, OSError):
                await trio.sleep(0.1)
                continue
            assert isinstance(status, dict)
            return status


def _annotations(tool: Any) -> dict[str, object]:
    return dict(tool.annotations.model_dump(by_alias=True, exclude_none=True))


async def _sdk_session(target: Any, mode: str, workspace: Path) -> dict[str, Any]:
    """List tools and call both example tools with the official SDK client."""
    from mcp import Client

    async with Client(target, mode=mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        stat = await client.call_tool(
            "example_stat", {"agent": "web1", "path": str(workspace / "notes.txt")}
        )
        lines = await client.call_tool(
            "example_count_lines", {"agent": "web1", "path": str(workspace / "notes.txt")}
        )
        missing = await client.call_tool(
            "example_stat", {"agent": "web1", "path": str(workspace / "nope")}
        )
        invalid = await client.call_tool("example_stat", {"agent": "web1"})
        return {
            "tools": sorted(tools),
            "annotations": _annotations(tools["example_stat"]),
            "stat": stat.structured_content,
            "stat_error": stat.is_error,
            "lines": [c.text for c in lines.content if c.type == "text"],
            "missing_error": missing.is_error,
            "missing_text": [c.text for c in missing.content if c.type == "text"],
            "invalid_error": invalid.is_error,
        }


async def test_sdk_clients_call_the_example_plugin_through_the_daemon(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("one\ntwo\nthree\n")
    site = tmp_path / "site"
    site.mkdir()
    make_plugin(site, "broken", "raise RuntimeError('this plugin is broken')\n")
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        (short_dir / "daemon.token").write_text(await h.token("alice") + "\n")
        (short_dir / "daemon.token").chmod(0o600)
        api_socket = short_dir / "api.sock"
        config = daemon_config(h, short_dir, api_socket, DISABLE_DEFAULT_ON)
        env = with_path(site)
        async with agent_process(nursery, h, short_dir, "web1", workspace):
            command = [sys.executable, "-m", "tunneld", "run", "--config", str(config),
                       "--plugin", "example"]  # fmt: skip
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process, command, env=env, check=False, stderr=subprocess.DEVNULL
                )
            )
            try:
                status = await wait_for_status(api_socket, process)
                plugins = status["plugins"]
                assert [p["name"] for p in plugins["loaded"]] == ["example"]
                assert {"plugin": "broken", "stage": "import"}.items() <= plugins["failed"][
                    0
                ].items()
                assert "this plugin is broken" in plugins["failed"][0]["error"]
                url = status["mcp"]["url"]
                assert url.startswith("http://127.0.0.1:")
                assert url.endswith("/mcp")

                from mcp import StdioServerParameters

                stdio = StdioServerParameters(
                    command=sys.executable,
                    args=["-m", "tunneld", "mcp", "--socket", str(api_socket)],
                    env=dict(os.environ),
                )
                with trio.fail_after(WAIT * 3):
                    results = {
                        "http-legacy": await in_asyncio_thread(
                            lambda: _sdk_session(url, "legacy", workspace)
                        ),
                        "http-auto": await in_asyncio_thread(
                            lambda: _sdk_session(url, "auto", workspace)
                        ),
                        "stdio-legacy": await in_asyncio_thread(
                            lambda: _sdk_session(stdio, "legacy", workspace)
                        ),
                        "stdio-auto": await in_asyncio_thread(
                            lambda: _sdk_session(stdio, "auto", workspace)
                        ),
                    }
                for how, result in results.items():
                    assert result["tools"] == ["example_count_lines", "example_stat"], how
                    assert result["annotations"] == {
                        "readOnlyHint": True,
                        "destructiveHint": False,
                        "idempotentHint": True,
                        "openWorldHint": False,
                        "title": "Stat a file on an agent",
                    }, how
                    assert not result["stat_error"], how
                    assert result["stat"]["size"] == len("one\ntwo\nthree\n"), how
                    assert result["stat"]["type"] == "file", how
                    assert result["lines"] == [f"3 lines in {workspace / 'notes.txt'} on web1"]
                    assert result["missing_error"], how
                    assert "web1:" in result["missing_text"][0], how
                    assert result["invalid_error"], how
                status = await LocalApiClient(api_socket).request("GET", "/v0/status")
                assert isinstance(status, dict)
                # Every call of every client shared one tunnel to the agent.
                assert [t["agent"] for t in status["tunnels"]] == ["web1"]
                assert status["mcp"]["calls"] >= 15
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(WAIT):
                    await process.wait()
                assert process.returncode == 0
            finally:
                if process.returncode is None:
                    process.kill()


async def test_strict_plugin_failure_stops_start_up(tmp_path: Path, short_dir: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    make_plugin(site, "broken", "raise RuntimeError('this plugin is broken')\n")
    (short_dir / "token").write_text("not-a-real-token\n")
    (short_dir / "token").chmod(0o600)
    config = short_dir / "daemon.toml"
    config.write_text(
        "[daemon]\n"
        f'socket = "{short_dir / "api.sock"}"\n'
        'socket_group = ""\n'
        f'key_file = "{short_dir / "daemon.key"}"\n'
        f'token_file = "{short_dir / "token"}"\n'
        "[mcp]\n"
        'listen = "127.0.0.1:0"\n'
        "[plugins]\n"
        "strict = true\n"
    )
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "run", "--config", str(config)],
            env=with_path(site),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("tunneld: error: plugin(s) failed with [plugins] strict = true:")
    assert "plugin 'broken' failed in import: RuntimeError: this plugin is broken" in last


async def test_tunneld_mcp_without_a_daemon_says_so(short_dir: Path) -> None:
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "mcp", "--socket", str(short_dir / "none.sock")],
            stdin=b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n',
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().strip() == (
        f"tunneld: error: the tunneld daemon is not running (no socket at"
        f" {short_dir / 'none.sock'}); start it with `systemctl start tunneld` or `tunneld run`"
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    hide_default_on_plugins(monkeypatch)
    yield root
    for name in [m for m in sys.modules if m.startswith("tp_")]:
        del sys.modules[name]


async def test_reload_sends_tools_list_changed_to_a_live_session(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path, site: Path
) -> None:
    recording_plugin(site, "one", ["one_tool"])
    recording_plugin(site, "two", ["two_tool"])
    config_file = tmp_path / "config.toml"
    config_file.write_text('[plugins]\ndisable = ["two"]\n')
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        token = await h.token("alice")

        overlay = loopback_overlay(h.info, "laptop", token)
        first = load_config(config_file)

        def reload_config() -> Config:
            return load_config(config_file)

        daemon = Daemon(
            overlay,
            DaemonConfig(socket_group="", idle_timeout=Duration(5.0)),
            notifier=Notifier({}),
            reload_settings=reload_config,
            mcp=McpConfig(listen="127.0.0.1:0"),
            plugins=PluginManager(first.plugins),
        )
        listener = await open_api_listener(short_dir / "api.sock", mode=0o600)
        addresses = await nursery.start(daemon.run, [listener])
        url = addresses[-1]
        assert daemon.mcp_url == url
        token_for_trio = trio.lowlevel.current_trio_token()

        async def session() -> dict[str, Any]:
            import anyio
            from mcp import Client

            changed = anyio.Event()

            async def on_message(message: Any) -> None:
                if "tools/list_changed" in repr(message):
                    changed.set()

            async with Client(url, mode="legacy", message_handler=on_message) as client:
                before = sorted(t.name for t in (await client.list_tools()).tools)
                config_file.write_text('[plugins]\ndisable = ["one"]\n')
                # POST /v0/reload on the local socket, as `curl --unix-socket` would.
                api = LocalApiClient(short_dir / "api.sock")
                reloaded = await anyio.to_thread.run_sync(
                    lambda: trio.from_thread.run(
                        api.request, "POST", "/v0/reload", trio_token=token_for_trio
                    )
                )
                with anyio.fail_after(WAIT):
                    await changed.wait()
                after = sorted(t.name for t in (await client.list_tools()).tools)
                called = await client.call_tool("two_tool", {"text": "hi"})
                try:
                    gone = (await client.call_tool("one_tool", {"text": "hi"})).is_error
                except Exception as exc:  # the SDK raises for a JSON-RPC error (-32602)
                    gone = "Unknown tool" in str(exc) or "one_tool" in str(exc)
                return {
                    "before": before,
                    "after": after,
                    "reloaded": dict(reloaded),
                    "called": [c.text for c in called.content if c.type == "text"],
                    "gone": gone,
                }

        with trio.fail_after(WAIT * 2):
            result = await in_asyncio_thread(session)
        assert result["before"] == ["one_tool"]
        assert result["after"] == ["two_tool"]
        assert result["reloaded"] == {"reloaded": True, "tools": ["two_tool"]}
        assert result["called"] == ["two:hi"]
        assert result["gone"]  # an unknown tool is an error, never the old handler
        status = await LocalApiClient(short_dir / "api.sock").request("GET", "/v0/status")
        assert isinstance(status, dict)
        assert [p["name"] for p in status["plugins"]["loaded"]] == ["two"]
        daemon.stop()


def test_json_dumps_of_status_is_plain() -> None:
    # /v0/status carries the plugin report as plain JSON types.
    manager = PluginManager(Config().plugins)
    manager.load()
    json.dumps(manager.status())


WRITE_PLUGIN = """
from tunneld.hookspecs import hookimpl
from tunneld.mcp import DESTRUCTIVE, READ_ONLY, Tool

async def _read(ctx, args):
    return f"read by uid {ctx.caller.uid} over {ctx.caller.transport}"

async def _write(ctx, args):
    return "written"

@hookimpl
def register_tools(register):
    schema = {"type": "object"}
    register(Tool(name="peek", description="reads", handler=_read,
                  annotations=READ_ONLY, input_schema=schema))
    register(Tool(name="poke", description="writes", handler=_write,
                  annotations=DESTRUCTIVE, input_schema=schema))
"""


def _lines(*messages: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(m).encode() + b"\n" for m in messages)


async def test_socket_callers_without_write_access_get_read_only_tools(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path, site: Path
) -> None:
    make_plugin(site, "rw", WRITE_PLUGIN)
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        token = await h.token("alice")

        overlay = loopback_overlay(h.info, "laptop", token)
        # No write group: only root and the daemon's user may write.
        daemon = Daemon(overlay, DaemonConfig(socket_group=""), notifier=Notifier({}))
        await trio.Path(short_dir).chmod(0o755)
        socket_path = short_dir / "api.sock"
        listener = await open_api_listener(socket_path, mode=0o666)
        await nursery.start(daemon.run, [listener])
        session = (
            _lines(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "0"},
                    },
                },
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "peek"}},
                {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "poke"}},
            )
            + b"this is not json\n[1, 2]\n\n"
        )

        async def run_bridge() -> dict[object, dict[str, Any]]:
            # The stdio bridge as a real process, stdin piped: it answers, then exits.
            with trio.fail_after(WAIT):
                result = await trio.run_process(
                    [sys.executable, "-m", "tunneld", "mcp", "--socket", str(socket_path)],
                    stdin=session,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            assert result.returncode == 0, result.stderr
            answers = [json.loads(line) for line in result.stdout.splitlines()]
            # Bad lines are answered with JSON-RPC errors (id null); the rest go on.
            codes = sorted(a["error"]["code"] for a in answers if a.get("id") is None)
            assert codes == [-32700, -32600]
            return {a.get("id"): a for a in answers}

        if os.getuid() != 0:
            pytest.skip("needs root to connect as another user")
        as_root = await run_bridge()
        assert as_root[2]["result"]["content"][0]["text"] == "read by uid 0 over unix"
        assert as_root[3]["result"]["content"][0]["text"] == "written"
        nobody = RawMcpClient(socket_path, connect=connector_as(65534, 65534, socket_path))
        await nobody.initialize()
        peek = await nobody.call_tool("peek", {})
        assert peek["content"][0]["text"] == "read by uid 65534 over unix"
        answer = await nobody.post(
            {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "poke"}}
        )
        assert answer.status == 403
        assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
        assert "mcp:tools:write" in answer.messages[0]["error"]["message"]
        daemon.stop()


async def test_mcp_listen_address_in_use_is_a_clear_error(short_dir: Path) -> None:
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    (short_dir / "token").write_text("not-a-real-token\n")
    (short_dir / "token").chmod(0o600)
    config = short_dir / "daemon.toml"
    config.write_text(
        "[daemon]\n"
        f'socket = "{short_dir / "api.sock"}"\n'
        'socket_group = ""\n'
        f'key_file = "{short_dir / "daemon.key"}"\n'
        f'token_file = "{short_dir / "token"}"\n'
        "[mcp]\n"
        f'listen = "127.0.0.1:{port}"\n'
    )
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "run", "--config", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    taken.close()
    assert result.returncode == 1
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"tunneld: error: [mcp] listen 127.0.0.1:{port}: ")
    assert "in use" in last


async def test_demo_rejects_a_plugin_that_is_not_installed() -> None:
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            [sys.executable, "-m", "tunneld", "demo", "--plugin", "nosuchplugin"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    message = result.stderr.decode().strip()
    assert message.startswith("tunneld: error: --plugin nosuchplugin: not installed")
    assert "example" in message  # names what is installed


async def test_tcp_mcp_with_a_static_token(
    nursery: trio.Nursery, tmp_path: Path, short_dir: Path
) -> None:
    from tunneld.daemon import StaticTokenAuthenticator, read_token_file

    token_file = short_dir / "mcp.token"
    token_file.write_text("s3cret-token\n")
    with pytest.raises(ValueError, match=r"MCP token file .* is accessible by group or others"):
        read_token_file(token_file)
    token_file.chmod(0o600)
    token = read_token_file(token_file)
    (tmp_path / "control").mkdir()
    async with running_server(nursery, tmp_path / "control", relay=True) as h:
        await h.user("alice")
        user_token = await h.token("alice")

        overlay = loopback_overlay(h.info, "laptop", user_token)
        daemon = Daemon(
            overlay,
            DaemonConfig(socket_group=""),
            notifier=Notifier({}),
            mcp=McpConfig(listen="127.0.0.1:0"),
            plugins=PluginManager(Config().plugins, extra_enable=["example"]),
            mcp_authenticate=StaticTokenAuthenticator.single(token),
        )
        listener = await open_api_listener(short_dir / "api.sock", mode=0o600)
        await nursery.start(daemon.run, [listener])
        assert daemon.mcp_url is not None
        target = daemon.mcp_url.removeprefix("http://").removesuffix("/mcp")
        anonymous = RawMcpClient(target)
        ping = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        answer = await anonymous.post(ping)
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        answer = await anonymous.post(ping, headers={"Authorization": "Bearer wrong"})
        assert answer.status == 401
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        assert b"s3cret" not in answer.body
        with_token = RawMcpClient(target)
        header = {"Authorization": f"Bearer {token}"}
        original = with_token.post

        async def post(message: dict[str, Any], *, headers: dict[str, str] | None = None) -> Any:
            return await original(message, headers={**header, **(headers or {})})

        with_token.post = post  # type: ignore[method-assign]
        await with_token.initialize()
        listed = await with_token.request("tools/list")
        assert {t["name"] for t in listed["result"]["tools"]} >= {"example_stat"}
        # The socket is unaffected: SO_PEERCRED decides there (we are root: write too).
        local = RawMcpClient(short_dir / "api.sock")
        await local.initialize()
        assert "result" in await local.request("tools/list")
        daemon.stop()
