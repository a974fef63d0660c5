# -*- test-case-name: test.test_cli -*-
"""Run a service in the reactor from a console script, with logging and an exit code."""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
import resource
import signal
import sys
from typing import Any, Callable, TextIO

from twisted.application.service import IService
from twisted.internet.error import CannotListenError
from zope.interface import implementer
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    LogEvent,
    PredicateResult,
    ILogObserver,
    formatEvent,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogBeginner,
    textFileLogObserver,
)

log = Logger()


def nps_log_level(level: int) -> LogLevel:
    """NPS's 0-7 scale (7 = debug) to a Twisted log level."""
    if level >= 7:
        return LogLevel.debug
    if level >= 6:
        return LogLevel.info
    if level >= 4:
        return LogLevel.warn
    if level >= 2:
        return LogLevel.error
    return LogLevel.critical


#: Twisted's own per-port chatter ("Factory starting on 8002", "(UDP Port 5353 Closed)"):
#: our tunnel log lines say the same once; per-session UDP sockets would repeat it endlessly.
_PORT_CHATTER = re.compile(r"^(\S+ starting on \d+|\((TCP|UDP) Port \d+ Closed\))$")


@implementer(ILogFilterPredicate)
class _DropPortChatter:
    def __call__(self, event: LogEvent) -> PredicateResult:
        if event.get("log_namespace") == "log_legacy" and _PORT_CHATTER.match(formatEvent(event)):
            return PredicateResult.no
        return PredicateResult.maybe


@implementer(ILogObserver)
class JsonLinesObserver:
    """One JSON object per line: time, level, namespace, message, and the event's own fields."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
            "level": getattr(event.get("log_level"), "name", "info"),
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and isinstance(value, (str, int, float, bool, type(None))):
                record.setdefault(key, value)
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(record, default=str) + "\n")
        self._out.flush()


def open_log(path: str) -> TextIO:
    """Open C{path} for appending log lines (line-buffered); a clear OSError if it cannot be."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return open(path, "a", buffering=1, encoding="utf-8")


def begin_logging(level: LogLevel, out: TextIO = sys.stdout, json_lines: bool = False) -> None:
    """Log events at C{level} and above to C{out}, as text or as JSON lines.

    Twisted's per-port chatter is dropped; C{nps.access} lines (one per
    tunneled connection) are info events like any other.
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    sink = JsonLinesObserver(out) if json_lines else textFileLogObserver(out)
    observer = FilteringLogObserver(sink, [_DropPortChatter(), predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def raise_nofile_limit() -> None:
    """Allow as many open sockets as the hard limit permits (tunnels hold two each)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def run_service(build: Callable[[Any, Callable[[int, str], None]], IService], name: str) -> int:
    """Build the service, start it, run the reactor until stopped; return the exit code."""
    from nps.memtune import tune_malloc
    from nps.reactor import install

    install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    exit_code = [0]

    def on_fatal(code: int, message: str) -> None:
        log.critical("{name}: {message}", name=name, message=message)
        exit_code[0] = code
        if reactor.running:
            reactor.callLater(0, reactor.stop)

    raise_nofile_limit()
    tune_malloc()
    service = build(reactor, on_fatal)
    # Signal handlers first: a SIGHUP/SIGTERM that arrives once the ports are open must not kill us.
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        if stopping:
            return  # a second TERM/INT (e.g. sent to the whole process group) changes nothing
        stopping.append(signum)
        log.info("{name}: received {signal}, shutting down", name=name, signal=signal.Signals(signum).name)
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reload = getattr(service, "reload", None)
    if reload is not None:
        def on_hangup(signum: int, frame: object) -> None:
            log.info("{name}: received SIGHUP, reloading the configuration", name=name)
            reactor.callFromThread(reload)

        signal.signal(signal.SIGHUP, on_hangup)
    try:
        service.privilegedStartService()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    except CannotListenError as e:
        print(f"{name}: cannot listen on {e.interface or '0.0.0.0'}:{e.port}: {e.socketError}", file=sys.stderr)
        return 1
    except Exception as e:
        print(f"{name}: cannot start: {e}", file=sys.stderr)
        return 1
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run(installSignalHandlers=False)
    return exit_code[0]
