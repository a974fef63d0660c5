# -*- test-case-name: test -*-
"""nps: a reverse tunnel server (nps) and client (npc) on Twisted, speaking NPS's configs."""

__version__ = "0.1.0"

#: Version of our own bridge protocol; bumped on incompatible wire changes.
PROTOCOL_VERSION = 1
