# -*- test-case-name: test.test_logging -*-
"""Log output: JSON lines, NPS's 0-7 levels, Twisted's port chatter dropped, log files."""
from __future__ import annotations

import io
import json
from pathlib import Path

from twisted.logger import LogLevel, LogPublisher, Logger, PredicateResult
from twisted.python.failure import Failure

from nps.cli.run import JsonLinesObserver, _DropPortChatter, nps_log_level, open_log


def test_json_lines_carry_message_and_fields() -> None:
    """Each event becomes one JSON object with time, level, namespace, the formatted message and its fields."""
    out = io.StringIO()
    publisher = LogPublisher(JsonLinesObserver(out))
    Logger(namespace="nps.access", observer=publisher).info("client={client} in={n}", client=3, n=10)
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["namespace"] == "nps.access"
    assert record["level"] == "info"
    assert record["message"] == "client=3 in=10"
    assert (record["client"], record["n"]) == (3, 10)
    assert record["time"].endswith("+00:00")


def test_json_lines_include_tracebacks() -> None:
    """A logged failure keeps its traceback in the JSON record."""
    out = io.StringIO()
    log = Logger(namespace="nps.test", observer=LogPublisher(JsonLinesObserver(out)))
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("boom", Failure())
    record = json.loads(out.getvalue())
    assert record["level"] == "critical" and "ZeroDivisionError" in record["traceback"]


def test_nps_levels() -> None:
    """NPS's 0-7 scale maps onto Twisted's levels (7 = debug, 6 = info, 4 = warn)."""
    assert nps_log_level(7) is LogLevel.debug
    assert nps_log_level(6) is LogLevel.info
    assert nps_log_level(4) is LogLevel.warn
    assert nps_log_level(3) is LogLevel.error
    assert nps_log_level(0) is LogLevel.critical


def test_port_chatter_is_dropped() -> None:
    """Twisted's 'X starting on N' and '(UDP Port N Closed)' legacy lines are filtered, other lines kept."""
    drop = _DropPortChatter()
    for text in ("PublicTcpFactory starting on 8002", "(UDP Port 5353 Closed)", "(TCP Port 80 Closed)"):
        event = {"log_namespace": "log_legacy", "log_format": "{log_text}", "log_text": text}
        assert drop(event) is PredicateResult.no, text
    kept = {"log_namespace": "log_legacy", "log_format": "{log_text}", "log_text": "something else"}
    assert drop(kept) is PredicateResult.maybe


def test_open_log_appends_and_creates_directories(tmp_path: Path) -> None:
    """A log file's directory is created; lines are appended, not truncated."""
    path = tmp_path / "logs" / "nps.log"
    with open_log(str(path)) as f:
        f.write("one\n")
    with open_log(str(path)) as f:
        f.write("two\n")
    assert path.read_text() == "one\ntwo\n"
