# -*- test-case-name: test.test_cli -*-
"""The C{nps} console script: run the server, or manage its clients and tunnels."""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Callable, Sequence

from nps import __version__
from nps.cli.flags import normalize_go_flags
from nps.cli.run import begin_logging, nps_log_level, open_log, run_service
from nps.config import ConfigError, ServerConfig, format_host_port, load_server_config

if TYPE_CHECKING:
    from nps.store import Store

GO_FLAGS = ("log_format", "conf_path", "config", "version")
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


def _with_store(config: ServerConfig, run: Callable[["Store"], int]) -> int:
    """
    Open the store in C{config.data_dir}, C{run} a command on it, close it.

    @return: C{run}'s exit status, or 1 (after saying why) when the store cannot be opened.
    """
    from nps.store import Store, StoreError

    try:
        store = Store(config.data_dir)
    except (StoreError, OSError) as e:
        print(f"nps: cannot open the store in {config.data_dir}: {e}", file=sys.stderr)
        return 1
    try:
        return run(store)
    finally:
        store.close()


def build_parser() -> argparse.ArgumentParser:
    from nps.cli import admin

    parser = argparse.ArgumentParser(prog="nps", description="nps reverse tunnel server (NPS compatible).")
    parser.add_argument("--config", "-c", help="path to nps.conf")
    parser.add_argument("--conf_path", help="NPS run directory: reads DIR/conf/nps.conf")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--log_format", choices=("text", "json"), default="text",
                        help="log lines as text (default) or JSON lines")
    sub = parser.add_subparsers(dest="command")
    admin.add_arguments(sub)
    from nps.admin import cli as admin_cli

    admin_cli.add_arguments(sub)
    for verb in SERVICE_VERBS:
        if verb == "update":
            sub.add_parser(verb, help="self-update (not supported yet: use pip)")
            continue
        what = {"install": "install nps as a systemd service (config, data dir, hardened unit)",
                "uninstall": "remove the systemd unit (keeps config and data)"}.get(verb, f"systemctl {verb} nps")
        verb_parser = sub.add_parser(verb, help=what)
        if verb in ("install", "uninstall"):
            verb_parser.add_argument("--root", default="/", metavar="DIR",
                                     help="install below DIR instead of / (images, tests)")
        if verb == "install":
            # Also after the verb (`nps install --config FILE`); SUPPRESS keeps a value given before it.
            verb_parser.add_argument("--config", "-c", default=argparse.SUPPRESS, help="the nps.conf to install")
            verb_parser.add_argument("--conf_path", default=argparse.SUPPRESS,
                                     help="NPS run directory: installs DIR/conf/nps.conf")
    return parser


def shipped_config() -> str | None:
    """The commented C{etc/nps.conf} next to the package (a source checkout or editable install)."""
    import nps

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(nps.__file__))), "etc", "nps.conf")
    return path if os.path.isfile(path) else None


def service_command(args: argparse.Namespace) -> int:
    """C{nps install|uninstall|start|stop|restart|status|reload}."""
    from nps import service

    try:
        if args.command == "install":
            from nps.tap.server import find_server_config

            path = find_server_config(args.config, args.conf_path) or shipped_config()
            if path is not None:
                try:
                    load_server_config(path)
                except ConfigError as e:
                    print(f"nps: {e}", file=sys.stderr)
                    return 1
            service.install("nps", root=args.root, config=path)
            return 0
        if args.command == "uninstall":
            service.uninstall("nps", root=args.root)
            return 0
    except service.ServiceError as e:
        print(f"nps: {e}", file=sys.stderr)
        return e.code
    return service.control("nps", args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = normalize_go_flags(list(sys.argv[1:] if argv is None else argv), GO_FLAGS)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.version:
        print(f"nps {__version__} (nps-py)")
        return 0
    if args.command == "update":
        print("nps: 'update' (self-update) is not supported yet: upgrade with pip", file=sys.stderr)
        return 2
    if args.command in SERVICE_VERBS:
        return service_command(args)
    from nps.tap.server import find_server_config

    path = find_server_config(args.config, args.conf_path)
    try:
        config = load_server_config(path)
    except ConfigError as e:
        print(f"nps: {e}", file=sys.stderr)
        return 1
    if args.command in ("admin", "import"):
        from nps.admin import cli as admin_cli

        return _with_store(config, lambda store: admin_cli.run(args, store, config, sys.stdout))
    if args.command in ("client", "tunnel", "host"):
        from nps.cli import admin

        return _with_store(config, lambda store: admin.run(args, store, server_addr(config), sys.stdout))
    try:
        out = open_log(config.log_path) if config.log_path else sys.stdout
    except OSError as e:
        print(f"nps: cannot open log_path {config.log_path}: {e}", file=sys.stderr)
        return 1
    begin_logging(nps_log_level(config.log_level), out, json_lines=args.log_format == "json")
    from nps.modes import load_modes
    from nps.server import NpsServer
    from nps.tap.server import log_config_warnings

    def build(reactor: object, on_fatal: object) -> NpsServer:
        log_config_warnings(config.warnings)
        return NpsServer(config, reactor, load_modes())

    return run_service(build, "nps")


if __name__ == "__main__":
    sys.exit(main())
