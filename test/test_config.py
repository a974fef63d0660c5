# -*- test-case-name: test.test_config -*-
"""
Tests for L{nps.config}: reading nps.conf and npc.conf.
"""
from __future__ import annotations

import ipaddress
import os
import pickle
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nps.config import (
    KNOWN_CLIENT_COMMON_KEYS,
    KNOWN_HEALTH_KEYS,
    KNOWN_HOST_KEYS,
    KNOWN_SERVER_KEYS,
    KNOWN_TUNNEL_KEYS,
    KNOWN_VISITOR_KEYS,
    ClientConfig,
    CommonConfig,
    ConfigError,
    HealthSection,
    HostSection,
    ServerConfig,
    TunnelSection,
    VisitorSection,
    expand_port_ranges,
    format_host_port,
    load_client_config,
    load_server_config,
    parse_client_config,
    parse_host_port,
    parse_port_ranges,
    parse_server_config,
    port_allowed,
)

ROOT = Path(__file__).resolve().parent.parent
NPS_ASSETS = Path("/work/shared/peers/nps-0.26.10-assets/conf")

#: Every nps.conf key from nps-reference.md section 1.1, with a valid,
#: non-default value and the typed value expected back.
SERVER_VALUES: dict[str, tuple[str, object]] = {
    "appname": ("mynps", "mynps"),
    "runmode": ("pro", "pro"),
    "http_proxy_ip": ("127.0.0.2", "127.0.0.2"),
    "http_proxy_port": ("8081", 8081),
    "https_proxy_port": ("8443", 8443),
    "https_just_proxy": ("false", False),
    "https_default_cert_file": ("conf/server.pem", "conf/server.pem"),
    "https_default_key_file": ("conf/server.key", "conf/server.key"),
    "bridge_type": ("tcp", "tcp"),
    "bridge_port": ("9024", 9024),
    "bridge_ip": ("127.0.0.1", "127.0.0.1"),
    "public_vkey": ("a-long-random-public-key", "a-long-random-public-key"),
    "flow_store_interval": ("5", 5),
    "log_level": ("3", 3),
    "log_path": ("/var/log/nps.log", "/var/log/nps.log"),
    "ip_limit": ("true", True),
    "p2p_ip": ("203.0.113.5", "203.0.113.5"),
    "p2p_port": ("6000", 6000),
    "web_host": ("a.o.com", "a.o.com"),
    "web_username": ("root", "root"),
    "web_password": ("s3cret", "s3cret"),
    "web_port": ("8080", 8080),
    "web_ip": ("0.0.0.0", "0.0.0.0"),
    "web_base_url": ("/nps/", "/nps"),
    "web_open_ssl": ("yes", True),
    "web_cert_file": ("w.pem", "w.pem"),
    "web_key_file": ("w.key", "w.key"),
    "auth_key": ("test", "test"),
    "auth_crypt_key": ("abcdefghabcdefgh", "abcdefghabcdefgh"),
    "allow_ports": ("9001-9009,10001", ((9001, 9009), (10001, 10001))),
    "allow_user_login": ("1", True),
    "allow_user_register": ("on", True),
    "allow_user_change_username": ("TRUE", True),
    "allow_flow_limit": ("true", True),
    "allow_rate_limit": ("true", True),
    "allow_tunnel_num_limit": ("true", True),
    "allow_connection_num_limit": ("true", True),
    "allow_local_proxy": ("true", True),
    "allow_multi_ip": ("true", True),
    "system_info_display": ("true", True),
    "http_cache": ("true", True),
    "http_cache_length": ("500", 500),
    "http_add_origin_header": ("true", True),
    "pprof_ip": ("127.0.0.1", "127.0.0.1"),
    "pprof_port": ("9999", 9999),
    "disconnect_timeout": ("12", 12),
    "data_dir": ("/srv/nps", "/srv/nps"),
    "public_addr": ("tunnel.example.com:8024", "tunnel.example.com:8024"),
    "tls_enable": ("true", True),
    "tls_bridge_port": ("8025", 8025),
    "tls_cert_file": ("/etc/nps/bridge.pem", "/etc/nps/bridge.pem"),
    "tls_key_file": ("/etc/nps/bridge.key", "/etc/nps/bridge.key"),
    "deny_ips": ("10.0.0.0/8, 192.0.2.7", (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.7/32"))),
    "legacy_bridge": ("true", True),
}

#: nps.conf keys whose feature is built (no "not supported yet" warning).
SERVER_BUILT = {
    "tls_enable",
    "tls_bridge_port",
    "tls_cert_file",
    "tls_key_file",
    "p2p_port",
    "flow_store_interval",
    "web_username",
    "web_password",
    "web_port",
    "web_ip",
    "web_base_url",
    "web_open_ssl",
    "web_cert_file",
    "web_key_file",
    "auth_key",
    "allow_user_login",
    "ip_limit",
    "deny_ips",
    "legacy_bridge",
    "pprof_ip",
    "pprof_port",
    "appname",
    "runmode",
    "bridge_type",
    "bridge_port",
    "bridge_ip",
    "public_vkey",
    "disconnect_timeout",
    "log_level",
    "log_path",
    "data_dir",
    "public_addr",
    "p2p_ip",
    "allow_ports",
    "http_proxy_ip",
    "http_proxy_port",
    "https_proxy_port",
    "https_just_proxy",
    "https_default_cert_file",
    "https_default_key_file",
    "http_add_origin_header",
}

#: The npc.conf from the seed guide (Windows RDP example), copied verbatim.
SEED_NPC_CONF = """\
[common]
server_addr=XX.XX.XX.XX:8024
conn_type=tcp
vkey=123
auto_reconnection=true
max_conn=1000
flow_limit=1000
rate_limit=1000
basic_username=11
basic_password=3
web_username=admin
web_password=123456
crypt=true
compress=true
#pprof_addr=0.0.0.0:9999
disconnect_timeout=60


[tcp]
mode=tcp
target_addr=127.0.0.1:3389
server_port=8002

"""

#: The seed guide's minimal npc.conf: no [common] header at all.
SEED_MINIMAL_NPC_CONF = """\
# 服务端IP:端口
server_addr=203.0.113.7:8024
# 服务端生成的VKey
vkey=abc123
# 连接类型，tcp或kcp，根据服务端配置
conn_type=tcp
"""


def server(text: str, path: str = "etc/nps.conf") -> ServerConfig:
    """
    Parse nps.conf text.
    """
    return parse_server_config(text, path)


def client(text: str, environ: dict[str, str] | None = None, path: str = "npc.conf") -> ClientConfig:
    """
    Parse npc.conf text with an empty (or given) environment.
    """
    return parse_client_config(text, path, {} if environ is None else environ)


def server_error(text: str, path: str = "etc/nps.conf") -> ConfigError:
    """
    Parse nps.conf text that must fail and return the error.
    """
    with pytest.raises(ConfigError) as info:
        parse_server_config(text, path)
    return info.value


def client_error(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    """
    Parse npc.conf text that must fail and return the error.
    """
    with pytest.raises(ConfigError) as info:
        parse_client_config(text, "npc.conf", {} if environ is None else environ)
    return info.value


COMMON = "[common]\nserver_addr=127.0.0.1:8024\nvkey=k\n"


# ----------------------------------------------------------------- ConfigError


def test_config_error_str_all_parts() -> None:
    """
    C{str(ConfigError)} is C{path:line: key: reason}.
    """
    e = ConfigError("etc/nps.conf", 12, "bridge_port", "not a port number: 'abc' (expected 1-65535)")
    assert str(e) == "etc/nps.conf:12: bridge_port: not a port number: 'abc' (expected 1-65535)"
    assert (e.path, e.line, e.key, e.reason) == (
        "etc/nps.conf",
        12,
        "bridge_port",
        "not a port number: 'abc' (expected 1-65535)",
    )


def test_config_error_str_omits_none() -> None:
    """
    Parts that are C{None} are left out of the message.
    """
    assert str(ConfigError("a.conf", None, None, "cannot read")) == "a.conf: cannot read"
    assert str(ConfigError("a.conf", 3, None, "bad line")) == "a.conf:3: bad line"
    assert str(ConfigError("a.conf", None, "k", "bad")) == "a.conf: k: bad"


def test_config_error_pickles() -> None:
    """
    A ConfigError survives pickling (e.g. across a process pool).
    """
    e = pickle.loads(pickle.dumps(ConfigError("p", 1, "k", "r")))
    assert str(e) == "p:1: k: r"


# ------------------------------------------------------------------- nps.conf


def test_server_defaults() -> None:
    """
    With no file, the defaults are safe: bridge on 8024, every feature that is
    not built disabled, no public key, admin bound to loopback.
    """
    c = load_server_config(None)
    assert c.path is None
    assert c.bridge_ip == "0.0.0.0"
    assert c.bridge_port == 8024
    assert c.bridge_type == "tcp"
    assert c.public_vkey == ""
    assert c.disconnect_timeout == 60
    assert c.log_level == 7
    assert c.data_dir == "./nps-data"
    assert c.allow_ports == ()
    assert c.http_proxy_port == 0
    assert c.https_proxy_port == 0
    assert c.web_port == 8080  # no nps.conf at all: the web admin on 127.0.0.1 (nps.admin)
    assert c.web_ip == "127.0.0.1"
    assert c.p2p_port == 0
    assert c.pprof_port == 0
    assert c.auth_crypt_key == ""
    assert c.unsupported == ()
    assert c.warnings == ()


def test_server_known_keys_match_reference() -> None:
    """
    C{KNOWN_SERVER_KEYS} is exactly NPS's keys plus our C{data_dir} and
    C{public_addr}, and each is a field of L{ServerConfig}.
    """
    assert KNOWN_SERVER_KEYS == frozenset(SERVER_VALUES)
    fields = {f.name for f in attrs.fields(ServerConfig)}
    assert KNOWN_SERVER_KEYS <= fields


@pytest.mark.parametrize("key", sorted(SERVER_VALUES))
def test_server_every_key_recognised(key: str) -> None:
    """
    Every nps.conf key is read into its typed field, and only keys of
    features not built yet are reported as unsupported.
    """
    text, expected = SERVER_VALUES[key]
    c = server(f"{key}={text}\n", path="/etc/nps/nps.conf")
    assert getattr(c, key) == expected
    assert not any("unknown key" in w for w in c.warnings)
    if key in SERVER_BUILT:
        assert key not in c.unsupported
        assert c.warnings == ()
    else:
        assert c.unsupported == (key,)
        assert c.warnings == (
            f"/etc/nps/nps.conf:1: key {key!r} is accepted but not supported yet",
        )


def test_server_all_keys_in_one_file() -> None:
    """
    A file using every key at once parses.
    """
    text = "".join(f"{k} = {v}\n" for k, (v, _) in SERVER_VALUES.items())
    c = server(text, path="/x/nps.conf")
    for key, (_, expected) in SERVER_VALUES.items():
        assert getattr(c, key) == expected, key
    assert set(c.unsupported) == set(SERVER_VALUES) - SERVER_BUILT


def test_server_unsupported_only_when_not_default() -> None:
    """
    A not-built key set to its default value (e.g. NPS's shipped
    C{https_just_proxy=true}, C{http_cache_length=100}) or left empty is not
    reported.
    """
    c = server("https_just_proxy=true\nhttp_cache_length=100\nweb_port=\nhttp_proxy_port=0\nweb_base_url=\n")
    assert c.unsupported == ()
    assert c.warnings == ()


@pytest.mark.parametrize("value", ["KCP", "quic"])
def test_server_kcp_is_the_udp_bridge(value: str) -> None:
    """
    C{bridge_type=kcp} (NPS's name) and C{quic} select the UDP (QUIC) bridge: supported, no warning.
    """
    c = server(f"bridge_type={value}\n")
    assert c.bridge_type == value.lower()
    assert c.unsupported == ()
    assert c.warnings == ()


def test_server_syntax() -> None:
    """
    Comments (C{#}, C{;}), blank lines, C{[section]} headers, spaces around
    keys and values, CRLF line ends and a BOM are all handled; keys are
    case-insensitive as in beego.
    """
    text = "\ufeff# comment\r\n; other comment\r\n\r\n[dev]\r\n  Bridge_Port =  9000  \r\nlog_level=\t5\r\n"
    c = server(text)
    assert c.bridge_port == 9000
    assert c.log_level == 5
    assert c.warnings == ("etc/nps.conf:4: section header [dev] ignored (nps.conf has no sections)",)


def test_server_value_keeps_equals_signs() -> None:
    """
    The value is everything after the first C{=} (NPS truncates it at a
    second C{=}); quotes are kept.
    """
    c = server('public_vkey=abc=def==ghi-0123456789\nweb_password="p=w"\n')
    assert c.public_vkey == "abc=def==ghi-0123456789"
    assert c.web_password == '"p=w"'


def test_server_unknown_key_warns() -> None:
    """
    An unknown key is not an error: it gives one warning with file and line.
    """
    c = server("bridge_port=8024\n\n\n\n\n\nfoo=bar\n")
    assert c.warnings == ("etc/nps.conf:7: unknown key 'foo' ignored",)
    assert c.unsupported == ()


def test_server_duplicate_key_later_wins() -> None:
    """
    A key given twice takes the later value, with a warning at the later line.
    """
    c = server("bridge_port=1000\nbridge_port=2000\n")
    assert c.bridge_port == 2000
    assert c.warnings == (
        "etc/nps.conf:2: duplicate key 'bridge_port': this value replaces the one on line 1",
    )


def test_server_duplicate_bad_value_earlier_is_ignored() -> None:
    """
    Only the value that wins is checked.
    """
    assert server("bridge_port=abc\nbridge_port=2000\n").bridge_port == 2000


@pytest.mark.parametrize(
    "text, line, key, reason",
    [
        ("bridge_port=abc", 1, "bridge_port", "not a port number: 'abc' (expected 1-65535)"),
        ("bridge_port=0", 1, "bridge_port", "not a port number: '0' (expected 1-65535)"),
        ("bridge_port=65536", 1, "bridge_port", "not a port number: '65536' (expected 1-65535)"),
        ("bridge_port=", 1, "bridge_port", "is required (expected 1-65535)"),
        ("bridge_port=-1", 1, "bridge_port", "not a port number: '-1' (expected 1-65535)"),
        ("web_port=99999", 1, "web_port", "not a port number: '99999' (expected 1-65535, or 0/empty to disable)"),
        ("p2p_port=65534", 1, "p2p_port", "not a port number: '65534' (expected 1-65533, or 0/empty to disable)"),
        ("ip_limit=maybe", 1, "ip_limit", "not a boolean: 'maybe' (expected true/false, yes/no, on/off or 1/0)"),
        ("log_level=8", 1, "log_level", "out of range: '8' (expected an integer 0-7)"),
        ("log_level=debug", 1, "log_level", "not an integer: 'debug' (expected an integer 0-7)"),
        ("disconnect_timeout=0", 1, "disconnect_timeout", "out of range: '0' (expected an integer >= 1)"),
        ("flow_store_interval=1.5", 1, "flow_store_interval", "not an integer: '1.5' (expected an integer >= 0)"),
        ("bridge_type=udp", 1, "bridge_type", "unknown value 'udp' (expected one of tcp, kcp, quic, tls)"),
        ("bridge_ip=localhost", 1, "bridge_ip", "not an IP address: 'localhost'"),
        ("web_ip=1.2.3", 1, "web_ip", "not an IP address: '1.2.3'"),
        ("allow_ports=9001-abc", 1, "allow_ports", None),
        ("allow_ports=9009-9001", 1, "allow_ports", "port range '9009-9001' ends before it starts"),
        ("auth_crypt_key=short", 1, "auth_crypt_key", "must be 16, 24 or 32 bytes long, got 5"),
        ("web_base_url=nps", 1, "web_base_url", "not a URL path: 'nps' (expected e.g. /nps)"),
        ("public_addr=host:notaport", 1, "public_addr", None),
        ("\n\n# x\nhttp_cache_length=lots", 4, "http_cache_length", None),
    ],
)
def test_server_bad_values(text: str, line: int, key: str, reason: str | None) -> None:
    """
    A bad value raises ConfigError naming the file, line and key.
    """
    e = server_error(text + "\n")
    assert (e.path, e.line, e.key) == ("etc/nps.conf", line, key)
    if reason is not None:
        assert e.reason == reason
    assert str(e).startswith(f"etc/nps.conf:{line}: {key}: ")


def test_server_huge_number_is_config_error() -> None:
    """
    A number too long for C{int()} is a ConfigError, not a ValueError.
    """
    e = server_error("log_level=" + "9" * 5000 + "\n")
    assert e.key == "log_level"


@pytest.mark.parametrize("line", ["just words", "=value"])
def test_server_malformed_lines(line: str) -> None:
    """
    A line that is not C{key=value}, a comment or a header is an error.
    """
    e = server_error("log_level=1\n" + line + "\n")
    assert e.line == 2
    assert e.key is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("true", True),
        ("True", True),
        ("YES", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("No", False),
        ("0", False),
        ("OFF", False),
    ],
)
def test_server_booleans(text: str, expected: bool) -> None:
    """
    Booleans accept true/false, yes/no, on/off and 1/0 in any case.
    """
    assert server(f"ip_limit={text}\n").ip_limit is expected


def test_server_ipv6_bind() -> None:
    """
    IPv6 bind addresses are accepted with or without brackets.
    """
    assert server("bridge_ip=[::]\n").bridge_ip == "::"
    assert server("bridge_ip=::1\n").bridge_ip == "::1"


def test_server_public_addr_forms() -> None:
    """
    C{public_addr} takes a host, host:port or an IPv6 address.
    """
    for value in ["tunnel.example.com", "203.0.113.1:8024", "[2001:db8::1]:8024", "2001:db8::1", "[::1]"]:
        assert server(f"public_addr={value}\n").public_addr == value


def test_server_data_dir_default_is_config_dir() -> None:
    """
    Without C{data_dir} the data lives beside the config file.
    """
    assert server("", path="/etc/nps/conf/nps.conf").data_dir == "/etc/nps/conf"
    assert server("", path="nps.conf").data_dir == "."


def test_server_data_dir_relative_to_config_dir() -> None:
    """
    A relative C{data_dir} is resolved against the config file's directory,
    not the current directory; an absolute one is kept.
    """
    assert server("data_dir=data\n", path="/etc/nps/nps.conf").data_dir == "/etc/nps/data"
    assert server("data_dir=../db\n", path="/etc/nps/nps.conf").data_dir == "/etc/db"
    assert server("data_dir=/var/lib/nps\n", path="/etc/nps/nps.conf").data_dir == "/var/lib/nps"


def test_server_weak_public_vkey_warns() -> None:
    """
    A short C{public_vkey} (NPS ships C{123}) is kept but warned about.
    """
    c = server("public_vkey=123\n")
    assert c.public_vkey == "123"
    assert c.unsupported == ()
    assert len(c.warnings) == 1
    assert "public_vkey is only 3 characters" in c.warnings[0]


def test_load_server_config_reads_file(tmp_path: Path) -> None:
    """
    L{load_server_config} reads the file and records its path.
    """
    path = tmp_path / "nps.conf"
    path.write_text("bridge_port=9100\n", encoding="utf-8")
    c = load_server_config(str(path))
    assert c.path == str(path)
    assert c.bridge_port == 9100
    assert c.data_dir == str(tmp_path)


def test_load_server_config_missing_file(tmp_path: Path) -> None:
    """
    A missing file is a ConfigError with no line.
    """
    path = str(tmp_path / "absent.conf")
    with pytest.raises(ConfigError) as info:
        load_server_config(path)
    assert info.value.path == path
    assert info.value.line is None
    assert "cannot read" in info.value.reason


def test_load_server_config_not_utf8(tmp_path: Path) -> None:
    """
    Bytes that are not UTF-8 give a ConfigError at their line.
    """
    path = tmp_path / "nps.conf"
    path.write_bytes(b"log_level=1\nweb_password=\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_server_config(str(path))
    assert info.value.line == 2


def test_shipped_etc_nps_conf() -> None:
    """
    Our C{etc/nps.conf} parses with no warnings, keeps NPS's bridge port
    and sets no public key.
    """
    c = load_server_config(str(ROOT / "etc" / "nps.conf"))
    assert c.warnings == ()
    assert c.unsupported == ()
    assert c.bridge_port == 8024
    assert c.public_vkey == ""
    assert c.web_password == ""


def test_shipped_etc_nps_conf_mentions_every_key() -> None:
    """
    Every key appears in C{etc/nps.conf}, set or commented out.
    """
    text = (ROOT / "etc" / "nps.conf").read_text(encoding="utf-8")
    for key in KNOWN_SERVER_KEYS:
        assert f"{key}=" in text, key


@pytest.mark.skipif(not NPS_ASSETS.is_dir(), reason="NPS 0.26.10 assets not present")
def test_nps_0_26_10_nps_conf() -> None:
    """
    NPS 0.26.10's shipped nps.conf parses; its enabled extras (web admin,
    vhost ports) are reported as not supported yet.
    """
    c = load_server_config(str(NPS_ASSETS / "nps.conf"))
    assert c.bridge_port == 8024
    assert c.public_vkey == "123"
    assert c.web_port == 8080
    assert c.http_proxy_port == 80
    assert "web_port" not in c.unsupported  # built (nps.admin)
    assert not any("unknown key" in w for w in c.warnings)


# ------------------------------------------------------------------- npc.conf


def test_client_common_keys() -> None:
    """
    Every C{[common]} key is read; only C{server_addr}, C{vkey},
    C{conn_type=tcp}, C{auto_reconnection}, C{disconnect_timeout} and
    C{remark} are supported without a warning.
    """
    text = """\
[common]
server_addr=nps.example.com:8024
vkey=abc
conn_type=tcp
auto_reconnection=false
basic_username=u
basic_password=p
web_username=wu
web_password=wp
crypt=true
compress=true
rate_limit=100
flow_limit=200
max_conn=300
remark=office
proxy_url=socks5://u:p@10.0.0.1:1080
pprof_addr=127.0.0.1:9999
disconnect_timeout=30
tls_ca=/etc/npc/ca.pem
tls_server_name=nps.example.com
tls_known_servers=/var/lib/npc/known_servers
"""
    c = client(text)
    assert c.common == CommonConfig(
        server_addr="nps.example.com:8024",
        vkey="abc",
        conn_type="tcp",
        auto_reconnection=False,
        basic_username="u",
        basic_password="p",
        web_username="wu",
        web_password="wp",
        crypt=True,
        compress=True,
        rate_limit=100,
        flow_limit=200,
        max_conn=300,
        remark="office",
        proxy_url="socks5://u:p@10.0.0.1:1080",
        pprof_addr="127.0.0.1:9999",
        disconnect_timeout=30,
        tls_ca="/etc/npc/ca.pem",
        tls_server_name="nps.example.com",
        tls_known_servers="/var/lib/npc/known_servers",
    )
    assert set(c.unsupported) == {"proxy_url"}  # web_username/web_password: the client's admin login
    assert not any("'crypt'" in w or "'compress'" in w for w in c.warnings)  # built (nps.streamcodec)
    assert KNOWN_CLIENT_COMMON_KEYS == {line.split("=")[0] for line in text.splitlines()[1:]}


def test_client_common_defaults() -> None:
    """
    An empty file gives an empty C{[common]} and nothing else.
    """
    c = client("")
    assert c.common == CommonConfig()
    assert c.common.auto_reconnection is None
    assert (c.tunnels, c.hosts, c.visitors, c.health, c.warnings) == ((), (), (), (), ())


@pytest.mark.parametrize("value", ["kcp", "quic"])
def test_client_kcp_is_the_udp_bridge(value: str) -> None:
    """
    C{conn_type=kcp} / C{quic} select the UDP (QUIC) bridge: supported, no warning.
    """
    c = client(f"[common]\nconn_type={value}\n")
    assert c.common.conn_type == value
    assert c.unsupported == ()


@pytest.mark.parametrize(
    "value, reason_part",
    [
        ("1.2.3.4", "missing port"),
        ("8024", "missing host"),
        (":8024", "missing host"),
        ("1.2.3.4:0", "not a port number"),
        ("1.2.3.4:http", "not a port number"),
        ("::1:8024", "IPv6 addresses need brackets"),
        ("[::1", "missing ']'"),
        ("[nothost]:1", "not an IPv6 address"),
        ("bad host:1", "not a host name"),
    ],
)
def test_client_bad_server_addr(value: str, reason_part: str) -> None:
    """
    C{server_addr} must be C{host:port}.
    """
    e = client_error(f"[common]\nvkey=k\nserver_addr={value}\n")
    assert (e.path, e.line, e.key) == ("npc.conf", 3, "server_addr")
    assert reason_part in e.reason


def test_client_ipv6_server_addr() -> None:
    """
    An IPv6 server address is written in brackets.
    """
    assert client("server_addr=[::1]:8024\n").common.server_addr == "[::1]:8024"


@pytest.mark.parametrize(
    "line, key",
    [
        ("auto_reconnection=sometimes", "auto_reconnection"),
        ("crypt=2", "crypt"),
        ("rate_limit=-5", "rate_limit"),
        ("disconnect_timeout=0", "disconnect_timeout"),
        ("conn_type=udp", "conn_type"),
        ("proxy_url=ftp://h:1", "proxy_url"),
        ("proxy_url=socks5://nohostport", "proxy_url"),
        ("pprof_addr=9999", "pprof_addr"),
    ],
)
def test_client_bad_common_values(line: str, key: str) -> None:
    """
    A bad C{[common]} value raises ConfigError at its line and key.
    """
    e = client_error(f"[common]\nvkey=k\n{line}\n")
    assert (e.line, e.key) == (3, key)


def test_seed_guide_npc_conf() -> None:
    """
    The npc.conf from the seed guide's RDP example parses: its tcp tunnel
    is supported, the extra [common] keys are only warned about.
    """
    text = SEED_NPC_CONF.replace("XX.XX.XX.XX", "203.0.113.7")
    c = client(text)
    assert c.common.server_addr == "203.0.113.7:8024"
    assert c.common.vkey == "123"
    assert c.common.auto_reconnection is True
    assert c.tunnels == (
        TunnelSection(
            name="tcp",
            line=19,
            mode="tcp",
            server_port="8002",
            ports=(8002,),
            targets=("127.0.0.1:3389",),
        ),
    )
    assert c.tunnels[0].expand() == [("tcp", 8002, ("127.0.0.1:3389",))]
    assert "[tcp]" not in c.unsupported
    assert not any("unknown key" in w for w in c.warnings)


def test_seed_guide_placeholder_parses() -> None:
    """
    The guide's text as printed, with the placeholder C{XX.XX.XX.XX}, still
    parses: the placeholder is a well-formed host name (connecting to it
    fails later, not reading the file).
    """
    assert client(SEED_NPC_CONF).common.server_addr == "XX.XX.XX.XX:8024"


def test_seed_guide_minimal_npc_conf() -> None:
    """
    Keys before any section header are C{[common]} (the seed guide shows a
    file with only server_addr, vkey and conn_type and no header).
    """
    c = client(SEED_MINIMAL_NPC_CONF)
    assert c.common.server_addr == "203.0.113.7:8024"
    assert c.common.vkey == "abc123"
    assert c.common.conn_type == "tcp"
    assert c.warnings == ()


def test_implicit_common_then_common_header_is_duplicate() -> None:
    """
    Keys before the first header already form C{[common]}; a later
    C{[common]} header is a duplicate section.
    """
    e = client_error("vkey=a\n[common]\nvkey=b\n")
    assert e.line == 2
    assert "duplicate section [common]" in e.reason
    assert "before the first section header" in e.reason


def test_duplicate_section_is_error() -> None:
    """
    Two sections with the same name are an error at the second header.
    """
    e = client_error(COMMON + "[a]\nmode=tcp\nserver_port=1\ntarget_addr=2\n[a]\nmode=tcp\n")
    assert e.line == 8
    assert e.reason == "duplicate section [a]: already started on line 4"


def test_duplicate_key_in_section() -> None:
    """
    A key given twice in a section: the later wins, with a warning.
    """
    c = client(COMMON + "[t]\nmode=tcp\nserver_port=1000\nserver_port=2000\ntarget_addr=22\n")
    assert c.tunnels[0].ports == (2000,)
    assert c.warnings == (
        "npc.conf:7: [t] duplicate key 'server_port': this value replaces the one on line 6",
    )


def test_section_header_trailing_comment() -> None:
    """
    Text after C{]} (the shipped example's C{; domain}) is not part of the name.
    """
    c = client(COMMON + "[web1]                      ; domain\nhost=a.proxy.com\ntarget_addr=8083\n")
    assert c.hosts[0].name == "web1"
    assert not any("after section header" in w for w in c.warnings)


def test_section_header_trailing_text_warns() -> None:
    """
    Other text after C{]} is ignored with a warning.
    """
    c = client(COMMON + "[t] extra\nmode=tcp\nserver_port=1\ntarget_addr=2\n")
    assert c.tunnels[0].name == "t"
    assert "npc.conf:4: text after section header ignored: 'extra'" in c.warnings


@pytest.mark.parametrize("header", ["[]", "[  ]", "[abc", "[a[b]"])
def test_bad_section_headers(header: str) -> None:
    """
    Empty, unclosed or nested section headers are errors.
    """
    e = client_error(COMMON + header + "\n")
    assert e.line == 4


def test_client_keys_and_values_trimmed_and_first_equals() -> None:
    """
    Keys and values are trimmed in every section (NPS does not trim
    [common]), and values keep every C{=} after the first.
    """
    c = client("[common]\n  vkey =  a=b=c  \r\n server_addr = h:1\n")
    assert c.common.vkey == "a=b=c"
    assert c.common.server_addr == "h:1"


def test_client_malformed_line() -> None:
    """
    A line with no C{=} that is neither a comment nor a header is an error.
    """
    e = client_error(COMMON + "[t]\nmode tcp\n")
    assert (e.line, e.key) == (5, None)


def test_client_unknown_keys_warn() -> None:
    """
    Unknown keys in any section only warn, naming the section.
    """
    c = client("[common]\nvkey=k\ntp=x\n[t]\nmode=tcp\nserver_port=1\ntarget_addr=2\nfoo=1\n")
    assert c.warnings == (
        "npc.conf:3: [common] unknown key 'tp' ignored",
        "npc.conf:8: [t] unknown key 'foo' ignored",
    )


# --------------------------------------------------------------- env templates


def test_env_template_rendered() -> None:
    """
    C{{{.NAME}}} is replaced by the environment variable, also with spaces.
    """
    text = "[common]\nserver_addr={{.NPC_SERVER_ADDR}}\nvkey={{ .NPC_VKEY }}x\n"
    c = client(text, {"NPC_SERVER_ADDR": "10.0.0.1:8024", "NPC_VKEY": "key"})
    assert c.common.server_addr == "10.0.0.1:8024"
    assert c.common.vkey == "keyx"


def test_env_template_in_section_name_and_tunnel() -> None:
    """
    Templates work anywhere on a line, including headers.
    """
    text = COMMON + "[{{.NAME}}]\nmode=tcp\nserver_port={{.PORT}}\ntarget_addr=127.0.0.1:{{.PORT}}\n"
    c = client(text, {"NAME": "ssh", "PORT": "2222"})
    assert c.tunnels[0].name == "ssh"
    assert c.tunnels[0].targets == ("127.0.0.1:2222",)


def test_env_template_missing_variable() -> None:
    """
    A missing variable is a ConfigError at its line (Go prints C{<no value>}).
    """
    e = client_error("[common]\nvkey=k\nserver_addr={{.NPC_SERVER_ADDR}}\n")
    assert e.line == 3
    assert "NPC_SERVER_ADDR is not set" in e.reason


def test_env_template_in_comment_ignored() -> None:
    """
    Templates in comment lines are not rendered, so they need no variable.
    """
    assert client("#server_addr={{.NOT_SET}}\nvkey=k\n").common.vkey == "k"


@pytest.mark.parametrize("text", ["vkey={{.A", "vkey={{if .A}}x{{end}}", "vkey={{}}"])
def test_env_template_bad_syntax(text: str) -> None:
    """
    Anything but C{{{.NAME}}} is an error rather than silently kept.
    """
    e = client_error(text + "\n", {"A": "1"})
    assert e.line == 1


def test_env_template_value_with_newline_rejected() -> None:
    """
    A variable cannot inject extra lines into the file.
    """
    e = client_error("vkey={{.A}}\n", {"A": "x\n[evil]\nmode=tcp"})
    assert "line break" in e.reason


def test_env_value_not_rendered_again() -> None:
    """
    A variable's value is used as is, even if it contains C{{{...}}}.
    """
    assert client("vkey={{.A}}\n", {"A": "{{.B}}"}).common.vkey == "{{.B}}"


def test_environ_none_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without C{environ}, the process environment is used.
    """
    monkeypatch.setenv("NPS_TEST_VKEY", "from-env")
    assert parse_client_config("vkey={{.NPS_TEST_VKEY}}\n", "npc.conf").common.vkey == "from-env"


# ------------------------------------------------------------- classification


def test_target_addr_localhost_is_tunnel_not_host() -> None:
    """
    A tcp section whose C{target_addr} mentions "localhost" is a tunnel
    (NPS looks for the substring "host" in the body and makes it a domain).
    """
    c = client(COMMON + "[ssh]\nmode=tcp\ntarget_addr=localhost:22\nserver_port=10022\n")
    assert c.hosts == ()
    assert c.tunnels[0].targets == ("localhost:22",)
    assert c.tunnels[0].mode == "tcp"


def test_host_change_alone_does_not_make_host() -> None:
    """
    Only a C{host} key makes a domain section; a tunnel without C{mode} is
    an error even if some key contains "host".
    """
    e = client_error(COMMON + "[x]\nhost_change=a.b\ntarget_addr=1\n")
    assert e.line == 4
    assert e.key == "mode"


def test_classification() -> None:
    """
    Sections are classified by name prefix and keys: health..., secret.../
    p2p... without mode (visitors), host= (domain), else tunnel.
    """
    text = COMMON + """\
[health_web]
health_check_target=127.0.0.1:8083
[secret_ssh]
local_port=2001
password=ssh2
[p2p_ssh]
local_port=2002
password=ssh3
target_addr=10.1.50.2:22
[secret_tunnel]
mode=secret
password=pw
target_addr=10.0.0.1:22
[p2p_provider]
mode=p2p
password=pw2
[web]
host=a.example.com
target_addr=8080
[plain]
mode=tcp
server_port=9000
target_addr=22
"""
    c = client(text)
    assert [h.name for h in c.health] == ["health_web"]
    assert [(v.name, v.kind) for v in c.visitors] == [("secret_ssh", "secret"), ("p2p_ssh", "p2p")]
    assert [(t.name, t.mode) for t in c.tunnels] == [
        ("secret_tunnel", "secret"),
        ("p2p_provider", "p2p"),
        ("plain", "tcp"),
    ]
    assert [h.name for h in c.hosts] == ["web"]
    assert set(c.unsupported) == set()


def test_common_header_case_insensitive() -> None:
    """
    C{[Common]} is the common section.
    """
    assert client("[Common]\nvkey=k\n").common.vkey == "k"


# -------------------------------------------------------------------- tunnels


def test_tunnel_missing_mode() -> None:
    """
    A tunnel section without C{mode} is an error at its header.
    """
    e = client_error(COMMON + "[t]\nserver_port=1\n")
    assert (e.line, e.key) == (4, "mode")
    assert "neither mode= (tunnel) nor host= (domain)" in e.reason


def test_tunnel_unknown_mode() -> None:
    """
    An unknown C{mode} is an error at the mode line.
    """
    e = client_error(COMMON + "[t]\nserver_port=1\nmode=ftp\n")
    assert (e.line, e.key) == (6, "mode")
    assert "unknown value 'ftp'" in e.reason


@pytest.mark.parametrize(
    "mode, canonical", [("tcp", "tcp"), ("UDP", "udp"), ("httpproxy", "httpProxy"), ("socks5", "socks5")]
)
def test_tunnel_mode_spelling(mode: str, canonical: str) -> None:
    """
    Modes are matched case-insensitively and kept in NPS's spelling.
    """
    extra = "target_addr=53\n" if canonical in ("tcp", "udp") else ""
    c = client(COMMON + f"[t]\nmode={mode}\nserver_port=1\n{extra}")
    assert c.tunnels[0].mode == canonical


def test_unsupported_mode_warns() -> None:
    """
    Built modes (p2p included) give no "not supported yet" warning.
    """
    c = client(COMMON + "[p2p_ssh_provider]\nmode=p2p\npassword=k\n"
               "[dns]\nmode=udp\nserver_port=12253\ntarget_addr=114.114.114.114:53\n")
    assert c.unsupported == ()
    assert c.warnings == ()


def test_tunnel_targets() -> None:
    """
    C{target_addr} is a comma list; a bare port means 127.0.0.1; IPv6 needs
    brackets; empty items are skipped.
    """
    c = client(COMMON + "[t]\nmode=tcp\nserver_port=1\ntarget_addr=8080, 10.0.0.2:80,[::1]:22,host.lan:443,\n")
    assert c.tunnels[0].targets == ("127.0.0.1:8080", "10.0.0.2:80", "[::1]:22", "host.lan:443")


@pytest.mark.parametrize(
    "body, key",
    [
        ("mode=tcp\nserver_port=1\n", "target_addr"),
        ("mode=tcp\ntarget_addr=22\n", "server_port"),
        ("mode=tcp\nserver_port=1\ntarget_addr=::1:22\n", "target_addr"),
        ("mode=tcp\nserver_port=1\ntarget_addr=host\n", "target_addr"),
        ("mode=tcp\nserver_port=abc\ntarget_addr=22\n", "server_port"),
        ("mode=tcp\nserver_port=70000\ntarget_addr=22\n", "server_port"),
        ("mode=tcp\nserver_port=1,1\ntarget_port=2,3\n", "server_port"),
        ("mode=tcp\nserver_port=1\ntarget_addr=22\nserver_ip=any\n", "server_ip"),
        ("mode=secret\ntarget_addr=22\n", "password"),
        ("mode=secret\npassword=x\n", "target_addr"),
        ("mode=p2p\n", "password"),
        ("mode=file\nserver_port=1\n", "local_path"),
        ("mode=tcp\nserver_port=9001-9003\ntarget_addr=127.0.0.1:22\n", "server_port"),
        ("mode=tcp\nserver_port=9001-9003\ntarget_port=1-2\n", "target_port"),
        ("mode=tcp\nserver_port=9001\ntarget_port=22\ntarget_addr=22\n", "target_port"),
        ("mode=tcp\nserver_port=9001\ntarget_port=22\ntarget_ip=a b\n", "target_ip"),
    ],
)
def test_tunnel_bad_values(body: str, key: str) -> None:
    """
    Missing or bad tunnel values raise ConfigError with the key (or the
    section header's line when the key is missing).
    """
    e = client_error(COMMON + "[t]\n" + body)
    assert e.key == key
    assert e.path == "npc.conf"
    lines = (COMMON + "[t]\n" + body).splitlines()
    matching = [i + 1 for i, line in enumerate(lines) if line.startswith(key + "=")]
    assert e.line == (matching[-1] if matching else 4)


def test_tunnel_port_range_expand() -> None:
    """
    A multi-port tunnel expands to one tunnel per port named C{<name>_<port>},
    mapped 1:1 onto C{target_port} at C{target_ip}.
    """
    c = client(
        COMMON + "[tcp_range]\nmode=tcp\nserver_port=9001-9003,10001\n"
        "target_port=8001-8003,10002\ntarget_ip=10.1.50.2\n"
    )
    t = c.tunnels[0]
    assert t.ports == (9001, 9002, 9003, 10001)
    assert t.server_port == "9001-9003,10001"
    assert t.expand() == [
        ("tcp_range_9001", 9001, ("10.1.50.2:8001",)),
        ("tcp_range_9002", 9002, ("10.1.50.2:8002",)),
        ("tcp_range_9003", 9003, ("10.1.50.2:8003",)),
        ("tcp_range_10001", 10001, ("10.1.50.2:10002",)),
    ]


def test_tunnel_range_default_target_ip() -> None:
    """
    Without C{target_ip}, range mapping goes to 127.0.0.1; an IPv6
    C{target_ip} is bracketed.
    """
    t = client(COMMON + "[r]\nmode=tcp\nserver_port=1-2\ntarget_port=3-4\n").tunnels[0]
    assert t.expand() == [("r_1", 1, ("127.0.0.1:3",)), ("r_2", 2, ("127.0.0.1:4",))]
    t = client(COMMON + "[r]\nmode=tcp\nserver_port=5\ntarget_port=6\ntarget_ip=[::1]\n").tunnels[0]
    assert t.expand() == [("r", 5, ("[::1]:6",))]


def test_tunnel_single_port_keeps_name() -> None:
    """
    A single-port tunnel keeps its section name as remark.
    """
    t = client(COMMON + "[web]\nmode=tcp\nserver_port=8080\ntarget_addr=80,81\n").tunnels[0]
    assert t.expand() == [("web", 8080, ("127.0.0.1:80", "127.0.0.1:81"))]


def test_tunnel_multi_port_proxy_modes_share_nothing() -> None:
    """
    Multi-port socks5/httpProxy tunnels expand to one entry per port.
    """
    t = client(COMMON + "[s]\nmode=socks5\nserver_port=1080-1081\n").tunnels[0]
    assert t.expand() == [("s_1080", 1080, ()), ("s_1081", 1081, ())]


def test_secret_expand_has_no_port() -> None:
    """
    Secret and p2p tunnels have no public port; their server_port is
    ignored with a warning.
    """
    c = client(COMMON + "[s]\nmode=secret\npassword=pw\ntarget_addr=22\nserver_port=9\n")
    t = c.tunnels[0]
    assert t.ports == ()
    assert t.expand() == [("s", 0, ("127.0.0.1:22",))]
    assert "npc.conf:8: [s] key 'server_port' has no effect with mode 'secret'" in c.warnings


def test_expand_rejects_mismatch_built_by_hand() -> None:
    """
    L{TunnelSection.expand} on a hand-built section with mismatched range
    mapping raises ValueError.
    """
    t = TunnelSection(name="t", line=1, mode="tcp", server_port="1-2", ports=(1, 2), target_port="3")
    with pytest.raises(ValueError):
        t.expand()


def test_tunnel_port_clash() -> None:
    """
    Two TCP-listening tunnels on the same port are an error; tcp and udp
    may share a port number, and distinct bind IPs may too.
    """
    e = client_error(
        COMMON + "[a]\nmode=tcp\nserver_port=1-3\ntarget_port=4-6\n[b]\nmode=socks5\nserver_port=3\n"
    )
    assert e.line == 8
    assert "tcp port 3 is already used by [a] (line 4)" in e.reason
    client(COMMON + "[a]\nmode=tcp\nserver_port=53\ntarget_addr=53\n[b]\nmode=udp\nserver_port=53\ntarget_addr=53\n")
    client(
        COMMON + "[a]\nmode=tcp\nserver_port=5\nserver_ip=127.0.0.1\ntarget_addr=1\n"
        "[b]\nmode=tcp\nserver_port=5\nserver_ip=127.0.0.2\ntarget_addr=1\n"
    )


def test_tunnel_all_keys() -> None:
    """
    Every tunnel key is read into the section.
    """
    c = client(
        COMMON + "[f]\nmode=file\nserver_port=19008\nserver_ip=127.0.0.1\n"
        "local_path=/srv/share\nstrip_pre=/web/\n"
        "[s]\nmode=socks5\nserver_port=19009\nmulti_account=multi_account.conf\n"
    )
    f, s = c.tunnels
    assert (f.local_path, f.strip_pre, f.server_ip) == ("/srv/share", "/web/", "127.0.0.1")
    assert s.multi_account == "multi_account.conf"
    assert KNOWN_TUNNEL_KEYS == {
        "mode",
        "server_port",
        "server_ip",
        "target_addr",
        "target_port",
        "target_ip",
        "password",
        "local_path",
        "strip_pre",
        "multi_account",
        "deny_ips",
    }


def test_irrelevant_tunnel_key_warns() -> None:
    """
    A tunnel key that the mode does not use is reported.
    """
    c = client(COMMON + "[t]\nmode=tcp\nserver_port=1\ntarget_addr=2\nlocal_path=/x\n")
    assert c.warnings == ("npc.conf:8: [t] key 'local_path' has no effect with mode 'tcp'",)


# ---------------------------------------------------------------------- hosts


def test_host_section() -> None:
    """
    A domain section reads host, targets, host_change, scheme, location and
    C{header_*} keys (header names keep their case).
    """
    c = client(
        COMMON
        + "[web1]\nhost=A.Proxy.com\ntarget_addr=127.0.0.1:8083,127.0.0.1:8082\n"
        "host_change=www.inner.lan\nheader_X-Proxy=nps\nheader_Cache-Control=a=b\n"
        "location=/static\nscheme=HTTPS\n"
    )
    assert c.hosts == (
        HostSection(
            name="web1",
            line=4,
            host="a.proxy.com",
            targets=("127.0.0.1:8083", "127.0.0.1:8082"),
            host_change="www.inner.lan",
            scheme="https",
            location="/static",
            headers=(("X-Proxy", "nps"), ("Cache-Control", "a=b")),
        ),
    )
    assert c.unsupported == ()
    assert not any("not supported" in w for w in c.warnings)
    assert KNOWN_HOST_KEYS == {"host", "target_addr", "host_change", "scheme", "location"}


def test_host_defaults_and_wildcard() -> None:
    """
    C{scheme} defaults to all and C{location} to C{/}; C{*.domain} is allowed.
    """
    h = client(COMMON + "[w]\nhost=*.example.com\ntarget_addr=80\n").hosts[0]
    assert (h.host, h.scheme, h.location, h.headers) == ("*.example.com", "all", "/", ())


@pytest.mark.parametrize(
    "body, key",
    [
        ("host=\ntarget_addr=80\n", "host"),
        ("host=a b\ntarget_addr=80\n", "host"),
        ("host=a.*.com\ntarget_addr=80\n", "host"),
        ("host=a.com\n", "target_addr"),
        ("host=a.com\ntarget_addr=,\n", "target_addr"),
        ("host=a.com\ntarget_addr=80\nscheme=ftp\n", "scheme"),
        ("host=a.com\ntarget_addr=80\nlocation=static\n", "location"),
        ("host=a.com\ntarget_addr=80\nheader_=x\n", "header_"),
        ("host=a.com\ntarget_addr=80\nheader_A:B=x\n", "header_A:B"),
    ],
)
def test_host_bad_values(body: str, key: str) -> None:
    """
    Bad domain section values raise ConfigError naming the key.
    """
    assert client_error(COMMON + "[w]\n" + body).key == key


# ------------------------------------------------------------ visitors, health


def test_visitor_sections() -> None:
    """
    Visitor sections read local_port, local_ip (default loopback), password
    and, for p2p, target_addr.
    """
    c = client(
        COMMON + "[secret_ssh]\nlocal_port=2001\npassword=ssh2\n"
        "[p2p_ssh]\nlocal_port=2002\nlocal_ip=0.0.0.0\npassword=ssh3\ntarget_addr=10.1.50.2:22\n"
    )
    assert c.visitors == (
        VisitorSection(name="secret_ssh", line=4, kind="secret", local_port=2001, local_ip="127.0.0.1", password="ssh2"),
        VisitorSection(
            name="p2p_ssh",
            line=7,
            kind="p2p",
            local_port=2002,
            local_ip="0.0.0.0",
            password="ssh3",
            target_addr="10.1.50.2:22",
        ),
    )
    assert KNOWN_VISITOR_KEYS == {"local_port", "local_ip", "password", "target_addr"}


@pytest.mark.parametrize(
    "body, key",
    [
        ("[secret_a]\npassword=x\n", "local_port"),
        ("[secret_a]\nlocal_port=0\npassword=x\n", "local_port"),
        ("[secret_a]\nlocal_port=1\n", "password"),
        ("[p2p_a]\nlocal_port=1\npassword=x\ntarget_addr=h\n", "target_addr"),
        ("[secret_a]\nlocal_port=1\npassword=x\nlocal_ip=h\n", "local_ip"),
    ],
)
def test_visitor_bad_values(body: str, key: str) -> None:
    """
    Bad visitor values raise ConfigError naming the key.
    """
    assert client_error(COMMON + body).key == key


def test_health_section() -> None:
    """
    Health sections read every C{health_*} key.
    """
    c = client(
        COMMON + "[health_check_web]\nhealth_check_timeout=1\nhealth_check_max_failed=4\n"
        "health_check_interval=2\nhealth_check_type=http\nhealth_http_url=/ping\n"
        "health_check_target=127.0.0.1:8083,8082\n"
    )
    assert c.health == (
        HealthSection(
            name="health_check_web",
            line=4,
            timeout=1,
            max_failed=4,
            interval=2,
            type="http",
            http_url="/ping",
            targets=("127.0.0.1:8083", "127.0.0.1:8082"),
        ),
    )
    assert KNOWN_HEALTH_KEYS == {
        "health_check_timeout",
        "health_check_max_failed",
        "health_check_interval",
        "health_check_type",
        "health_http_url",
        "health_check_target",
    }


@pytest.mark.parametrize(
    "body, key",
    [
        ("health_check_type=tcp\n", "health_check_target"),
        ("health_check_target=1\nhealth_check_type=icmp\n", "health_check_type"),
        ("health_check_target=1\nhealth_check_timeout=0\n", "health_check_timeout"),
        ("health_check_target=1\nhealth_http_url=ping\n", "health_http_url"),
    ],
)
def test_health_bad_values(body: str, key: str) -> None:
    """
    Bad health values raise ConfigError naming the key.
    """
    assert client_error(COMMON + "[health_x]\n" + body).key == key


# ---------------------------------------------------------- shipped npc files


def test_shipped_etc_npc_conf() -> None:
    """
    Our C{etc/npc.conf} parses with no warnings: one supported tcp tunnel
    to ssh, auto-reconnection on, and a placeholder vkey.
    """
    c = load_client_config(str(ROOT / "etc" / "npc.conf"), {})
    assert c.warnings == ()
    assert c.common.server_addr == "127.0.0.1:8024"
    assert c.common.vkey == "CHANGE_ME"
    assert c.common.auto_reconnection is True
    assert [t.expand() for t in c.tunnels] == [[("tcp", 10022, ("127.0.0.1:22",))]]


@pytest.mark.skipif(not NPS_ASSETS.is_dir(), reason="NPS 0.26.10 assets not present")
def test_nps_0_26_10_npc_conf() -> None:
    """
    NPS 0.26.10's shipped npc.conf parses, every section classified as NPS
    does, with warnings for what is not built yet.
    """
    c = load_client_config(str(NPS_ASSETS / "npc.conf"), {})
    assert c.common.server_addr == "127.0.0.1:8024"
    assert [t.name for t in c.tunnels] == ["tcp", "socks5", "file", "http", "udp", "ssh_secret", "ssh_p2p"]
    assert [h.name for h in c.hosts] == ["web"]
    assert [v.name for v in c.visitors] == ["secret_ssh", "p2p_ssh"]
    assert [h.name for h in c.health] == ["health_check_test1", "health_check_test2"]
    assert not any("unknown key" in w for w in c.warnings)


def test_load_client_config_missing_file(tmp_path: Path) -> None:
    """
    A missing npc.conf is a ConfigError.
    """
    with pytest.raises(ConfigError):
        load_client_config(str(tmp_path / "absent.conf"), {})


def test_load_client_config_reads_file(tmp_path: Path) -> None:
    """
    L{load_client_config} reads the file and records its path.
    """
    path = tmp_path / "npc.conf"
    path.write_text("[common]\nserver_addr=h:1\n", encoding="utf-8")
    c = load_client_config(str(path), {})
    assert c.path == str(path)
    assert c.common.server_addr == "h:1"


# ------------------------------------------------------------- port helpers


def test_parse_port_ranges() -> None:
    """
    Port lists keep their order; single ports become C{(p, p)}.
    """
    assert parse_port_ranges("9001-9009,10001,11000-12000") == ((9001, 9009), (10001, 10001), (11000, 12000))
    assert parse_port_ranges(" 80 , 443 - 444 ,") == ((80, 80), (443, 444))
    assert parse_port_ranges("") == ()
    assert expand_port_ranges(((5, 7), (1, 1))) == (5, 6, 7, 1)


@pytest.mark.parametrize("text", ["abc", "0", "1-", "-5", "5-1", "1-2-3", "70000", "1.5"])
def test_parse_port_ranges_errors(text: str) -> None:
    """
    Malformed port lists raise ValueError with a reason.
    """
    with pytest.raises(ValueError) as info:
        parse_port_ranges(text)
    assert str(info.value)


def test_port_allowed() -> None:
    """
    An empty whitelist allows every port; otherwise only listed ports.
    """
    assert port_allowed(1, ())
    ranges = parse_port_ranges("9001-9009,10001")
    assert port_allowed(9001, ranges)
    assert port_allowed(9009, ranges)
    assert port_allowed(10001, ranges)
    assert not port_allowed(9010, ranges)
    assert not port_allowed(10000, ranges)


def test_host_port_helpers() -> None:
    """
    L{parse_host_port} and L{format_host_port} round-trip, with brackets
    for IPv6 and the bare-port default host.
    """
    assert parse_host_port("[::1]:22") == ("::1", 22)
    assert parse_host_port("a.b:1") == ("a.b", 1)
    assert parse_host_port("22", "127.0.0.1") == ("127.0.0.1", 22)
    assert format_host_port("::1", 22) == "[::1]:22"
    assert format_host_port("a.b", 1) == "a.b:1"


# ------------------------------------------------------------------ fuzzing

_KEYS = sorted(KNOWN_SERVER_KEYS | KNOWN_CLIENT_COMMON_KEYS | KNOWN_TUNNEL_KEYS | KNOWN_HOST_KEYS)
_line = st.one_of(
    st.text(max_size=40),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS + ["header_X", "mode", "host"]), st.text(max_size=20)),
    st.builds(lambda n: f"[{n}]", st.sampled_from(["common", "secret_a", "p2p_b", "health_c", "t", "web"])),
    st.sampled_from(["mode=tcp", "mode=udp", "server_port=1-3", "target_port=4-6", "{{.X}}", "{{", "#x", ""]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=25))
def test_random_text_only_raises_config_error(lines: list[str]) -> None:
    """
    Whatever the text, both parsers return a config or raise ConfigError.
    """
    text = "\n".join(lines)
    for parse in (
        lambda: parse_server_config(text, "x.conf"),
        lambda: parse_client_config(text, "x.conf", {"X": "1"}),
    ):
        try:
            parse()
        except ConfigError as e:
            assert e.path == "x.conf"
            assert str(e)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_unicode_only_raises_config_error(text: str) -> None:
    """
    Arbitrary Unicode (control characters, surrogates-free) never crashes
    the parsers with anything but ConfigError.
    """
    for parse in (
        lambda: parse_server_config(text, "x.conf"),
        lambda: parse_client_config(text, "x.conf", {}),
    ):
        try:
            parse()
        except ConfigError:
            pass


_TOKENS = list("[]=#;{}.:-,\n\r 09aZ_\x00\u3000é*/") + [
    "mode",
    "host",
    "secret",
    "p2p",
    "health",
    "common",
    "tcp",
    "udp",
    "{{.X}}",
    "server_port",
    "target_port",
    "target_addr",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), max_size=120).map("".join))
def test_random_tokens_only_raise_config_error(text: str) -> None:
    """
    Text built from the syntax's own characters and words either parses
    (and every tunnel expands) or raises ConfigError.
    """
    try:
        config = parse_client_config(text, "x.conf", {"X": "1"})
    except ConfigError:
        pass
    else:
        for tunnel in config.tunnels:
            tunnel.expand()
    try:
        parse_server_config(text, "x.conf")
    except ConfigError:
        pass


def test_no_environment_leak_in_defaults() -> None:
    """
    L{ServerConfig} defaults do not depend on the environment or CWD.
    """
    assert ServerConfig().data_dir == "./nps-data"
    assert ServerConfig(path="/a/b.conf").data_dir == "/a"
    assert os.path.isabs(ServerConfig(path="/a/b.conf").data_dir)
