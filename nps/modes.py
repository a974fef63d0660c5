# -*- test-case-name: test.test_plugins -*-
"""Find the proxy modes: every C{IProxyMode} plugin in C{nps.plugins}."""
from __future__ import annotations

from typing import Any

import twisted.plugin
from twisted.logger import Logger

import nps.plugins
from nps.interfaces import IProxyMode

log = Logger()


class _QuietCacheLog:
    """Stands in for C{twisted.plugin.log} while plugins load.

    A read-only install cannot write C{dropin.cache}; Twisted then logs a
    message at every start.  We let that one through once at debug level and
    pass everything else on unchanged.
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    def msg(self, *args: Any, **kwargs: Any) -> None:
        if "Unable to write to plugin cache" in str(kwargs.get("format", "")):
            log.debug("plugin cache is read-only ({path}); using the modules directly", path=kwargs.get("path"))
            return
        self._real.msg(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def load_modes() -> dict[str, Any]:
    """Map C{mode=} names to their IProxyMode providers."""
    real = twisted.plugin.log
    twisted.plugin.log = _QuietCacheLog(real)  # type: ignore[assignment]
    try:
        found = list(twisted.plugin.getPlugins(IProxyMode, nps.plugins))
    finally:
        twisted.plugin.log = real
    modes: dict[str, Any] = {}
    for mode in found:
        name = getattr(mode, "name", None)
        if not isinstance(name, str) or not name:
            log.warn("ignoring proxy-mode plugin {mode!r} without a name", mode=mode)
            continue
        if name in modes:
            log.warn("two plugins claim mode {name!r}; keeping {kept!r}", name=name, kept=modes[name])
            continue
        modes[name] = mode
    return modes
