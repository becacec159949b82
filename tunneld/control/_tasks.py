"""Task reports on the control plane: validation and the ``/api/v1/tasks`` routes.

An AI agent (through the ``report_task`` MCP tool, or anything holding a token) says
what its task is doing: one of ``working`` / ``complete`` / ``idle`` / ``failure``,
a one-line summary of at most 160 characters and optionally an http(s) link.

* ``POST /api/v1/tasks`` — ``{"state", "summary", "link"?, "agent"?}`` with a bearer
  token (client or agent token). ``agent`` names whose task it is; an agent token
  may only report for its own agent and defaults to it, a client token must name one.
  The reporter (user, token id, the token's agent) comes from the token, never from
  the body. ``201 {"task": {...}}``; every validation error is a 400 whose message
  names the field.
* ``GET /api/v1/tasks?limit=N&agent=NAME&state=STATE`` — the newest reports the
  token's user may see (its own, and those about agents granted to it), newest first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from tunneld.control._coordinator import Coordinator, Principal
from tunneld.control._records import (
    MAX_LIST_LIMIT,
    TASK_STATES,
    NotFoundError,
    Store,
    TaskReport,
    TaskState,
)
from tunneld.http import HttpError, Request, Response
from tunneld.log import get_logger
from tunneld.proto.coord import validate_name

__all__ = [
    "MAX_LINK_LENGTH",
    "MAX_SUMMARY_LENGTH",
    "TASK_STATES",
    "TaskApi",
    "TaskInput",
    "TaskValidationError",
    "task_json",
    "validate_link",
    "validate_task",
]

log = get_logger(__name__)

MAX_SUMMARY_LENGTH: Final = 160
MAX_LINK_LENGTH: Final = 2048
DEFAULT_LIST_LIMIT: Final = 50
_FIELDS: Final = frozenset({"state", "summary", "link", "agent"})
_UNAUTHORIZED_HEADERS: Final = [("WWW-Authenticate", 'Bearer realm="tunneld"')]


class TaskValidationError(ValueError):
    """A report that breaks a rule; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class TaskInput:
    """A validated report body (see :func:`validate_task`)."""

    state: TaskState
    summary: str
    link: str | None
    agent: str | None


def _has_control_characters(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def validate_link(link: str) -> str:
    """``link`` if it is an absolute http(s) URL with a host, else TaskValidationError.

    Other schemes (``javascript:``, ``data:``, ``file:``) are refused: the dashboard
    renders links as anchors.
    """
    if len(link) > MAX_LINK_LENGTH:
        raise TaskValidationError("link", f"longer than {MAX_LINK_LENGTH} characters")
    if _has_control_characters(link) or any(c.isspace() for c in link):
        raise TaskValidationError("link", "must not contain spaces or control characters")
    try:
        parts = urlsplit(link)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise TaskValidationError("link", f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise TaskValidationError("link", "must be an http:// or https:// URL")
    if not parts.hostname:
        raise TaskValidationError("link", "must name a host (http://HOST/...)")
    return link


def validate_task(body: object) -> TaskInput:
    """Check a report body: a JSON object with exactly the known fields, each valid.

    Raises:
        TaskValidationError: naming the first offending field.
    """
    if not isinstance(body, Mapping):
        raise TaskValidationError("body", "expected a JSON object")
    unknown = sorted(str(k) for k in body if k not in _FIELDS)
    if unknown:
        raise TaskValidationError(
            unknown[0], f"unknown field; expected only {', '.join(sorted(_FIELDS))}"
        )
    state = body.get("state")
    if state not in TASK_STATES:
        raise TaskValidationError("state", f"expected one of {', '.join(TASK_STATES)}")
    summary = body.get("summary")
    if not isinstance(summary, str):
        raise TaskValidationError("summary", "required, a string")
    if not summary.strip():
        raise TaskValidationError("summary", "must not be empty")
    if len(summary) > MAX_SUMMARY_LENGTH:
        raise TaskValidationError(
            "summary", f"{len(summary)} characters; at most {MAX_SUMMARY_LENGTH}"
        )
    if _has_control_characters(summary):
        raise TaskValidationError("summary", "one line: no line breaks or control characters")
    link = body.get("link")
    if link is not None:
        if not isinstance(link, str):
            raise TaskValidationError("link", "expected a string URL or null")
        link = validate_link(link) if link else None
    agent = body.get("agent")
    if agent is not None:
        if not isinstance(agent, str):
            raise TaskValidationError("agent", "expected a string")
        problem = validate_name(agent)
        if problem is not None:
            raise TaskValidationError("agent", problem)
    return TaskInput(state, summary, link, agent)


def task_json(report: TaskReport) -> dict[str, object]:
    """A report as the API and the dashboard show it (never the token's secret)."""
    return {
        "id": report.id,
        "agent": report.agent,
        "state": report.state,
        "summary": report.summary,
        "link": report.link,
        "reported_at": report.created_at,
        "reporter": {
            "user": report.user,
            "agent": report.reporter_agent,
            "token_id": report.token_id,
        },
    }


def _parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise HttpError(
            400,
            f"limit: expected an integer 1..{MAX_LIST_LIMIT}, got {text[:20]!r}",
            code="invalid",
        )
    return int(text)


class TaskApi:
    """The task routes of one control server; ``wall_clock`` stamps reports."""

    def __init__(
        self, coordinator: Coordinator, store: Store, *, wall_clock: Callable[[], float]
    ) -> None:
        self._coordinator = coordinator
        self._store = store
        self._wall = wall_clock

    async def _principal(self, request: Request) -> Principal:
        principal = await self._coordinator.authenticate(request.headers.get("authorization"))
        if principal is None:
            raise HttpError(401, "a valid bearer token is required", headers=_UNAUTHORIZED_HEADERS)
        return principal

    async def report(self, request: Request) -> Response:
        """``POST /api/v1/tasks``."""
        principal = await self._principal(request)
        content_type = request.headers.get("content-type")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media != "application/json":
                raise HttpError(
                    415, f"Content-Type {media!r}: expected application/json", code="bad_media"
                )
        try:
            task = validate_task(request.json())
        except TaskValidationError as exc:
            raise HttpError(400, str(exc), code="invalid") from None
        agent = task.agent
        if principal.agent is not None:
            if agent is not None and agent != principal.agent:
                raise HttpError(
                    403,
                    f"agent: an agent token of {principal.agent!r} reports only for itself",
                    code="forbidden",
                )
            agent = principal.agent
        elif agent is None:
            raise HttpError(400, "agent: required with a client token", code="invalid")
        try:
            report = await self._store.add_task_report(
                principal.user_id,
                principal.token_id,
                principal.agent,
                agent,
                task.state,
                task.summary,
                task.link,
                self._wall(),
            )
        except NotFoundError:
            raise HttpError(401, "the token's user no longer exists") from None
        log.info(
            "control.task_reported",
            id=report.id,
            user=report.user,
            agent=report.agent,
            state=report.state,
        )
        return Response.json({"task": task_json(report)}, status=201)

    async def list_tasks(self, request: Request) -> Response:
        """``GET /api/v1/tasks``."""
        principal = await self._principal(request)
        return Response.json({"tasks": await self.visible(principal.user_id, request.query)})

    async def visible(
        self, user_id: int, query: Mapping[str, list[str]]
    ) -> list[dict[str, object]]:
        """Reports ``user_id`` may see, filtered by the ``limit``/``agent``/``state`` query.

        Raises:
            HttpError: 400 for a bad filter.
        """
        limit = _parse_limit(next(iter(query.get("limit", [])), None))
        agent = next(iter(query.get("agent", [])), None)
        if agent is not None and validate_name(agent) is not None:
            raise HttpError(400, f"agent: {validate_name(agent)}", code="invalid")
        state = next(iter(query.get("state", [])), None)
        if state is not None and state not in TASK_STATES:
            raise HttpError(400, f"state: expected one of {', '.join(TASK_STATES)}", code="invalid")
        reports = await self._store.list_task_reports(
            user_id,
            limit=limit,
            agent=agent,
            state=state,
        )
        return [task_json(r) for r in reports]
