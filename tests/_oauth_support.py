"""Helpers for the OAuth tests: a cookie-keeping browser over real HTTP, password users."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import httpx
import trio

from tunneld.control import SqliteStore
from tunneld.control._tokens import hash_password

WAIT = 10.0

_HIDDEN = re.compile(r'<input type="hidden" name="([^"]*)" value="([^"]*)">')


async def add_password_user(store: SqliteStore, name: str, password: str) -> None:
    hashed = await trio.to_thread.run_sync(hash_password, password)
    await store.add_user(name, hashed, time.time())


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden inputs of an HTML page (our pages write them in one fixed shape)."""
    return {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page)}


class Browser:
    """What a browser does with our pages: keeps cookies, never follows redirects
    on its own, reads hidden form fields and posts forms with its Origin."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.base_url, follow_redirects=False, timeout=WAIT
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(url, **kwargs)

    async def post_form(
        self, url: str, data: dict[str, str], *, origin: str | None = "self", **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if origin == "self":
            headers["Origin"] = self.base_url
        elif origin is not None:
            headers["Origin"] = origin
        return await self.client.post(url, data=data, headers=headers, **kwargs)

    async def login(self, user: str, password: str, next_url: str = "/") -> httpx.Response:
        page = await self.get("/login", params={"next": next_url})
        assert page.status_code == 200, page.text
        fields = hidden_fields(page.text)
        return await self.post_form("/login", {**fields, "username": user, "password": password})
