# -*- test-case-name: test.test_tap -*-
"""C{twistd nps}: options and service for the server."""
from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from nps.config import ConfigError, ServerConfig, load_server_config

log = Logger()
config_log = Logger(namespace="nps.config")

#: Where NPS looks for its config when no path is given (relative to the CWD first).
DEFAULT_LOCATIONS = ("conf/nps.conf", "/etc/nps/conf/nps.conf")


def find_server_config(config: str | None, conf_path: str | None) -> str | None:
    """The nps.conf to use: C{--config}, else C{-conf_path}/conf/nps.conf, else NPS's usual places."""
    if config:
        return config
    if conf_path:
        for candidate in (os.path.join(conf_path, "conf", "nps.conf"), os.path.join(conf_path, "nps.conf")):
            if os.path.exists(candidate):
                return candidate
        return os.path.join(conf_path, "conf", "nps.conf")
    for candidate in DEFAULT_LOCATIONS:
        if os.path.exists(candidate):
            return candidate
    return None


class Options(usage.Options):
    synopsis = "[--config FILE | --conf_path DIR]"
    longdesc = "Run the nps server. Without a config file it uses built-in defaults (bridge on port 8024)."
    optParameters = [
        ["config", "c", None, "Path to nps.conf."],
        ["conf_path", None, None, "NPS run directory: reads DIR/conf/nps.conf."],
    ]

    def postOptions(self) -> None:
        path = find_server_config(self["config"], self["conf_path"])
        try:
            self["server_config"] = load_server_config(path)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def log_config_warnings(warnings: tuple[str, ...]) -> None:
    """Log each distinct config warning once."""
    for warning in dict.fromkeys(warnings):
        config_log.warn("{warning}", warning=warning)


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from nps.modes import load_modes
    from nps.server import NpsServer

    config: ServerConfig = options["server_config"]
    log.info("nps config: {path}; data dir {data_dir}", path=config.path or "(built-in defaults)",
             data_dir=config.data_dir)
    log_config_warnings(config.warnings)
    return NpsServer(config, reactor, load_modes())
