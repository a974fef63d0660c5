# -*- test-case-name: test.test_plugins -*-
"""Find the proxy modes: every C{IProxyMode} plugin in C{nps.plugins}."""
from __future__ import annotations

import warnings
from typing import Any

import twisted.plugin
from twisted.logger import Logger

import nps.plugins
from nps._quietcache import install as quiet_plugin_cache
from nps.interfaces import IProxyMode

log = Logger()


def load_modes() -> dict[str, Any]:
    """Map C{mode=} names to their IProxyMode providers."""
    quiet_plugin_cache()
    with warnings.catch_warnings():
        # PEP 660 editable installs put nps/ outside sys.path; Twisted warns but finds the plugins.
        warnings.filterwarnings("ignore", message=".*not in path importer cache.*")
        found = list(twisted.plugin.getPlugins(IProxyMode, nps.plugins))
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
