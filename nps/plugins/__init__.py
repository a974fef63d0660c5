"""Proxy-mode plugins, found with C{getPlugins(IProxyMode, nps.plugins)}."""
from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
