# -*- test-case-name: test.test_cli -*-
"""The C{npc} console script, taking NPS's own flags (C{npc -server=H:P -vkey=K -type=tcp})."""
from __future__ import annotations

import sys
from typing import Any, Sequence

from twisted.python import usage

from nps import __version__
from nps.cli.flags import normalize_go_flags
from nps.cli.run import begin_logging, nps_log_level, open_log, run_service

GO_FLAGS = (
    "server", "vkey", "type", "config", "proxy", "log", "log_level", "log_path", "log_format", "debug", "password",
    "local_type", "local_port", "local_ip", "target", "time", "stun_addr", "disconnect_timeout", "pprof", "version",
    "remark", "tls_ca", "tls_server_name", "tls_known_servers", "proto",
)
NOT_YET = {"update": "self-update", "nat": "NAT type detection"}
#: C{npc <verb>} for the systemd service (C{npc status} is C{systemctl status npc} here).
SERVICE_VERBS = ("install", "uninstall", "start", "stop", "restart", "status", "reload")
#: NPS flags we accept and ignore (documented as such).
IGNORED = ("log", "debug", "pprof", "stun_addr", "time", "proxy")
#: Flags main() handles itself (not options of the npc service).
LOGGING_FLAGS = ("log_level", "log_path", "log_format")


def split_root(args: Sequence[str]) -> tuple[str, list[str]] | str:
    """Take C{--root DIR} / C{-root=DIR} out of C{args}; an error message if it lacks its value."""
    root = "/"
    rest: list[str] = []
    words = iter(args)
    for arg in words:
        name, equals, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "root":
            if not equals:
                value = next(words, "")
            if not value:
                return "--root needs a directory"
            root = value
        else:
            rest.append(arg)
    return root, rest


def check_install_flags(flags: Sequence[str]) -> str | None:
    """Why npc could not run with C{flags} (C{None} if it can), checked as npc itself will."""
    from nps.tap.client import Options

    passthrough = []
    words = iter(flags)
    for arg in words:
        name, equals, _ = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or name not in GO_FLAGS:
            return f"unknown flag {arg!r} for npc install"
        word = [arg]
        if not equals and name not in ("version", "debug"):
            word.append(next(words, ""))  # Go also takes `-server 1.2.3.4:8024`
        if name not in IGNORED and name not in LOGGING_FLAGS and name != "version":
            passthrough.extend(normalize_go_flags(word, GO_FLAGS))
    try:
        Options().parseOptions(passthrough)
    except usage.UsageError as e:
        return str(e)
    return None


def service_command(verb: str, rest: Sequence[str]) -> int:
    """C{npc install FLAGS|uninstall|start|stop|restart|status|reload}."""
    from nps import service

    split = split_root(rest)
    if isinstance(split, str):
        print(f"npc: {split}", file=sys.stderr)
        return 2
    root, flags = split
    if verb not in ("install", "uninstall") and (flags or root != "/"):
        print(f"npc: 'npc {verb}' takes no flags (it runs `systemctl {verb} npc`)", file=sys.stderr)
        return 2
    try:
        if verb == "install":
            problem = check_install_flags(flags)
            if problem is not None:
                print(f"npc: {problem}", file=sys.stderr)
                return 1
            service.install("npc", root=root, argv=flags)
            return 0
        if verb == "uninstall":
            if flags:
                print("npc: 'npc uninstall' takes only --root", file=sys.stderr)
                return 2
            service.uninstall("npc", root=root)
            return 0
    except service.ServiceError as e:
        print(f"npc: {e}", file=sys.stderr)
        return e.code
    return service.control("npc", verb)


def register_command(args: Sequence[str]) -> int:
    """C{npc register -server=H:P -vkey=K [-time=HOURS]}: register this address for the server's ip_limit."""
    from nps.cli.registering import read_register_flags, run_registration
    from nps.config import parse_host_port
    from nps.iplimit import register

    values = {"server": "", "vkey": "", "time": "2"}
    if not read_register_flags(args, values, "npc register"):
        return 2
    if not values["server"] or not values["vkey"]:
        print("npc: npc register needs -server=HOST:PORT and -vkey=KEY", file=sys.stderr)
        return 2
    try:
        host, port = parse_host_port(values["server"])
    except ValueError as e:
        print(f"npc: -server={values['server']!r}: {e}", file=sys.stderr)
        return 2
    try:
        hours = float(values["time"])
    except ValueError:
        hours = -1.0
    if not 0 < hours <= 24 * 366:
        print(f"npc: -time={values['time']!r}: expected a number of hours (0 < hours <= 8784)", file=sys.stderr)
        return 2

    def registered(answer: dict[str, Any]) -> str:
        note = "" if answer.get("ip_limit") else " (note: this server does not use ip_limit)"
        return f"npc: {answer.get('ip')} registered on {values['server']} for {hours:g} hours{note}"

    return run_registration(values["server"], lambda reactor: register(reactor, host, port, values["vkey"], hours),
                            registered)


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw and raw[0] in SERVICE_VERBS:
        return service_command(raw[0], raw[1:])  # the flags as given go into the unit
    args = normalize_go_flags(raw, GO_FLAGS)
    if any(arg.startswith("--proto") for arg in args):
        from nps.legacy.client import legacy_main  # npc -proto=0.26: against an NPS 0.26 server

        return legacy_main(args)
    if args and not args[0].startswith("-"):
        command = args[0]
        if command == "register":
            return register_command(args[1:])
        if command in NOT_YET:
            print(f"npc: {NOT_YET[command]} ('npc {command}') is not supported yet", file=sys.stderr)
            return 2
        print(f"npc: unknown command {command!r}", file=sys.stderr)
        return 2
    from nps.tap.client import Options

    options = Options()
    passthrough = []
    log_level = 6
    log_path = ""
    log_format = "text"
    show_version = False
    for arg in args:
        name, _, value = arg.lstrip("-").partition("=")
        if name == "version":
            show_version = True
        elif name == "log_path":
            log_path = value
        elif name == "log_format":
            if value not in ("text", "json"):
                print(f"npc: -log_format={value!r}: expected text or json", file=sys.stderr)
                return 2
            log_format = value
        elif name == "log_level":
            try:
                log_level = int(value)
            except ValueError:
                print(f"npc: -log_level={value!r} is not a number 0-7", file=sys.stderr)
                return 2
        elif name in IGNORED:
            print(f"npc: warning: flag -{name} is accepted but not supported yet", file=sys.stderr)
        else:
            passthrough.append(arg)
    if show_version:
        print(f"npc {__version__} (nps-py)")
        return 0
    try:
        options.parseOptions(passthrough)
    except usage.UsageError as e:
        print(f"npc: {e}", file=sys.stderr)
        return 1
    try:
        out = open_log(log_path) if log_path else sys.stdout
    except OSError as e:
        print(f"npc: cannot open -log_path={log_path}: {e}", file=sys.stderr)
        return 1
    begin_logging(nps_log_level(log_level), out, json_lines=log_format == "json")
    from nps.tap.client import makeService

    return run_service(lambda reactor, on_fatal: makeService(options, reactor, on_fatal), "npc")


if __name__ == "__main__":
    sys.exit(main())
