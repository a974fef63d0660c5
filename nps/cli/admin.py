# -*- test-case-name: test.test_cli_admin -*-
"""The C{nps client ...} and C{nps tunnel ...} admin commands.

They work on the server's store directly, so they also work while the
server is stopped; a running server notices the new store revision and
applies the change without a restart.

The C{nps} front end calls L{add_arguments} while it builds its parser and
L{run} when L{handles} says the parsed command is one of ours::

    sub = parser.add_subparsers(dest="command")
    admin.add_arguments(sub)
    args = parser.parse_args(argv)
    if admin.handles(args):
        return admin.run(args, Store(data_dir), "1.2.3.4:8024", sys.stdout)

Exit codes: 0 success, 1 the store refused (unknown id, port taken, ...),
2 bad command-line values. Errors go to C{err}, never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import attrs

from nps.access import DENY_OPTION, format_deny_list, parse_deny_list
from nps.model import ClientRecord, Tunnel
from nps.store import KNOWN_MODES, PORTLESS_MODES, Store, StoreError, normalize_target

__all__ = ["COMMANDS", "add_arguments", "handles", "npc_command", "run"]

#: The top-level sub-commands this module adds.
COMMANDS = ("client", "tunnel", "host")

#: Exit codes.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_ACTION = "_nps_admin_action"


class _UsageError(Exception):
    """
    A command-line value that makes no sense (exit code 2).
    """


@attrs.frozen
class _Context:
    """
    What a command needs besides its arguments.
    """

    store: Store
    server_addr: str
    out: TextIO
    err: TextIO

    def print(self, *lines: str) -> None:
        """
        Write lines to the output.
        """
        for line in lines:
            self.out.write(line + "\n")

    def print_json(self, value: object) -> None:
        """
        Write C{value} as indented JSON.
        """
        self.out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


_Handler = Callable[[argparse.Namespace, _Context], int]


# --------------------------------------------------------------------------
# Formatting


def npc_command(server_addr: str, vkey: str, bridge_type: str = "tcp") -> str:
    """
    @return: The command line that starts npc for a client, as NPS's web
        admin shows it: C{npc -server=<addr> -vkey=<vkey> -type=tcp}.
        Arguments are shell-quoted only when they need it.
    """
    return " ".join(
        ["npc", shlex.quote(f"-server={server_addr}"), shlex.quote(f"-vkey={vkey}"), shlex.quote(f"-type={bridge_type}")]
    )


def _visitor_command(server_addr: str, tunnel: Tunnel) -> str:
    """
    @return: The npc command a visitor runs to reach a secret or p2p tunnel.
    """
    return " ".join(
        [
            "npc",
            shlex.quote(f"-server={server_addr}"),
            "-vkey=VISITOR_VKEY",
            "-type=tcp",
            shlex.quote(f"-password={tunnel.password}"),
            f"-local_type={tunnel.mode}",
            "-local_port=2000",
        ]
    )


def _when(ts: float) -> str:
    """
    @return: C{ts} as local date and time.
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _status(client: ClientRecord) -> str:
    """
    @return: A client's connection status for humans.
    """
    details = []
    if client.remote_addr:
        details.append(f"from {client.remote_addr}")
    if client.version:
        details.append(f"npc {client.version}")
    if client.online:
        text = "online"
        if client.last_seen:
            details.append(f"since {_when(client.last_seen)}")
    else:
        text = "offline"
        if client.last_seen:
            details.insert(0, f"last seen {_when(client.last_seen)}")
    if details:
        text += " (" + ", ".join(details) + ")"
    if not client.enabled:
        text = "disabled, " + text
    return text


def _listen(tunnel: Tunnel) -> str:
    """
    @return: Where a tunnel listens, C{ip:port}, or C{-} for portless modes.
    """
    if tunnel.mode in PORTLESS_MODES:
        return "-"
    ip = f"[{tunnel.server_ip}]" if ":" in tunnel.server_ip else tunnel.server_ip
    return f"{ip}:{tunnel.server_port}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """
    @return: Lines of a plain-text table with left-aligned columns.
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _secret(value: str) -> str:
    """
    @return: A placeholder telling whether a password is set, not the password.
    """
    return "(set)" if value else "(none)"


def _client_lines(client: ClientRecord) -> list[str]:
    """
    @return: The C{client show} lines for one client.
    """
    limits = [
        ("rate limit", f"{client.rate_limit} KB/s" if client.rate_limit else "none"),
        ("flow limit", f"{client.flow_limit} MB" if client.flow_limit else "none"),
        ("max connections", str(client.max_conn or "no limit")),
        ("max tunnels", str(client.max_tunnels or "no limit")),
    ]
    pairs = [
        ("id", str(client.id)),
        ("remark", client.remark),
        ("vkey", client.vkey),
        ("enabled", "yes" if client.enabled else "no"),
        ("status", _status(client)),
        ("config-file connections", "allowed" if client.config_conn_allow else "refused"),
        ("crypt", "yes" if client.crypt else "no"),
        ("compress", "yes" if client.compress else "no"),
        *limits,
        ("basic auth user", client.basic_username or "(none)"),
        ("basic auth password", _secret(client.basic_password)),
        ("web user", client.web_username or "(none)"),
        ("web password", _secret(client.web_password)),
    ]
    width = max(len(k) for k, _ in pairs)
    return [f"{k + ':':<{width + 1}} {v}".rstrip() for k, v in pairs]


def _tunnel_rows(tunnels: Sequence[Tunnel]) -> list[list[object]]:
    """
    @return: Table rows for C{tunnel list}.
    """
    return [
        [
            t.id,
            t.client_id,
            t.mode,
            _listen(t),
            ",".join(t.targets) or "-",
            "enabled" if t.enabled else "disabled",
            t.remark,
        ]
        for t in tunnels
    ]


_TUNNEL_HEADERS = ("ID", "CLIENT", "MODE", "LISTEN", "TARGETS", "STATUS", "REMARK")


def _tunnel_summary(t: Tunnel) -> str:
    """
    @return: One line describing a tunnel.
    """
    targets = ", ".join(t.targets) if t.targets else "(no fixed target)"
    where = "no public port" if t.mode in PORTLESS_MODES else _listen(t)
    return f"{t.mode} {where} -> {targets} (client {t.client_id})"


# --------------------------------------------------------------------------
# Commands


def _client_add(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps client add}.
    """
    for name in ("rate_limit", "flow_limit", "max_conn", "max_tunnels"):
        if getattr(args, name) < 0:
            raise _UsageError(f"--{name.replace('_', '-')} must not be negative")
    client = ctx.store.add_client(
        args.remark,
        vkey=args.vkey,
        config_conn_allow=not args.no_config_conn,
        enabled=not args.disabled,
        rate_limit=args.rate_limit,
        flow_limit=args.flow_limit,
        max_conn=args.max_conn,
        max_tunnels=args.max_tunnels,
        basic_username=args.basic_user,
        basic_password=args.basic_password,
        web_username=args.web_user,
        web_password=args.web_password,
        crypt=args.crypt,
        compress=args.compress,
    )
    command = npc_command(ctx.server_addr, client.vkey)
    if args.json:
        ctx.print_json({"client": attrs.asdict(client), "npc_command": command})
        return EXIT_OK
    ctx.print(
        f"Added client {client.id}" + (f" ({client.remark})" if client.remark else "") + ".",
        f"vkey: {client.vkey}",
        "Start npc on the client's machine with:",
        command,
    )
    return EXIT_OK


def _client_list(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps client list}.
    """
    snap = ctx.store.snapshot()
    counts: dict[int, int] = {}
    for t in snap.tunnels:
        counts[t.client_id] = counts.get(t.client_id, 0) + 1
    public = ctx.store.list_public_sessions()
    if args.json:
        ctx.print_json([dict(attrs.asdict(c), tunnels=counts.get(c.id, 0)) for c in snap.clients]
                       + [dict(p, public=True, online=True) for p in public])
        return EXIT_OK
    if not snap.clients and not public:
        ctx.print("No clients. Add one with: nps client add --remark NAME")
        return EXIT_OK
    rows = [[c.id, c.remark, c.vkey, _status(c), counts.get(c.id, 0)] for c in snap.clients]
    rows += [[p["id"], p["remark"], "(public_vkey)", _public_status(p), p["tunnels"]] for p in public]
    ctx.print(*_table(("ID", "REMARK", "VKEY", "STATUS", "TUNNELS"), rows))
    return EXIT_OK


def _public_status(session: dict[str, Any]) -> str:
    """
    @return: The status of an npc online with the public key (config-file mode).
    """
    details = ["config-file mode"]
    if session["remote_addr"]:
        details.append(f"from {session['remote_addr']}")
    if session["version"]:
        details.append(f"npc {session['version']}")
    if session["since"]:
        details.append(f"since {_when(session['since'])}")
    return "online (" + ", ".join(details) + ")"


def _client_show(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps client show ID}.
    """
    client = ctx.store.get_client(args.id)
    tunnels = ctx.store.list_tunnels(client.id)
    command = npc_command(ctx.server_addr, client.vkey)
    flow_used = sum(ctx.store.traffic("client").get(client.id, (0, 0)))
    flow_reason = _flow_used_up(client, flow_used)
    if args.json:
        ctx.print_json(
            {
                "client": attrs.asdict(client),
                "tunnels": [t.to_wire() for t in tunnels],
                "npc_command": command,
                "flow_used": flow_used,
                "limit_reached": flow_reason,
            }
        )
        return EXIT_OK
    ctx.print(*_client_lines(client))
    used_mb = f"{flow_used / (1024 * 1024):.1f} MB" + (f" of {client.flow_limit} MB" if client.flow_limit else "")
    ctx.print(f"flow used: {used_mb}" + (f" -- {flow_reason}: its connections are refused" if flow_reason else ""))
    ctx.print("", "Start npc with:", command, "")
    if tunnels:
        ctx.print(f"Tunnels ({len(tunnels)}):", *_table(_TUNNEL_HEADERS, _tunnel_rows(tunnels)))
    else:
        ctx.print("No tunnels.")
    return EXIT_OK


def _flow_used_up(client: ClientRecord, used: int) -> str:
    """
    @return: Why the server refuses the client's connections by its
        C{flow_limit} (as of the last saved traffic counters), or C{""}.
    """
    if client.flow_limit and used >= client.flow_limit * 1024 * 1024:
        return f"flow_limit of {client.flow_limit} MB used up"
    return ""


def _client_del(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps client del ID}.
    """
    client = ctx.store.get_client(args.id)
    count = len(ctx.store.list_tunnels(client.id))
    ctx.store.delete_client(client.id)
    if args.json:
        ctx.print_json({"deleted_client": client.id, "deleted_tunnels": count})
    else:
        plural = "" if count == 1 else "s"
        ctx.print(f"Deleted client {client.id} and its {count} tunnel{plural}.")
    return EXIT_OK


def _tunnel_add(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps tunnel add}.
    """
    if args.mode not in KNOWN_MODES:
        raise _UsageError(f"unknown mode {args.mode!r}; choose from: {', '.join(KNOWN_MODES)}")
    if args.mode in PORTLESS_MODES:
        if args.port:
            raise _UsageError(f"mode {args.mode} has no public port; leave out --port")
        if not args.password:
            raise _UsageError(f"mode {args.mode} needs --password (the key visitors use)")
    elif args.port is None:
        raise _UsageError(f"mode {args.mode} needs --port")
    elif not 1 <= args.port <= 65535:
        raise _UsageError(f"--port must be in 1-65535, got {args.port}")
    targets = []
    for text in args.target or ():
        try:
            targets.append(normalize_target(text))
        except ValueError as e:
            raise _UsageError(str(e)) from None
    options: dict[str, str] = {}
    if args.deny_ips:
        try:
            options[DENY_OPTION] = format_deny_list(parse_deny_list(args.deny_ips))
        except ValueError as e:
            raise _UsageError(f"--deny-ips: {e}") from None
    tunnel = ctx.store.add_tunnel(
        args.client,
        args.mode,
        args.port or 0,
        targets,
        server_ip=args.server_ip,
        remark=args.remark,
        password=args.password,
        local_path=args.local_path,
        strip_pre=args.strip_pre,
        enabled=not args.disabled,
        options=options,
    )
    if args.json:
        ctx.print_json(tunnel.to_wire())
        return EXIT_OK
    ctx.print(f"Added tunnel {tunnel.id}: {_tunnel_summary(tunnel)}.")
    if tunnel.mode in PORTLESS_MODES:
        ctx.print("A visitor reaches it through its own npc (with any other client's vkey):")
        ctx.print(_visitor_command(ctx.server_addr, tunnel))
    return EXIT_OK


def _tunnel_list(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps tunnel list}.
    """
    if args.client is not None:
        ctx.store.get_client(args.client)
    tunnels = ctx.store.list_tunnels(args.client)
    if args.json:
        ctx.print_json([t.to_wire() for t in tunnels])
        return EXIT_OK
    if not tunnels:
        ctx.print("No tunnels.")
        return EXIT_OK
    ctx.print(*_table(_TUNNEL_HEADERS, _tunnel_rows(tunnels)))
    return EXIT_OK


def _tunnel_show(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps tunnel show ID}.
    """
    t = ctx.store.get_tunnel(args.id)
    if args.json:
        ctx.print_json(t.to_wire())
        return EXIT_OK
    pairs = [
        ("id", str(t.id)),
        ("client", str(t.client_id)),
        ("mode", t.mode),
        ("listen", _listen(t)),
        ("targets", ", ".join(t.targets) or "-"),
        ("status", "enabled" if t.enabled else "disabled"),
        ("remark", t.remark),
        ("password", t.password or "(none)"),
    ]
    if t.local_path or t.strip_pre:
        pairs += [("local path", t.local_path), ("strip prefix", t.strip_pre)]
    pairs += [(f"option {k}", v) for k, v in sorted(t.options.items())]
    width = max(len(k) for k, _ in pairs)
    ctx.print(*(f"{k + ':':<{width + 1}} {v}".rstrip() for k, v in pairs))
    if t.mode in PORTLESS_MODES:
        ctx.print("", "Visitor command:", _visitor_command(ctx.server_addr, t))
    return EXIT_OK


def _tunnel_del(args: argparse.Namespace, ctx: _Context) -> int:
    """
    C{nps tunnel del ID}.
    """
    ctx.store.delete_tunnel(args.id)
    if args.json:
        ctx.print_json({"deleted_tunnel": args.id})
    else:
        ctx.print(f"Deleted tunnel {args.id}.")
    return EXIT_OK


# --------------------------------------------------------------------------
# Parser and entry point


def _leaf(
    parent: "argparse._SubParsersAction[argparse.ArgumentParser]",
    name: str,
    handler: _Handler,
    help: str,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """
    Add one sub-sub-command with a C{--json} flag, bound to C{handler}.
    """
    p = parent.add_parser(name, help=help, description=help, aliases=list(aliases))
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(**{_ACTION: handler})
    return p


def add_arguments(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """
    Add the C{client} and C{tunnel} sub-commands to the C{nps} parser.

    @param subparsers: The front end's top-level sub-parsers.
    """
    client = subparsers.add_parser("client", help="manage clients (npc instances)", description="Manage clients.")
    csub = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)

    p = _leaf(csub, "add", _client_add, "add a client and print its npc command")
    p.add_argument("--remark", default="", help="a name for the client")
    p.add_argument("--vkey", default=None, help="the client's key (default: random)")
    p.add_argument(
        "--no-config-conn",
        action="store_true",
        help="refuse tunnels the client declares in its npc.conf",
    )
    p.add_argument("--disabled", action="store_true", help="add the client disabled")
    p.add_argument("--rate-limit", type=int, default=0, metavar="KBPS", help="bandwidth limit in KB/s (0: none)")
    p.add_argument("--flow-limit", type=int, default=0, metavar="MB", help="traffic quota in MB (0: none)")
    p.add_argument("--max-conn", type=int, default=0, metavar="N", help="concurrent public connections (0: no limit)")
    p.add_argument("--max-tunnels", type=int, default=0, metavar="N", help="number of tunnels (0: no limit)")
    p.add_argument("--basic-user", default="", help="basic auth user for its proxies")
    p.add_argument("--basic-password", default="", help="basic auth password for its proxies")
    p.add_argument("--web-user", default="", help="login of the client's own web account")
    p.add_argument("--web-password", default="", help="password of the client's own web account")
    p.add_argument("--crypt", action="store_true", help="encrypt its bridge traffic")
    p.add_argument("--compress", action="store_true", help="compress its bridge traffic")

    _leaf(csub, "list", _client_list, "list clients and their status", aliases=["ls"])
    p = _leaf(csub, "show", _client_show, "show one client and its tunnels")
    p.add_argument("id", type=int, metavar="ID")
    p = _leaf(csub, "del", _client_del, "delete a client and its tunnels", aliases=["delete", "rm"])
    p.add_argument("id", type=int, metavar="ID")

    tunnel = subparsers.add_parser("tunnel", help="manage tunnels", description="Manage tunnels.")
    tsub = tunnel.add_subparsers(dest="tunnel_command", metavar="ACTION", required=True)

    p = _leaf(tsub, "add", _tunnel_add, "add a tunnel to a client")
    p.add_argument("--client", type=int, required=True, metavar="ID", help="the client's id")
    p.add_argument("--mode", default="tcp", help=f"one of {', '.join(KNOWN_MODES)} (default: tcp)")
    p.add_argument("--port", type=int, default=None, help="public port on the server (not for secret/p2p)")
    p.add_argument(
        "--target",
        action="append",
        metavar="HOST:PORT",
        help="address on the client's side; repeat for load balancing; IPv6 as [addr]:port",
    )
    p.add_argument("--server-ip", default="0.0.0.0", metavar="IP", help="address to listen on (default: all)")
    p.add_argument("--remark", default="", help="a note for the tunnel")
    p.add_argument("--password", default="", help="visitor key for secret and p2p tunnels")
    p.add_argument("--local-path", default="", metavar="PATH", help="directory to serve (file mode)")
    p.add_argument("--strip-pre", default="", metavar="PREFIX", help="URL prefix to strip (file mode)")
    p.add_argument("--disabled", action="store_true", help="add the tunnel without opening it")
    p.add_argument("--deny-ips", default="", metavar="LIST",
                   help="source addresses/CIDR networks refused on this tunnel, comma-separated")

    p = _leaf(tsub, "list", _tunnel_list, "list tunnels", aliases=["ls"])
    p.add_argument("--client", type=int, default=None, metavar="ID", help="only this client's tunnels")
    p = _leaf(tsub, "show", _tunnel_show, "show one tunnel")
    p.add_argument("id", type=int, metavar="ID")
    p = _leaf(tsub, "del", _tunnel_del, "delete a tunnel", aliases=["delete", "rm"])
    p.add_argument("id", type=int, metavar="ID")

    from nps.cli.admin_hosts import add_host_arguments

    add_host_arguments(subparsers, _leaf, _UsageError, _table)


def handles(args: argparse.Namespace) -> bool:
    """
    @return: Whether C{args} was parsed into one of this module's commands.
    """
    return callable(getattr(args, _ACTION, None))


def run(args: argparse.Namespace, store: Store, server_addr: str, out: TextIO, err: TextIO | None = None) -> int:
    """
    Run a parsed C{client} or C{tunnel} command.

    @param args: From a parser set up by L{add_arguments}.
    @param store: The server's store.
    @param server_addr: The bridge address npc should dial, C{host:port},
        shown in the npc command lines.
    @param out: Where results go.
    @param err: Where error messages go; C{sys.stderr} by default.
    @return: The exit code: 0, 1 if the store refused, 2 for bad values.
    """
    if err is None:
        err = sys.stderr
    handler: Any = getattr(args, _ACTION, None)
    if not callable(handler):
        err.write("nps: error: not a client or tunnel command\n")
        return EXIT_USAGE
    ctx = _Context(store, server_addr, out, err)
    try:
        return int(handler(args, ctx))
    except _UsageError as e:
        err.write(f"nps: error: {e}\n")
        return EXIT_USAGE
    except StoreError as e:
        err.write(f"nps: error: {e}\n")
        return EXIT_FAILED
