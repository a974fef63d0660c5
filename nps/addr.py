# -*- test-case-name: test.test_addr -*-
"""Parsing C{host:port} strings as NPS configs write them."""
from __future__ import annotations


def split_hostport(text: str, default_host: str = "") -> tuple[str, int]:
    """C{"1.2.3.4:22"}, C{"[::1]:22"}, C{"name:80"} (or a bare port with C{default_host}).

    @raise ValueError: with a message naming what is wrong.
    """
    text = text.strip()
    if text.isdigit() and default_host:
        host, port_text = default_host, text
    elif text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"bad address {text!r} (expected [ipv6]:port)")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"bad address {text!r} (expected host:port)")
    if not host:
        raise ValueError(f"bad address {text!r}: empty host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad address {text!r}: port must be 1-65535")
    return host, int(port_text)


def format_hostport(host: str, port: int) -> str:
    """Inverse of L{split_hostport}."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
