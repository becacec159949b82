"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Real processes end to end: ``tunneld control`` and ``tunneld agent`` as subprocesses on
loopback, a password login through the browser, the agent coming online while the page
is open, and a task report made through the real ``report_task`` plugin handler
appearing without a reload. A screenshot lands in the test's tmp dir (path printed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_S = 30.0

pytestmark = [
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)),
        reason=f"{CHROMIUM} not found: apt-get install --no-install-recommends chromium",
    ),
]
playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="the test extra's `playwright` package is not installed"
)
tunneld_report_task = pytest.importorskip(
    "tunneld_report_task", reason="install it: pip install -e plugins/tunneld-report-task"
)


def _tunneld(*args: str, stdin: str | None = None, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tunneld", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait_for_file(path: Path, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            data: dict[str, Any] = json.loads(path.read_text())
            return data
        assert process.poll() is None, f"process exited with {process.returncode}"
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {WAIT_S}s")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _report_through_the_plugin(control_url: str, token: str) -> dict[str, Any]:
    """The real plugin handler, run as the daemon would: register, startup, call, shutdown."""
    from test_report_task import context  # the ToolContext helper of the plugin tests

    async def run() -> dict[str, Any]:
        plugin = tunneld_report_task.ReportTaskPlugin()
        config = {"control_url": control_url, "token": token, "agent": "web1"}
        tools: list[Any] = []
        plugin.register_tools(register=tools.append, config=config)
        assert [t.name for t in tools] == ["report_task"]
        await plugin.startup(config)
        try:
            result = await tools[0].handler(
                context(),
                {
                    "state": "complete",
                    "summary": "Deployed <b>v2</b> to web1",
                    "link": "https://ci.example/runs/42",
                },
            )
        finally:
            with trio.CancelScope(shield=True):
                await plugin.shutdown(config)
        assert not result.is_error, result
        return dict(result.structured)

    box: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            box.append(trio.run(run))
        except BaseException as exc:
            errors.append(exc)

    # Its own thread: Playwright's sync API keeps an event loop on this one.
    thread = threading.Thread(target=target)
    thread.start()
    thread.join(WAIT_S)
    assert not errors, errors
    assert box, "the report did not finish in time"
    return box[0]


def test_login_agent_online_and_task_report_appear_live(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    data = tmp_path / "control"
    _tunneld("control", "--data-dir", str(data), "user", "add", "alice", "--password-stdin",
             stdin="correct horse battery\n", cwd=tmp_path)  # fmt: skip
    agent_token = _tunneld(
        "control", "--data-dir", str(data), "token", "create", "--user", "alice",
        "--agent", "web1", cwd=tmp_path,
    ).strip()  # fmt: skip
    client_token = _tunneld(
        "control", "--data-dir", str(data), "token", "create", "--user", "alice", cwd=tmp_path
    ).strip()
    ready = tmp_path / "control.json"
    control = subprocess.Popen(
        [sys.executable, "-m", "tunneld", "control", "--data-dir", str(data),
         "--listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0", "--ready-file", str(ready)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(control)
    url = _wait_for_file(ready, control)["url"]

    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.set_default_timeout(WAIT_S * 1000)

            # Not logged in: / sends the browser to the login page.
            page.goto(url + "/")
            assert "/login" in page.url
            page.fill("#username", "alice")
            page.fill("#password", "correct horse battery")
            page.click("button[type=submit]")
            page.wait_for_selector("#nodes")
            assert page.url.rstrip("/") == url
            response = page.request.get(url + "/")
            csp = response.headers["content-security-policy"]
            assert "default-src 'self'" in csp
            assert "frame-ancestors 'none'" in csp
            assert page.locator('tr[data-node="alice/web1"]').count() == 0
            assert "No task reports yet." in page.inner_text("#tasks-body")

            # The agent starts while the page is open; the poll shows it online.
            token_file = tmp_path / "agent.token"
            token_file.write_text(agent_token + "\n")
            token_file.chmod(0o600)
            config = tmp_path / "agent.toml"
            config.write_text(
                "[agent]\n"
                'name = "web1"\n'
                f'control_url = "{url}"\n'
                f'token_file = "{token_file}"\n'
                f'key_file = "{tmp_path / "agent.key"}"\n'
                'udp_listen = "127.0.0.1:0"\n'
            )
            agent = subprocess.Popen(
                [sys.executable, "-m", "tunneld", "agent", "--config", str(config)],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            processes.append(agent)
            online = page.wait_for_selector('tr[data-node="alice/web1"][data-online="true"]')
            assert online is not None
            assert "online" in online.inner_text()
            assert "relay" in online.inner_text()  # it holds a DERP connection here

            # A task report through the real plugin handler appears without a reload.
            structured = _report_through_the_plugin(url, client_token)
            assert structured["outcome"] == "delivered"
            row = page.wait_for_selector('#tasks-body tr[data-state="complete"]')
            assert row is not None
            text = row.inner_text()
            assert "Deployed <b>v2</b> to web1" in text  # shown as text, not markup
            assert page.locator("#tasks-body b").count() == 0
            assert "web1" in text
            link = page.locator('#tasks-body a[href="https://ci.example/runs/42"]')
            assert link.count() == 1
            assert page.inner_text("#live-status") == "live"

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")
            assert shot.stat().st_size > 10_000
            assert not [m for m in problems if "Content Security Policy" in m], problems
            assert not problems, problems
        finally:
            browser.close()


def test_chromium_is_what_ci_installs() -> None:
    # .ci/run installs the browser; a missing one would silently skip the test above.
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "chromium" in ci
