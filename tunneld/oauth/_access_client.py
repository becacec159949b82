"""The daemon's side of per-caller authorization: ask the control plane, cache briefly.

A shared daemon must never be a confused deputy: before a tool call reaches an agent
for an OAuth subject, :meth:`AccessClient.may_reach` asks the control plane's
``GET /api/v1/access`` (see ``tunneld.control._access``). Answers are cached for the
``max_age`` the control plane gives (capped by ``max_cache``), so a removed grant
takes effect within seconds. When the control plane cannot be asked, the answer is
an error, never a guess (fail closed).
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from tunneld.log import get_logger
from tunneld.oauth._http_client import HttpClientError, get

__all__ = ["AccessCheckError", "AccessClient", "AccessDecision"]

log = get_logger(__name__)

_MAX_ENTRIES: Final = 10_000


class AccessCheckError(Exception):
    """The control plane could not be asked (or answered nonsense); refuse the call."""


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """The control plane's answer: ``agent`` is ``owner/name`` when allowed."""

    allowed: bool
    agent: str | None
    agent_id: str | None
    reason: str


class AccessClient:
    """Asks ``control_url`` whether a subject may reach an agent.

    ``await token()`` returns this daemon's node token (a client token; the overlay's
    token provider, so a rotated token file is picked up). ``max_cache``
    caps the control plane's ``max_age``.
    """

    def __init__(
        self,
        control_url: str,
        token: Callable[[], Awaitable[str]],
        *,
        max_cache: float = 5.0,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.url = control_url.rstrip("/") + "/api/v1/access"
        self._token = token
        self.max_cache = max_cache
        self.timeout = timeout
        self._ssl = ssl_context
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, AccessDecision]] = OrderedDict()
        self.requests = 0  # how often the control plane was asked

    def forget(self, subject: str | None = None) -> None:
        """Drop cached answers (for one subject, or all)."""
        if subject is None:
            self._cache.clear()
            return
        for key in [k for k in self._cache if k[0] == subject]:
            del self._cache[key]

    async def may_reach(self, subject: str, agent: str) -> bool:
        """Whether ``subject`` may reach ``agent``. Raises AccessCheckError."""
        return (await self.decide(subject, agent)).allowed

    async def decide(self, subject: str, agent: str) -> AccessDecision:
        """The full (possibly cached) decision for ``subject`` and ``agent``.

        Raises:
            AccessCheckError: the control plane is unreachable, refuses this daemon's
                token, or answers something else than a decision. Not cached.
        """
        key = (subject, agent)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached[0]:
            self._cache.move_to_end(key)
            return cached[1]
        decision, max_age = await self._ask(subject, agent)
        self._cache[key] = (now + min(max_age, self.max_cache), decision)
        self._cache.move_to_end(key)
        while len(self._cache) > _MAX_ENTRIES:
            self._cache.popitem(last=False)
        return decision

    async def _ask(self, subject: str, agent: str) -> tuple[AccessDecision, float]:
        self.requests += 1
        query = urllib.parse.urlencode({"subject": subject, "agent": agent})
        reply = None
        with trio.move_on_after(self.timeout):
            try:
                token = await self._token()
            except OSError as exc:
                raise AccessCheckError(f"cannot read this node's token: {exc}") from None
            try:
                reply = await get(
                    f"{self.url}?{query}",
                    headers=[("Authorization", f"Bearer {token}")],
                    ssl_context=self._ssl,
                )
            except HttpClientError as exc:
                raise AccessCheckError(f"cannot ask the control plane: {exc}") from None
        if reply is None:
            raise AccessCheckError(f"the control plane did not answer within {self.timeout}s")
        if reply.status != 200:
            raise AccessCheckError(f"the control plane refused the access check ({reply.status})")
        try:
            body = json.loads(reply.body)
            allowed = body["allowed"]
            max_age = float(body.get("max_age", 0.0))
        except (ValueError, KeyError, TypeError):
            raise AccessCheckError("the control plane answered a malformed decision") from None
        if not isinstance(allowed, bool):
            raise AccessCheckError("the control plane answered a malformed decision")
        found = body.get("agent") if allowed else None
        name = agent_id = None
        if isinstance(found, dict):
            name = f"{found.get('owner')}/{found.get('name')}"
            agent_id = str(found.get("id"))
        decision = AccessDecision(allowed, name, agent_id, str(body.get("reason", "")))
        log.debug("oauth.access_checked", subject=subject, agent=agent, allowed=allowed)
        return decision, max(0.0, max_age)
