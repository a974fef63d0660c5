# -*- test-case-name: test.test_cli -*-
"""The C{nps} console script: run the server, or manage its clients and tunnels."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nps import __version__
from nps.cli.flags import normalize_go_flags
from nps.cli.run import begin_logging, nps_log_level, run_service
from nps.config import ConfigError, ServerConfig, format_host_port, load_server_config

GO_FLAGS = ("conf_path", "config", "version")
SERVICE_VERBS = ("install", "start", "stop", "restart", "uninstall", "reload", "update", "status")


def server_addr(config: ServerConfig) -> str:
    """The C{-server=} value for npc command lines."""
    host = config.public_addr or config.p2p_ip
    if not host and config.bridge_ip not in ("", "0.0.0.0", "::"):
        host = config.bridge_ip
    if not host:
        host = "127.0.0.1"
    if config.public_addr and (config.public_addr.rsplit(":", 1)[-1].isdigit() and not
                               config.public_addr.endswith("]")):
        return config.public_addr
    return format_host_port(host.strip("[]"), config.bridge_port)


def build_parser() -> argparse.ArgumentParser:
    from nps.cli import admin

    parser = argparse.ArgumentParser(prog="nps", description="nps reverse tunnel server (NPS compatible).")
    parser.add_argument("--config", "-c", help="path to nps.conf")
    parser.add_argument("--conf_path", help="NPS run directory: reads DIR/conf/nps.conf")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    admin.add_arguments(sub)
    for verb in SERVICE_VERBS:
        sub.add_parser(verb, help=f"{verb} the system service (not supported yet)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = normalize_go_flags(list(sys.argv[1:] if argv is None else argv), GO_FLAGS)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.version:
        print(f"nps {__version__} (nps-py)")
        return 0
    if args.command in SERVICE_VERBS:
        print(f"nps: '{args.command}' (system service management) is not supported yet", file=sys.stderr)
        return 2
    from nps.tap.server import find_server_config

    path = find_server_config(args.config, args.conf_path)
    try:
        config = load_server_config(path)
    except ConfigError as e:
        print(f"nps: {e}", file=sys.stderr)
        return 1
    if args.command in ("client", "tunnel"):
        from nps.cli import admin
        from nps.store import Store, StoreError

        try:
            store = Store(config.data_dir)
        except (StoreError, OSError) as e:
            print(f"nps: cannot open the store in {config.data_dir}: {e}", file=sys.stderr)
            return 1
        try:
            return admin.run(args, store, server_addr(config), sys.stdout)
        finally:
            store.close()
    begin_logging(nps_log_level(config.log_level))
    from nps.modes import load_modes
    from nps.server import NpsServer
    from nps.tap.server import log_config_warnings

    def build(reactor: object, on_fatal: object) -> NpsServer:
        log_config_warnings(config.warnings)
        return NpsServer(config, reactor, load_modes())

    return run_service(build, "nps")


if __name__ == "__main__":
    sys.exit(main())
