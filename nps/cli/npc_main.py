# -*- test-case-name: test.test_cli -*-
"""The C{npc} console script, taking NPS's own flags (C{npc -server=H:P -vkey=K -type=tcp})."""
from __future__ import annotations

import sys
from typing import Sequence

from twisted.python import usage

from nps import __version__
from nps.cli.flags import normalize_go_flags
from nps.cli.run import begin_logging, nps_log_level, run_service

GO_FLAGS = (
    "server", "vkey", "type", "config", "proxy", "log", "log_level", "log_path", "debug", "password",
    "local_type", "local_port", "target", "time", "stun_addr", "disconnect_timeout", "pprof", "version",
    "remark",
)
NOT_YET = {
    "status": "npc status", "register": "npc register", "install": "service management",
    "start": "service management", "stop": "service management", "restart": "service management",
    "uninstall": "service management", "update": "self-update", "nat": "NAT type detection",
}
#: NPS flags we accept and ignore (documented as such).
IGNORED = ("log", "log_path", "debug", "pprof", "stun_addr", "time", "proxy", "target", "local_type", "local_port")


def main(argv: Sequence[str] | None = None) -> int:
    args = normalize_go_flags(list(sys.argv[1:] if argv is None else argv), GO_FLAGS)
    if args and not args[0].startswith("-"):
        command = args[0]
        if command in NOT_YET:
            print(f"npc: {NOT_YET[command]} ('npc {command}') is not supported yet", file=sys.stderr)
            return 2
        print(f"npc: unknown command {command!r}", file=sys.stderr)
        return 2
    from nps.tap.client import Options

    options = Options()
    passthrough = []
    log_level = 6
    show_version = False
    for arg in args:
        name, _, value = arg.lstrip("-").partition("=")
        if name == "version":
            show_version = True
        elif name == "log_level":
            try:
                log_level = int(value)
            except ValueError:
                print(f"npc: -log_level={value!r} is not a number 0-7", file=sys.stderr)
                return 2
        elif name == "password":
            print("npc: visitor mode (-password, secret/p2p) is not supported yet", file=sys.stderr)
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
    begin_logging(nps_log_level(log_level))
    from nps.tap.client import makeService

    return run_service(lambda reactor, on_fatal: makeService(options, reactor, on_fatal), "npc")


if __name__ == "__main__":
    sys.exit(main())
