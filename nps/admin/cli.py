# -*- test-case-name: test.test_admin_import -*-
"""C{nps admin passwd|token ...} and C{nps import DIR}: the web admin's command-line side."""
from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from nps.admin import passwords
from nps.admin.importer import ImportError_, import_nps
from nps.store import Store, StoreError

__all__ = ["add_arguments", "run", "COMMANDS"]

COMMANDS = ("admin", "import")


def add_arguments(sub: Any) -> None:
    """Add the C{admin} and C{import} subcommands to C{nps}'s parser."""
    admin = sub.add_parser("admin", help="web admin users and API tokens")
    verbs = admin.add_subparsers(dest="admin_command", required=True)
    passwd = verbs.add_parser("passwd", help="set a web admin password (random and printed unless --stdin)")
    passwd.add_argument("--user", default=None, help="admin user name (default: nps.conf web_username or admin)")
    passwd.add_argument("--stdin", action="store_true", help="read the new password from standard input")
    token = verbs.add_parser("token", help="API bearer tokens for scripts")
    token_verbs = token.add_subparsers(dest="token_command", required=True)
    create = token_verbs.add_parser("create", help="create a token (printed once)")
    create.add_argument("name", help="what the token is for")
    create.add_argument("--client", type=int, default=None, help="limit the token to this client's records")
    token_verbs.add_parser("list", help="list tokens")
    revoke = token_verbs.add_parser("revoke", help="revoke a token")
    revoke.add_argument("id", type=int)
    importer = sub.add_parser("import", help="import an NPS server's clients.json, tasks.json and hosts.json")
    importer.add_argument("dir", help="NPS's conf directory (or its run directory holding conf/)")


def run(args: argparse.Namespace, store: Store, config: Any, out: TextIO) -> int:
    """Carry out C{nps admin ...} or C{nps import DIR}; @return: the exit code."""
    try:
        if args.command == "import":
            report = import_nps(store, args.dir)
            print(report.summary(), file=out)
            print("a running nps applies the imported records within a second", file=out)
            return 0
        if args.admin_command == "passwd":
            user = args.user or config.web_username or "admin"
            if args.stdin:
                password = sys.stdin.readline().rstrip("\r\n")
                if not password:
                    print("nps: empty password", file=sys.stderr)
                    return 1
                weak = passwords.weakness(password, user)
                if weak:
                    print(f"nps: warning: this password is weak: {weak}", file=sys.stderr)
            else:
                password = passwords.new_password()
            store.set_admin_password(user, passwords.hash_password(password))
            if args.stdin:
                print(f"password of web admin {user!r} changed", file=out)
            else:
                print(f"new password of web admin {user!r}: {password}", file=out)
            if config.web_password and user == (config.web_username or "admin"):
                print("note: nps.conf sets web_password; it replaces this password when nps starts", file=out)
            return 0
        if args.token_command == "create":
            token = passwords.new_token()
            token_id = store.add_api_token(args.name, passwords.token_digest(token), args.client)
            print(f"token {token_id} ({args.name}): {token}", file=out)
            print("it is shown only once; use it as: Authorization: Bearer <token>", file=out)
            return 0
        if args.token_command == "list":
            for row in store.list_api_tokens():
                scope = f"client {row['client_id']}" if row["client_id"] is not None else "admin"
                print(f"{row['id']}\t{row['name']}\t{scope}", file=out)
            return 0
        store.delete_api_token(args.id)
        print(f"token {args.id} revoked", file=out)
        return 0
    except (StoreError, ImportError_) as e:
        print(f"nps: {e}", file=sys.stderr)
        return 1
