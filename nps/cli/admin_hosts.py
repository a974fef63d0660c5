# -*- test-case-name: test.test_vhost_cli -*-
"""The C{nps host add|list|show|del} admin commands (domain routes in the store)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from nps.model import HOST_SCHEMES, Host
from nps.store import normalize_target

__all__ = ["add_host_arguments"]

_HEADERS = ("ID", "CLIENT", "HOST", "LOCATION", "SCHEME", "TARGETS", "STATUS", "REMARK")


def _rows(hosts: list[Host]) -> list[list[object]]:
    return [[h.id, h.client_id, h.host, h.location, h.scheme, ",".join(h.targets),
             "enabled" if h.enabled else "disabled", h.remark] for h in hosts]


def _summary(h: Host) -> str:
    extra = []
    if h.host_change:
        extra.append(f"Host: {h.host_change}")
    if h.cert_file:
        extra.append(f"cert {h.cert_file}")
    if h.redirect_https:
        extra.append("http redirects to https")
    more = f" ({'; '.join(extra)})" if extra else ""
    return f"{h.host}{h.location} ({h.scheme}) -> client {h.client_id} {','.join(h.targets)}{more}"


def add_host_arguments(subparsers: Any, leaf: Callable[..., argparse.ArgumentParser],
                       usage_error: type[Exception], table: Callable[..., list[str]]) -> None:
    """
    Add C{nps host ...} to the C{nps} parser.

    @param leaf: C{nps.cli.admin._leaf} (adds C{--json}, binds the handler).
    @param usage_error: raised for bad command-line values (exit code 2).
    @param table: C{nps.cli.admin._table}.
    """

    def add(args: argparse.Namespace, ctx: Any) -> int:
        targets = []
        for text in args.target or ():
            try:
                targets.append(normalize_target(text))
            except ValueError as e:
                raise usage_error(str(e)) from None
        headers = {}
        for text in args.header or ():
            name, colon, value = text.partition(":")
            if not colon or not name.strip():
                raise usage_error(f"--header {text!r}: expected 'Name: value'")
            headers[name.strip()] = value.strip()
        host = ctx.store.add_host(args.client, args.host, targets, location=args.location, scheme=args.scheme,
                                  host_change=args.host_change, headers=headers, cert_file=args.cert_file,
                                  key_file=args.key_file, redirect_https=args.redirect_https, remark=args.remark,
                                  enabled=not args.disabled)
        if args.json:
            ctx.print_json(host.to_wire())
        else:
            ctx.print(f"Added host {host.id}: {_summary(host)}.")
        return 0

    def list_(args: argparse.Namespace, ctx: Any) -> int:
        if args.client is not None:
            ctx.store.get_client(args.client)
        hosts = ctx.store.list_hosts(args.client)
        if args.json:
            ctx.print_json([h.to_wire() for h in hosts])
        elif not hosts:
            ctx.print("No hosts.")
        else:
            ctx.print(*table(_HEADERS, _rows(hosts)))
        return 0

    def show(args: argparse.Namespace, ctx: Any) -> int:
        host = ctx.store.get_host(args.id)
        if args.json:
            ctx.print_json(host.to_wire())
        else:
            ctx.print(f"Host {host.id}: {_summary(host)}")
            for name, value in host.headers.items():
                ctx.print(f"  header {name}: {value}")
        return 0

    def delete(args: argparse.Namespace, ctx: Any) -> int:
        ctx.store.delete_host(args.id)
        if args.json:
            ctx.print_json({"deleted_host": args.id})
        else:
            ctx.print(f"Deleted host {args.id}.")
        return 0

    parser = subparsers.add_parser("host", help="manage domain routes (vhosts)",
                                   description="Manage domain routes served on http_proxy_port/https_proxy_port.")
    sub = parser.add_subparsers(dest="host_command", metavar="ACTION", required=True)
    p = leaf(sub, "add", add, "route a domain to a client's targets")
    p.add_argument("--client", type=int, required=True, metavar="ID", help="the client's id")
    p.add_argument("--host", required=True, metavar="DOMAIN", help="example.com or *.example.com")
    p.add_argument("--target", action="append", required=True, metavar="HOST:PORT",
                   help="address on the client's side; repeat for round robin")
    p.add_argument("--location", default="/", metavar="PATH", help="URL path prefix (default /)")
    p.add_argument("--scheme", default="all", choices=HOST_SCHEMES, help="all (default), http or https")
    p.add_argument("--host-change", default="", metavar="HOST", help="rewrite the Host header to this")
    p.add_argument("--header", action="append", metavar="'NAME: VALUE'", help="request header to set; repeatable")
    p.add_argument("--cert-file", default="", metavar="PATH", help="certificate (PEM) to terminate TLS with")
    p.add_argument("--key-file", default="", metavar="PATH", help="its private key (PEM)")
    p.add_argument("--redirect-https", action="store_true", help="answer plain HTTP with a redirect to HTTPS")
    p.add_argument("--remark", default="", help="a note for the host")
    p.add_argument("--disabled", action="store_true", help="add the host without routing it")
    p = leaf(sub, "list", list_, "list domain routes", aliases=["ls"])
    p.add_argument("--client", type=int, default=None, metavar="ID", help="only this client's hosts")
    p = leaf(sub, "show", show, "show one domain route")
    p.add_argument("id", type=int, metavar="ID")
    p = leaf(sub, "del", delete, "delete a domain route", aliases=["delete", "rm"])
    p.add_argument("id", type=int, metavar="ID")
