# -*- test-case-name: test.test_accounts -*-
"""User/password accounts for the proxy modes (socks5, httpProxy).

A tunnel's accounts come from its client (NPS's C{basic_username} /
C{basic_password}) and, for socks5, from an NPS C{multi_account} file
(C{user=password} per line).  They travel in C{tunnel.options["accounts"]}
as that same line format.  No accounts means no authentication.
"""
from __future__ import annotations

import hmac
from typing import Mapping

from nps.model import Tunnel

ACCOUNTS_OPTION = "accounts"


def parse_accounts(text: str) -> dict[str, str]:
    """C{user=password} lines (blank lines and C{#} comments skipped).

    @raise ValueError: naming the bad line.
    """
    accounts: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        user, sep, password = line.partition("=")
        if not sep or not user.strip():
            raise ValueError(f"line {number}: expected user=password, got {raw!r}")
        accounts[user.strip()] = password.strip()
    return accounts


def format_accounts(accounts: Mapping[str, str]) -> str:
    """Inverse of L{parse_accounts}."""
    return "".join(f"{user}={password}\n" for user, password in accounts.items())


def accounts_for(tunnel: Tunnel) -> dict[str, str]:
    """The accounts a tunnel's users must present (empty: none required)."""
    return parse_accounts(tunnel.options.get(ACCOUNTS_OPTION, ""))


def check(accounts: Mapping[str, str], user: str, password: str) -> bool:
    """True if C{user}/C{password} is one of C{accounts}; compares in constant time."""
    expected = accounts.get(user)
    # Compare against something even for an unknown user, so timing tells nothing.
    ok = hmac.compare_digest((expected or "\x00").encode("utf-8"), password.encode("utf-8"))
    return expected is not None and ok
