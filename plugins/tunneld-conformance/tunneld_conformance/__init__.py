"""MCP conformance fixtures: what ``@modelcontextprotocol/conformance`` server scenarios call.

Each tool, resource and prompt below is named and shaped as the suite's scenario
describes it (version 0.1.16). Opt-in: it serves test data only.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import trio

from tunneld.hookspecs import hookimpl
from tunneld.mcp import (
    READ_ONLY,
    Prompt,
    PromptArgument,
    Resource,
    ResourceTemplate,
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
)

__all__ = ["ENABLED_BY_DEFAULT", "register_prompts", "register_resources", "register_tools"]

ENABLED_BY_DEFAULT: Final = False

# A 1x1 red PNG.
PNG_BASE64: Final = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0g"
    "AAAABJRU5ErkJggg=="
)
PNG_BYTES: Final = base64.b64decode(PNG_BASE64)

_NO_ARGS: Final = {"type": "object", "properties": {}}


def _wav_base64() -> str:
    """A real 10 ms, 8 kHz mono silent WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(b"\x80" * 80)
    return base64.b64encode(buffer.getvalue()).decode()


def _tool(
    name: str,
    description: str,
    handler: Callable[[ToolContext, dict[str, Any]], Any],
    schema: Mapping[str, Any] = _NO_ARGS,
) -> Tool:
    return Tool(
        name=name,
        description=description,
        input_schema=schema,
        handler=handler,
        annotations=READ_ONLY,
    )


async def _simple_text(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return ToolResult.text("This is a simple text response for testing.")


async def _image(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return ToolResult(content=({"type": "image", "data": PNG_BASE64, "mimeType": "image/png"},))


async def _audio(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return ToolResult(content=({"type": "audio", "data": _wav_base64(), "mimeType": "audio/wav"},))


async def _embedded(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return ToolResult(
        content=(
            {
                "type": "resource",
                "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content.",
                },
            },
        )
    )


async def _mixed(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    return ToolResult(
        content=(
            {"type": "text", "text": "Multiple content types test:"},
            {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"},
            {
                "type": "resource",
                "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": json.dumps({"test": "data", "value": 123}),
                },
            },
        )
    )


async def _logging(ctx: ToolContext, args: dict[str, Any]) -> str:
    await ctx.log("info", "Tool execution started")
    await trio.sleep(0.05)
    await ctx.log("info", "Tool processing data")
    await trio.sleep(0.05)
    await ctx.log("info", "Tool execution completed")
    return "Tool with logging executed successfully"


async def _error(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
    raise ToolError("This tool intentionally returns an error for testing")


async def _progress(ctx: ToolContext, args: dict[str, Any]) -> str:
    await ctx.progress(0, 100)
    await trio.sleep(0.05)
    await ctx.progress(50, 100)
    await trio.sleep(0.05)
    await ctx.progress(100, 100)
    return "Tool with progress executed successfully"


async def _sampling(ctx: ToolContext, args: dict[str, Any]) -> str:
    answer = await ctx.channel.request(
        "sampling/createMessage",
        {
            "messages": [{"role": "user", "content": {"type": "text", "text": args["prompt"]}}],
            "maxTokens": 100,
        },
    )
    content = answer.get("content")
    text = content.get("text") if isinstance(content, Mapping) else None
    return f"LLM response: {text if text is not None else json.dumps(content)}"


async def _elicit(ctx: ToolContext, message: str, schema: Mapping[str, Any]) -> Mapping[str, Any]:
    return await ctx.channel.request(
        "elicitation/create", {"message": message, "requestedSchema": schema}
    )


async def _elicitation(ctx: ToolContext, args: dict[str, Any]) -> str:
    answer = await _elicit(
        ctx,
        args["message"],
        {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        },
    )
    return (
        f"User response: action={answer.get('action')},"
        f" content={json.dumps(answer.get('content', {}))}"
    )


async def _elicitation_defaults(ctx: ToolContext, args: dict[str, Any]) -> str:
    answer = await _elicit(
        ctx,
        "Please review and update the form fields with defaults",
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "User name", "default": "John Doe"},
                "age": {"type": "integer", "description": "User age", "default": 30},
                "score": {"type": "number", "description": "User score", "default": 95.5},
                "status": {
                    "type": "string",
                    "description": "User status",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {"type": "boolean", "description": "Verified", "default": True},
            },
        },
    )
    return (
        f"Elicitation completed: action={answer.get('action')},"
        f" content={json.dumps(answer.get('content', {}))}"
    )


async def _elicitation_enums(ctx: ToolContext, args: dict[str, Any]) -> str:
    answer = await _elicit(
        ctx,
        "Please select options from the enum fields",
        {
            "type": "object",
            "properties": {
                "untitledSingle": {
                    "type": "string",
                    "description": "Untitled single-select",
                    "enum": ["option1", "option2", "option3"],
                },
                "titledSingle": {
                    "type": "string",
                    "description": "Titled single-select",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "description": "Legacy titled enum",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "description": "Untitled multi-select",
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "description": "Titled multi-select",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ]
                    },
                },
            },
        },
    )
    return (
        f"Elicitation completed: action={answer.get('action')},"
        f" content={json.dumps(answer.get('content', {}))}"
    )


async def _json_schema_tool(ctx: ToolContext, args: dict[str, Any]) -> str:
    return f"Received: {json.dumps(args, sort_keys=True)}"


async def _reconnection(ctx: ToolContext, args: dict[str, Any]) -> str:
    # SEP-1699 polling: end the HTTP response mid-call; the client comes back with
    # Last-Event-ID and gets the result on the resumed stream.
    close = getattr(ctx.channel, "close_stream", None)
    await trio.sleep(0.05)
    if close is not None:
        await close()
    await trio.sleep(0.2)
    return "Reconnection test completed"


JSON_SCHEMA_2020_12: Final = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


def _tools() -> Sequence[Tool]:
    def needs(name: str, description: str) -> Mapping[str, Any]:
        return {
            "type": "object",
            "properties": {name: {"type": "string", "description": description}},
            "required": [name],
        }

    return (
        _tool("test_simple_text", "Returns simple text content", _simple_text),
        _tool("test_image_content", "Returns a 1x1 PNG image", _image),
        _tool("test_audio_content", "Returns a short WAV audio clip", _audio),
        _tool("test_embedded_resource", "Returns an embedded resource", _embedded),
        _tool("test_multiple_content_types", "Returns text, image and resource", _mixed),
        _tool("test_tool_with_logging", "Sends three log messages while running", _logging),
        _tool("test_error_handling", "Always fails with an error result", _error),
        _tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100", _progress),
        _tool(
            "test_sampling",
            "Asks the client's LLM to answer a prompt",
            _sampling,
            needs("prompt", "The prompt to send to the LLM"),
        ),
        _tool(
            "test_elicitation",
            "Asks the user for a username and e-mail address",
            _elicitation,
            needs("message", "The message to show the user"),
        ),
        _tool(
            "test_elicitation_sep1034_defaults",
            "Elicitation with defaults for every primitive type (SEP-1034)",
            _elicitation_defaults,
        ),
        _tool(
            "test_elicitation_sep1330_enums",
            "Elicitation with the five enum variants (SEP-1330)",
            _elicitation_enums,
        ),
        _tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            _json_schema_tool,
            JSON_SCHEMA_2020_12,
        ),
        _tool(
            "test_reconnection",
            "Closes its SSE stream mid-call to test client reconnection (SEP-1699)",
            _reconnection,
        ),
    )


@hookimpl
def register_tools(register: Callable[[Tool], None], config: Mapping[str, Any]) -> None:
    """Every tool the conformance server scenarios call."""
    for tool in _tools():
        register(tool)


async def _static_text(ctx: ToolContext) -> str:
    return "This is the content of the static text resource."


async def _static_binary(ctx: ToolContext) -> bytes:
    return PNG_BYTES


async def _watched(ctx: ToolContext) -> str:
    return "Watched resource content"


async def _template(ctx: ToolContext, params: dict[str, str]) -> str:
    item = params["id"]
    return json.dumps({"id": item, "templateTest": True, "data": f"Data for ID: {item}"})


async def _complete_id(argument: str, prefix: str) -> list[str]:
    return [v for v in ("123", "456", "789") if v.startswith(prefix)]


@hookimpl
def register_resources(
    register: Callable[[Resource | ResourceTemplate], None], config: Mapping[str, Any]
) -> None:
    """Static text and binary resources, a subscribable one, and one template."""
    register(
        Resource(
            uri="test://static-text",
            name="static-text",
            description="A static text resource for testing",
            read=_static_text,
        )
    )
    register(
        Resource(
            uri="test://static-binary",
            name="static-binary",
            description="A static binary resource (1x1 PNG) for testing",
            read=_static_binary,
            mime_type="image/png",
        )
    )
    register(
        Resource(
            uri="test://watched-resource",
            name="watched-resource",
            description="A resource clients may subscribe to",
            read=_watched,
        )
    )
    register(
        ResourceTemplate(
            uri_template="test://template/{id}/data",
            name="template-data",
            description="Data for an id, substituted into the URI",
            read=_template,
            mime_type="application/json",
            complete=_complete_id,
        )
    )


async def _simple_prompt(ctx: ToolContext, args: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": {"type": "text", "text": "This is a simple prompt for testing."},
        }
    ]


async def _prompt_with_args(ctx: ToolContext, args: dict[str, str]) -> list[dict[str, Any]]:
    text = f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"
    return [{"role": "user", "content": {"type": "text", "text": text}}]


async def _complete_args(argument: str, prefix: str) -> list[str]:
    choices = {"arg1": ["paris", "park", "party"], "arg2": ["hello", "help", "world"]}
    return [v for v in choices.get(argument, []) if v.startswith(prefix)]


async def _prompt_with_resource(ctx: ToolContext, args: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": {
                "type": "resource",
                "resource": {
                    "uri": args["resourceUri"],
                    "mimeType": "text/plain",
                    "text": "Embedded resource content for testing.",
                },
            },
        },
        {
            "role": "user",
            "content": {"type": "text", "text": "Please process the embedded resource above."},
        },
    ]


async def _prompt_with_image(ctx: ToolContext, args: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": {"type": "image", "data": PNG_BASE64, "mimeType": "image/png"},
        },
        {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}},
    ]


@hookimpl
def register_prompts(register: Callable[[Prompt], None], config: Mapping[str, Any]) -> None:
    """The four prompts of the prompts scenarios."""
    register(
        Prompt(
            name="test_simple_prompt",
            description="A simple prompt without arguments",
            render=_simple_prompt,
        )
    )
    register(
        Prompt(
            name="test_prompt_with_arguments",
            description="A prompt with two required arguments",
            render=_prompt_with_args,
            arguments=(
                PromptArgument("arg1", "First test argument", required=True),
                PromptArgument("arg2", "Second test argument", required=True),
            ),
            complete=_complete_args,
        )
    )
    register(
        Prompt(
            name="test_prompt_with_embedded_resource",
            description="A prompt embedding a resource",
            render=_prompt_with_resource,
            arguments=(PromptArgument("resourceUri", "URI of the resource to embed", True),),
        )
    )
    register(
        Prompt(
            name="test_prompt_with_image",
            description="A prompt with an image",
            render=_prompt_with_image,
        )
    )
