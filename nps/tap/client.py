# -*- test-case-name: test.test_tap -*-
"""C{twistd npc}: options and service for the client."""
from __future__ import annotations

import os
from typing import Any, Callable

import attrs
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from nps.config import ClientConfig, CommonConfig, ConfigError, load_client_config, parse_host_port
from nps.access import DENY_OPTION
from nps.accounts import ACCOUNTS_OPTION, format_accounts, parse_accounts
from nps.config import HealthSection
from nps.bridge.quic_transport import client_udp
from nps.tlsbridge import TlsSetupError, apply_client_flags, client_tls
from nps.model import Host, Tunnel
from nps.visitor import Visitor

log = Logger()


@attrs.frozen
class ClientSettings:
    """What npc runs with, from flags or from an npc.conf."""

    server_host: str
    server_port: int
    vkey: str
    common: CommonConfig
    tunnels: tuple[Tunnel, ...] = ()
    warnings: tuple[str, ...] = ()
    config_path: str | None = None
    visitors: tuple[Visitor, ...] = ()
    hosts: tuple[Host, ...] = ()
    health: tuple[HealthSection, ...] = ()


def hosts_from_config(config: ClientConfig) -> tuple[Host, ...]:
    """One L{Host} per npc.conf domain section (C{host=}), for the server's vhost listeners."""
    return tuple(Host(id=0, client_id=0, host=s.host, location=s.location, scheme=s.scheme, targets=s.targets,
                      host_change=s.host_change, headers=dict(s.headers), remark=s.name)
                 for s in config.hosts)


def tunnels_from_config(config: ClientConfig) -> tuple[Tunnel, ...]:
    """One L{Tunnel} per public port of each npc.conf tunnel section.

    The proxy modes' accounts travel with each tunnel: NPS's [common]
    C{basic_username}/C{basic_password} and a socks5 C{multi_account} file
    (read here, relative to npc.conf's directory).

    @raise ConfigError: if a multi_account file cannot be read or parsed.
    """
    common_accounts = {}
    if config.common.basic_username:
        common_accounts[config.common.basic_username] = config.common.basic_password
    tunnels = []
    for section in config.tunnels:
        accounts = dict(common_accounts)
        if section.multi_account:
            accounts.update(_read_accounts(config.path, section.name, section.line, section.multi_account))
        options = {ACCOUNTS_OPTION: format_accounts(accounts)} if accounts else {}
        if section.deny_ips:
            options = dict(options, **{DENY_OPTION: section.deny_ips})
        for remark, port, targets in section.expand():
            tunnels.append(Tunnel(id=0, client_id=0, mode=section.mode, server_port=port,
                                  server_ip=section.server_ip, targets=targets, remark=remark,
                                  password=section.password, local_path=section.local_path,
                                  strip_pre=section.strip_pre, options=options))
    return tuple(tunnels)


def _read_accounts(config_path: str, section: str, line: int, name: str) -> dict[str, str]:
    path = os.path.join(os.path.dirname(os.path.abspath(config_path)), name)
    try:
        with open(path, encoding="utf-8") as f:
            return parse_accounts(f.read())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(config_path, line, "multi_account",
                          f"[{section}]: cannot use accounts file {path}: {e}") from None


class Options(usage.Options):
    synopsis = "[--server HOST:PORT --vkey KEY | --config npc.conf]"
    longdesc = "Run the npc client: connect to an nps server and serve its tunnels."
    optParameters = [
        ["config", "c", None, "Path to npc.conf (config-file mode)."],
        ["server", "s", None, "Server bridge address HOST:PORT (no-config mode; env NPC_SERVER_ADDR)."],
        ["vkey", "k", None, "Client key (env NPC_SERVER_VKEY)."],
        ["type", "t", None, "Bridge transport: tcp, tls, or kcp/quic (UDP: QUIC) (default: npc.conf's conn_type, "
                            "else tcp)."],
        ["tls_ca", None, None, "-type=tls: verify the server against this CA file (else pin on first use)."],
        ["tls_server_name", None, None, "-type=tls with -tls_ca: the name the certificate must carry."],
        ["tls_known_servers", None, None, "-type=tls: trust-on-first-use file (default ~/.config/npc/known_servers)."],
        ["disconnect_timeout", None, None, "Ping-miss threshold in 5 s ticks (default 60)."],
        ["remark", None, "", "A name for this client, shown in the server's logs."],
        ["password", None, None, "Visitor mode: the secret or p2p tunnel's password."],
        ["local_type", None, "secret", "Visitor mode: secret (through the server) or p2p (direct, relay fallback)."],
        ["target", None, "", "p2p visitor: host:port on the provider's network (default: its first target)."],
        ["local_port", None, "2000", "Visitor mode: local port to listen on (127.0.0.1)."],
        ["local_ip", None, "127.0.0.1", "Visitor mode: local address to listen on."],
    ]

    def postOptions(self) -> None:
        try:
            self["settings"] = self._settings()
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _settings(self) -> ClientSettings:
        server = self["server"] or os.environ.get("NPC_SERVER_ADDR", "")
        vkey = self["vkey"] or os.environ.get("NPC_SERVER_VKEY", "")
        warnings: list[str] = []
        if self["type"] not in (None, "tcp", "tls", "kcp", "quic"):
            warnings.append(f"bridge type {self['type']!r} is not supported yet; using tcp")
        config_path = self["config"]
        if not (server and vkey) and not config_path and os.path.exists("conf/npc.conf"):
            config_path = "conf/npc.conf"
        if config_path and not (self["server"] and self["vkey"]):
            from nps.modes import load_modes

            config = load_client_config(config_path, modes=load_modes())
            self._config = config
            common = config.common
            warnings.extend(config.warnings)
            server = self["server"] or common.server_addr
            vkey = self["vkey"] or common.vkey
            tunnels = tunnels_from_config(config)
            hosts, health = hosts_from_config(config), config.health
        else:
            hosts, health = (), ()
            common = CommonConfig(server_addr=server, vkey=vkey)
            tunnels = ()
            config_path = None
        if self["disconnect_timeout"] is not None:
            try:
                common = attrs.evolve(common, disconnect_timeout=int(self["disconnect_timeout"]))
            except ValueError:
                raise usage.UsageError("-disconnect_timeout must be a whole number") from None
        if self["remark"]:
            common = attrs.evolve(common, remark=self["remark"])
        try:
            common = apply_client_flags(common, self["type"], self["tls_ca"], self["tls_server_name"],
                                        self["tls_known_servers"])
        except TlsSetupError as e:
            raise usage.UsageError(str(e)) from None
        where = config_path or "command line"
        if not server:
            raise usage.UsageError(f"{where}: no server address (give -server=HOST:PORT or server_addr=)")
        if not vkey:
            raise usage.UsageError(f"{where}: no vkey (give -vkey=KEY or vkey=)")
        try:
            host, port = parse_host_port(server)
        except ValueError as e:
            raise usage.UsageError(f"{where}: server address: {e}") from None
        return ClientSettings(host, port, vkey, common, tunnels, tuple(warnings), config_path,
                              self._visitors(config_path), hosts=hosts, health=health)

    def _visitors(self, config_path: str | None) -> tuple[Visitor, ...]:
        """Secret visitors from -password/-local_port, or from npc.conf's visitor sections."""
        visitors = []
        if self["password"]:
            if self["local_type"] not in ("secret", "p2p"):
                raise usage.UsageError(f"-local_type={self['local_type']}: expected secret or p2p "
                                       "(p2ps and p2pt are not supported yet)")
            if self["target"] and self["local_type"] != "p2p":
                raise usage.UsageError("-target is for -local_type=p2p visitors")
            try:
                port = int(self["local_port"])
                if not 0 < port < 65536:
                    raise ValueError
            except ValueError:
                raise usage.UsageError(f"-local_port={self['local_port']!r} is not a port number") from None
            visitors.append(Visitor(self["password"], port, self["local_ip"], kind=self["local_type"],
                                    name=self["local_type"], target=self["target"] or ""))
        if config_path is not None and self._config is not None:
            for section in self._config.visitors:
                visitors.append(Visitor(section.password, section.local_port, section.local_ip,
                                        kind=section.kind, name=section.name, target=section.target_addr))
        return tuple(visitors)

    _config: ClientConfig | None = None


def makeService(options: Options, reactor: Any = None,
                on_fatal: Callable[[int, str], None] | None = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from nps.client import NpcService
    from nps.modes import load_modes
    from nps.tap.server import log_config_warnings

    settings: ClientSettings = options["settings"]
    log_config_warnings(settings.warnings)
    if on_fatal is None:
        def on_fatal(code: int, message: str) -> None:
            log.critical("{message}", message=message)
            reactor.callLater(0, reactor.stop)
    common = settings.common
    auto_reconnect = True if common.auto_reconnection is None else common.auto_reconnection
    modes = load_modes()
    config_path = settings.config_path
    reload_tunnels: Callable[[], tuple[Tunnel, ...]] | None = None
    if config_path is not None:
        path = config_path

        def reread() -> tuple[Tunnel, ...]:
            return tunnels_from_config(load_client_config(path, modes=modes))

        reload_tunnels = reread
    service = NpcService(reactor, settings.server_host, settings.server_port, settings.vkey, modes,
                      tunnels=settings.tunnels, remark=common.remark, auto_reconnect=auto_reconnect,
                      disconnect_timeout=common.disconnect_timeout, on_fatal=on_fatal,
                      reload_tunnels=reload_tunnels, debug_addr=common.pprof_addr,
                      crypt=common.crypt, compress=common.compress,
                      tls=(client_tls(settings.server_host, settings.server_port, common)
                           or client_udp(settings.server_host, settings.server_port, common)),
                      visitors=settings.visitors, hosts=settings.hosts, health=settings.health,
                      limits={key: getattr(common, key) for key in ("rate_limit", "flow_limit", "max_conn")
                              if getattr(common, key)},
                      web_login=((common.web_username, common.web_password)
                                 if common.web_username and common.web_password else None))
    if config_path is not None:
        hosts_path = config_path

        def reread_hosts() -> tuple[Host, ...]:
            return hosts_from_config(load_client_config(hosts_path, modes=modes))

        service.reload_hosts = reread_hosts
    return service
