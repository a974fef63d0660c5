# -*- test-case-name: test.test_cli -*-
"""Accept NPS's Go-style flags (C{-server=1.2.3.4:8024}) next to ours (C{--server ...})."""
from __future__ import annotations

from typing import Iterable


def normalize_go_flags(argv: Iterable[str], known: Iterable[str]) -> list[str]:
    """Rewrite C{-name=value} / C{-name value} to C{--name=value} / C{--name value} for known names.

    Go's flag package takes one or two dashes alike; argparse and twisted's
    usage want two for long names.  Unknown single-dash words are left for
    the parser to reject with its own message.
    """
    names = set(known)
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            name = arg[1:].split("=", 1)[0]
            if name in names:
                arg = "-" + arg
        out.append(arg)
    return out
