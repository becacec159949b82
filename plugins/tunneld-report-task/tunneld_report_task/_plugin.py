"""The ``report_task`` plugin: the tool, its hooks, and the delivery task."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import trio

from tunneld.control import TaskValidationError, validate_task
from tunneld.hookspecs import hookimpl
from tunneld.log import get_logger
from tunneld.mcp import MUTATING, Tool, ToolContext, ToolOutput, ToolResult, open_world
from tunneld_report_task._deliver import DeliveryError, deliver, read_token
from tunneld_report_task._queue import QueueClosed, Report, ReportQueue, Ticket
from tunneld_report_task._settings import Settings, parse_settings

__all__ = ["ANNOTATIONS", "INPUT_SCHEMA", "OUTPUT_SCHEMA", "ReportTaskPlugin"]

log = get_logger("tunneld_report_task")

# Mutating: a report adds state (the dashboard, `tunneld control tasks`) and destroys
# none. Not idempotent: each report is a new entry with its own time. Open world: it
# reaches beyond the agents, to the control plane and to an arbitrary webhook URL.
ANNOTATIONS: Final = open_world(MUTATING)

INPUT_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "state": {
            "type": "string",
            "enum": ["working", "complete", "idle", "failure"],
            "description": "working: in progress; complete: done, it worked; idle: "
            "waiting for the user; failure: done, it did not work.",
        },
        "summary": {
            "type": "string",
            "minLength": 1,
            "maxLength": 160,
            "description": "One line, at most 160 characters: what you are doing or did.",
        },
        "link": {
            "type": "string",
            "maxLength": 2048,
            "description": "Optional http(s) URL with details (a pull request, a CI run).",
        },
        "agent": {
            "type": "string",
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            "description": "Optional: the agent (host) the task runs on. Default: the "
            "plugin's configured agent name.",
        },
    },
    "required": ["state", "summary"],
    "additionalProperties": False,
}

OUTPUT_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "outcome": {
            "type": "string",
            "enum": ["delivered", "queued", "unchanged", "dropped", "failed", "closed"],
        },
        "agent": {"type": "string"},
        "state": {"type": "string"},
        "reporters": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["outcome", "agent", "state", "reporters"],
}

_DESCRIPTION: Final = (
    "Report the state of your current task so people can follow it on the tunneld "
    "dashboard (and a webhook, if configured). Call it when you start working "
    "(state=working), when you need the user (idle), and when you finish (complete or "
    "failure). Keep the summary to one line. Repeating the same state and summary is "
    "harmless: it is sent once."
)
_SHUTDOWN_GRACE: Final = 2.0  # for the in-flight and queued reports to get out


class _Drainer:
    """The running delivery task: its cancel scope and a finished event."""

    def __init__(self, queue: ReportQueue) -> None:
        self.queue = queue
        self.scope = trio.CancelScope()
        self.finished = trio.Event()


class ReportTaskPlugin:
    """One instance per plugin manager (the entry point names this class).

    Hooks share the settings, the queue and the delivery task through the instance.
    ``wall_clock`` stamps reports (tests may pass their own).
    """

    ENABLED_BY_DEFAULT = True

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall = wall_clock
        self._settings: Settings | None = None
        self._drainer: _Drainer | None = None
        self._started = False

    # --- hooks ------------------------------------------------------------------------

    @hookimpl
    def register_tools(self, register: Callable[[Tool], None], config: Mapping[str, Any]) -> None:
        """Register ``report_task`` only when a reporter is configured."""
        settings = parse_settings(config)
        self._settings = settings
        if not settings.configured:
            log.info("report_task.not_registered", reason="no control_url or webhook_url")
            return
        if self._started and self._drainer is None:
            # A reload configured a reporter after startup ran without one.
            self._start(settings)
        register(
            Tool(
                name="report_task",
                title="Report task state",
                description=_DESCRIPTION,
                input_schema=INPUT_SCHEMA,
                output_schema=OUTPUT_SCHEMA,
                handler=self.handle,
                annotations=ANNOTATIONS,
            )
        )

    @hookimpl
    async def startup(self, config: Mapping[str, Any]) -> None:
        """Start the delivery task (when a reporter is configured)."""
        settings = parse_settings(config)
        self._settings = settings
        self._started = True
        if settings.configured and self._drainer is None:
            self._start(settings)

    @hookimpl
    async def shutdown(self, config: Mapping[str, Any]) -> None:
        """Stop taking reports, give queued ones a short grace, then stop the task."""
        self._started = False
        drainer, self._drainer = self._drainer, None
        if drainer is None:
            return
        drainer.queue.close()
        with trio.move_on_after(_SHUTDOWN_GRACE):
            await drainer.finished.wait()
        drainer.scope.cancel()
        await drainer.finished.wait()
        stats = drainer.queue.stats
        log.info(
            "report_task.stopped",
            delivered=stats.delivered,
            failed=stats.failed,
            dropped=stats.dropped,
            collapsed=stats.collapsed,
        )

    # --- the delivery task ------------------------------------------------------------

    def _start(self, settings: Settings) -> None:
        drainer = _Drainer(ReportQueue(settings.queue_size))
        self._drainer = drainer
        # The startup hook is awaited and must return, and hooks get no nursery: a
        # system task lives until shutdown cancels it (or the run ends). It must never
        # raise (that would be a TrioInternalError), so _drain catches every Exception.
        trio.lowlevel.spawn_system_task(self._drain, drainer, name="report_task.drain")
        log.info("report_task.started", reporters=",".join(settings.targets))

    async def _drain(self, drainer: _Drainer) -> None:
        queue = drainer.queue
        try:
            with drainer.scope:
                while True:
                    try:
                        ticket = await queue.take()
                    except QueueClosed:
                        return
                    delivered, detail = await self._deliver(ticket)
                    queue.finish(ticket, delivered, detail)
        except Exception as exc:
            # A bug here must not become a TrioInternalError (see _start); cancellation
            # from outside (the run ending) still propagates.
            log.error("report_task.drain_crashed", error=f"{type(exc).__name__}: {exc}")
        finally:
            queue.abandon("not delivered: the plugin shut down first")
            drainer.finished.set()

    async def _deliver(self, ticket: Ticket) -> tuple[bool, dict[str, str]]:
        settings = self._settings
        if settings is None or not settings.configured:
            return False, {"plugin": "no reporter is configured any more (reloaded)"}
        detail: dict[str, str] = {}
        for target in settings.targets:
            try:
                detail[target] = await deliver(ticket.report, settings, target)
            except DeliveryError as exc:
                detail[target] = exc.message
                log.warning(
                    "report_task.delivery_failed",
                    reporter=target,
                    agent=ticket.report.agent,
                    error=exc.message,
                )
            except Exception as exc:
                detail[target] = f"internal error: {type(exc).__name__}"
                log.error("report_task.delivery_error", reporter=target, error=repr(exc))
        delivered = all(v == "delivered" for v in detail.values())
        if delivered:
            log.info(
                "report_task.delivered",
                agent=ticket.report.agent,
                state=ticket.report.state,
                reporters=",".join(detail),
            )
        return delivered, detail

    # --- the tool ---------------------------------------------------------------------

    async def handle(self, ctx: ToolContext, args: dict[str, Any]) -> ToolOutput:
        """``report_task``: check the reporter, queue the report, wait up to ``wait``.

        Never raises for a missing dependency: it answers with an ``isError`` result
        that says what to configure.
        """
        settings = self._settings
        if settings is None or not settings.configured:
            return ToolResult.error(
                "report_task: no reporter is configured. Set [plugins.report_task] "
                "control_url (with token or token_file) or webhook_url in the daemon's config."
            )
        drainer = self._drainer
        if drainer is None or drainer.queue.closed:
            return ToolResult.error(
                "report_task: the report queue is not running (the plugin's startup hook "
                "has not run, or the daemon is shutting down); try again later."
            )
        if settings.control_url:
            try:
                await read_token(settings)
            except DeliveryError as exc:
                return ToolResult.error(f"report_task: {exc.message}")
        agent = args.get("agent") or settings.default_agent()
        try:
            task = validate_task(
                {
                    "state": args.get("state"),
                    "summary": args.get("summary"),
                    "link": args.get("link") or None,
                    "agent": agent,
                }
            )
        except TaskValidationError as exc:
            return ToolResult.error(f"report_task: {exc}")
        report = Report(
            agent=agent,
            state=task.state,
            summary=task.summary,
            link=task.link,
            reported_at=self._wall(),
            caller=ctx.caller.subject,
        )
        try:
            ticket, dropped = drainer.queue.put(report)
        except QueueClosed as exc:
            return ToolResult.error(f"report_task: {exc}")
        if dropped is not None:
            log.warning(
                "report_task.dropped",
                agent=dropped.report.agent,
                state=dropped.report.state,
                queue_size=drainer.queue.maxsize,
            )
        with trio.move_on_after(settings.wait):
            await ticket.done.wait()
        return _result(ticket, report)


def _result(ticket: Ticket, report: Report) -> ToolOutput:
    outcome = "queued" if ticket.outcome == "pending" else ticket.outcome
    structured = {
        "outcome": outcome,
        "agent": report.agent,
        "state": report.state,
        "reporters": dict(ticket.detail),
    }
    what = f"{report.state} for {report.agent}: {report.summary}"
    if outcome == "delivered":
        text = f"Reported {what} (to {', '.join(ticket.detail)})."
    elif outcome == "unchanged":
        text = f"Not sent again: the last report for {report.agent} already said {what}."
    elif outcome == "queued":
        text = f"Queued {what}; the reporter is slow or unreachable, it is retried in order."
    elif outcome == "dropped":
        text = f"Superseded: {what} was dropped for newer reports (queue full)."
    else:
        reasons = "; ".join(f"{k}: {v}" for k, v in ticket.detail.items() if v != "delivered")
        return ToolResult(
            content=({"type": "text", "text": f"report_task: not delivered ({reasons})"},),
            structured=structured,
            is_error=True,
        )
    return ToolResult.text(text, structured=structured)
