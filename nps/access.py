# -*- test-case-name: test.test_iplimit -*-
"""Who may use a tunnel: deny lists of source addresses and C{ip_limit} registrations.

Plain functions and one small class, no I/O: the server calls
L{SourcePolicy.check} for every new public connection (all modes), with the
visitor's address as the public listener saw it.

 - C{deny_ips} (nps.conf, every tunnel) and a tunnel's own C{deny_ips}
   (npc.conf C{deny_ips=} or the store's tunnel options): comma-separated
   IP addresses and CIDR networks whose connections are refused.
 - C{ip_limit=true} (nps.conf): as in NPS, a source address must have been
   registered (C{npc register -time=HOURS} from that address) and not have
   expired before it may use any tunnel.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping, Union

__all__ = ["DENY_OPTION", "Network", "SourcePolicy", "SourceRefused", "format_deny_list", "host_of", "normalize_ip",
           "parse_deny_list"]

#: The key of a tunnel's deny list in C{Tunnel.options} and in npc.conf.
DENY_OPTION = "deny_ips"
#: At most this many entries in one deny list.
MAX_DENY_ENTRIES = 4096

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class SourceRefused(Exception):
    """A deny list or C{ip_limit} refuses the visitor's source address; C{str()} says which."""


def normalize_ip(text: str) -> str:
    """
    @return: C{text} as a canonical IP address; an IPv4-mapped IPv6 address
        (C{::ffff:1.2.3.4}) becomes the IPv4 address.
    @raise ValueError: if C{text} is not an IP address.
    """
    address = ipaddress.ip_address(text.strip().strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def host_of(remote: str) -> str:
    """
    The IP address part of a C{host:port} / C{[v6]:port} remote address.

    @return: the normalized address, or C{""} when there is none.
    """
    text = remote.strip()
    if text.startswith("["):
        host = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    else:
        host = text  # a bare address (IPv6 without port, or IPv4)
    try:
        return normalize_ip(host)
    except ValueError:
        return ""


def parse_deny_list(text: str) -> tuple[Network, ...]:
    """
    Parse C{1.2.3.4, 10.0.0.0/8, 2001:db8::/32}.

    @return: the networks (a plain address is a /32 or /128).
    @raise ValueError: naming the first entry that is not an address or network.
    """
    networks: list[Network] = []
    for entry in text.replace(";", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"deny list entry {entry!r} is not an IP address or CIDR network") from None
        if isinstance(network, ipaddress.IPv6Network):
            mapped = network.network_address.ipv4_mapped
            if mapped is not None and network.prefixlen >= 96:
                network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
        networks.append(network)
        if len(networks) > MAX_DENY_ENTRIES:
            raise ValueError(f"deny list has more than {MAX_DENY_ENTRIES} entries")
    return tuple(networks)


def format_deny_list(networks: Iterable[Network]) -> str:
    """The inverse of L{parse_deny_list} (plain addresses without their prefix)."""
    out = []
    for network in networks:
        full = network.max_prefixlen == network.prefixlen
        out.append(str(network.network_address) if full else str(network))
    return ",".join(out)


def denied_by(ip: str, networks: Iterable[Network]) -> Network | None:
    """@return: the first network of C{networks} holding C{ip}, or None."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    for network in networks:
        if address.version == network.version and address in network:
            return network
    return None


class SourcePolicy:
    """The server-wide rules: C{deny_ips}, C{ip_limit} and its registered addresses."""

    def __init__(self, deny: tuple[Network, ...] = (), ip_limit: bool = False) -> None:
        self.deny = deny
        self.ip_limit = ip_limit
        #: C{{ip: expires}} (POSIX time) of registered addresses.
        self.registered: dict[str, float] = {}
        self._tunnel_lists: dict[str, tuple[Network, ...]] = {}

    def register(self, ip: str, expires: float) -> None:
        self.registered[normalize_ip(ip)] = expires

    def replace_registered(self, registered: Mapping[str, float]) -> None:
        """Take the store's registrations (other processes may add some)."""
        merged: dict[str, float] = {}
        for ip, expires in registered.items():
            try:
                merged[normalize_ip(ip)] = expires
            except ValueError:
                continue
        for ip, expires in self.registered.items():
            merged[ip] = max(expires, merged.get(ip, 0.0))
        self.registered = merged

    def tunnel_deny(self, text: str) -> tuple[Network, ...]:
        """A tunnel's C{deny_ips} option, parsed once and kept (the server checks lists when tunnels are added; a bad one here denies nothing)."""
        cached = self._tunnel_lists.get(text)
        if cached is None:
            try:
                cached = parse_deny_list(text)
            except ValueError:
                cached = ()
            if len(self._tunnel_lists) > 1024:
                self._tunnel_lists.clear()
            self._tunnel_lists[text] = cached
        return cached

    def check(self, ip: str, now: float, tunnel_deny: str = "") -> str:
        """
        Why a connection from C{ip} must be refused (empty: it may go ahead).

        @param ip: the normalized source address (C{""} when unknown, e.g. a
            secret visitor, which the deny lists and C{ip_limit} do not cover).
        @param tunnel_deny: the tunnel's C{deny_ips} option.
        """
        if not ip:
            return ""
        network = denied_by(ip, self.deny)
        if network is not None:
            return f"source {ip} is in the server's deny_ips ({network})"
        if tunnel_deny:
            network = denied_by(ip, self.tunnel_deny(tunnel_deny))
            if network is not None:
                return f"source {ip} is in the tunnel's deny_ips ({network})"
        if self.ip_limit:
            expires = self.registered.get(ip)
            if expires is None:
                return f"ip_limit: source {ip} is not registered (npc register)"
            if expires <= now:
                return f"ip_limit: the registration of {ip} has expired"
        return ""

    def expire(self, now: float) -> None:
        """Forget registrations that have run out."""
        self.registered = {ip: t for ip, t in self.registered.items() if t > now}
