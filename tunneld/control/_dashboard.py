"""The control-plane dashboard at ``/``: nodes, relay statistics, tunnels, task reports.

Plain server-rendered HTML (it reads fine without JavaScript) plus one small script,
``/dashboard/app.js``, that polls ``/dashboard/state`` (JSON) every two seconds and
redraws the tables with ``textContent`` only. Every response sends a strict CSP: no
inline script or style at all (``default-src 'self'``), ``frame-ancestors 'none'``.

Who is logged in comes from one seam, ``current_user(request)`` (the control server
passes :class:`tunneld.oauth.BrowserSessions`' cookie sessions); a visitor without a
session is sent to the login page. A user sees the nodes, tunnels and task reports it
may see through the API (its own, and agents granted to it); relay and coordinator
counters are server-wide.
"""

from __future__ import annotations

import datetime
import html
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Protocol

from tunneld.control._coordinator import Coordinator, Principal
from tunneld.control._metrics import RelayStatsLike
from tunneld.control._records import NodeRecord, Store
from tunneld.control._stun import StunStats
from tunneld.control._tasks import task_json
from tunneld.http import Request, Response, Router

__all__ = ["CSP", "Dashboard", "DashboardUser", "RelayView", "node_path"]

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEADERS: Final = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
_TASKS_SHOWN: Final = 50
_RELAY_COUNTERS: Final = (
    "clients_current",
    "clients_total",
    "clients_preferred",
    "packets_received",
    "packets_relayed",
    "bytes_received",
    "bytes_relayed",
    "refused",
    "handshake_failures",
    "protocol_errors",
    "write_timeouts",
)


class DashboardUser(Protocol):
    """Who is logged in (``tunneld.oauth.SessionUser`` fits)."""

    @property
    def user_id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def csrf_token(self) -> str: ...


class RelayView(Protocol):
    """What the dashboard reads from the DERP relay."""

    @property
    def stats(self) -> RelayStatsLike: ...
    def is_connected(self, key: bytes) -> bool: ...


CurrentUser = Callable[[Request], Awaitable[DashboardUser | None]]


def _static(name: str) -> bytes:
    return resources.files("tunneld.control").joinpath("dashboard", name).read_bytes()


def node_path(online: bool, on_relay: bool, endpoints: int) -> str:
    """How a node can be reached, as the control plane sees it.

    The control plane does not see the paths between two nodes (they probe each
    other inside their encrypted session); it sees whether the node holds a DERP
    connection here and how many direct UDP candidates it announced.
    """
    if not online:
        return "offline"
    direct = f"direct ({endpoints} endpoint{'s' if endpoints != 1 else ''})" if endpoints else ""
    if on_relay and direct:
        return f"relay + {direct}"
    if on_relay:
        return "relay"
    return direct or "coordinator only"


@dataclass(frozen=True, slots=True)
class _Sources:
    coordinator: Coordinator
    store: Store
    relay: Callable[[], RelayView | None]
    stun: Callable[[], StunStats | None]
    uptime: Callable[[], float]
    wall_clock: Callable[[], float]


class Dashboard:
    """The dashboard's routes over one control server's state.

    ``relay``/``stun`` return the running relay/STUN stats or None (they exist only
    once the server serves); ``uptime`` gives seconds since the server started.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        store: Store,
        *,
        current_user: CurrentUser,
        login_redirect: Callable[[Request], Response],
        relay: Callable[[], RelayView | None],
        stun: Callable[[], StunStats | None],
        uptime: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._src = _Sources(coordinator, store, relay, stun, uptime, wall_clock)
        self._current_user = current_user
        self._login_redirect = login_redirect
        self._script = _static("app.js")
        self._style = _static("app.css")
        self._icon = _static("icon.svg")

    def mount(self, router: Router) -> None:
        """Route ``GET /``, ``/dashboard/state``, the script, style sheet and icon."""
        router.route("GET", "/", self.page, max_body_bytes=0)
        router.route("GET", "/dashboard/state", self.state, max_body_bytes=0)
        router.route("GET", "/dashboard/app.js", self.script, max_body_bytes=0)
        router.route("GET", "/dashboard/app.css", self.style, max_body_bytes=0)
        # Browsers ask for /favicon.ico on every page (the login page too).
        router.route("GET", "/favicon.ico", self.icon, max_body_bytes=0)
        router.route("GET", "/dashboard/icon.svg", self.icon, max_body_bytes=0)

    # --- handlers ---------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """``GET /``: the whole dashboard, rendered now; 303 to the login page first."""
        user = await self._current_user(request)
        if user is None:
            return self._login_redirect(request)
        snapshot = await self.snapshot(user)
        return Response.html(render_page(snapshot, user.csrf_token), headers=_HEADERS)

    async def state(self, request: Request) -> Response:
        """``GET /dashboard/state``: the same data as JSON for the script; 401 without a
        session (the script then goes to the login page)."""
        user = await self._current_user(request)
        if user is None:
            return Response.error(401, "log in first", code="login_required", headers=_HEADERS)
        return Response.json(await self.snapshot(user), headers=_HEADERS)

    async def script(self, request: Request) -> Response:
        return Response(
            200,
            [("Content-Type", "text/javascript; charset=utf-8"), *_HEADERS],
            self._script,
        )

    async def style(self, request: Request) -> Response:
        return Response(200, [("Content-Type", "text/css; charset=utf-8"), *_HEADERS], self._style)

    async def icon(self, request: Request) -> Response:
        return Response(200, [("Content-Type", "image/svg+xml"), *_HEADERS], self._icon)

    # --- data -------------------------------------------------------------------------

    async def snapshot(self, user: DashboardUser) -> dict[str, Any]:
        """Everything the page shows, for ``user``: JSON-ready."""
        src = self._src
        principal = Principal("", user.user_id, user.name, None)
        visible = await src.coordinator.visible_nodes(principal)
        records: dict[str, NodeRecord] = {r.id: r for r in await src.store.list_nodes()}
        relay = src.relay()
        nodes = []
        for node in visible:
            record = records.get(str(node["id"]))
            endpoints = node.get("endpoints")
            count = len(endpoints) if isinstance(endpoints, list) else 0
            on_relay = bool(relay is not None and record and relay.is_connected(record.node_key))
            nodes.append({**node, "path": node_path(bool(node["online"]), on_relay, count)})
        ids = {str(n["id"]) for n in visible}
        tunnels = []
        for src_id, dst_id in src.coordinator.tunnels():
            if src_id not in ids and dst_id not in ids:
                continue
            tunnels.append(
                {
                    "src": _label(records.get(src_id), src_id),
                    "dst": _label(records.get(dst_id), dst_id),
                    "src_online": src.coordinator.online(src_id),
                    "dst_online": src.coordinator.online(dst_id),
                }
            )
        reports = await src.store.list_task_reports(user.user_id, limit=_TASKS_SHOWN)
        stun = src.stun()
        return {
            "user": user.name,
            "generated_at": src.wall_clock(),
            "summary": {
                "coordinator_sessions": src.coordinator.sessions_current,
                "nodes_online": src.coordinator.nodes_online,
                "uptime": round(src.uptime(), 1),
            },
            "nodes": nodes,
            "relay": None if relay is None else _relay_stats(relay.stats),
            "stun": None
            if stun is None
            else {"requests": stun.requests, "responses": stun.responses},
            "tunnels": tunnels,
            "tasks": [task_json(r) for r in reports],
        }


def _label(record: NodeRecord | None, node_id: str) -> str:
    return node_id if record is None else f"{record.owner}/{record.name}"


def _relay_stats(stats: RelayStatsLike) -> dict[str, int]:
    values = {name: int(getattr(stats, name, 0)) for name in _RELAY_COUNTERS}
    values["drops"] = sum(stats.drops.values())
    return values


# --- rendering (app.js mirrors these tables; keep the two in step) ---------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _time(value: object) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    stamp = datetime.datetime.fromtimestamp(value, datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _relay_text(relay: object) -> str:
    if not isinstance(relay, Mapping):
        return "-"
    return f"region {relay.get('region')} ({relay.get('url')})"


def _rows(rows: list[str], columns: int, empty: str) -> str:
    if rows:
        return "".join(rows)
    return f'<tr class="empty"><td colspan="{columns}">{_e(empty)}</td></tr>'


def _node_rows(nodes: list[dict[str, Any]]) -> str:
    rows = []
    for n in nodes:
        online = "online" if n["online"] else "offline"
        rows.append(
            f'<tr data-node="{_e(n["owner"])}/{_e(n["name"])}"'
            f' data-online="{str(n["online"]).lower()}">'
            f"<td>{_e(n['name'])}</td><td>{_e(n['owner'])}</td><td>{_e(n['kind'])}</td>"
            f'<td><span class="status {online}">{online}</span></td>'
            f"<td>{_e(n['path'])}</td><td>{_e(_relay_text(n.get('home_relay')))}</td>"
            f"<td>{_e(_time(n.get('last_seen')))}</td></tr>"
        )
    return _rows(rows, 7, "No nodes yet.")


def _tunnel_rows(tunnels: list[dict[str, Any]]) -> str:
    rows = [
        f"<tr><td>{_e(t['src'])}</td><td>{_e(t['dst'])}</td>"
        f"<td>{'both online' if t['src_online'] and t['dst_online'] else 'waiting'}</td></tr>"
        for t in tunnels
    ]
    return _rows(rows, 3, "No tunnels.")


def _task_rows(tasks: list[dict[str, Any]]) -> str:
    rows = []
    for t in tasks:
        link = (
            f'<a href="{_e(t["link"])}" rel="noopener noreferrer">{_e(t["link"])}</a>'
            if t.get("link")
            else "-"
        )
        reporter = t["reporter"]
        who = reporter["user"] + (f"/{reporter['agent']}" if reporter.get("agent") else "")
        rows.append(
            f'<tr data-task-id="{_e(t["id"])}" data-state="{_e(t["state"])}">'
            f"<td>{_e(_time(t['reported_at']))}</td><td>{_e(t['agent'])}</td>"
            f'<td><span class="state {_e(t["state"])}">{_e(t["state"])}</span></td>'
            f"<td>{_e(t['summary'])}</td><td>{link}</td><td>{_e(who)}</td></tr>"
        )
    return _rows(rows, 6, "No task reports yet.")


def _stats_rows(snapshot: Mapping[str, Any]) -> str:
    summary = snapshot["summary"]
    pairs: list[tuple[str, object]] = [
        ("coordinator sessions", summary["coordinator_sessions"]),
        ("nodes online", summary["nodes_online"]),
        ("uptime (s)", summary["uptime"]),
    ]
    relay = snapshot.get("relay")
    if relay is None:
        pairs.append(("relay", "not served here"))
    else:
        pairs += [(f"relay {k.replace('_', ' ')}", v) for k, v in relay.items()]
    stun = snapshot.get("stun")
    if stun is not None:
        pairs += [("stun requests", stun["requests"]), ("stun responses", stun["responses"])]
    return "".join(
        f'<tr data-stat="{_e(k)}"><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>'
        for k, v in pairs
    )


def render_page(snapshot: Mapping[str, Any], csrf_token: str) -> str:
    """The dashboard HTML for ``snapshot`` (all text escaped)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        "<title>tunneld control</title>"
        '<link rel="stylesheet" href="/dashboard/app.css">'
        '<link rel="icon" href="/dashboard/icon.svg" type="image/svg+xml">'
        '<script src="/dashboard/app.js" defer></script></head>'
        '<body data-state-url="/dashboard/state" data-refresh-ms="2000">'
        '<header><h1>tunneld control</h1><form method="post" action="/logout">'
        f'<input type="hidden" name="csrf_token" value="{_e(csrf_token)}">'
        f'<span class="user">{_e(snapshot["user"])}</span> <button type="submit">Log out</button>'
        '</form></header><p class="live"><span id="live-status">live</span> · updated '
        f'<time id="updated">{_e(_time(snapshot["generated_at"]))}</time></p>'
        '<section><h2>Nodes</h2><table id="nodes"><thead><tr><th>name</th><th>owner</th>'
        "<th>kind</th><th>status</th><th>path</th><th>home relay</th><th>last seen</th>"
        f'</tr></thead><tbody id="nodes-body">{_node_rows(snapshot["nodes"])}</tbody></table>'
        '</section><section><h2>Task reports</h2><table id="tasks"><thead><tr><th>time</th>'
        "<th>agent</th><th>state</th><th>summary</th><th>link</th><th>reported by</th></tr>"
        f'</thead><tbody id="tasks-body">{_task_rows(snapshot["tasks"])}</tbody></table>'
        '</section><section><h2>Tunnels</h2><table id="tunnels"><thead><tr><th>from</th>'
        '<th>to</th><th>state</th></tr></thead><tbody id="tunnels-body">'
        f"{_tunnel_rows(snapshot['tunnels'])}</tbody></table></section>"
        '<section><h2>Relay and coordinator</h2><table id="stats"><tbody id="stats-body">'
        f"{_stats_rows(snapshot)}</tbody></table></section></body></html>"
    )
