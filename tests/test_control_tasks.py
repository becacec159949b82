"""Task reports: the ``/api/v1/tasks`` API on a real server, validation, auth, listing,
the SQLite store, and ``tunneld control tasks``."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from _control_support import WAIT, Harness, read_json, running_server
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld.cli import main
from tunneld.control import SqliteDatabase
from tunneld.control._store import TASK_REPORTS_KEPT_PER_USER
from tunneld.control._tasks import TaskValidationError, validate_task

CI_SETTINGS = settings(derandomize=True, max_examples=100, deadline=None)
SLOW_SETTINGS = settings(max_examples=20_000, deadline=None)

_BODIES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda c: st.lists(c) | st.dictionaries(st.text(), c),
) | st.fixed_dictionaries(
    {},
    optional={
        "state": st.sampled_from(["working", "complete", "idle", "failure", "done", ""]),
        "summary": st.text(max_size=200),
        "link": st.none()
        | st.text(max_size=40)
        | st.text(max_size=40).map(lambda s: "https://" + s),
        "agent": st.none() | st.text(max_size=70),
    },
)


@pytest.fixture
async def control(nursery: trio.Nursery, tmp_path: Path) -> Harness:  # type: ignore[misc]
    async with running_server(nursery, tmp_path) as harness:
        await harness.user("alice")
        await harness.user("bob")
        yield harness


async def post(
    harness: Harness,
    body: bytes | dict[str, Any] | list[Any],
    token: str | None,
    *,
    content_type: str | None = "application/json",
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(harness.info.url + "/api/v1/tasks", data=data, method="POST")
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")

    def fetch() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return response.status, read_json(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, read_json(exc.read())

    return await trio.to_thread.run_sync(fetch)


async def listing(harness: Harness, token: str, query: str = "") -> list[dict[str, Any]]:
    status, _, body = await harness.get("/api/v1/tasks" + query, token)
    assert status == 200, body
    tasks: list[dict[str, Any]] = read_json(body)["tasks"]
    return tasks


async def test_report_and_list_with_reporter_identity(control: Harness) -> None:
    alice = await control.token("alice")
    web1 = await control.token("alice", agent="web1")
    before = time.time()
    status, body = await post(
        control,
        {"state": "working", "summary": "Running the test suite", "agent": "web1"},
        alice,
    )
    assert status == 201, body
    first = body["task"]
    assert first["agent"] == "web1"
    assert first["state"] == "working"
    assert first["link"] is None
    assert first["reporter"]["user"] == "alice"
    assert first["reporter"]["agent"] is None  # a client token
    assert alice.startswith("tnd_" + first["reporter"]["token_id"])
    assert before - 1 <= first["reported_at"] <= time.time() + 1

    # An agent token reports for its own agent without naming it.
    status, body = await post(
        control,
        {"state": "complete", "summary": "All 412 tests pass", "link": "https://ci.example/r/9"},
        web1,
    )
    assert status == 201, body
    assert body["task"]["agent"] == "web1"
    assert body["task"]["reporter"]["agent"] == "web1"

    tasks = await listing(control, alice)
    assert [(t["state"], t["summary"]) for t in tasks] == [
        ("complete", "All 412 tests pass"),
        ("working", "Running the test suite"),
    ]
    assert tasks[0]["link"] == "https://ci.example/r/9"
    assert [t["state"] for t in await listing(control, alice, "?state=working")] == ["working"]
    assert len(await listing(control, alice, "?limit=1")) == 1
    assert await listing(control, alice, "?agent=db1") == []
    # Secrets never leave: only the token id appears.
    assert alice not in json.dumps(tasks)


async def test_listing_shows_only_own_and_granted_reports(control: Harness) -> None:
    alice = await control.token("alice")
    bob = await control.token("bob")
    await post(control, {"state": "idle", "summary": "waiting", "agent": "web1"}, alice)
    await post(control, {"state": "idle", "summary": "secret work", "agent": "db1"}, alice)
    await post(control, {"state": "working", "summary": "bob's", "agent": "box"}, bob)
    assert [t["summary"] for t in await listing(control, bob)] == ["bob's"]
    await control.store.add_grant("bob", "alice", "web1", time.time())
    assert [t["summary"] for t in await listing(control, bob)] == ["bob's", "waiting"]
    assert [t["summary"] for t in await listing(control, alice)] == ["secret work", "waiting"]


async def test_auth_is_required(control: Harness) -> None:
    body = {"state": "working", "summary": "x", "agent": "web1"}
    status, answer = await post(control, body, None)
    assert status == 401
    assert answer["error"]["code"] == "unauthorized"
    status, _ = await post(control, body, "tnd_000000000000_" + "x" * 43)
    assert status == 401
    revoked = await control.token("alice")
    await control.store.revoke_token(revoked.split("_")[1], time.time())
    assert (await post(control, body, revoked))[0] == 401
    status, headers, _ = await control.get("/api/v1/tasks")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"summary": "x", "agent": "a"}, "state"),
        ({"state": "done", "summary": "x", "agent": "a"}, "state"),
        ({"state": "working", "agent": "a"}, "summary"),
        ({"state": "working", "summary": "", "agent": "a"}, "summary"),
        ({"state": "working", "summary": "   ", "agent": "a"}, "summary"),
        ({"state": "working", "summary": "x" * 161, "agent": "a"}, "summary"),
        ({"state": "working", "summary": "two\nlines", "agent": "a"}, "summary"),
        ({"state": "working", "summary": 5, "agent": "a"}, "summary"),
        ({"state": "working", "summary": "x", "agent": "a", "link": "javascript:alert(1)"}, "link"),
        ({"state": "working", "summary": "x", "agent": "a", "link": "ftp://h/f"}, "link"),
        ({"state": "working", "summary": "x", "agent": "a", "link": "https://"}, "link"),
        ({"state": "working", "summary": "x", "agent": "a", "link": "https://h/a b"}, "link"),
        ({"state": "working", "summary": "x", "agent": "a", "link": "http://h:99999/"}, "link"),
        ({"state": "working", "summary": "x", "agent": "a", "link": 3}, "link"),
        ({"state": "working", "summary": "x", "agent": "no spaces"}, "agent"),
        ({"state": "working", "summary": "x", "agent": "a", "emoji": "x"}, "emoji"),
        ({"state": "working", "summary": "x"}, "agent"),  # a client token must name it
        ([1, 2], "body"),
    ],
)
async def test_validation_errors_are_400s_naming_the_field(
    control: Harness, body: dict[str, Any] | list[Any], field: str
) -> None:
    alice = await control.token("alice")
    status, answer = await post(control, body, alice)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid"
    assert answer["error"]["message"].startswith(f"{field}: "), answer
    assert await listing(control, alice) == []  # nothing stored


async def test_bad_bodies_and_filters(control: Harness) -> None:
    alice = await control.token("alice")
    status, answer = await post(control, b"{not json", alice)
    assert status == 400
    assert "not valid JSON" in answer["error"]["message"]
    status, answer = await post(control, b"state=working", alice, content_type="text/plain")
    assert status == 415
    status, answer = await post(control, b"x" * 9000, alice)
    assert status == 413
    # An agent token cannot report for another agent.
    web1 = await control.token("alice", agent="web1")
    status, answer = await post(control, {"state": "idle", "summary": "x", "agent": "db1"}, web1)
    assert status == 403
    assert answer["error"]["message"].startswith("agent: ")
    for query in ("?limit=0", "?limit=501", "?limit=x", "?state=done", "?agent=a%20b"):
        status, _, body = await control.get("/api/v1/tasks" + query, alice)
        assert status == 400, query
        assert read_json(body)["error"]["code"] == "invalid"
    # The server keeps serving good requests afterwards.
    good = {"state": "complete", "summary": "still fine", "agent": "web1"}
    assert (await post(control, good, alice))[0] == 201


@CI_SETTINGS
@given(_BODIES)
def test_validate_task_fuzz_structured_bodies(body: object) -> None:
    _check_accepts_or_names_a_field(body)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TUNNELD_SLOW"), reason="long fuzz run: TUNNELD_SLOW=1")
@SLOW_SETTINGS
@given(_BODIES)
def test_validate_task_fuzz_long(body: object) -> None:
    _check_accepts_or_names_a_field(body)


def _check_accepts_or_names_a_field(body: object) -> None:
    error = _validation_error(body)
    if error is not None:
        assert str(error).startswith(f"{error.field}: ")
        return
    task = validate_task(body)
    assert task.state in ("working", "complete", "idle", "failure")
    assert 1 <= len(task.summary) <= 160
    assert task.link is None or task.link.startswith(("http://", "https://"))


def _validation_error(body: object) -> TaskValidationError | None:
    try:
        validate_task(body)
    except TaskValidationError as exc:
        return exc
    return None


def test_summary_length_counts_characters_not_bytes() -> None:
    task = validate_task({"state": "idle", "summary": "é" * 160, "agent": "a"})
    assert len(task.summary) == 160
    with pytest.raises(TaskValidationError, match="summary"):
        validate_task({"state": "idle", "summary": "é" * 161})


@CI_SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_validate_task_fuzz_accepts_or_names_a_field(body: object) -> None:
    error = _validation_error(body)
    if error is not None:
        assert str(error).startswith(f"{error.field}: ")
    else:
        task = validate_task(body)
        assert task.state in ("working", "complete", "idle", "failure")
        assert 1 <= len(task.summary) <= 160


@CI_SETTINGS
@given(
    state=st.sampled_from(["working", "complete", "idle", "failure"]),
    summary=st.text(min_size=1, max_size=160),
    link=st.none() | st.text(max_size=80).map(lambda s: "https://h.example/" + s),
)
def test_validate_task_fuzz_fields(state: str, summary: str, link: str | None) -> None:
    body = {"state": state, "summary": summary, "link": link}
    error = _validation_error(body)
    if error is not None:
        assert error.field in ("summary", "link")
    else:
        assert validate_task(body).summary == summary


def test_store_prunes_each_users_oldest_reports(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "control.db")
    alice = db.add_user("alice", None, 1.0)
    bob = db.add_user("bob", None, 1.0)
    db.add_task_report(bob.id, "tb", None, "box", "idle", "bob keeps this", None, 1.0)
    for i in range(TASK_REPORTS_KEPT_PER_USER + 5):
        db.add_task_report(alice.id, "ta", None, "web1", "working", f"step {i}", None, 2.0 + i)
    kept = db.list_task_reports(alice.id, limit=500)
    assert kept[0].summary == f"step {TASK_REPORTS_KEPT_PER_USER + 4}"
    everything = db.list_task_reports(None, limit=500, agent="web1")
    assert len(everything) == 500
    with db._read() as conn:
        count = conn.execute("SELECT count(*) FROM task_reports WHERE user_id = ?", (alice.id,))
        assert count.fetchone()[0] == TASK_REPORTS_KEPT_PER_USER
    assert [r.summary for r in db.list_task_reports(bob.id, limit=10)] == ["bob keeps this"]
    db.close()


def test_control_tasks_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path)
    assert main(["control", "--data-dir", d, "tasks"]) == 0
    out = capsys.readouterr().out
    assert out.split() == ["TIME", "OWNER", "AGENT", "STATE", "REPORTER", "SUMMARY"]
    db = SqliteDatabase(tmp_path / "control.db")
    alice = db.add_user("alice", None, 1.0)
    db.add_task_report(alice.id, "tok1", "web1", "web1", "working", "Building", None, 1e9)
    db.add_task_report(
        alice.id, "tok2", None, "db1", "failure", "Migration failed", "https://x.example/1", 1e9 + 5
    )
    db.close()
    assert main(["control", "tasks", "--data-dir", d]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[:5] == ["2001-09-09T01:46:45Z", "alice", "db1", "failure", "alice"]
    assert lines[1].endswith("Migration failed <https://x.example/1>")
    assert lines[2].split()[2:5] == ["web1", "working", "alice/web1"]

    assert main(["control", "tasks", "--data-dir", d, "--json", "--state", "working"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [t["summary"] for t in data["tasks"]] == ["Building"]
    assert data["tasks"][0]["reporter"] == {"user": "alice", "agent": "web1", "token_id": "tok1"}

    assert main(["control", "tasks", "--data-dir", d, "--json", "--agent", "db1"]) == 0
    assert [t["agent"] for t in json.loads(capsys.readouterr().out)["tasks"]] == ["db1"]
    assert main(["control", "tasks", "--data-dir", d, "--limit", "0"]) != 0
    assert "--limit" in capsys.readouterr().err
