"""Keep Twisted's plugin scan quiet in a read-only install.

C{twisted.plugin.getCache} logs "Unable to write to plugin cache" at every
start when C{dropin.cache} cannot be written (a read-only site-packages, or
a package owned by another user).  Plugins still load; the message only
alarms users.  L{install} wraps C{twisted.plugin.log} so that one message is
dropped and everything else passes through.  Imported by our twistd dropin,
so it must stay light.
"""
from __future__ import annotations

from typing import Any

import twisted.plugin

_MESSAGE = "Unable to write to plugin cache"


class QuietCacheLog:
    """Stands in for C{twisted.plugin.log}: drops only the cache-write message."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def msg(self, *args: Any, **kwargs: Any) -> None:
        if _MESSAGE in str(kwargs.get("format", "")):
            return
        self.real.msg(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def install() -> None:
    """Wrap C{twisted.plugin.log} once (idempotent)."""
    if not isinstance(twisted.plugin.log, QuietCacheLog):
        twisted.plugin.log = QuietCacheLog(twisted.plugin.log)  # type: ignore[assignment]
