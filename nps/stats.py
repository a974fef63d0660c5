# -*- test-case-name: test.test_server -*-
"""Cheap in-memory traffic counters, one per tunnel and per client."""
from __future__ import annotations

import attrs


@attrs.define
class TrafficCounter:
    """Bytes through the tunnel: C{bytes_in} from users towards targets, C{bytes_out} back."""

    bytes_in: int = 0
    bytes_out: int = 0
    #: Connections made so far, and those open now.
    connections: int = 0
    open: int = 0
