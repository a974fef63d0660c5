# -*- test-case-name: test.test_store -*-
"""Value records shared by the store, the server, the client and the wire."""
from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class ClientRecord:
    """A client the server knows, identified by its vkey."""

    id: int
    vkey: str
    remark: str = ""
    enabled: bool = True
    config_conn_allow: bool = True
    rate_limit: int = 0
    flow_limit: int = 0
    max_conn: int = 0
    max_tunnels: int = 0
    basic_username: str = ""
    basic_password: str = ""
    web_username: str = ""
    web_password: str = ""
    crypt: bool = False
    compress: bool = False
    #: Runtime facts written by the server, read by C{nps client list}.
    online: bool = False
    remote_addr: str = ""
    version: str = ""
    last_seen: float = 0.0


@attrs.frozen
class Tunnel:
    """One tunnel: a public entry on the server mapped to targets on a client.

    C{id} is the store's id for server-side tunnels and a negative number for
    tunnels a client registered from its npc.conf (config-file mode).
    """

    id: int
    client_id: int
    mode: str
    server_port: int = 0
    server_ip: str = "0.0.0.0"
    targets: tuple[str, ...] = ()
    remark: str = ""
    password: str = ""
    local_path: str = ""
    strip_pre: str = ""
    enabled: bool = True
    #: Mode-specific keys not modelled above (e.g. multi_account).
    options: dict[str, str] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able dict for the bridge's control messages."""
        return attrs.asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "Tunnel":
        """Inverse of L{to_wire}; raises C{ValueError} on a malformed record."""
        return _record_from_wire(cls, data, "tunnel", ("id", "client_id", "server_port"), ("options",))


#: Schemes a host answers on: C{all} means both the HTTP and HTTPS listeners.
HOST_SCHEMES = ("all", "http", "https")


@attrs.frozen
class Host:
    """
    A domain (virtual host) route: requests for C{host} whose path starts
    with C{location} go to C{targets} on the client C{client_id}.

    C{host} may be a wildcard, C{*.example.com}, matching any name that ends
    in C{.example.com}. C{id} is the store's id, or a negative number for
    hosts a client registered from its npc.conf.
    """

    id: int
    client_id: int
    host: str
    location: str = "/"
    scheme: str = "all"
    targets: tuple[str, ...] = ()
    #: Rewrite the Host header to this value when not empty.
    host_change: str = ""
    #: Request headers to set (npc.conf C{header_X-Foo=bar}).
    headers: dict[str, str] = attrs.field(factory=dict)
    #: Server-side paths of this host's certificate and key (TLS termination).
    cert_file: str = ""
    key_file: str = ""
    #: Answer plain-HTTP requests with a redirect to HTTPS.
    redirect_https: bool = False
    remark: str = ""
    enabled: bool = True
    #: Other keys (health checks and the like).
    options: dict[str, str] = attrs.field(factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able dict for the bridge's control messages and the API."""
        return attrs.asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> "Host":
        """Inverse of L{to_wire}; raises C{ValueError} on a malformed record."""
        return _record_from_wire(cls, data, "host", ("id", "client_id"), ("headers", "options"))


def _record_from_wire(
    cls: type[Any], data: dict[str, Any], what: str, ints: tuple[str, ...], dicts: tuple[str, ...]
) -> Any:
    """
    Build an attrs record from a JSON object, converting targets to a tuple,
    string maps to C{dict[str, str]} and C{ints} to integers.

    @raise ValueError: If C{data} is not an object or has unknown or bad fields.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{what} record must be an object")
    fields = {f.name for f in attrs.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"unknown {what} fields: {sorted(unknown)}")
    try:
        kwargs = dict(data)
        kwargs["targets"] = tuple(str(t) for t in kwargs.get("targets", ()))
        for name in dicts:
            kwargs[name] = {str(k): str(v) for k, v in dict(kwargs.get(name, {})).items()}
        for name in ints:
            if name in kwargs:
                kwargs[name] = int(kwargs[name])
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad {what} record: {e}") from e


def describe_link(link: dict[str, Any]) -> str:
    """What a stream is for, for log lines: its target, or a file mode's path."""
    return str(link.get("target") or link.get("local_path") or link.get("mode", "?"))
