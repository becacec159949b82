"""The ``report_task`` plugin: registration, the isError fallbacks, delivery to a real
control server and a real loopback webhook, and the queue's dedupe and bound."""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pluggy
import pytest
import trio
from _agent_support import poll_pause
from _control_support import WAIT, Harness, running_server
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld import hookspecs
from tunneld.http import HttpServer, Request, Response, Router
from tunneld.mcp import MUTATING, Caller, Tool, ToolContext, ToolResult, open_world

tunneld_report_task = pytest.importorskip(
    "tunneld_report_task", reason="install it: pip install -e plugins/tunneld-report-task"
)
ReportTaskPlugin = tunneld_report_task.ReportTaskPlugin


class _NoAgents:
    """report_task never opens agent streams; reaching here is a test failure."""

    def open_stream(
        self, agent: str, service: str
    ) -> AbstractAsyncContextManager[trio.abc.HalfCloseableStream]:
        raise AssertionError("report_task must not open agent streams")

    async def list_agents(self) -> list[Mapping[str, object]]:
        raise AssertionError("report_task must not list agents")


class _Channel:
    async def progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> None:
        pass

    async def log(self, level: str, data: object, logger: str | None = None) -> None:
        pass

    async def request(self, method: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
        raise AssertionError("no server->client requests expected")


def context(subject: str = "alice") -> ToolContext:
    return ToolContext(
        caller=Caller(subject=subject), agents=_NoAgents(), channel=_Channel(), plugin="report_task"
    )


def manager(plugin: Any) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="report_task")
    return pm


def registered(plugin: Any, config: Mapping[str, Any]) -> list[Tool]:
    tools: list[Tool] = []
    manager(plugin).hook.register_tools(register=tools.append, config=config)
    return tools


async def call(plugin: Any, args: dict[str, Any]) -> ToolResult:
    result = await plugin.handle(context(), args)
    assert isinstance(result, ToolResult)
    return result


def text(result: ToolResult) -> str:
    return str(result.content[0]["text"])


@asynccontextmanager
async def started(plugin: Any, config: Mapping[str, Any]) -> AsyncIterator[Any]:
    """The plugin as the daemon runs it: register_tools, startup ... shutdown."""
    assert registered(plugin, config)
    for coro in manager(plugin).hook.startup(config=config):
        await coro
    try:
        yield plugin
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(WAIT):
            for coro in manager(plugin).hook.shutdown(config=config):
                await coro


class Webhook:
    """A real loopback HTTP server recording POSTs; answers ``statuses`` in turn, and
    holds each request while ``gate`` is closed."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.gate: trio.Event | None = None
        self.arrived = trio.Event()
        self.url = ""

    async def handle(self, request: Request) -> Response:
        self.bodies.append(json.loads(request.body))
        self.headers.append({k.lower(): v for k, v in request.headers})
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        status = self.statuses.pop(0) if self.statuses else 204
        if status >= 400:
            return Response.error(status, f"webhook says {status}")
        return Response(status)


@pytest.fixture
async def webhook(nursery: trio.Nursery) -> Webhook:
    hook = Webhook()
    router = Router()
    router.route("POST", "/hooks/s3cr3t-path", hook.handle)
    server = HttpServer(router)
    host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    hook.url = f"http://{host}:{port}/hooks/s3cr3t-path"
    return hook


@pytest.fixture
async def control(nursery: trio.Nursery, tmp_path: Path) -> Harness:  # type: ignore[misc]
    async with running_server(nursery, tmp_path) as harness:
        await harness.user("alice")
        yield harness


async def control_tasks(harness: Harness, token: str) -> list[dict[str, Any]]:
    status, _, body = await harness.get("/api/v1/tasks?limit=100", token)
    assert status == 200
    tasks: list[dict[str, Any]] = json.loads(body)["tasks"]
    return tasks


# --- registration and the isError fallbacks ------------------------------------------------


def test_not_registered_without_a_reporter() -> None:
    assert registered(ReportTaskPlugin(), {}) == []
    assert registered(ReportTaskPlugin(), {"agent": "web1", "queue_size": 8}) == []


def test_registered_with_a_reporter_and_its_annotations() -> None:
    tools = registered(ReportTaskPlugin(), {"webhook_url": "http://127.0.0.1:9/h"})
    assert [t.name for t in tools] == ["report_task"]
    tool = tools[0]
    assert tool.annotations == open_world(MUTATING)
    assert tool.to_json()["annotations"] == {
        "readOnlyHint": False,
        "destructiveHint": False,
        "idempotentHint": False,
        "openWorldHint": True,
        "title": "Report task state",
    }
    assert tool.input_schema["required"] == ["state", "summary"]
    tools = registered(
        ReportTaskPlugin(), {"control_url": "http://127.0.0.1:9", "token": "tnd_x_y"}
    )
    assert [t.name for t in tools] == ["report_task"]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"control_url": "http://h"}, "control_url"),  # no token
        ({"control_url": "ftp://h", "token": "t"}, "control_url"),
        ({"webhook_url": 5}, "webhook_url"),
        ({"webhook_url": "http://h", "queue_size": 0}, "queue_size"),
        ({"webhook_url": "http://h", "wait": "forever"}, "wait"),
        ({"webhook_url": "http://h", "agent": "a b"}, "agent"),
        ({"webhook_url": "http://h", "colour": "red"}, "colour"),
        ({"control_url": "http://h", "token": "t", "token_file": "/f"}, "token"),
    ],
)
def test_bad_config_names_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"\[plugins\.report_task\].*{key}"):
        registered(ReportTaskPlugin(), config)


async def test_handler_without_a_reporter_returns_is_error() -> None:
    # Called anyway (a stale tool list): a clear isError, not an exception.
    plugin = ReportTaskPlugin()
    assert registered(plugin, {}) == []
    result = await call(plugin, {"state": "working", "summary": "x"})
    assert result.is_error
    assert "no reporter is configured" in text(result)
    assert "[plugins.report_task]" in text(result)


async def test_handler_before_startup_returns_is_error() -> None:
    plugin = ReportTaskPlugin()
    assert registered(plugin, {"webhook_url": "http://127.0.0.1:9/h"})
    result = await call(plugin, {"state": "working", "summary": "x"})
    assert result.is_error
    assert "queue is not running" in text(result)


async def test_handler_with_an_unreadable_token_file_returns_is_error(tmp_path: Path) -> None:
    config = {"control_url": "http://127.0.0.1:9", "token_file": str(tmp_path / "missing")}
    async with started(ReportTaskPlugin(), config) as plugin:
        result = await call(plugin, {"state": "working", "summary": "x", "agent": "web1"})
    assert result.is_error
    assert "token_file" in text(result)
    assert "missing" in text(result)


# --- delivery ------------------------------------------------------------------------------


async def test_reports_reach_the_control_plane_with_reporter_identity(
    control: Harness, tmp_path: Path
) -> None:
    token = await control.token("alice")
    token_file = tmp_path / "node.token"
    token_file.write_text(token + "\n")
    config = {"control_url": control.info.url, "token_file": str(token_file), "agent": "web1"}
    async with started(ReportTaskPlugin(), config) as plugin:
        result = await call(plugin, {"state": "working", "summary": "Running tests"})
        assert not result.is_error, text(result)
        assert result.structured == {
            "outcome": "delivered",
            "agent": "web1",
            "state": "working",
            "reporters": {"control": "delivered"},
        }
        link = "https://ci.example/r/1"
        result = await call(
            plugin, {"state": "complete", "summary": "Done", "link": link, "agent": "db1"}
        )
        assert result.structured is not None
        assert result.structured["outcome"] == "delivered"
        # The same state and summary again: not sent twice.
        result = await call(plugin, {"state": "complete", "summary": "Done", "agent": "db1"})
        assert result.structured is not None
        assert result.structured["outcome"] == "unchanged"
        # The control plane refuses a bad link: failed, isError, naming the field.
        result = await call(plugin, {"state": "idle", "summary": "x", "link": "ftp://h/x"})
        assert result.is_error
        assert "link" in text(result)
    tasks = await control_tasks(control, token)
    assert [(t["agent"], t["state"], t["summary"], t["link"]) for t in tasks] == [
        ("db1", "complete", "Done", link),
        ("web1", "working", "Running tests", None),
    ]
    assert {t["reporter"]["user"] for t in tasks} == {"alice"}


async def test_a_rejected_report_is_failed_not_retried(control: Harness) -> None:
    web1 = await control.token("alice", agent="web1")
    config = {"control_url": control.info.url, "token": web1, "max_attempts": 5}
    async with started(ReportTaskPlugin(), config) as plugin:
        result = await call(plugin, {"state": "working", "summary": "x", "agent": "db1"})
        assert result.is_error
        assert result.structured is not None
        assert result.structured["outcome"] == "failed"
        assert "403" in text(result)
        assert "agent" in text(result)
        assert web1 not in text(result)
    assert await control_tasks(control, web1) == []


async def test_webhook_delivery_retries_transient_failures(webhook: Webhook) -> None:
    webhook.statuses = [503, 502, 200]
    config = {"webhook_url": webhook.url, "agent": "web1", "max_attempts": 3}
    async with started(ReportTaskPlugin(), config) as plugin:
        result = await call(
            plugin, {"state": "failure", "summary": "Build broke", "link": "http://x.example/1"}
        )
        assert result.structured is not None
        assert result.structured["outcome"] == "delivered", text(result)
    assert len(webhook.bodies) == 3  # two 5xx answers, then it took it
    body = webhook.bodies[-1]
    assert body["source"] == "tunneld"
    assert body["type"] == "task_report"
    assert (body["agent"], body["state"], body["summary"]) == ("web1", "failure", "Build broke")
    assert body["link"] == "http://x.example/1"
    assert body["caller"] == "alice"
    assert isinstance(body["reported_at"], float)
    assert webhook.headers[-1]["content-type"] == "application/json"


async def test_webhook_refusal_is_an_error_without_the_secret_path(webhook: Webhook) -> None:
    webhook.statuses = [400]
    config = {"webhook_url": webhook.url, "agent": "web1", "max_attempts": 5}
    async with started(ReportTaskPlugin(), config) as plugin:
        result = await call(plugin, {"state": "working", "summary": "x"})
    assert result.is_error
    assert "400" in text(result)
    assert "s3cr3t" not in text(result)
    assert len(webhook.bodies) == 1  # a 4xx is not retried


async def test_unreachable_reporter_answers_queued_then_closed_at_shutdown() -> None:
    with trio.socket.socket() as sock:  # a port nothing listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = {"webhook_url": f"http://127.0.0.1:{port}/h", "wait": "0.2s", "max_attempts": 100}
    plugin = ReportTaskPlugin()
    async with started(plugin, config):
        result = await call(plugin, {"state": "working", "summary": "x", "agent": "a"})
        assert not result.is_error
        assert result.structured is not None
        assert result.structured["outcome"] == "queued"
    # After shutdown the handler still answers, with a clear isError.
    result = await call(plugin, {"state": "working", "summary": "y", "agent": "a"})
    assert result.is_error
    assert "not running" in text(result)


async def test_queue_dedupes_and_drops_oldest_against_a_real_control_server(
    control: Harness, webhook: Webhook
) -> None:
    token = await control.token("alice")
    config = {
        "control_url": control.info.url,
        "token": token,
        "webhook_url": webhook.url,
        "agent": "web1",
        "queue_size": 3,
        "wait": "0s",
    }
    webhook.gate = trio.Event()  # the webhook holds every request until released
    async with started(ReportTaskPlugin(), config) as plugin:
        first = await call(plugin, {"state": "working", "summary": "step 0"})
        assert first.structured is not None
        assert first.structured["outcome"] == "queued"
        with trio.fail_after(WAIT):
            await webhook.arrived.wait()  # step 0 is in flight, stuck at the webhook
        outcomes = []
        for summary in ("step 1", "step 1", "step 2", "step 3", "step 4"):
            result = await call(plugin, {"state": "working", "summary": summary})
            assert not result.is_error
            assert result.structured is not None
            outcomes.append(result.structured["outcome"])
        assert outcomes == ["queued"] * 5
        queue = plugin._drainer.queue
        assert queue.stats.collapsed == 1  # the second "step 1"
        assert queue.stats.dropped == 1  # "step 1" itself, oldest, when "step 4" came
        assert len(queue) == 3
        webhook.gate.set()
        with trio.fail_after(WAIT):
            while queue.stats.delivered < 4:
                await poll_pause()
        again = await call(plugin, {"state": "working", "summary": "step 4"})
        assert again.structured is not None
        assert again.structured["outcome"] == "unchanged"
    summaries = [t["summary"] for t in await control_tasks(control, token)]
    assert summaries == ["step 4", "step 3", "step 2", "step 0"]
    assert [b["summary"] for b in webhook.bodies] == ["step 0", "step 2", "step 3", "step 4"]


async def test_queue_unit_rules() -> None:
    Report = tunneld_report_task.Report
    queue = tunneld_report_task.ReportQueue(2)
    a, dropped = queue.put(Report("w", "working", "a", None, 1.0))
    assert dropped is None
    b, _ = queue.put(Report("w", "working", "b", None, 2.0))
    same, _ = queue.put(Report("w", "working", "a", "https://x.example/", 3.0))
    assert same is a
    assert a.report.link == "https://x.example/"  # the newer link wins
    c, dropped = queue.put(Report("w", "working", "c", None, 4.0))
    assert dropped is a
    assert a.outcome == "dropped"
    taken = await queue.take()
    assert taken is b
    queue.finish(b, True, {"control": "delivered"})
    assert b.outcome == "delivered"
    skipped, _ = queue.put(Report("w", "working", "b", None, 5.0))
    assert skipped.outcome == "unchanged"
    # Another agent with the same state and summary is its own report.
    other, _ = queue.put(Report("x", "working", "b", None, 5.0))
    assert other.outcome == "pending"
    assert queue.close() == [c, other]
    with pytest.raises(tunneld_report_task.QueueClosed):
        queue.put(Report("w", "idle", "z", None, 6.0))
    assert await queue.take() is c  # what waits still drains after close
    queue.abandon("bye")
    assert other.outcome == "closed"
    with pytest.raises(tunneld_report_task.QueueClosed):
        await queue.take()


def test_config_example_documents_every_key_with_its_default() -> None:
    # The table is commented out in config.example.toml (the defaults register nothing);
    # uncommented, it must name every key and parse to the plugin's defaults.
    example = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text()
    block = example.split("# [plugins.report_task]\n", 1)[1]
    lines = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    table = tomllib.loads("\n".join(line for line in lines if not line.startswith("# ")))
    assert sorted(table) == sorted(tunneld_report_task.KEYS)
    assert tunneld_report_task.parse_settings(table) == tunneld_report_task.Settings()


_VALUES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*tunneld_report_task.KEYS, "other"]),
        _VALUES | st.sampled_from(["http://127.0.0.1:1/x", "https://h.example", "5s", "0s"]),
    )
)
def test_parse_settings_fuzz_accepts_or_names_the_key(config: dict[str, Any]) -> None:
    problem: ValueError | None = None
    try:
        settings_ = tunneld_report_task.parse_settings(config)
    except ValueError as exc:
        problem = exc
    if problem is not None:
        assert str(problem).startswith("[plugins.report_task]")
        return
    assert settings_.configured == bool(settings_.control_url or settings_.webhook_url)
    assert not settings_.control_url or settings_.token or settings_.token_file
