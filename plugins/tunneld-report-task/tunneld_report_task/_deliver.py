"""Posting a report to one reporter: the control plane's task API or a webhook.

Standard library HTTP (``urllib``) in a worker thread: one request at a time (the
queue has one delivery task), each bounded by ``request_timeout``. Redirects are not
followed (a POST must not turn into a GET elsewhere) and no error message carries the
token or the full webhook URL (webhook URLs often hold a secret in their path).
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import trio

from tunneld_report_task._queue import Report
from tunneld_report_task._settings import Settings

__all__ = ["DeliveryError", "deliver", "post_json", "read_token"]

_BACKOFF_CAP: Final = 10.0
_MAX_ANSWER: Final = 64 * 1024


class DeliveryError(Exception):
    """A report did not reach one reporter; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _where(url: str) -> str:
    """What an error message may say about ``url``: scheme, host and port only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body.decode("utf-8"))
        message = data["error"]["message"]
        if isinstance(message, str):
            return message[:300]
    except (ValueError, KeyError, TypeError):
        pass
    return ""


def _post_blocking(
    url: str, payload: Mapping[str, object], headers: Mapping[str, str], timeout: float
) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(_NoRedirects)
    request = urllib.request.Request(
        url,
        data=json.dumps(payload, ensure_ascii=False).encode("utf-8"),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "tunneld-report-task",
            **headers,
        },
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status), response.read(_MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), exc.read(_MAX_ANSWER)


async def post_json(
    url: str,
    payload: Mapping[str, object],
    *,
    headers: Mapping[str, str],
    request_timeout: float,
) -> int:
    """POST ``payload`` as JSON; returns the 2xx status.

    Raises:
        DeliveryError: network failure, timeout, or a non-2xx answer (``retry`` for
            connection errors, 408, 429 and 5xx).

    Cancellation: the worker thread is abandoned (it ends by itself within ``timeout``).
    """
    try:
        status, body = await trio.to_thread.run_sync(
            _post_blocking, url, payload, headers, request_timeout, abandon_on_cancel=True
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{_where(url)}: {reason}", retry=True) from None
    if 200 <= status < 300:
        return status
    detail = _error_message(body)
    message = f"{_where(url)} answered {status}" + (f": {detail}" if detail else "")
    raise DeliveryError(message, retry=status in (408, 429) or status >= 500)


async def read_token(settings: Settings) -> str:
    """The control-plane token: ``token``, or ``token_file`` read now (so a rotated file
    is picked up).

    Raises:
        DeliveryError: the file cannot be read or is empty (never retried).
    """
    if settings.token:
        return settings.token
    try:
        text = await trio.Path(settings.token_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise DeliveryError(
            f"[plugins.report_task].token_file {settings.token_file}: cannot read ({reason})",
            retry=False,
        ) from None
    token = text.strip()
    if not token:
        raise DeliveryError(
            f"[plugins.report_task].token_file {settings.token_file}: empty", retry=False
        )
    return token


async def _deliver_once(target: str, report: Report, settings: Settings) -> None:
    if target == "control":
        token = await read_token(settings)
        body: dict[str, object] = {
            "agent": report.agent,
            "state": report.state,
            "summary": report.summary,
        }
        if report.link:
            body["link"] = report.link
        await post_json(
            settings.control_url + "/api/v1/tasks",
            body,
            headers={"Authorization": f"Bearer {token}"},
            request_timeout=settings.request_timeout,
        )
    else:
        await post_json(
            settings.webhook_url,
            {"source": "tunneld", "type": "task_report", **report.to_json()},
            headers={},
            request_timeout=settings.request_timeout,
        )


async def deliver(report: Report, settings: Settings, target: str) -> str:
    """Deliver ``report`` to ``target`` (``"control"`` or ``"webhook"``) with retries.

    Transient failures are retried up to ``max_attempts`` times with capped, jittered
    exponential backoff; a permanent one (a 4xx, an unreadable token file) is not.
    Returns ``"delivered"``.

    Raises:
        DeliveryError: the last failure.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            await _deliver_once(target, report, settings)
            return "delivered"
        except DeliveryError as exc:
            if not exc.retry or attempt >= settings.max_attempts:
                raise
            delay = min(_BACKOFF_CAP, 0.25 * 2 ** (attempt - 1))
            await trio.sleep(delay * random.uniform(0.5, 1.0))
