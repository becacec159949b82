// tunneld dashboard: poll /dashboard/state and redraw the tables.
// Served as a file (the page's CSP allows no inline script); builds DOM nodes with
// textContent only, never HTML strings, so reported text cannot inject markup.
"use strict";

(function () {
  const body = document.body;
  const stateUrl = body.dataset.stateUrl || "/dashboard/state";
  const refreshMs = Math.max(500, Number(body.dataset.refreshMs) || 2000);

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function time(value) {
    if (typeof value !== "number" || !isFinite(value)) return "-";
    return new Date(value * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function row(cells, attrs) {
    const tr = el("tr", null, attrs);
    for (const cell of cells) {
      const td = el("td");
      if (cell instanceof Node) td.appendChild(cell);
      else td.textContent = String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(id, rows, columns, empty) {
    const tbody = document.getElementById(id);
    if (!tbody) return;
    if (rows.length === 0) {
      const td = el("td", empty, { colspan: columns });
      const tr = el("tr", null, { class: "empty" });
      tr.appendChild(td);
      rows = [tr];
    }
    tbody.replaceChildren(...rows);
  }

  function badge(cls, text) {
    return el("span", text, { class: cls });
  }

  function relayText(relay) {
    return relay ? "region " + relay.region + " (" + relay.url + ")" : "-";
  }

  function render(s) {
    fill("nodes-body", s.nodes.map((n) => {
      const status = n.online ? "online" : "offline";
      return row(
        [n.name, n.owner, n.kind, badge("status " + status, status), n.path,
         relayText(n.home_relay), time(n.last_seen)],
        { "data-node": n.owner + "/" + n.name, "data-online": String(n.online) });
    }), 7, "No nodes yet.");

    fill("tasks-body", s.tasks.map((t) => {
      let link = "-";
      if (t.link && /^https?:\/\//i.test(t.link)) {
        link = el("a", t.link, { href: t.link, rel: "noopener noreferrer" });
      }
      const who = t.reporter.user + (t.reporter.agent ? "/" + t.reporter.agent : "");
      return row(
        [time(t.reported_at), t.agent, badge("state " + t.state, t.state), t.summary, link, who],
        { "data-task-id": t.id, "data-state": t.state });
    }), 6, "No task reports yet.");

    fill("tunnels-body", s.tunnels.map((t) =>
      row([t.src, t.dst, t.src_online && t.dst_online ? "both online" : "waiting"])),
      3, "No tunnels.");

    const stats = [
      ["coordinator sessions", s.summary.coordinator_sessions],
      ["nodes online", s.summary.nodes_online],
      ["uptime (s)", s.summary.uptime],
    ];
    if (s.relay === null) stats.push(["relay", "not served here"]);
    else for (const [k, v] of Object.entries(s.relay)) stats.push(["relay " + k.replace(/_/g, " "), v]);
    if (s.stun !== null) {
      stats.push(["stun requests", s.stun.requests], ["stun responses", s.stun.responses]);
    }
    const statsBody = document.getElementById("stats-body");
    if (statsBody) {
      statsBody.replaceChildren(...stats.map(([k, v]) => {
        const tr = el("tr", null, { "data-stat": k });
        tr.appendChild(el("th", k, { scope: "row" }));
        tr.appendChild(el("td", v));
        return tr;
      }));
    }
    const updated = document.getElementById("updated");
    if (updated) updated.textContent = time(s.generated_at);
  }

  function setLive(text, ok) {
    const live = document.getElementById("live-status");
    if (!live) return;
    live.textContent = text;
    live.className = ok ? "ok" : "stale";
  }

  async function refresh() {
    try {
      const response = await fetch(stateUrl, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (response.status === 401) {
        window.location.assign("/login?next=" + encodeURIComponent("/"));
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      body.dataset.refreshed = String((Number(body.dataset.refreshed) || 0) + 1);
      setLive("live", true);
    } catch (err) {
      setLive("reconnecting (" + err.message + ")", false);
    }
    window.setTimeout(refresh, refreshMs);
  }

  window.setTimeout(refresh, refreshMs);
})();
