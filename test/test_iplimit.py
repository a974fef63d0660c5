# -*- test-case-name: test.test_iplimit -*-
"""Tests for L{nps.access} (deny lists, C{ip_limit} registrations) and the server's
C{source_allowed}/C{register_ip}, in memory.  The real-process tests are in
test_e2e_limits.py."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock

from nps.access import (
    SourcePolicy,
    denied_by,
    format_deny_list,
    host_of,
    normalize_ip,
    parse_deny_list,
)
from nps.config import ServerConfig, parse_server_config
from nps.model import Tunnel
from nps.server import NpsServer, RunningTunnel


@pytest.mark.parametrize("remote, ip", [
    ("1.2.3.4:5", "1.2.3.4"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("[::ffff:10.0.0.1]:80", "10.0.0.1"),
    ("2001:db8::2", "2001:db8::2"),
    ("10.1.1.1", "10.1.1.1"),
    ("secret visitor 1.2.3.4:5", ""),
    ("", ""),
    ("example.com:80", ""),
])
def test_host_of(remote: str, ip: str) -> None:
    """The address part of a remote, normalized; empty when there is no IP address."""
    assert host_of(remote) == ip


def test_normalize_ip_unmaps_ipv4() -> None:
    """An IPv4-mapped IPv6 address is the IPv4 address (a dual-stack listener reports those)."""
    assert normalize_ip("::ffff:192.0.2.1") == "192.0.2.1"
    with pytest.raises(ValueError):
        normalize_ip("not-an-ip")


def test_parse_deny_list() -> None:
    """Addresses and CIDR networks, comma (or semicolon) separated; host bits are dropped."""
    nets = parse_deny_list(" 10.0.0.0/8, 192.0.2.7 ;2001:db8::/32, 10.1.2.3/16,")
    assert nets == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"),
                    ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("10.1.0.0/16"))
    assert format_deny_list(nets) == "10.0.0.0/8,192.0.2.7,2001:db8::/32,10.1.0.0/16"
    assert parse_deny_list("") == ()


def test_parse_deny_list_maps_ipv4_mapped_networks() -> None:
    """::ffff:10.0.0.0/104 is 10.0.0.0/8."""
    assert parse_deny_list("::ffff:10.0.0.0/104") == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize("text, bad", [("10.0.0.1, banana", "banana"), ("300.1.1.1", "300.1.1.1"),
                                       ("10.0.0.0/33", "10.0.0.0/33")])
def test_parse_deny_list_names_the_bad_entry(text: str, bad: str) -> None:
    """A bad entry is named in the error."""
    with pytest.raises(ValueError, match=f"deny list entry {bad!r} is not an IP address or CIDR network"):
        parse_deny_list(text)


def test_parse_deny_list_is_bounded() -> None:
    """A deny list has at most 4096 entries."""
    with pytest.raises(ValueError, match="more than 4096"):
        parse_deny_list(",".join(f"10.0.{i // 256}.{i % 256}" for i in range(5000)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parsers_never_fail_with_anything_but_value_error(text: str) -> None:
    """host_of never raises; parse_deny_list raises only ValueError."""
    host_of(text)
    try:
        parse_deny_list(text)
    except ValueError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_denied_by_agrees_with_ipaddress(address: Any, prefix: int) -> None:
    """An address is denied exactly when it is in the network."""
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    probe = ipaddress.ip_address(int(address) ^ 1)
    assert denied_by(str(address), (network,)) == network
    assert (denied_by(str(probe), (network,)) is not None) == (probe in network)


def test_policy_order_and_reasons() -> None:
    """Server deny list first, then the tunnel's, then ip_limit; each says why."""
    policy = SourcePolicy(parse_deny_list("192.0.2.0/24"), ip_limit=True)
    assert policy.check("192.0.2.9", 0.0) == "source 192.0.2.9 is in the server's deny_ips (192.0.2.0/24)"
    assert policy.check("198.51.100.1", 0.0, "198.51.100.0/30") == \
        "source 198.51.100.1 is in the tunnel's deny_ips (198.51.100.0/30)"
    assert policy.check("203.0.113.5", 0.0) == "ip_limit: source 203.0.113.5 is not registered (npc register)"
    policy.register("203.0.113.5", 100.0)
    assert policy.check("203.0.113.5", 99.0) == ""
    assert policy.check("203.0.113.5", 100.0) == "ip_limit: the registration of 203.0.113.5 has expired"
    assert policy.check("", 0.0) == ""  # no address (a secret visitor): not covered


def test_policy_without_ip_limit_allows_unregistered() -> None:
    """ip_limit off: only the deny lists count; a bad tunnel list (never stored: the server checks) denies nothing."""
    policy = SourcePolicy()
    assert policy.check("203.0.113.5", 0.0) == ""
    assert policy.check("203.0.113.5", 0.0, "bogus") == ""


def test_replace_registered_merges_and_expire_forgets() -> None:
    """The store's registrations merge with ours (latest expiry wins); expired ones are dropped."""
    policy = SourcePolicy(ip_limit=True)
    policy.register("10.0.0.1", 50.0)
    policy.replace_registered({"10.0.0.1": 40.0, "::ffff:10.0.0.2": 70.0, "junk": 99.0})
    assert policy.registered == {"10.0.0.1": 50.0, "10.0.0.2": 70.0}
    policy.expire(60.0)
    assert policy.registered == {"10.0.0.2": 70.0}


def test_nps_conf_deny_ips_and_ip_limit() -> None:
    """nps.conf deny_ips= and ip_limit=true are read without "not supported" warnings; a bad entry is an error."""
    config = parse_server_config("ip_limit=true\ndeny_ips=10.0.0.0/8, 192.0.2.1\n", "nps.conf")
    assert config.ip_limit is True
    assert config.deny_ips == parse_deny_list("10.0.0.0/8,192.0.2.1")
    assert config.unsupported == ()
    from nps.config import ConfigError

    with pytest.raises(ConfigError, match="deny_ips.*'x' is not an IP address"):
        parse_server_config("deny_ips=x\n", "nps.conf")


# -- the server's methods -----------------------------------------------------------


def make_server(tmp_path: Path, **config: Any) -> NpsServer:
    settings = ServerConfig(path=None, bridge_ip="127.0.0.1", bridge_port=0, data_dir=str(tmp_path), **config)
    return NpsServer(settings, MemoryReactorClock(), {})


def test_source_allowed_uses_the_tunnels_deny_list(tmp_path: Path) -> None:
    """source_allowed looks up the tunnel's deny_ips option by its id and returns the reason."""
    server = make_server(tmp_path, deny_ips=parse_deny_list("192.0.2.1"))
    tunnel = Tunnel(id=7, client_id=1, mode="tcp", server_port=1000, options={"deny_ips": "198.51.100.0/24"})
    server.tunnels[7] = RunningTunnel(tunnel)
    assert server.source_allowed(1, 7, "198.51.100.3") == \
        "source 198.51.100.3 is in the tunnel's deny_ips (198.51.100.0/24)"
    assert server.source_allowed(1, 8, "198.51.100.3") == ""
    assert server.source_allowed(1, None, "192.0.2.1").startswith("source 192.0.2.1 is in the server's")


def test_register_ip_records_and_validates(tmp_path: Path) -> None:
    """register_ip (npc register, the legacy rgst) allows the address at once; bad input raises ValueError."""
    server = make_server(tmp_path, ip_limit=True)
    assert server.source_allowed(3, None, "203.0.113.9").startswith("ip_limit")
    expires = server.register_ip("203.0.113.9", 2, 3)
    assert expires == server.reactor.seconds() + 7200
    assert server.source_allowed(3, None, "203.0.113.9") == ""
    server.reactor.advance(7201)
    assert "expired" in server.source_allowed(3, None, "203.0.113.9")
    with pytest.raises(ValueError, match="hours must be between"):
        server.register_ip("203.0.113.9", 0, 3)
    with pytest.raises(ValueError):
        server.register_ip("nonsense", 1, 3)


def test_client_limits_only_lower(tmp_path: Path) -> None:
    """An npc's own [common] limits lower the stored ones and never raise them; 0 means none."""
    from nps.model import ClientRecord
    from nps.server import ClientSession

    server = make_server(tmp_path)
    server._clients[4] = ClientRecord(id=4, vkey="k" * 20, rate_limit=100, flow_limit=0, max_conn=10)
    session = ClientSession(4, "", None, "127.0.0.1:1", "", public=False)  # type: ignore[arg-type]
    session.self_limits = {"rate_limit": 500, "flow_limit": 7, "max_conn": 3}
    server.sessions[4] = session
    assert server.client_limits(4) == {"rate_limit": 100, "flow_limit": 7, "max_conn": 3}
    assert server.client_limits(99) == {"rate_limit": 0, "flow_limit": 0, "max_conn": 0}
