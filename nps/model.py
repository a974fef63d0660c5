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
        if not isinstance(data, dict):
            raise ValueError("tunnel record must be an object")
        fields = {f.name for f in attrs.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown tunnel fields: {sorted(unknown)}")
        try:
            kwargs = dict(data)
            kwargs["targets"] = tuple(str(t) for t in kwargs.get("targets", ()))
            kwargs["options"] = {str(k): str(v) for k, v in dict(kwargs.get("options", {})).items()}
            for name in ("id", "client_id", "server_port"):
                if name in kwargs:
                    kwargs[name] = int(kwargs[name])
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad tunnel record: {e}") from e


def describe_link(link: dict[str, Any]) -> str:
    """What a stream is for, for log lines: its target, or a file mode's path."""
    return str(link.get("target") or link.get("local_path") or link.get("mode", "?"))
