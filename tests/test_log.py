"""Structured logging: key=value text, JSON lines, redaction of credentials."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from tunneld.log import Secret, get_logger, setup_logging


@pytest.fixture
def capture() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tunneld", False):
            root.removeHandler(handler)


def test_text_format_is_key_value(capture: io.StringIO) -> None:
    setup_logging("info", "text", capture)
    get_logger("tunneld.test").info("tunnel.acquired", agent="web1", leases=2, note="a b")
    line = capture.getvalue().strip()
    assert line.endswith('info tunnel.acquired agent=web1 leases=2 note="a b"')


def test_json_format_is_one_object_per_line(capture: io.StringIO) -> None:
    setup_logging("info", "json", capture)
    get_logger("tunneld.test").bind(peer="p1").warning("path.lost", rtt_ms=1.5, direct=False)
    record = json.loads(capture.getvalue())
    assert record["event"] == "path.lost"
    assert record["level"] == "warning"
    assert record["peer"] == "p1"
    assert record["rtt_ms"] == 1.5
    assert record["direct"] is False


def test_auto_format_picks_json_under_journald(
    capture: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging("info", "auto", capture)
    get_logger("tunneld.test").info("started")
    assert json.loads(capture.getvalue())["event"] == "started"


def test_fields_named_like_credentials_are_redacted(capture: io.StringIO) -> None:
    setup_logging("debug", "text", capture)
    get_logger("tunneld.test").info("login", user="ann", token="tk_secret", password="hunter2")
    out = capture.getvalue()
    assert "tk_secret" not in out
    assert "hunter2" not in out
    assert "token=[redacted]" in out
    assert "user=ann" in out


def test_secret_never_prints_its_value() -> None:
    secret = Secret("tk_live_abc")
    assert "tk_live_abc" not in repr(secret)
    assert "tk_live_abc" not in str(secret)
    assert "tk_live_abc" not in f"{secret}"
    assert secret.reveal() == "tk_live_abc"


def test_level_filters_records(capture: io.StringIO) -> None:
    setup_logging("warning", "text", capture)
    get_logger("tunneld.test").info("quiet")
    assert capture.getvalue() == ""


def test_exception_records_carry_the_traceback(capture: io.StringIO) -> None:
    setup_logging("info", "json", capture)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("tunneld.test").exception("handler.failed", request_id="r1")
    record = json.loads(capture.getvalue())
    assert "RuntimeError: boom" in record["traceback"]
