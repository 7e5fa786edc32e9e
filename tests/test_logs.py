"""Log lines: JSON or text, context on every line, and registered secrets never shown."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from syncd.logs import log_context, register_secret, setup_logging

log = logging.getLogger("syncd.test")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_when_not_a_terminal() -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    log.info("cycle %s", "converged", extra={"summary": {"pushed": 3}, "file": "a.csv"})
    log.debug("not shown")
    (event,) = lines(out)
    assert event["level"] == "INFO" and event["logger"] == "syncd.test"
    assert event["msg"] == "cycle converged"
    assert event["summary"] == {"pushed": 3} and event["file"] == "a.csv"
    assert event["ts"].endswith("Z")


def test_text_on_a_terminal() -> None:
    out = Tty()
    setup_logging(logging.INFO, stream=out)
    with log_context(target="news"):
        log.warning("slow answer", extra={"file": "my file.csv"})
    (line,) = out.getvalue().splitlines()
    assert " WARNING " in line and "syncd.test: slow answer" in line
    assert 'target=news file="my file.csv"' in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_context_fields_on_every_line_and_only_inside() -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out, json_output=True)
    with log_context(target="news", cycle="c1"):
        log.info("one")
        with log_context(file="x.csv"):
            log.info("two")
        log.info("three", extra={"cycle": "explicit"})
    log.info("outside")
    one, two, three, outside = lines(out)
    assert list(one)[:6] == ["ts", "level", "logger", "msg", "target", "cycle"]
    assert (one["target"], one["cycle"]) == ("news", "c1")
    assert two["file"] == "x.csv" and two["target"] == "news"
    assert three["cycle"] == "explicit"  # an explicit extra wins over the context
    assert "target" not in outside and "cycle" not in outside


def test_context_does_not_leak_between_threads() -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out, json_output=True)

    def worker(name: str) -> None:
        with log_context(target=name):
            log.info("in %s", name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    with log_context(target="main"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted((e["msg"], e["target"]) for e in lines(out)) == [("in a", "a"), ("in b", "b")]


@pytest.mark.parametrize("json_output", [True, False])
def test_registered_secret_never_appears(json_output: bool) -> None:
    secret = f"k3y/{uuid.uuid4().hex}+x"
    register_secret(secret)
    out = io.StringIO()
    setup_logging("DEBUG", stream=out, json_output=json_output)
    with log_context(target="news", cycle="c1"):
        log.info("calling with key %s", secret)
        log.info("url https://api.test/?api_key=" + quote(secret, safe=""))
        log.info("request", extra={"params": {"api_key": secret, "list": [secret]}, "k": secret})
        try:
            raise RuntimeError(f"bad answer for api_key={secret}")
        except RuntimeError:
            log.exception("call failed")
        log.info("stack", stack_info=True, extra={"obj": ValueError(secret)})
    text = out.getvalue()
    assert secret not in text
    assert quote(secret, safe="") not in text
    assert "k3y" not in text  # no fragment of it either
    assert text.count("***") >= 6
    assert "RuntimeError" in text and "call failed" in text  # the rest of the event survives


def test_other_handlers_see_the_scrubbed_record(caplog: pytest.LogCaptureFixture) -> None:
    secret = f"other-{uuid.uuid4().hex}"
    register_secret(secret)
    setup_logging("INFO", stream=io.StringIO())
    with caplog.at_level(logging.INFO):
        log.info("key=%s", secret)
    assert caplog.records[-1].getMessage() == "key=***"


def test_setup_replaces_console_handlers() -> None:
    root = logging.getLogger()
    console = logging.StreamHandler(io.StringIO())
    root.addHandler(console)
    first = setup_logging("INFO", stream=io.StringIO())
    second = setup_logging("INFO", stream=io.StringIO())
    assert console not in root.handlers and first not in root.handlers
    assert second in root.handlers


def test_libraries_stay_at_warning_at_debug_unless_asked() -> None:
    names = ("watchdog.observers.inotify_buffer", "apscheduler.scheduler", "httpx", "alembic")
    levels = {name: logging.getLogger(name.split(".")[0]).level for name in names}
    try:
        out = io.StringIO()
        setup_logging("DEBUG", stream=out, json_output=True)
        for name in names:
            logging.getLogger(name).debug("chatter")
        log.debug("ours")
        assert [line["msg"] for line in lines(out)] == ["ours"]
        setup_logging("DEBUG", stream=out, json_output=True, library_level="DEBUG")
        logging.getLogger("watchdog.observers.inotify_buffer").debug("asked for")
        assert lines(out)[-1]["msg"] == "asked for"
    finally:
        for name, level in levels.items():
            logging.getLogger(name.split(".")[0]).setLevel(level)


def test_text_times_are_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    from datetime import UTC, datetime

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no summer time
    time.tzset()
    try:
        out = Tty()
        setup_logging(logging.INFO, stream=out)
        before = datetime.now(UTC).replace(microsecond=0)
        log.info("tick")
        stamp = " ".join(out.getvalue().split()[:2])
    finally:
        monkeypatch.undo()
        time.tzset()
    when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=UTC)
    assert 0 <= (when - before).total_seconds() < 5


def test_journal_lines_carry_their_syslog_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    with (tmp_path / "journal").open("w") as journal:
        info = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        setup_logging(logging.DEBUG, stream=journal)  # type: ignore[arg-type]
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
    written = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in written] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert json.loads(written[2][3:])["msg"] == "w"  # the rest of the line is as ever
    # another file is not the journal, whatever the variable says
    other = io.StringIO()
    setup_logging(logging.INFO, stream=other)
    log.info("plain")
    assert other.getvalue().startswith("{")
