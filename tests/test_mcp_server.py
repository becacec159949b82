"""The MCP Streamable HTTP server over real HTTP on loopback: statuses, SSE, lifecycle.

Every request goes through a real TCP connection to an HttpServer serving McpServer;
no component of ours is mocked. Tool handlers here are small probes that record
what happened to them (cancelled, finished) so the tests can assert it.
"""

from __future__ import annotations

import json
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from _mcp_support import (
    ACCEPT_BOTH,
    McpHttpClient,
    Served,
    http_request,
    open_request,
    serve_mcp,
)

from tunneld.http import HttpError, Request
from tunneld.mcp import (
    DESTRUCTIVE,
    READ_ONLY,
    Caller,
    Prompt,
    PromptArgument,
    Registry,
    Resource,
    ResourceTemplate,
    Tool,
    ToolContext,
    ToolError,
)


@dataclass
class Probe:
    """What the probe tools saw."""

    gate: trio.Event = field(default_factory=trio.Event)
    started: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)
    cancelled: trio.Event = field(default_factory=trio.Event)
    elicited: list[Any] = field(default_factory=list)


def _registry(probe: Probe, *, extra_tools: int = 0) -> Registry:
    registry = Registry()

    async def echo(ctx: ToolContext, args: dict[str, Any]) -> str:
        return f"echo {args['text']}"

    async def gated(ctx: ToolContext, args: dict[str, Any]) -> str:
        probe.started.set()
        try:
            await ctx.progress(1, 2, "waiting for the gate")
            await probe.gate.wait()
        except trio.Cancelled:
            probe.cancelled.set()
            raise
        await ctx.progress(2, 2, "through the gate")
        probe.finished.set()
        return "gated done"

    async def chatty(ctx: ToolContext, args: dict[str, Any]) -> str:
        for level in ("debug", "info", "warning", "error"):
            await ctx.log(level, {"said": level}, logger="chatty")  # type: ignore[arg-type]
        for step in range(3):
            await ctx.progress(step, 3)
        return "chatty done"

    async def typed(ctx: ToolContext, args: dict[str, Any]) -> str:
        return f"count={args['count']}"

    async def failing(ctx: ToolContext, args: dict[str, Any]) -> str:
        raise RuntimeError("boom")

    async def refusing(ctx: ToolContext, args: dict[str, Any]) -> str:
        raise ToolError("no such file: /nope")

    async def structured(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("bad"):
            return {"total": "not a number"}
        return {"total": 3}

    async def ask(ctx: ToolContext, args: dict[str, Any]) -> str:
        answer = await ctx.channel.request(
            "elicitation/create",
            {"message": "name?", "requestedSchema": {"type": "object", "properties": {}}},
        )
        probe.elicited.append(answer)
        return f"got {answer.get('action')}"

    async def writer(ctx: ToolContext, args: dict[str, Any]) -> str:
        return "written"

    text_schema = {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }
    registry.add_tool(Tool("echo", "Echo text", text_schema, echo, READ_ONLY, title="Echo"))
    registry.add_tool(Tool("gated", "Waits for the gate", {"type": "object"}, gated, READ_ONLY))
    registry.add_tool(Tool("chatty", "Logs and progress", {"type": "object"}, chatty, READ_ONLY))
    registry.add_tool(
        Tool(
            "typed",
            "Needs an integer",
            {
                "type": "object",
                "properties": {
                    "count": {"type": "integer", "minimum": 0},
                    "opts": {
                        "type": "object",
                        "properties": {"mode": {"enum": ["fast", "slow"]}},
                    },
                },
                "required": ["count"],
                "additionalProperties": False,
            },
            typed,
            READ_ONLY,
        )
    )
    registry.add_tool(Tool("failing", "Raises", {"type": "object"}, failing, READ_ONLY))
    registry.add_tool(Tool("refusing", "ToolError", {"type": "object"}, refusing, READ_ONLY))
    registry.add_tool(
        Tool(
            "structured",
            "Structured output",
            {"type": "object", "properties": {"bad": {"type": "boolean"}}},
            structured,
            READ_ONLY,
            output_schema={
                "type": "object",
                "properties": {"total": {"type": "integer"}},
                "required": ["total"],
            },
        )
    )
    registry.add_tool(Tool("ask", "Elicits", {"type": "object"}, ask, READ_ONLY))
    registry.add_tool(Tool("writer", "Writes", {"type": "object"}, writer, DESTRUCTIVE))
    for n in range(extra_tools):
        registry.add_tool(Tool(f"extra_{n}", "Extra", {"type": "object"}, echo, READ_ONLY))
    return registry


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def served(probe: Probe) -> AsyncIterator[Served]:
    async with serve_mcp(
        _registry(probe), instructions="be nice", max_request_bytes=64 * 1024
    ) as served:
        yield served


@pytest.fixture
async def client(served: Served) -> McpHttpClient:
    client = McpHttpClient(served.port)
    await client.initialize(capabilities={"elicitation": {}})
    return client


def _error_code(body: bytes) -> int:
    return int(json.loads(body)["error"]["code"])


# ---- lifecycle ----


async def test_initialize_negotiates_and_mints_a_session(served: Served) -> None:
    client = McpHttpClient(served.port, version="2025-06-18")
    response = await client.initialize()
    result = response.json()["result"]
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "tunneld"
    assert result["instructions"] == "be nice"
    # Honest capabilities: this registry has no resources, prompts or completions.
    assert result["capabilities"] == {"tools": {"listChanged": True}, "logging": {}}
    session_id = response.headers["mcp-session-id"]
    assert len(session_id) >= 32
    assert all(33 <= ord(c) <= 126 for c in session_id)
    assert served.server.sessions == 1

    other = McpHttpClient(served.port, version="1999-01-01")
    response = await other.initialize()
    assert response.json()["result"]["protocolVersion"] == "2025-11-25"
    assert other.session_id != session_id


async def test_capabilities_follow_the_registry(probe: Probe) -> None:
    registry = _registry(probe)

    async def read(ctx: ToolContext) -> str:
        return "r"

    async def render(ctx: ToolContext, args: dict[str, str]) -> list[dict[str, Any]]:
        return []

    async def complete(argument: str, prefix: str) -> list[str]:
        return []

    registry.add_resource(Resource("test://r", "r", read))
    registry.add_prompt(Prompt("p", render, complete=complete))
    async with serve_mcp(registry) as served:
        caps = (await McpHttpClient(served.port).initialize()).json()["result"]["capabilities"]
    assert set(caps) == {"tools", "logging", "resources", "prompts", "completions"}


async def test_ping_and_unknown_method(client: McpHttpClient) -> None:
    assert (await client.request("ping"))["result"] == {}
    error = (await client.request("nope/nothing"))["error"]
    assert error["code"] == -32601
    # server/discover belongs to the stateless revision only.
    assert (await client.request("server/discover"))["error"]["code"] == -32601


async def test_delete_ends_the_session(served: Served, client: McpHttpClient) -> None:
    response = await http_request(served.port, "DELETE", client.headers())
    assert response.status == 200
    assert served.server.sessions == 0
    response = await client.post({"jsonrpc": "2.0", "id": 9, "method": "ping"})
    assert response.status == 404
    assert response.json()["error"]["code"] == -32001


async def test_idle_sessions_expire(probe: Probe) -> None:
    async with serve_mcp(_registry(probe), session_idle_timeout=0.5) as served:
        client = McpHttpClient(served.port)
        await client.initialize()
        with trio.fail_after(15):
            while served.server.sessions:  # noqa: ASYNC110 (no event to wait on: expiry is a timer)
                await trio.sleep(0.2)
        response = await client.post({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert response.status == 404


# ---- HTTP-level errors ----


async def test_missing_and_unknown_session(served: Served, client: McpHttpClient) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
    response = await http_request(served.port, "POST", headers, ping)
    assert response.status == 400
    assert "Mcp-Session-Id" in response.json()["error"]["message"]
    response = await http_request(
        served.port, "POST", {**headers, "Mcp-Session-Id": "not-a-session"}, ping
    )
    assert response.status == 404
    for method in ("GET", "DELETE"):
        response = await http_request(
            served.port, method, {"Accept": "text/event-stream", "Mcp-Session-Id": "x"}
        )
        assert response.status == 404, method


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/json", 406),
        ("text/event-stream", 406),
        ("text/html", 406),
        ("application/json;q=0, text/event-stream", 406),
        ("", 406),
        ("*/*", 200),
        ("application/*, text/*", 200),
        ("Application/JSON; q=0.9, text/event-stream; q=0.5", 200),
    ],
)
async def test_accept_is_parsed(client: McpHttpClient, accept: str, status: int) -> None:
    response = await client.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, Accept=accept)
    assert response.status == status, response
    if status == 406:
        assert _error_code(response.body) == -32600


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json; charset=utf-8", 200),
        ("APPLICATION/JSON", 200),
        ("text/plain", 415),
        ("application/json; charset=latin-1", 415),
        ("application/jsonx", 415),
    ],
)
async def test_content_type_is_parsed(
    client: McpHttpClient, content_type: str, status: int
) -> None:
    response = await client.post(
        {"jsonrpc": "2.0", "id": 1, "method": "ping"}, Content_Type=content_type
    )
    assert response.status == status


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", -32700),
        (b"\xff\xfe", -32700),
        (b"", -32700),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', -32600),
        (b'"ping"', -32600),
        (b'{"id":1,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}', -32600),
        (b'{"jsonrpc":"2.0","id":1}', -32600),
    ],
)
async def test_malformed_bodies_get_400(client: McpHttpClient, body: bytes, code: int) -> None:
    response = await client.post(body)
    assert response.status == 400
    assert response.json()["jsonrpc"] == "2.0"
    assert _error_code(response.body) == code


async def test_initialize_without_version_is_400(served: Served) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"Content-Type": "application/json", "Accept": ACCEPT_BOTH}
    response = await http_request(served.port, "POST", headers, body)
    assert response.status == 400
    assert _error_code(response.body) == -32602


async def test_oversized_body_is_413(client: McpHttpClient) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 70_000}}
    response = await client.post(body)
    assert response.status == 413


async def test_unsupported_protocol_version_is_400(client: McpHttpClient) -> None:
    response = await client.post(
        {"jsonrpc": "2.0", "id": 1, "method": "ping"}, MCP_Protocol_Version="2024-01-01"
    )
    assert response.status == 400
    assert "2024-01-01" in response.json()["error"]["message"]
    # Absent: 2025-03-26 is assumed, which is served.
    headers = client.headers()
    del headers["MCP-Protocol-Version"]
    response = await http_request(
        client.port, "POST", headers, {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    )
    assert response.status == 200


async def test_other_methods_are_405(served: Served) -> None:
    for method in ("PUT", "PATCH"):
        response = await http_request(served.port, method)
        assert response.status == 405
        allow = {m.strip() for m in response.headers["allow"].split(",")}
        assert {"GET", "POST", "DELETE"} <= allow


async def test_host_and_origin_are_checked(served: Served, client: McpHttpClient) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for bad in (
        {"Host": "evil.example"},
        {"Host": "evil.example:80"},
        {"Origin": "http://evil.example"},
    ):
        response = await client.post(ping, **bad)
        assert response.status == 403, bad
    for good in (
        {"Host": "localhost:1234"},
        {"Host": "[::1]:80"},
        {"Origin": "http://localhost:3000"},
        {"Origin": "http://127.0.0.1"},
    ):
        response = await client.post(ping, **good)
        assert response.status == 200, good


async def test_configured_hosts_and_origins(probe: Probe) -> None:
    async with serve_mcp(
        _registry(probe),
        allowed_hosts=["mcp.example"],
        allowed_origins=["https://app.example"],
    ) as served:
        client = McpHttpClient(served.port)
        client.extra_headers = {"Host": "mcp.example:7421", "Origin": "https://app.example"}
        response = await client.initialize()
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        bad = await client.post(
            {"jsonrpc": "2.0", "id": 3, "method": "ping"}, Origin="https://x.example"
        )
        assert bad.status == 403


async def test_cors_preflight(served: Served) -> None:
    response = await http_request(
        served.port,
        "OPTIONS",
        {
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "mcp-session-id, authorization",
        },
    )
    assert response.status == 204
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "mcp-protocol-version", "mcp-session-id", "last-event-id"} <= allowed
    assert "mcp-session-id" in response.headers["access-control-expose-headers"].lower()
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    response = await http_request(served.port, "OPTIONS", {"Origin": "http://evil.example"})
    assert response.status == 403


async def test_notifications_and_responses_get_202(client: McpHttpClient) -> None:
    response = await client.notify("notifications/roots/list_changed")
    assert (response.status, response.body) == (202, b"")
    response = await client.post({"jsonrpc": "2.0", "id": "srv-999", "result": {}})
    assert (response.status, response.body) == (202, b"")


# ---- SSE, resumption, cancellation ----


async def test_a_quick_tool_call_is_answered_with_json(client: McpHttpClient) -> None:
    # Done within the JSON window and nothing sent on its stream: one JSON response.
    body = client.call_body("echo", {"text": "hi"})
    response = await http_request(client.port, "POST", client.headers(), body)
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["mcp-session-id"] == client.session_id
    message = json.loads(response.body)
    assert message["id"] == body["id"]
    assert message["result"]["content"] == [{"type": "text", "text": "echo hi"}]


async def test_tool_call_streams_sse_with_a_priming_event(probe: Probe) -> None:
    # A call still running when the JSON window ends (here: a window of 0) gets SSE.
    async with serve_mcp(_registry(probe), json_window=0.0) as served:
        client = McpHttpClient(served.port)
        await client.initialize()
        await _sse_tool_call(client)


async def test_a_call_that_outlasts_the_json_window_gets_sse(probe: Probe) -> None:
    async with serve_mcp(_registry(probe), json_window=0.05) as served:
        client = McpHttpClient(served.port)
        await client.initialize()
        body = client.call_body("gated", {})
        async with open_request(client.port, "POST", client.headers(), body) as reader:
            assert reader.headers["content-type"].startswith("text/event-stream")
            priming = await reader.next()
            assert priming is not None
            assert priming.data == ""
            probe.gate.set()
            event = await reader.next()
            assert event is not None
            assert event.json()["id"] == body["id"]
            assert await reader.next() is None


async def _sse_tool_call(client: McpHttpClient) -> None:
    body = client.call_body("echo", {"text": "hi"})
    async with open_request(client.port, "POST", client.headers(), body) as reader:
        assert reader.status == 200
        assert reader.headers["content-type"].startswith("text/event-stream")
        assert reader.headers["x-accel-buffering"] == "no"
        assert reader.headers["mcp-session-id"] == client.session_id
        priming = await reader.next()
        assert priming is not None
        assert priming.id
        assert priming.data == ""
        assert priming.retry is not None
        event = await reader.next()
        assert event is not None
        assert event.id
        assert event.id != priming.id
        message = event.json()
        assert message["id"] == body["id"]
        assert message["result"]["content"] == [{"type": "text", "text": "echo hi"}]
        assert await reader.next() is None  # the stream ends after the response


async def test_disconnect_does_not_cancel_and_resumption_replays_that_stream(
    client: McpHttpClient, probe: Probe
) -> None:
    body = client.call_body("gated", {}, progressToken="tok")
    async with open_request(client.port, "POST", client.headers(), body) as reader:
        priming = await reader.next()
        progress = await reader.next()
        assert priming is not None
        assert progress is not None
        assert progress.json()["method"] == "notifications/progress"
    # The client went away mid-call. Another stream's traffic must not leak into the replay.
    assert (await client.request("tools/call", {"name": "echo", "arguments": {"text": "x"}}))[
        "result"
    ]
    await trio.sleep(0.3)
    assert not probe.cancelled.is_set()
    assert not probe.finished.is_set()
    probe.gate.set()
    with trio.fail_after(10):
        await probe.finished.wait()
    headers = client.headers(Accept="text/event-stream", Last_Event_ID=progress.id or "")
    async with open_request(client.port, "GET", headers) as resumed:
        assert resumed.status == 200
        messages = await resumed.messages()
    assert [m.get("method") for m in messages] == ["notifications/progress", None]
    assert messages[0]["params"]["progress"] == 2
    assert messages[1]["id"] == body["id"]
    assert messages[1]["result"]["content"][0]["text"] == "gated done"
    # From the priming event: everything of that stream again.
    headers = client.headers(Accept="text/event-stream", Last_Event_ID=priming.id or "")
    async with open_request(client.port, "GET", headers) as resumed:
        assert len(await resumed.messages()) == 3


async def test_unknown_last_event_id_is_400(client: McpHttpClient) -> None:
    for value in ("nonsense", "abc.1"):
        headers = client.headers(Accept="text/event-stream", Last_Event_ID=value)
        response = await http_request(client.port, "GET", headers)
        assert response.status == 400


async def test_cancelled_notification_cancels_the_handler(
    client: McpHttpClient, probe: Probe, served: Served
) -> None:
    body = client.call_body("gated", {})
    async with open_request(client.port, "POST", client.headers(), body) as reader:
        assert (await reader.next()) is not None  # priming
        with trio.fail_after(10):
            await probe.started.wait()
        response = await client.notify(
            "notifications/cancelled", {"requestId": body["id"], "reason": "user"}
        )
        assert response.status == 202
        with trio.fail_after(10):
            await probe.cancelled.wait()
        # No response is sent for a cancelled request; the stream just ends.
        assert await reader.messages() == []
    assert not probe.finished.is_set()
    assert served.server.calls == 1


async def test_progress_and_logging_notifications(client: McpHttpClient) -> None:
    assert (await client.request("logging/setLevel", {"level": "warning"}))["result"] == {}
    body = client.call_body("chatty", {}, progressToken=7)
    async with open_request(client.port, "POST", client.headers(), body) as reader:
        messages = await reader.messages()
    logs = [m["params"] for m in messages if m.get("method") == "notifications/message"]
    assert logs == [
        {"level": "warning", "data": {"said": "warning"}, "logger": "chatty"},
        {"level": "error", "data": {"said": "error"}, "logger": "chatty"},
    ]
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    assert [p["progress"] for p in progress] == [0, 1, 2]
    assert {p["progressToken"] for p in progress} == {7}
    assert messages[-1]["result"]["content"][0]["text"] == "chatty done"
    bad = await client.request("logging/setLevel", {"level": "loud"})
    assert bad["error"]["code"] == -32602


async def test_without_a_progress_token_no_progress_is_sent(client: McpHttpClient) -> None:
    body = client.call_body("chatty", {})
    async with open_request(client.port, "POST", client.headers(), body) as reader:
        messages = await reader.messages()
    assert not [m for m in messages if m.get("method") == "notifications/progress"]


async def test_elicitation_round_trip(client: McpHttpClient, probe: Probe) -> None:
    body = client.call_body("ask", {})
    async with open_request(client.port, "POST", client.headers(), body) as reader:
        await reader.next()  # priming
        event = await reader.next()
        assert event is not None
        request = event.json()
        assert request["method"] == "elicitation/create"
        answer = {"jsonrpc": "2.0", "id": request["id"], "result": {"action": "decline"}}
        assert (await client.post(answer)).status == 202
        messages = await reader.messages()
    assert messages[-1]["result"]["content"][0]["text"] == "got decline"
    assert probe.elicited == [{"action": "decline"}]


async def test_elicitation_needs_the_client_capability(served: Served) -> None:
    client = McpHttpClient(served.port)
    await client.initialize(capabilities={})
    result = (await client.request("tools/call", {"name": "ask", "arguments": {}}))["result"]
    assert result["isError"] is True
    assert "elicitation" in result["content"][0]["text"]


async def test_registry_swap_notifies_the_get_stream(
    served: Served, client: McpHttpClient, probe: Probe
) -> None:
    headers = client.headers(Accept="text/event-stream")
    async with open_request(served.port, "GET", headers) as stream:
        assert stream.status == 200
        priming = await stream.next()
        assert priming is not None
        assert priming.data == ""
        served.server.set_registry(_registry(probe, extra_tools=1))
        event = await stream.next()
        assert event is not None
        assert event.json() == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    tools = (await client.request("tools/list"))["result"]["tools"]
    assert "extra_0" in {t["name"] for t in tools}


# ---- tools ----


async def test_tools_list_carries_all_four_hints(client: McpHttpClient) -> None:
    tools = {t["name"]: t for t in (await client.request("tools/list"))["result"]["tools"]}
    assert tools["echo"]["annotations"] == {
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
        "title": "Echo",
    }
    assert tools["writer"]["annotations"]["destructiveHint"] is True
    assert tools["structured"]["outputSchema"]["required"] == ["total"]


async def test_pagination_with_opaque_cursors(probe: Probe) -> None:
    async with serve_mcp(_registry(probe, extra_tools=5), page_size=4) as served:
        client = McpHttpClient(served.port)
        await client.initialize()
        names: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {} if cursor is None else {"cursor": cursor}
            result = (await client.request("tools/list", params))["result"]
            names += [t["name"] for t in result["tools"]]
            pages += 1
            cursor = result.get("nextCursor")
            if cursor is None:
                break
            assert isinstance(cursor, str)
            assert len(result["tools"]) == 4
        assert pages == 4
        assert len(names) == len(set(names)) == 14
        for bad in ("garbage", "", 5):
            error = (await client.request("tools/list", {"cursor": bad}))["error"]
            assert error["code"] == -32602
        first = (await client.request("tools/list"))["result"]["nextCursor"]
        served.server.set_registry(_registry(probe))
        error = (await client.request("tools/list", {"cursor": first}))["error"]
        assert error["code"] == -32602
        assert "stale" in error["message"]


async def test_unknown_tool_is_32602(client: McpHttpClient) -> None:
    error = (await client.request("tools/call", {"name": "nope", "arguments": {}}))["error"]
    assert error["code"] == -32602
    assert "nope" in error["message"]


@pytest.mark.parametrize(
    ("arguments", "field", "expected"),
    [
        ({"count": "three"}, "count", '"type":"integer"'),
        ({"count": -1}, "count", '"minimum":0'),
        ({}, "count", '"required":["count"]'),
        ({"count": 1, "opts": {"mode": "warp"}}, "opts.mode", '"enum":["fast","slow"]'),
        ({"count": 1, "zzz": 1}, "(the arguments object)", '"additionalProperties":false'),
    ],
)
async def test_invalid_arguments_are_an_error_result_naming_the_field(
    client: McpHttpClient, arguments: dict[str, Any], field: str, expected: str
) -> None:
    result = (await client.request("tools/call", {"name": "typed", "arguments": arguments}))[
        "result"
    ]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert f"'{field}'" in text
    assert expected in text


async def test_tool_failures_are_results(client: McpHttpClient) -> None:
    result = (await client.request("tools/call", {"name": "failing"}))["result"]
    assert result["isError"] is True
    assert "RuntimeError: boom" in result["content"][0]["text"]
    result = (await client.request("tools/call", {"name": "refusing"}))["result"]
    assert result == {"content": [{"type": "text", "text": "no such file: /nope"}], "isError": True}
    # The server keeps serving.
    assert (await client.request("ping"))["result"] == {}


async def test_structured_output_is_checked_and_copied_as_text(client: McpHttpClient) -> None:
    result = (await client.request("tools/call", {"name": "structured", "arguments": {}}))["result"]
    assert result["structuredContent"] == {"total": 3}
    assert json.loads(result["content"][0]["text"]) == {"total": 3}
    assert "isError" not in result
    result = (
        await client.request("tools/call", {"name": "structured", "arguments": {"bad": True}})
    )["result"]
    assert result["isError"] is True
    assert "'total'" in result["content"][0]["text"]


# ---- resources, prompts, completion ----


async def test_resources_prompts_and_completion() -> None:
    registry = Registry()

    async def read_text(ctx: ToolContext) -> str:
        return "hello"

    async def read_blob(ctx: ToolContext) -> bytes:
        return b"\x00\x01"

    async def read_item(ctx: ToolContext, params: dict[str, str]) -> str:
        return f"item {params['id']} of {params['kind']}"

    async def complete(argument: str, prefix: str) -> list[str]:
        return [f"{prefix}{n}" for n in range(150)]

    async def render(ctx: ToolContext, args: dict[str, str]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": {"type": "text", "text": f"hi {args['who']}"}}]

    registry.add_resource(Resource("test://text", "text", read_text, description="T"))
    registry.add_resource(Resource("test://blob", "blob", read_blob, mime_type="image/png"))
    registry.add_resource(
        ResourceTemplate("test://{kind}/items/{id}", "items", read_item, complete=complete)
    )
    registry.add_prompt(
        Prompt(
            "greet", render, description="Greets", arguments=(PromptArgument("who", required=True),)
        )
    )
    async with serve_mcp(registry) as served:
        client = McpHttpClient(served.port)
        await client.initialize()
        listed = (await client.request("resources/list"))["result"]["resources"]
        assert [r["uri"] for r in listed] == ["test://text", "test://blob"]
        templates = (await client.request("resources/templates/list"))["result"]
        assert templates["resourceTemplates"][0]["uriTemplate"] == "test://{kind}/items/{id}"
        read = (await client.request("resources/read", {"uri": "test://blob"}))["result"]
        assert read["contents"] == [{"uri": "test://blob", "mimeType": "image/png", "blob": "AAE="}]
        read = (await client.request("resources/read", {"uri": "test://a/items/42"}))["result"]
        assert read["contents"][0]["text"] == "item 42 of a"
        error = (await client.request("resources/read", {"uri": "test://missing"}))["error"]
        assert error["code"] == -32002
        prompts = (await client.request("prompts/list"))["result"]["prompts"]
        assert prompts == [
            {
                "name": "greet",
                "description": "Greets",
                "arguments": [{"name": "who", "required": True}],
            }
        ]
        got = await client.request("prompts/get", {"name": "greet", "arguments": {"who": "bo"}})
        assert got["result"]["messages"][0]["content"]["text"] == "hi bo"
        missing = (await client.request("prompts/get", {"name": "greet"}))["error"]
        assert missing["code"] == -32602
        assert "who" in missing["message"]
        completion = (
            await client.request(
                "completion/complete",
                {
                    "ref": {"type": "ref/resource", "uri": "test://{kind}/items/{id}"},
                    "argument": {"name": "id", "value": "x"},
                },
            )
        )["result"]["completion"]
        assert len(completion["values"]) == 100
        assert completion["total"] == 150
        assert completion["hasMore"] is True
        assert (await client.request("resources/subscribe", {"uri": "test://text"}))["result"] == {}
        get_headers = client.headers(Accept="text/event-stream")
        async with open_request(served.port, "GET", get_headers) as stream:
            await stream.next()  # priming
            served.server.resource_updated("test://blob")  # not subscribed: nothing
            served.server.resource_updated("test://text")
            event = await stream.next()
            assert event is not None
            assert event.json()["params"] == {"uri": "test://text"}
        await client.request("resources/unsubscribe", {"uri": "test://text"})
        served.server.resource_updated("test://text")
        async with open_request(served.port, "GET", get_headers) as stream:
            await stream.next()  # priming; the update above was not queued
            served.server.set_registry(registry)
            event = await stream.next()
            assert event is not None
            assert event.json()["method"] == "notifications/tools/list_changed"


# ---- authentication and scopes ----


async def _authenticate(request: Request) -> Caller:
    token = (request.headers.get("authorization") or "").removeprefix("Bearer ")
    scopes = {"reader": {"mcp:tools"}, "writer": {"mcp:tools:write"}, "none": set()}
    if token not in scopes:
        raise HttpError(
            401,
            "missing or invalid token",
            headers=[("WWW-Authenticate", 'Bearer scope="mcp:tools"')],
        )
    return Caller(subject=token, scopes=frozenset(scopes[token]))


async def test_auth_scopes_and_session_check_order(probe: Probe) -> None:
    async with serve_mcp(
        _registry(probe),
        authenticate=_authenticate,
        resource_metadata_url="http://127.0.0.1/.well-known/oauth-protected-resource/mcp",
    ) as served:
        anonymous = McpHttpClient(served.port)
        response = await anonymous.post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {}},
            }
        )
        assert response.status == 401
        assert "www-authenticate" in response.headers
        # An unknown session is 404 even without credentials: re-initialize first.
        anonymous.session_id = "unknown"
        assert (await anonymous.post({"jsonrpc": "2.0", "id": 2, "method": "ping"})).status == 404

        reader = McpHttpClient(served.port)
        reader.extra_headers = {"Authorization": "Bearer reader"}
        await reader.initialize()
        assert "result" in await reader.request("tools/list")
        assert "result" in await reader.request(
            "tools/call", {"name": "echo", "arguments": {"text": "a"}}
        )
        denied = await reader.post(reader.call_body("writer", {}))
        assert denied.status == 403
        challenge = denied.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="mcp:tools:write"' in challenge
        assert 'resource_metadata="http://127.0.0.1/.well-known/' in challenge

        writer = McpHttpClient(served.port)
        writer.extra_headers = {"Authorization": "Bearer writer"}
        await writer.initialize()
        assert (await writer.request("tools/call", {"name": "writer"}))["result"]["content"]
        assert "result" in await writer.request("tools/list")

        nobody = McpHttpClient(served.port)
        nobody.extra_headers = {"Authorization": "Bearer none"}
        await nobody.initialize()
        denied = await nobody.post({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
        assert denied.status == 403
        assert 'scope="mcp:tools"' in denied.headers["www-authenticate"]

        # A session belongs to its subject: another token cannot use it.
        writer.extra_headers = {"Authorization": "Bearer reader"}
        assert (await writer.post({"jsonrpc": "2.0", "id": 6, "method": "ping"})).status == 404


# ---- the stateless 2026-07-28 revision ----

MODERN = "2026-07-28"


def _modern(method: str, params: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    envelope = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
        **meta,
    }
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {**(params or {}), "_meta": envelope},
    }


MODERN_HEADERS = {
    "Content-Type": "application/json",
    "Accept": ACCEPT_BOTH,
    "MCP-Protocol-Version": MODERN,
}


async def test_stateless_discover_and_call(served: Served) -> None:
    response = await http_request(served.port, "POST", MODERN_HEADERS, _modern("server/discover"))
    assert response.status == 200
    assert "mcp-session-id" not in response.headers
    result = response.json()["result"]
    assert MODERN in result["supportedVersions"]
    assert "2025-11-25" in result["supportedVersions"]
    assert result["resultType"] == "complete"
    assert result["ttlMs"] == 0
    assert result["instructions"] == "be nice"
    response = await http_request(served.port, "POST", MODERN_HEADERS, _modern("tools/list"))
    assert response.json()["result"]["cacheScope"] == "private"
    body = _modern("tools/call", {"name": "chatty", "arguments": {}}, progressToken="p")
    async with open_request(served.port, "POST", MODERN_HEADERS, body) as reader:
        messages = await reader.messages()
    assert [
        m["params"]["progress"] for m in messages if m.get("method") == "notifications/progress"
    ] == [0, 1, 2]
    # Logs only when the request opted in.
    assert not [m for m in messages if m.get("method") == "notifications/message"]
    assert messages[-1]["result"]["resultType"] == "complete"


async def test_stateless_errors(served: Served) -> None:
    bad_meta = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = await http_request(served.port, "POST", MODERN_HEADERS, bad_meta)
    assert (response.status, _error_code(response.body)) == (400, -32602)
    mismatch = _modern("tools/list")
    mismatch["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    response = await http_request(served.port, "POST", MODERN_HEADERS, mismatch)
    assert (response.status, _error_code(response.body)) == (400, -32020)
    response = await http_request(
        served.port, "POST", {**MODERN_HEADERS, "Mcp-Method": "tools/call"}, _modern("tools/list")
    )
    assert (response.status, _error_code(response.body)) == (400, -32020)
    response = await http_request(served.port, "POST", MODERN_HEADERS, _modern("logging/setLevel"))
    assert (response.status, _error_code(response.body)) == (404, -32601)
    response = await http_request(
        served.port, "GET", {"Accept": "text/event-stream", "MCP-Protocol-Version": MODERN}
    )
    assert response.status == 405
    future = _modern("server/discover")
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    response = await http_request(
        served.port, "POST", {**MODERN_HEADERS, "MCP-Protocol-Version": "2099-01-01"}, future
    )
    assert (response.status, _error_code(response.body)) == (400, -32022)
    assert MODERN in response.json()["error"]["data"]["supported"]


def test_session_ids_are_visible_ascii() -> None:
    from tunneld.mcp._session import SessionStore

    async def make() -> str:
        store = SessionStore(idle_timeout=10)
        session = store.create(
            owner=("", None),
            protocol_version="2025-11-25",
            client_capabilities={},
            client_info={},
            capabilities={},
        )
        assert session is not None
        return session.id

    ids = {trio.run(make) for _ in range(20)}
    assert len(ids) == 20
    visible = set(string.printable[:94])
    assert all(set(i) <= visible for i in ids)


async def test_session_cap_evicts_the_least_recently_used_idle_session() -> None:
    from tunneld.mcp._session import SessionStore

    store = SessionStore(idle_timeout=3600, max_sessions=2)

    def make() -> Any:
        return store.create(
            owner=("", None),
            protocol_version="2025-11-25",
            client_capabilities={},
            client_info={},
            capabilities={},
        )

    first, second = make(), make()
    await trio.sleep(0.01)
    assert store.get(first.id) is first  # first is now the more recently used
    third = make()
    assert third is not None
    assert store.get(second.id) is None
    # Sessions with work in flight are never evicted: then there is no room.
    first.inflight[1] = trio.CancelScope()
    third.inflight[1] = trio.CancelScope()
    assert make() is None


async def test_stateless_disconnect_cancels(served: Served, probe: Probe) -> None:
    # 2026-07-28 has no notifications/cancelled: closing the response is the cancel.
    body = _modern("tools/call", {"name": "gated", "arguments": {}}, progressToken="g")
    async with open_request(served.port, "POST", MODERN_HEADERS, body) as reader:
        event = await reader.next()
        assert event is not None
        assert event.json()["method"] == "notifications/progress"
    with trio.fail_after(10):
        await probe.cancelled.wait()
    assert not probe.finished.is_set()


async def test_requests_running_on_one_session_are_bounded(
    client: McpHttpClient, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tunneld.mcp._transport.MAX_INFLIGHT", 2)
    async with (
        open_request(client.port, "POST", client.headers(), client.call_body("gated", {})) as a,
        open_request(client.port, "POST", client.headers(), client.call_body("gated", {})) as b,
    ):
        assert (await a.next()) is not None  # priming: both calls are running
        assert (await b.next()) is not None
        refused = await client.post(client.call_body("echo", {"text": "x"}))
        assert refused.status == 429
        assert refused.json()["error"]["code"] == -32000
        assert "at most 2" in refused.json()["error"]["message"]
        probe.gate.set()
        assert len(await a.messages()) >= 1
        assert len(await b.messages()) >= 1
    # Once they finish, the session takes requests again.
    echoed = await client.request("tools/call", {"name": "echo", "arguments": {"text": "y"}})
    assert echoed["result"]["content"][0]["text"] == "echo y"


async def test_resource_subscriptions_per_session_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tunneld.mcp._methods.MAX_SUBSCRIPTIONS", 2)
    registry = Registry()

    async def read(ctx: ToolContext) -> str:
        return "text"

    for n in range(3):
        registry.add_resource(Resource(f"test://r{n}", f"r{n}", read))
    async with serve_mcp(registry) as served:
        client = McpHttpClient(served.port)
        await client.initialize()
        for n in range(2):
            assert (await client.request("resources/subscribe", {"uri": f"test://r{n}"}))[
                "result"
            ] == {}
        # Subscribing again to one we hold is fine; a third URI is refused.
        assert (await client.request("resources/subscribe", {"uri": "test://r0"}))["result"] == {}
        refused = await client.request("resources/subscribe", {"uri": "test://r2"})
        assert refused["error"]["code"] == -32602
        assert "At most 2" in refused["error"]["message"]
        await client.request("resources/unsubscribe", {"uri": "test://r0"})
        assert (await client.request("resources/subscribe", {"uri": "test://r2"}))["result"] == {}
