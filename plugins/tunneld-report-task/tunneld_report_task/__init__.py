"""tunneld plugin ``report_task``: an AI agent reports its task state.

The ``report_task`` MCP tool sends ``{state, summary, link?, agent?}`` to the control
plane's task API (``POST /api/v1/tasks``, shown by ``tunneld control tasks`` and the
dashboard) and/or a webhook, through a bounded, deduplicating queue drained by one
task that the ``startup`` hook starts and ``shutdown`` stops. Without a configured
reporter the tool is not registered. See README.md.
"""

from __future__ import annotations

from tunneld_report_task._deliver import DeliveryError, deliver, post_json
from tunneld_report_task._plugin import (
    ANNOTATIONS,
    INPUT_SCHEMA,
    OUTPUT_SCHEMA,
    ReportTaskPlugin,
)
from tunneld_report_task._queue import QueueClosed, QueueStats, Report, ReportQueue, Ticket
from tunneld_report_task._settings import KEYS, Settings, parse_settings

__all__ = [
    "ANNOTATIONS",
    "ENABLED_BY_DEFAULT",
    "INPUT_SCHEMA",
    "KEYS",
    "OUTPUT_SCHEMA",
    "DeliveryError",
    "QueueClosed",
    "QueueStats",
    "Report",
    "ReportQueue",
    "ReportTaskPlugin",
    "Settings",
    "Ticket",
    "deliver",
    "parse_settings",
    "post_json",
]

# On by default: without a configured reporter it registers nothing anyway.
ENABLED_BY_DEFAULT = True
