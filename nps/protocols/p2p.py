# -*- test-case-name: test.test_p2p_wire -*-
"""The datagrams of p2p rendezvous and hole punching (sans-io).

Every one is 21 bytes: C{MAGIC} (4), kind (1), token (16).

  - C{REGISTER}, peer -> server's C{p2p_port}: "this UDP address is mine";
    the token is the one-time token the server gave that peer over its
    authenticated bridge session.
  - C{PROBE}, peer -> peer: opens the sender's NAT mapping towards the other
    peer; the token is the pairing id (the receiver ignores other ids).

The first byte of C{MAGIC} is zero, which a QUIC v1 packet never starts with
(its fixed bit is set), so the same UDP port carries these and QUIC.
"""
from __future__ import annotations

import enum

MAGIC = b"\x00NP2"
TOKEN_SIZE = 16
SIZE = len(MAGIC) + 1 + TOKEN_SIZE


class Kind(enum.IntEnum):
    REGISTER = 1
    PROBE = 2


class P2PWireError(ValueError):
    """A datagram that is not one of ours; C{str()} says what was wrong."""


def encode(kind: Kind, token: bytes) -> bytes:
    """One datagram of C{kind} carrying C{token}."""
    if len(token) != TOKEN_SIZE:
        raise ValueError(f"a p2p token has {TOKEN_SIZE} bytes, not {len(token)}")
    return MAGIC + bytes([int(kind)]) + token


def is_ours(data: bytes) -> bool:
    """Whether C{data} claims to be a rendezvous datagram (rather than QUIC)."""
    return data[:1] == MAGIC[:1]


def parse(data: bytes) -> tuple[Kind, bytes]:
    """
    Read one datagram.

    @return: (kind, token).
    @raise P2PWireError: wrong size, magic or kind.
    """
    if len(data) != SIZE:
        raise P2PWireError(f"{len(data)} bytes (a p2p datagram has {SIZE})")
    if data[: len(MAGIC)] != MAGIC:
        raise P2PWireError("bad magic")
    try:
        kind = Kind(data[len(MAGIC)])
    except ValueError:
        raise P2PWireError(f"unknown kind {data[len(MAGIC)]}") from None
    return kind, data[len(MAGIC) + 1:]
