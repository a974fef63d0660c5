# -*- test-case-name: test.test_config -*-
"""
Read NPS's configuration files: the server's C{nps.conf} and the client's
C{npc.conf}.

Both readers keep NPS's key names and file layout, so a user's existing files
work unchanged, but they fix NPS's parsing mistakes on purpose (see
C{docs/config.md}, "Differences from NPS").

The module does no I/O except reading the one file a C{load_*} function is
given; C{parse_*} functions are pure.  Bad values raise L{ConfigError} naming
the file, line and key.  Things that are only worth a mention (unknown keys,
duplicate keys, features that are accepted but not built yet) are collected as
one message each in the C{warnings} field of the result; a later component logs
them.
"""
from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

import attrs

from nps.access import format_deny_list, parse_deny_list

__all__ = [
    "BUILT_MODES",
    "ConfigError",
    "ServerConfig",
    "CommonConfig",
    "TunnelSection",
    "HostSection",
    "VisitorSection",
    "HealthSection",
    "ClientConfig",
    "load_server_config",
    "parse_server_config",
    "load_client_config",
    "parse_client_config",
    "parse_port_ranges",
    "expand_port_ranges",
    "port_allowed",
    "parse_host_port",
    "format_host_port",
    "KNOWN_SERVER_KEYS",
    "KNOWN_CLIENT_COMMON_KEYS",
    "KNOWN_TUNNEL_KEYS",
    "KNOWN_HOST_KEYS",
    "KNOWN_VISITOR_KEYS",
    "KNOWN_HEALTH_KEYS",
    "TUNNEL_MODES",
]

_T = TypeVar("_T")


class ConfigError(Exception):
    """
    A configuration file cannot be used.

    C{str(error)} is C{"{path}:{line}: {key}: {reason}"}, leaving out the
    parts that are C{None}.

    @ivar path: the file the bad value came from.
    @ivar line: 1-based line number, or C{None} when the problem is not tied
        to a line (e.g. the file cannot be read).
    @ivar key: the key whose value is bad, or C{None}.
    @ivar reason: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str, line: int | None, key: str | None, reason: str) -> None:
        super().__init__(path, line, key, reason)
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        parts = [where]
        if self.key is not None:
            parts.append(self.key)
        parts.append(self.reason)
        return ": ".join(parts)


# ---------------------------------------------------------------------------
# Value converters.  Each takes the trimmed, non-empty text of a value and
# returns the typed value or raises ValueError with a reason for the user.
# ---------------------------------------------------------------------------

_BOOLEANS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}
_DIGITS = re.compile(r"[0-9]{1,10}")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_VHOST = re.compile(r"(?:\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _to_str(value: str) -> str:
    """
    Keep a string value as it is.

    @param value: the trimmed value.
    @return: C{value}.
    """
    return value


def _to_bool(value: str) -> bool:
    """
    Parse a boolean the way NPS users write them.

    @param value: C{true/false}, C{yes/no}, C{on/off} or C{1/0}, any case.
    @return: the boolean.
    @raise ValueError: for anything else.
    """
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise ValueError(
            f"not a boolean: {value!r} (expected true/false, yes/no, on/off or 1/0)"
        ) from None


def _int_converter(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """
    Make a converter for a decimal integer in a range.

    @param minimum: smallest accepted value.
    @param maximum: largest accepted value, or C{None} for no upper bound.
    @return: a converter raising C{ValueError} outside the range.
    """
    if maximum is None:
        expected = f"an integer >= {minimum}"
    else:
        expected = f"an integer {minimum}-{maximum}"

    def convert(value: str) -> int:
        if _DIGITS.fullmatch(value) is None:
            raise ValueError(f"not an integer: {value!r} (expected {expected})")
        number = int(value)
        if number < minimum or (maximum is not None and number > maximum):
            raise ValueError(f"out of range: {value!r} (expected {expected})")
        return number

    return convert


def _to_port(value: str) -> int:
    """
    Parse a TCP/UDP port number.

    @param value: decimal text.
    @return: the port, 1-65535.
    @raise ValueError: if C{value} is not a port.
    """
    value = value.strip()
    if _DIGITS.fullmatch(value) is None or not 1 <= int(value) <= 65535:
        raise ValueError(f"not a port number: {value!r} (expected 1-65535)")
    return int(value)


def _optional_port_converter(maximum: int = 65535) -> Callable[[str], int]:
    """
    Make a converter for a listener port where C{0} means "disabled".

    @param maximum: largest accepted port (p2p needs room for three ports).
    @return: the converter.
    """

    def convert(value: str) -> int:
        if _DIGITS.fullmatch(value) is None or int(value) > maximum:
            raise ValueError(
                f"not a port number: {value!r} (expected 1-{maximum}, or 0/empty to disable)"
            )
        return int(value)

    return convert


def _choice_converter(*choices: str) -> Callable[[str], str]:
    """
    Make a converter accepting one of C{choices}, in any case.

    @param choices: the canonical spellings.
    @return: a converter returning the canonical spelling.
    """
    canonical = {c.lower(): c for c in choices}

    def convert(value: str) -> str:
        try:
            return canonical[value.lower()]
        except KeyError:
            raise ValueError(
                f"unknown value {value!r} (expected one of {', '.join(choices)})"
            ) from None

    return convert


def _to_ip(value: str) -> str:
    """
    Parse an IP address to bind to.

    @param value: an IPv4 or IPv6 literal; IPv6 may be in brackets.
    @return: the address in canonical form, without brackets.
    @raise ValueError: if C{value} is not an IP literal.
    """
    literal = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


def _check_host(host: str, text: str) -> str:
    """
    Check a host name or IPv4 literal (IPv6 is handled by the caller).

    @param host: the host part.
    @param text: the whole address, for the error message.
    @return: C{host}.
    @raise ValueError: if C{host} is empty or has characters no host name has.
    """
    if not host:
        raise ValueError(f"missing host in {text!r} (expected host:port)")
    if _HOSTNAME.fullmatch(host) is None:
        raise ValueError(f"not a host name or IP address: {host!r} in {text!r}")
    return host


def parse_host_port(text: str, default_host: str | None = None) -> tuple[str, int]:
    """
    Parse C{host:port}; IPv6 hosts go in brackets (C{[::1]:22}).

    @param text: the address.
    @param default_host: if given, a bare port number means
        C{default_host:port} (NPS's C{target_addr=8080} rule).
    @return: C{(host, port)}; IPv6 hosts without brackets.
    @raise ValueError: if C{text} is not such an address.
    """
    text = text.strip()
    if default_host is not None and _DIGITS.fullmatch(text) is not None:
        return default_host, _to_port(text)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"missing ']' in {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address: {host!r} in {text!r}") from None
        if not rest.startswith(":"):
            raise ValueError(f"missing port in {text!r} (expected [ipv6]:port)")
        port_text = rest[1:]
    else:
        colons = text.count(":")
        if colons == 0 and _DIGITS.fullmatch(text) is not None:
            raise ValueError(f"missing host in {text!r} (expected host:port)")
        if colons == 0:
            raise ValueError(f"missing port in {text!r} (expected host:port)")
        if colons > 1:
            raise ValueError(f"IPv6 addresses need brackets: {text!r} (e.g. [::1]:22)")
        host, _, port_text = text.partition(":")
        _check_host(host, text)
    try:
        port = _to_port(port_text)
    except ValueError:
        raise ValueError(f"not a port number in {text!r} (expected 1-65535)") from None
    return host, port


def format_host_port(host: str, port: int) -> str:
    """
    The inverse of L{parse_host_port}.

    @param host: a host name or IP address.
    @param port: the port.
    @return: C{host:port}, with IPv6 hosts in brackets.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _to_address(value: str) -> str:
    """
    Normalise a C{host:port} value.

    @param value: the address.
    @return: the address as L{format_host_port} writes it.
    """
    return format_host_port(*parse_host_port(value))


def _to_targets(value: str) -> tuple[str, ...]:
    """
    Parse NPS's comma-separated target list.

    @param value: e.g. C{"127.0.0.1:8083,8082,[::1]:22"}; a bare port means
        C{127.0.0.1:port}; empty items are skipped.
    @return: the targets as C{host:port} strings.
    """
    targets = []
    for item in value.split(","):
        item = item.strip()
        if item:
            targets.append(format_host_port(*parse_host_port(item, "127.0.0.1")))
    return tuple(targets)


def _to_target_host(value: str) -> str:
    """
    Parse C{target_ip} (the host used with C{target_port}).

    @param value: a host name or IP address, IPv6 optionally in brackets.
    @return: the host without brackets.
    """
    literal = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if ":" in literal:
        return _to_ip(literal)
    return _check_host(literal, value)


def _to_public_addr(value: str) -> str:
    """
    Parse C{public_addr}: C{host} or C{host:port} (IPv6 as C{[::1]:8024}).

    @param value: the address users' npc should dial.
    @return: C{value}, checked.
    """
    if value.startswith("[") and value.endswith("]"):
        _to_ip(value)
    elif value.startswith("[") or value.count(":") == 1:
        parse_host_port(value)
    elif ":" in value:
        _to_ip(value)
    else:
        _check_host(value, value)
    return value


def _to_base_url(value: str) -> str:
    """
    Parse C{web_base_url}, a path prefix such as C{/nps}.

    @param value: the prefix.
    @return: the prefix without a trailing slash.
    """
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"not a URL path: {value!r} (expected e.g. /nps)")
    return value.rstrip("/")


def _to_aes_key(value: str) -> str:
    """
    Check C{auth_crypt_key}: an AES key of 16, 24 or 32 bytes.

    @param value: the key text.
    @return: C{value}.
    """
    if len(value.encode("utf-8")) not in (16, 24, 32):
        raise ValueError(f"must be 16, 24 or 32 bytes long, got {len(value.encode('utf-8'))}")
    return value


def _to_proxy_url(value: str) -> str:
    """
    Check C{proxy_url}: C{socks5://[user:pass@]host:port} or C{http://...}.

    @param value: the URL.
    @return: C{value}.
    """
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts = None
        port = None
    if parts is None or parts.scheme not in ("socks5", "http") or not parts.hostname or not port:
        raise ValueError(
            f"not a proxy URL: {value!r} (expected socks5://[user:pass@]host:port or http://...)"
        )
    return value


def _to_location(value: str) -> str:
    """
    Check a vhost C{location} (URL path prefix).

    @param value: the prefix.
    @return: C{value}.
    """
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"not a URL path: {value!r} (expected e.g. / or /static)")
    return value


def _to_vhost(value: str) -> str:
    """
    Check a vhost C{host}: a domain, optionally C{*.} for a wildcard.

    @param value: the domain.
    @return: the domain in lower case.
    """
    if _VHOST.fullmatch(value) is None:
        raise ValueError(f"not a domain name: {value!r} (expected e.g. a.example.com or *.example.com)")
    return value.lower()


def _to_url_path(value: str) -> str:
    """
    Check C{health_http_url}: a path starting with C{/}.

    @param value: the path.
    @return: C{value}.
    """
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"not a URL path: {value!r} (expected e.g. /health)")
    return value


# ---------------------------------------------------------------------------
# Port ranges
# ---------------------------------------------------------------------------


def parse_port_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """
    Parse NPS's port list syntax, e.g. C{"9001-9009,10001"}.

    Order is kept (it matters for range mapping); empty items are skipped.

    @param text: the list.
    @return: C{(low, high)} pairs, inclusive; C{(p, p)} for a single port.
    @raise ValueError: with a reason, for a malformed item.
    """
    ranges = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        low_text, dash, high_text = item.partition("-")
        try:
            low = _to_port(low_text)
            high = _to_port(high_text) if dash else low
        except ValueError:
            raise ValueError(
                f"not a port or port range: {item!r} (expected e.g. 8080 or 9001-9009, ports 1-65535)"
            ) from None
        if low > high:
            raise ValueError(f"port range {item!r} ends before it starts")
        ranges.append((low, high))
    return tuple(ranges)


def expand_port_ranges(ranges: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """
    List every port of C{ranges}, in order.

    @param ranges: as returned by L{parse_port_ranges}.
    @return: the ports.
    """
    return tuple(port for low, high in ranges for port in range(low, high + 1))


def port_allowed(port: int, ranges: Sequence[tuple[int, int]]) -> bool:
    """
    Check a port against an C{allow_ports} whitelist.

    @param port: the port to check.
    @param ranges: the whitelist; empty means every port is allowed.
    @return: whether C{port} may be used.
    """
    if not ranges:
        return True
    return any(low <= port <= high for low, high in ranges)


# ---------------------------------------------------------------------------
# Line reading shared by both formats
# ---------------------------------------------------------------------------


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """
    Yield the stripped lines that are neither blank nor comments.

    @param text: file contents; C{\\n} or C{\\r\\n} line ends, optional BOM.
    @return: an iterator of C{(line number, stripped line)}.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if stripped and stripped[0] not in "#;":
            yield number, stripped


def _read(path: str) -> str:
    """
    Read a config file as UTF-8.

    @param path: the file.
    @return: its text.
    @raise ConfigError: if it cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(path, line, None, "not valid UTF-8") from None


# ---------------------------------------------------------------------------
# nps.conf
# ---------------------------------------------------------------------------


def _default_data_dir(config: ServerConfig) -> str:
    """
    Default C{data_dir}: the config file's directory, or C{./nps-data}.

    @param config: the config being built (only C{path} is set yet).
    @return: the directory.
    """
    if config.path is None:
        return "./nps-data"
    return os.path.dirname(config.path) or "."


@attrs.frozen
class ServerConfig:
    """
    The server's settings, from C{nps.conf}.

    Field names are NPS's key names; see C{docs/config.md} for each one.
    Listener ports of features that are not built yet default to C{0}
    (disabled), not to NPS's shipped values.

    @ivar path: the file it came from, C{None} for built-in defaults.
    @ivar unsupported: keys set in the file to a non-default value whose
        feature is not built yet.
    @ivar warnings: one message per unknown key, duplicate key or unsupported
        setting, C{"path:line: ..."}.
    """

    path: str | None = None
    appname: str = "nps"
    runmode: str = "dev"
    # bridge
    bridge_ip: str = "0.0.0.0"
    bridge_port: int = 8024
    bridge_type: str = "tcp"
    public_vkey: str = ""
    disconnect_timeout: int = 60
    #: TLS bridge (nps.tlsbridge): a TLS listener beside the plain one, and the bridge's certificate.
    tls_enable: bool = False
    tls_bridge_port: int = 8025
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # our additions
    #: Accept NPS 0.26 npc clients (md5 vkey, plaintext handshake) on the bridge port.
    legacy_bridge: bool = False
    data_dir: str = attrs.field(default=attrs.Factory(_default_data_dir, takes_self=True))
    public_addr: str = ""
    # logs
    log_level: int = 7
    log_path: str = ""
    # limits and persistence
    allow_ports: tuple[tuple[int, int], ...] = ()
    flow_store_interval: int = 0
    ip_limit: bool = False
    #: Source networks refused on every tunnel (our addition; nps.access).
    deny_ips: tuple[Any, ...] = ()
    # p2p
    p2p_ip: str = ""
    p2p_port: int = 0
    # HTTP/HTTPS virtual hosts
    http_proxy_ip: str = "0.0.0.0"
    http_proxy_port: int = 0
    https_proxy_port: int = 0
    https_just_proxy: bool = True
    https_default_cert_file: str = ""
    https_default_key_file: str = ""
    http_cache: bool = False
    http_cache_length: int = 100
    http_add_origin_header: bool = False
    # web admin
    web_host: str = ""
    web_username: str = "admin"
    web_password: str = ""
    web_port: int = 0
    web_ip: str = "127.0.0.1"
    web_base_url: str = ""
    web_open_ssl: bool = False
    web_cert_file: str = ""
    web_key_file: str = ""
    auth_key: str = ""
    auth_crypt_key: str = ""
    allow_user_login: bool = False
    allow_user_register: bool = False
    allow_user_change_username: bool = False
    allow_flow_limit: bool = False
    allow_rate_limit: bool = False
    allow_tunnel_num_limit: bool = False
    allow_connection_num_limit: bool = False
    allow_local_proxy: bool = False
    allow_multi_ip: bool = False
    system_info_display: bool = False
    # debugging
    pprof_ip: str = ""
    pprof_port: int = 0
    # what the reader noticed
    unsupported: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@attrs.frozen
class _Key:
    """
    How to read one key.

    @ivar convert: text to typed value; raises C{ValueError}.
    @ivar built: whether the feature behind the key works yet.
    """

    convert: Callable[[str], Any]
    built: bool


_SERVER_KEYS: dict[str, _Key] = {
    "appname": _Key(_to_str, True),
    "runmode": _Key(_to_str, True),
    "bridge_ip": _Key(_to_ip, True),
    "bridge_port": _Key(_to_port, True),
    "bridge_type": _Key(_choice_converter("tcp", "kcp", "quic", "tls"), True),
    "tls_enable": _Key(_to_bool, True),
    "tls_bridge_port": _Key(_to_port, True),
    "tls_cert_file": _Key(_to_str, True),
    "tls_key_file": _Key(_to_str, True),
    "public_vkey": _Key(_to_str, True),
    "disconnect_timeout": _Key(_int_converter(1), True),
    "legacy_bridge": _Key(_to_bool, True),
    "data_dir": _Key(_to_str, True),
    "public_addr": _Key(_to_public_addr, True),
    "log_level": _Key(_int_converter(0, 7), True),
    "log_path": _Key(_to_str, True),
    "allow_ports": _Key(parse_port_ranges, True),
    "flow_store_interval": _Key(_int_converter(0), True),
    "ip_limit": _Key(_to_bool, True),
    "deny_ips": _Key(parse_deny_list, True),
    "p2p_ip": _Key(_to_str, True),
    "p2p_port": _Key(_optional_port_converter(65533), True),
    "http_proxy_ip": _Key(_to_ip, True),
    "http_proxy_port": _Key(_optional_port_converter(), True),
    "https_proxy_port": _Key(_optional_port_converter(), True),
    "https_just_proxy": _Key(_to_bool, True),
    "https_default_cert_file": _Key(_to_str, True),
    "https_default_key_file": _Key(_to_str, True),
    "http_cache": _Key(_to_bool, False),
    "http_cache_length": _Key(_int_converter(0), False),
    "http_add_origin_header": _Key(_to_bool, True),
    "web_host": _Key(_to_str, False),
    "web_username": _Key(_to_str, True),
    "web_password": _Key(_to_str, True),
    "web_port": _Key(_optional_port_converter(), True),
    "web_ip": _Key(_to_ip, True),
    "web_base_url": _Key(_to_base_url, True),
    "web_open_ssl": _Key(_to_bool, True),
    "web_cert_file": _Key(_to_str, True),
    "web_key_file": _Key(_to_str, True),
    "auth_key": _Key(_to_str, True),
    "auth_crypt_key": _Key(_to_aes_key, False),
    "allow_user_login": _Key(_to_bool, True),
    "allow_user_register": _Key(_to_bool, False),
    "allow_user_change_username": _Key(_to_bool, False),
    "allow_flow_limit": _Key(_to_bool, False),
    "allow_rate_limit": _Key(_to_bool, False),
    "allow_tunnel_num_limit": _Key(_to_bool, False),
    "allow_connection_num_limit": _Key(_to_bool, False),
    "allow_local_proxy": _Key(_to_bool, False),
    "allow_multi_ip": _Key(_to_bool, False),
    "system_info_display": _Key(_to_bool, False),
    "pprof_ip": _Key(_to_ip, True),
    "pprof_port": _Key(_optional_port_converter(), True),
}

#: Every key C{nps.conf} may hold: NPS's keys plus C{data_dir} and C{public_addr}.
KNOWN_SERVER_KEYS: frozenset[str] = frozenset(_SERVER_KEYS)

_SERVER_DEFAULTS = ServerConfig()
#: Shorter public keys get a warning (NPS ships C{public_vkey=123}).
_MIN_PUBLIC_VKEY = 16


def parse_server_config(text: str, path: str) -> ServerConfig:
    """
    Parse the text of an C{nps.conf}.

    Lines are C{key=value}, split at the first C{=}; keys and values are
    trimmed and keys are case-insensitive (as in beego).  Lines starting with
    C{#} or C{;} are comments; C{[section]} headers are ignored.  An empty
    value means the key's default.  Unknown and duplicate keys (the later one
    wins) only produce warnings.

    @param text: the file's contents.
    @param path: the file's path, for messages and to resolve C{data_dir}.
    @return: the settings.
    @raise ConfigError: for a malformed line or a bad value.
    """
    found: dict[str, tuple[str, int]] = {}
    notes: list[tuple[int, str]] = []
    for number, line in _lines(text):
        if line.startswith("[") and line.endswith("]"):
            notes.append((number, f"{path}:{number}: section header {line} ignored (nps.conf has no sections)"))
            continue
        key, equals, value = line.partition("=")
        key = key.strip().lower()
        if not equals:
            raise ConfigError(path, number, None, f"expected key=value, got {line!r}")
        if not key:
            raise ConfigError(path, number, None, f"missing key before '=' in {line!r}")
        if key not in _SERVER_KEYS:
            notes.append((number, f"{path}:{number}: unknown key {key!r} ignored"))
            continue
        if key in found:
            notes.append(
                (
                    number,
                    f"{path}:{number}: duplicate key {key!r}: this value replaces "
                    f"the one on line {found[key][1]}",
                )
            )
        found[key] = (value.strip(), number)

    values: dict[str, Any] = {}
    unsupported: list[str] = []
    for key, (value, number) in sorted(found.items(), key=lambda item: item[1][1]):
        if not value:
            if key == "bridge_port":
                raise ConfigError(path, number, key, "is required (expected 1-65535)")
            continue
        spec = _SERVER_KEYS[key]
        try:
            converted = spec.convert(value)
        except ValueError as e:
            raise ConfigError(path, number, key, str(e)) from None
        if key == "data_dir":
            converted = os.path.normpath(os.path.join(os.path.dirname(path) or ".", converted))
        values[key] = converted
        if key == "bridge_type" and converted not in ("tcp", "tls", "kcp", "quic"):
            unsupported.append(key)
            notes.append(
                (number, f"{path}:{number}: bridge_type {converted!r} is accepted but not supported yet (using it fails at start)")
            )
        elif key == "public_vkey" and len(converted) < _MIN_PUBLIC_VKEY:
            notes.append(
                (
                    number,
                    f"{path}:{number}: public_vkey is only {len(converted)} characters: anyone who "
                    "guesses it can open tunnels on this server; use a long random value "
                    "or leave it empty",
                )
            )
        elif not spec.built and converted != getattr(_SERVER_DEFAULTS, key):
            unsupported.append(key)
            notes.append((number, f"{path}:{number}: key {key!r} is accepted but not supported yet"))
    notes.sort(key=lambda note: note[0])
    return ServerConfig(
        path=path,
        unsupported=tuple(unsupported),
        warnings=tuple(message for _, message in notes),
        **values,
    )


def load_server_config(path: str | None) -> ServerConfig:
    """
    Read an C{nps.conf}.

    @param path: the file, or C{None} for the built-in defaults.
    @return: the settings.
    @raise ConfigError: if the file cannot be read or holds a bad value.
    """
    if path is None:
        # No nps.conf at all: the web admin runs on 127.0.0.1 (nps.admin.service.DEFAULT_WEB_PORT).
        return ServerConfig(path=None, web_port=8080)
    return parse_server_config(_read(path), path)


# ---------------------------------------------------------------------------
# npc.conf
# ---------------------------------------------------------------------------

#: C{mode=} values of tunnel sections, by lower-case spelling.
TUNNEL_MODES: Mapping[str, str] = {
    m.lower(): m for m in ("tcp", "udp", "socks5", "httpProxy", "secret", "p2p", "file")
}
#: Modes this release serves; a caller that loaded the mode plugins passes their
#: names instead (see L{parse_client_config}'s C{modes}).
BUILT_MODES = frozenset({"tcp", "udp", "socks5", "httpProxy", "file", "secret", "p2p"})
#: Modes the server itself implements (no plugin): always available.
NATIVE_MODES = frozenset({"secret", "p2p"})
#: Modes whose public side is a TCP listener (they cannot share a port).
_TCP_LISTENER_MODES = frozenset({"tcp", "socks5", "httpProxy", "file"})
#: Keys a mode added by a third-party plugin may use.
_PLUGIN_MODE_KEYS = frozenset({"server_port", "server_ip", "target_addr", "password", "local_path", "strip_pre",
                               "deny_ips"})
_MODE_KEYS: Mapping[str, frozenset[str]] = {
    "tcp": frozenset({"server_port", "server_ip", "target_addr", "target_port", "target_ip", "deny_ips"}),
    "udp": frozenset({"server_port", "server_ip", "target_addr", "target_port", "target_ip", "deny_ips"}),
    "socks5": frozenset({"server_port", "server_ip", "multi_account", "deny_ips"}),
    "httpProxy": frozenset({"server_port", "server_ip", "deny_ips"}),
    "file": frozenset({"server_port", "server_ip", "local_path", "strip_pre", "deny_ips"}),
    "secret": frozenset({"password", "target_addr"}),
    "p2p": frozenset({"password", "target_addr"}),
}


@attrs.frozen
class CommonConfig:
    """
    The C{[common]} section of C{npc.conf}: how to reach the server.

    @ivar server_addr: C{host:port} of the server's bridge, C{""} if not given.
    @ivar auto_reconnection: C{None} when the file does not say.
    """

    server_addr: str = ""
    vkey: str = ""
    conn_type: str = "tcp"
    auto_reconnection: bool | None = None
    basic_username: str = ""
    basic_password: str = ""
    web_username: str = ""
    web_password: str = ""
    crypt: bool = False
    compress: bool = False
    rate_limit: int = 0
    flow_limit: int = 0
    max_conn: int = 0
    remark: str = ""
    proxy_url: str = ""
    pprof_addr: str = ""
    disconnect_timeout: int = 60
    #: conn_type=tls (nps.tlsbridge): CA file and name to verify, else the trust-on-first-use file.
    tls_ca: str = ""
    tls_server_name: str = ""
    tls_known_servers: str = ""


_COMMON_KEYS: dict[str, _Key] = {
    "server_addr": _Key(_to_address, True),
    "vkey": _Key(_to_str, True),
    "conn_type": _Key(_choice_converter("tcp", "kcp", "quic", "tls"), True),
    "auto_reconnection": _Key(_to_bool, True),
    "basic_username": _Key(_to_str, True),
    "basic_password": _Key(_to_str, True),
    "web_username": _Key(_to_str, True),
    "web_password": _Key(_to_str, True),
    "crypt": _Key(_to_bool, True),
    "compress": _Key(_to_bool, True),
    "rate_limit": _Key(_int_converter(0), True),
    "flow_limit": _Key(_int_converter(0), True),
    "max_conn": _Key(_int_converter(0), True),
    "remark": _Key(_to_str, True),
    "proxy_url": _Key(_to_proxy_url, False),
    "pprof_addr": _Key(_to_address, True),
    "disconnect_timeout": _Key(_int_converter(1), True),
    "tls_ca": _Key(_to_str, True),
    "tls_server_name": _Key(_to_str, True),
    "tls_known_servers": _Key(_to_str, True),
}
_COMMON_DEFAULTS = CommonConfig()

#: Keys of npc.conf's C{[common]} section.
KNOWN_CLIENT_COMMON_KEYS: frozenset[str] = frozenset(_COMMON_KEYS)
#: Keys of a tunnel section (one with C{mode=}).
KNOWN_TUNNEL_KEYS: frozenset[str] = frozenset(
    {
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
)
#: Keys of a domain section (one with C{host=}), besides C{header_*}.
KNOWN_HOST_KEYS: frozenset[str] = frozenset({"host", "target_addr", "host_change", "scheme", "location"})
#: Keys of a visitor section (C{[secret...]}/C{[p2p...]} without C{mode=}).
KNOWN_VISITOR_KEYS: frozenset[str] = frozenset({"local_port", "local_ip", "password", "target_addr"})
#: Keys of a health check section (C{[health...]}).
KNOWN_HEALTH_KEYS: frozenset[str] = frozenset(
    {
        "health_check_timeout",
        "health_check_max_failed",
        "health_check_interval",
        "health_check_type",
        "health_http_url",
        "health_check_target",
    }
)


def _range_map(ports: Sequence[int], target_port: str) -> tuple[int, ...]:
    """
    Check a C{target_port} list against the public ports.

    @param ports: the public ports, expanded.
    @param target_port: the raw C{target_port} value.
    @return: the target ports, expanded, one per public port.
    @raise ValueError: if the counts differ.
    """
    targets = expand_port_ranges(parse_port_ranges(target_port))
    if len(targets) != len(ports):
        raise ValueError(
            f"target_port lists {len(targets)} port(s) but server_port lists "
            f"{len(ports)}; range mapping needs the same number"
        )
    return targets


@attrs.frozen
class TunnelSection:
    """
    A C{npc.conf} section with C{mode=}: one or more public ports.

    @ivar name: the section name, used as the tunnel's remark.
    @ivar line: the line of the section header.
    @ivar mode: canonical spelling, one of L{TUNNEL_MODES}' values.
    @ivar server_port: the raw C{server_port} value.
    @ivar ports: C{server_port} expanded; empty for C{secret}/C{p2p}.
    @ivar targets: from C{target_addr}, each C{host:port}.
    """

    name: str
    line: int
    mode: str
    server_port: str = ""
    ports: tuple[int, ...] = ()
    server_ip: str = "0.0.0.0"
    targets: tuple[str, ...] = ()
    target_port: str = ""
    target_ip: str = ""
    password: str = ""
    local_path: str = ""
    strip_pre: str = ""
    multi_account: str = ""
    #: Source addresses/networks refused on this tunnel (our addition; nps.access).
    deny_ips: str = ""

    def expand(self) -> list[tuple[str, int, tuple[str, ...]]]:
        """
        The tunnels the server should open for this section.

        One per public port; when there is more than one port each is named
        C{<name>_<port>}.  With C{target_port} each public port maps to the
        matching target port on C{target_ip} (default C{127.0.0.1}).  A
        C{secret}/C{p2p} section has no public port and gives one entry with
        port C{0}.

        @return: C{(remark, server_port, targets)} triples.
        @raise ValueError: if C{target_port} does not match C{ports} (the
            parser has already rejected such a section).
        """
        if not self.ports:
            return [(self.name, 0, self.targets)]
        mapped: tuple[int, ...] | None = None
        if self.target_port:
            mapped = _range_map(self.ports, self.target_port)
        host = self.target_ip or "127.0.0.1"
        result = []
        for index, port in enumerate(self.ports):
            remark = self.name if len(self.ports) == 1 else f"{self.name}_{port}"
            targets = self.targets if mapped is None else (format_host_port(host, mapped[index]),)
            result.append((remark, port, targets))
        return result


@attrs.frozen
class HostSection:
    """
    A C{npc.conf} section with C{host=}: a domain routed by the server's
    HTTP/HTTPS listeners.

    @ivar headers: C{header_X-Foo=bar} keys as C{("X-Foo", "bar")}, in file order.
    """

    name: str
    line: int
    host: str
    targets: tuple[str, ...]
    host_change: str = ""
    scheme: str = "all"
    location: str = "/"
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class VisitorSection:
    """
    A C{[secret...]} or C{[p2p...]} section without C{mode=}: a local port
    that reaches another client's secret/p2p tunnel.

    @ivar kind: C{"secret"} or C{"p2p"}.
    @ivar target_addr: p2p only: C{host:port} on the provider's network.
    """

    name: str
    line: int
    kind: str
    local_port: int
    local_ip: str = "127.0.0.1"
    password: str = ""
    target_addr: str = ""


@attrs.frozen
class HealthSection:
    """
    A C{[health...]} section: health checks of load-balanced targets.

    @ivar timeout: seconds per check.
    @ivar max_failed: failures in a row before a target is taken out.
    @ivar interval: seconds between checks.
    @ivar type: C{"tcp"} or C{"http"}.
    @ivar http_url: path requested by C{http} checks.
    """

    name: str
    line: int
    timeout: int = 3
    max_failed: int = 3
    interval: int = 10
    type: str = "tcp"
    http_url: str = "/"
    targets: tuple[str, ...] = ()


@attrs.frozen
class ClientConfig:
    """
    A whole C{npc.conf}.

    @ivar unsupported: C{[common]} keys with a non-default value whose feature
        is not built yet, and C{"[name]"} for each section whose kind or mode
        is not built yet.
    @ivar warnings: one message per unknown/duplicate/ignored key and per
        unsupported setting, C{"path:line: ..."}.
    """

    path: str
    common: CommonConfig = CommonConfig()
    tunnels: tuple[TunnelSection, ...] = ()
    hosts: tuple[HostSection, ...] = ()
    visitors: tuple[VisitorSection, ...] = ()
    health: tuple[HealthSection, ...] = ()
    unsupported: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


_NO_TARGETS: tuple[str, ...] = ()
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}")
_TEMPLATE_FIELD = re.compile(r"\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*")


def _render(line: str, environ: Mapping[str, str], path: str, number: int) -> str:
    """
    Replace C{{{.NAME}}} with the environment variable C{NAME}.

    @param line: one line of the file.
    @param environ: the environment.
    @param path: for errors.
    @param number: the line number, for errors.
    @return: the rendered line.
    @raise ConfigError: for a missing variable, a value with a line break, or
        template syntax other than C{{{.NAME}}}.
    """
    if "{{" not in line:
        return line
    out = []
    position = 0
    for match in _TEMPLATE.finditer(line):
        gap = line[position : match.start()]
        if "{{" in gap:
            break
        out.append(gap)
        field = _TEMPLATE_FIELD.fullmatch(match.group(1))
        if field is None:
            raise ConfigError(
                path, number, None, f"unsupported template {match.group(0)!r} (only {{{{.ENV_NAME}}}} is supported)"
            )
        name = field.group(1)
        if name not in environ:
            raise ConfigError(path, number, None, f"environment variable {name} is not set (used as {match.group(0)})")
        value = environ[name]
        if "\n" in value or "\r" in value:
            raise ConfigError(path, number, None, f"environment variable {name} contains a line break")
        out.append(value)
        position = match.end()
    rest = line[position:]
    if "{{" in rest:
        raise ConfigError(path, number, None, "'{{' without a matching '}}'")
    out.append(rest)
    return "".join(out)


@attrs.define
class _RawSection:
    """
    A section as read, before it is classified.

    @ivar implicit: C{[common]} made of the keys before the first header.
    @ivar entries: key to C{(value, line)}; the last occurrence wins.
    """

    name: str
    line: int
    implicit: bool = False
    entries: dict[str, tuple[str, int]] = attrs.field(factory=dict)


class _Reader:
    """
    Typed access to one section's keys, raising L{ConfigError} with the key's line.
    """

    def __init__(self, path: str, section: _RawSection, notes: list[tuple[int, str]]) -> None:
        self.path = path
        self.section = section
        self.notes = notes

    def warn(self, line: int, message: str) -> None:
        """
        Record a warning about this section.

        @param line: where.
        @param message: what, without the location.
        """
        self.notes.append((line, f"{self.path}:{line}: [{self.section.name}] {message}"))

    def raw(self, key: str) -> str:
        """
        @param key: a key.
        @return: its value, C{""} if absent.
        """
        return self.section.entries.get(key, ("", 0))[0]

    def line(self, key: str) -> int:
        """
        @param key: a key.
        @return: its line, or the section header's if absent.
        """
        return self.section.entries.get(key, ("", self.section.line))[1]

    def error(self, key: str | None, reason: str) -> ConfigError:
        """
        @param key: the key at fault, or C{None} for the section itself.
        @param reason: what is wrong.
        @return: an error located at C{key} (or at the section header).
        """
        line = self.section.line if key is None else self.line(key)
        return ConfigError(self.path, line, key, reason)

    def get(self, key: str, convert: Callable[[str], _T], default: _T) -> _T:
        """
        @param key: a key.
        @param convert: text to value; C{ValueError} becomes L{ConfigError}.
        @param default: for an absent or empty value.
        @return: the typed value.
        """
        value = self.raw(key)
        if not value:
            return default
        try:
            return convert(value)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def require(self, key: str, convert: Callable[[str], _T], what: str) -> _T:
        """
        Like L{get}, for a key that must be given.

        @param key: a key.
        @param convert: text to value; C{ValueError} becomes L{ConfigError}.
        @param what: how to describe the key's meaning in the error.
        @return: the typed value.
        """
        if not self.raw(key):
            raise self.error(key, f"missing: [{self.section.name}] needs {key}= ({what})")
        return _convert_or_raise(self, key, convert)

    def warn_unknown(self, known: frozenset[str], extra: Callable[[str], bool] = lambda key: False) -> None:
        """
        Warn about keys this kind of section does not use.

        @param known: the keys it uses.
        @param extra: a test for more keys it uses (e.g. C{header_*}).
        """
        for key, (_, line) in self.section.entries.items():
            if key not in known and not extra(key):
                self.warn(line, f"unknown key {key!r} ignored")


def _convert_or_raise(reader: _Reader, key: str, convert: Callable[[str], _T]) -> _T:
    """
    Convert a present key's value.

    @param reader: the section.
    @param key: the key.
    @param convert: the converter.
    @return: the value.
    @raise ConfigError: located at the key.
    """
    try:
        return convert(reader.raw(key))
    except ValueError as e:
        raise reader.error(key, str(e)) from None


def _build_common(reader: _Reader, unsupported: list[str]) -> CommonConfig:
    """
    Read C{[common]}.

    @param reader: the section.
    @param unsupported: collects keys whose feature is not built.
    @return: the settings.
    """
    reader.warn_unknown(KNOWN_CLIENT_COMMON_KEYS)
    values: dict[str, Any] = {}
    for key, (value, line) in sorted(reader.section.entries.items(), key=lambda item: item[1][1]):
        spec = _COMMON_KEYS.get(key)
        if spec is None or not value:
            continue
        converted = _convert_or_raise(reader, key, spec.convert)
        values[key] = converted
        if key == "conn_type" and converted not in ("tcp", "tls", "kcp", "quic"):
            unsupported.append(key)
            reader.warn(line, f"conn_type {converted!r} is accepted but not supported yet")
        elif not spec.built and converted != getattr(_COMMON_DEFAULTS, key):
            unsupported.append(key)
            reader.warn(line, f"key {key!r} is accepted but not supported yet")
    return CommonConfig(**values)


def _build_tunnel(reader: _Reader, unsupported: list[str], modes: Collection[str]) -> TunnelSection:
    """
    Read a tunnel section (one with C{mode=}, or any section that is not
    something else).

    @param reader: the section.
    @param unsupported: collects C{"[name]"} if the mode is not built.
    @return: the tunnel.
    """
    name = reader.section.name
    if not reader.raw("mode"):
        raise reader.error(
            "mode",
            f"section [{name}] has neither mode= (tunnel) nor host= (domain); "
            f"expected mode= one of {', '.join(TUNNEL_MODES.values())}",
        )
    plugin_modes = sorted(set(modes) - set(TUNNEL_MODES.values()))
    mode = _convert_or_raise(reader, "mode", _choice_converter(*TUNNEL_MODES.values(), *plugin_modes))
    reader.warn_unknown(KNOWN_TUNNEL_KEYS)
    for key, (_, line) in reader.section.entries.items():
        if key in KNOWN_TUNNEL_KEYS and key != "mode" and key not in _MODE_KEYS.get(mode, _PLUGIN_MODE_KEYS):
            reader.warn(line, f"key {key!r} has no effect with mode {mode!r}")
    if mode not in modes and mode not in NATIVE_MODES:
        unsupported.append(f"[{name}]")
        reader.warn(reader.line("mode"), f"mode {mode!r} not supported yet")

    server_ip = reader.get("server_ip", _to_ip, "0.0.0.0")
    targets: tuple[str, ...] = reader.get("target_addr", _to_targets, _NO_TARGETS)
    target_ip = reader.get("target_ip", _to_target_host, "")
    password = reader.get("password", _to_str, "")
    local_path = reader.get("local_path", _to_str, "")
    ports: tuple[int, ...] = ()
    server_port = reader.raw("server_port")
    target_port = reader.raw("target_port") if mode in ("tcp", "udp") else ""

    if mode in ("secret", "p2p"):
        server_port = ""
        if not password:
            raise reader.error("password", f"missing: mode {mode} needs password= (the key visitors use)")
        if mode == "secret" and not targets:
            raise reader.error("target_addr", "missing: mode secret needs target_addr= (host:port to connect to)")
    else:
        if not server_port:
            raise reader.error("server_port", f"missing: mode {mode} needs server_port= (the public port)")
        ranges = _convert_or_raise(reader, "server_port", parse_port_ranges)
        ports = expand_port_ranges(ranges)
        if not ports:
            raise reader.error("server_port", f"no port in {server_port!r}")
        seen: set[int] = set()
        for port in ports:
            if port in seen:
                raise reader.error("server_port", f"port {port} is listed twice")
            seen.add(port)
        if mode in ("tcp", "udp"):
            if target_port and targets:
                raise reader.error(
                    "target_port",
                    "give either target_addr= or target_port= (range mapping), not both",
                )
            if target_port:
                try:
                    _range_map(ports, target_port)
                except ValueError as e:
                    raise reader.error("target_port", str(e)) from None
            elif not targets:
                raise reader.error("target_addr", f"missing: mode {mode} needs target_addr= (host:port)")
            elif len(ports) > 1:
                raise reader.error(
                    "server_port",
                    f"{len(ports)} public ports need target_port= with as many ports "
                    "(range mapping), not target_addr=",
                )
        if mode == "file" and not local_path:
            raise reader.error("local_path", "missing: mode file needs local_path= (directory to serve)")
    return TunnelSection(
        name=name,
        line=reader.section.line,
        mode=mode,
        server_port=server_port,
        ports=ports,
        server_ip=server_ip,
        targets=targets,
        target_port=target_port,
        target_ip=target_ip,
        password=password,
        local_path=local_path,
        strip_pre=reader.get("strip_pre", _to_str, ""),
        multi_account=reader.get("multi_account", _to_str, ""),
        deny_ips=format_deny_list(reader.get("deny_ips", parse_deny_list, ())),
    )


def _build_host(reader: _Reader, unsupported: list[str]) -> HostSection:
    """
    Read a domain section (one with a C{host=} key).

    @param reader: the section.
    @param unsupported: unused (domains are built).
    @return: the domain.
    """
    name = reader.section.name
    reader.warn_unknown(KNOWN_HOST_KEYS, lambda key: key.startswith("header_"))
    host = reader.require("host", _to_vhost, "the domain to route")
    targets = reader.require("target_addr", _to_targets, "host:port list")
    if not targets:
        raise reader.error("target_addr", "no address in the list")
    headers = []
    for key, (value, _) in reader.section.entries.items():
        if key.startswith("header_"):
            header = key[len("header_") :]
            if _HEADER_NAME.fullmatch(header) is None:
                raise reader.error(key, f"not an HTTP header name: {header!r}")
            headers.append((header, value))
    return HostSection(
        name=name,
        line=reader.section.line,
        host=host,
        targets=targets,
        host_change=reader.get("host_change", _to_str, ""),
        scheme=reader.get("scheme", _choice_converter("all", "http", "https"), "all"),
        location=reader.get("location", _to_location, "/"),
        headers=tuple(headers),
    )


def _build_visitor(reader: _Reader, kind: str, unsupported: list[str]) -> VisitorSection:
    """
    Read a visitor section.

    @param reader: the section.
    @param kind: C{"secret"} or C{"p2p"}.
    @param unsupported: collects C{"[name]"} for p2p visitors (not built yet).
    @return: the visitor.
    """
    name = reader.section.name
    reader.warn_unknown(KNOWN_VISITOR_KEYS)
    local_port = reader.require("local_port", _to_port, "the local port to listen on")
    password = reader.require("password", _to_str, "the secret/p2p tunnel's password")
    target_addr = ""
    if kind == "p2p":
        target_addr = reader.get("target_addr", _to_address, "")
    elif reader.raw("target_addr"):
        reader.warn(reader.line("target_addr"), "key 'target_addr' has no effect for a secret visitor")
    return VisitorSection(
        name=name,
        line=reader.section.line,
        kind=kind,
        local_port=local_port,
        local_ip=reader.get("local_ip", _to_ip, "127.0.0.1"),
        password=password,
        target_addr=target_addr,
    )


def _build_health(reader: _Reader, unsupported: list[str]) -> HealthSection:
    """
    Read a health check section.

    @param reader: the section.
    @param unsupported: unused (health checks are built).
    @return: the health check.
    """
    name = reader.section.name
    reader.warn_unknown(KNOWN_HEALTH_KEYS)
    targets = reader.require("health_check_target", _to_targets, "host:port list to check")
    if not targets:
        raise reader.error("health_check_target", "no address in the list")
    return HealthSection(
        name=name,
        line=reader.section.line,
        timeout=reader.get("health_check_timeout", _int_converter(1), 3),
        max_failed=reader.get("health_check_max_failed", _int_converter(1), 3),
        interval=reader.get("health_check_interval", _int_converter(1), 10),
        type=reader.get("health_check_type", _choice_converter("tcp", "http"), "tcp"),
        http_url=reader.get("health_http_url", _to_url_path, "/"),
        targets=targets,
    )


def _read_sections(
    text: str, path: str, environ: Mapping[str, str], notes: list[tuple[int, str]]
) -> list[_RawSection]:
    """
    Split C{npc.conf} text into sections.

    Keys before the first header form an implicit C{[common]}.

    @param text: the file's contents.
    @param path: for messages.
    @param environ: for C{{{.NAME}}} templates.
    @param notes: collects warnings.
    @return: the sections in file order.
    @raise ConfigError: for malformed lines, duplicate sections or templates.
    """
    sections: list[_RawSection] = []
    by_name: dict[str, _RawSection] = {}
    current: _RawSection | None = None
    for number, line in _lines(text):
        line = _render(line, environ, path, number).strip()
        if not line:
            continue
        if line.startswith("["):
            end = line.find("]")
            if end < 0:
                raise ConfigError(path, number, None, f"section header without ']': {line!r}")
            name = line[1:end].strip()
            if not name or "[" in name:
                raise ConfigError(path, number, None, f"bad section name in {line!r}")
            trailer = line[end + 1 :].strip()
            if trailer and trailer[0] not in "#;":
                notes.append((number, f"{path}:{number}: text after section header ignored: {trailer!r}"))
            if name.lower() == "common":
                name = "common"
            if name in by_name:
                first = by_name[name]
                implicit = " (the keys before the first section header)" if first.implicit else ""
                raise ConfigError(
                    path,
                    number,
                    None,
                    f"duplicate section [{name}]: already started on line {first.line}{implicit}",
                )
            current = _RawSection(name, number)
            sections.append(current)
            by_name[name] = current
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals:
            raise ConfigError(path, number, None, f"expected key=value or [section], got {line!r}")
        if not key:
            raise ConfigError(path, number, None, f"missing key before '=' in {line!r}")
        if current is None:
            current = _RawSection("common", number, implicit=True)
            sections.append(current)
            by_name["common"] = current
        if key in current.entries:
            notes.append(
                (
                    number,
                    f"{path}:{number}: [{current.name}] duplicate key {key!r}: this value "
                    f"replaces the one on line {current.entries[key][1]}",
                )
            )
            del current.entries[key]
        current.entries[key] = (value.strip(), number)
    return sections


def _check_port_clashes(path: str, tunnels: Sequence[TunnelSection]) -> None:
    """
    Reject two tunnels that would listen on the same public port.

    @param path: for errors.
    @param tunnels: all tunnel sections.
    @raise ConfigError: at the second tunnel's header.
    """
    wildcard = {"0.0.0.0", "::"}
    taken: dict[tuple[str, int], list[tuple[str, TunnelSection]]] = {}
    for tunnel in tunnels:
        protocol = "tcp" if tunnel.mode in _TCP_LISTENER_MODES else "udp"
        for port in tunnel.ports:
            for ip, other in taken.get((protocol, port), []):
                if ip == tunnel.server_ip or ip in wildcard or tunnel.server_ip in wildcard:
                    raise ConfigError(
                        path,
                        tunnel.line,
                        "server_port",
                        f"{protocol} port {port} is already used by [{other.name}] (line {other.line})",
                    )
            taken.setdefault((protocol, port), []).append((tunnel.server_ip, tunnel))


def parse_client_config(
    text: str, path: str, environ: Mapping[str, str] | None = None, modes: Collection[str] | None = None
) -> ClientConfig:
    """
    Parse the text of an C{npc.conf}.

    C{{{.NAME}}} is first replaced by the environment variable C{NAME}.
    Sections are classified as: C{[common]}; C{[health...]} (health check);
    C{[secret...]}/C{[p2p...]} without a C{mode} key (visitor); any section
    with a C{host} key (domain); anything else is a tunnel and needs C{mode=}.

    @param text: the file's contents.
    @param path: the file's path, for messages.
    @param environ: variables for templates; C{None} means C{os.environ}.
    @param modes: the modes that can be served (the loaded plugins' names);
        NPS modes outside it are accepted with a "not supported yet" warning,
        and names outside NPS's list are valid only if they are in it.
        C{None} means L{BUILT_MODES}.
    @return: the configuration.
    @raise ConfigError: for a malformed line, bad value, missing or unknown
        C{mode}, duplicate section, or missing environment variable.
    """
    if environ is None:
        environ = os.environ
    notes: list[tuple[int, str]] = []
    unsupported: list[str] = []
    common = CommonConfig()
    tunnels: list[TunnelSection] = []
    hosts: list[HostSection] = []
    visitors: list[VisitorSection] = []
    health: list[HealthSection] = []
    for section in _read_sections(text, path, environ, notes):
        reader = _Reader(path, section, notes)
        name = section.name
        if name == "common":
            common = _build_common(reader, unsupported)
        elif name.startswith("health"):
            health.append(_build_health(reader, unsupported))
        elif name.startswith(("secret", "p2p")) and "mode" not in section.entries:
            kind = "secret" if name.startswith("secret") else "p2p"
            visitors.append(_build_visitor(reader, kind, unsupported))
        elif "host" in section.entries:
            hosts.append(_build_host(reader, unsupported))
        else:
            tunnels.append(_build_tunnel(reader, unsupported, BUILT_MODES if modes is None else modes))
    _check_port_clashes(path, tunnels)
    notes.sort(key=lambda note: note[0])
    return ClientConfig(
        path=path,
        common=common,
        tunnels=tuple(tunnels),
        hosts=tuple(hosts),
        visitors=tuple(visitors),
        health=tuple(health),
        unsupported=tuple(unsupported),
        warnings=tuple(message for _, message in notes),
    )


def load_client_config(
    path: str, environ: Mapping[str, str] | None = None, modes: Collection[str] | None = None
) -> ClientConfig:
    """
    Read an C{npc.conf}.

    @param path: the file.
    @param environ: variables for C{{{.NAME}}} templates; C{None} means
        C{os.environ}.
    @return: the configuration.
    @raise ConfigError: if the file cannot be read or is not valid.
    """
    return parse_client_config(_read(path), path, environ, modes)
