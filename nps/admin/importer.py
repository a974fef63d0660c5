# -*- test-case-name: test.test_admin_import -*-
"""
C{nps import DIR}: move an NPS server's clients, tunnels and hosts into our store.

NPS keeps C{conf/clients.json}, C{conf/tasks.json} and C{conf/hosts.json};
each file is a run of JSON objects, each followed by C{"\\n*#*"} (not a JSON
array). Ids are renumbered (tunnels and hosts follow their client); web
passwords are stored as scrypt hashes; flow counters become our persisted
traffic counters.
"""
from __future__ import annotations

import json
import os
from typing import Any

import attrs

from nps.accounts import ACCOUNTS_OPTION, format_accounts
from nps.admin import passwords
from nps.store import Store, StoreError

__all__ = ["ImportReport", "ImportError_", "import_nps", "read_records", "find_conf_dir"]

SEPARATOR = "\n*#*"
MAX_FILE = 64 * 1024 * 1024


class ImportError_(Exception):
    """The directory or a file cannot be imported at all."""


@attrs.define
class ImportReport:
    clients: int = 0
    tunnels: int = 0
    hosts: int = 0
    skipped: list[str] = attrs.field(factory=list)

    def summary(self) -> str:
        lines = [f"imported {self.clients} clients, {self.tunnels} tunnels, {self.hosts} hosts"]
        lines += [f"skipped: {reason}" for reason in self.skipped]
        return "\n".join(lines)


def find_conf_dir(path: str) -> str:
    """@return: C{path} or C{path/conf}, whichever holds C{clients.json}."""
    for candidate in (path, os.path.join(path, "conf")):
        if os.path.isfile(os.path.join(candidate, "clients.json")):
            return candidate
    raise ImportError_(f"no clients.json in {path} or {os.path.join(path, 'conf')}")


def read_records(path: str) -> list[dict[str, Any]]:
    """
    @return: The objects of one NPS json file (missing file: none).
    @raise ImportError_: If a record is not a JSON object.
    """
    if not os.path.exists(path):
        return []
    if os.path.getsize(path) > MAX_FILE:
        raise ImportError_(f"{path} is larger than {MAX_FILE // (1024 * 1024)} MB")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    records = []
    for number, chunk in enumerate(text.split(SEPARATOR), 1):
        chunk = chunk.strip()
        if not chunk:
            continue
        try:
            record = json.loads(chunk)
        except ValueError as e:
            raise ImportError_(f"{path}: record {number} is not valid JSON: {e}") from None
        if not isinstance(record, dict):
            raise ImportError_(f"{path}: record {number} is not a JSON object")
        records.append(record)
    return records


def _targets(record: dict[str, Any]) -> list[str]:
    target = record.get("Target") or {}
    text = str(target.get("TargetStr", "") if isinstance(target, dict) else target)
    return [t.strip() for t in text.replace(",", "\n").splitlines() if t.strip()]


def _add_flow(traffic: list[tuple[str, int, int, int]], kind: str, new_id: int, record: dict[str, Any]) -> None:
    """Keep an NPS record's C{Flow} counters (if any) for the imported record C{new_id}."""
    flow = record.get("Flow") or {}
    b_in, b_out = int(flow.get("InletFlow", 0) or 0), int(flow.get("ExportFlow", 0) or 0)
    if b_in or b_out:
        traffic.append((kind, new_id, b_in, b_out))


def _client_id(record: dict[str, Any]) -> int | None:
    client = record.get("Client")
    if isinstance(client, dict) and isinstance(client.get("Id"), int):
        return int(client["Id"])
    return None


def _owner(record: dict[str, Any], label: str, ids: dict[int, int], report: ImportReport) -> int | None:
    """
    The id our store gave the client owning a tunnel or host C{record}.

    @param ids: NPS client ids mapped to ours, for the clients imported.
    @return: None, with the reason in C{report.skipped}, when the record is not to be imported.
    """
    if record.get("NoStore"):
        report.skipped.append(f"{label}: not stored in NPS either (NoStore)")
        return None
    old_client = _client_id(record)
    if old_client not in ids:
        report.skipped.append(f"{label}: its client {old_client} was not imported")
        return None
    return ids[old_client]


def import_nps(store: Store, directory: str) -> ImportReport:
    """
    Import NPS's json files from C{directory} (or C{directory/conf}).

    @return: What was imported and what was skipped, and why.
    @raise ImportError_: If the files cannot be read.
    """
    conf = find_conf_dir(directory)
    clients = read_records(os.path.join(conf, "clients.json"))
    tasks = read_records(os.path.join(conf, "tasks.json"))
    hosts = read_records(os.path.join(conf, "hosts.json"))
    report = ImportReport()
    ids: dict[int, int] = {}
    traffic: list[tuple[str, int, int, int]] = []
    for record in clients:
        old_id = record.get("Id")
        label = f"client {old_id} ({record.get('Remark', '')})"
        if record.get("NoStore"):
            report.skipped.append(f"{label}: not stored in NPS either (NoStore)")
            continue
        cnf = record.get("Cnf") or {}
        web_password = str(record.get("WebPassword") or "")
        fields: dict[str, Any] = {
            "enabled": bool(record.get("Status", True)),
            "config_conn_allow": bool(record.get("ConfigConnAllow", True)),
            "rate_limit": int(record.get("RateLimit") or 0),
            "flow_limit": int((record.get("Flow") or {}).get("FlowLimit") or 0),
            "max_conn": int(record.get("MaxConn") or 0),
            "max_tunnels": int(record.get("MaxTunnelNum") or 0),
            "basic_username": str(cnf.get("U") or ""),
            "basic_password": str(cnf.get("P") or ""),
            "web_username": str(record.get("WebUserName") or ""),
            "web_password": passwords.hash_password(web_password) if web_password else "",
            "crypt": bool(cnf.get("Crypt", False)),
            "compress": bool(cnf.get("Compress", False)),
        }
        try:
            client = store.add_client(remark=str(record.get("Remark") or ""),
                                      vkey=str(record.get("VerifyKey") or "") or None, **fields)
        except (StoreError, ValueError, TypeError) as e:
            report.skipped.append(f"{label}: {e}")
            continue
        if isinstance(old_id, int):
            ids[old_id] = client.id
        _add_flow(traffic, "client", client.id, record)
        report.clients += 1
    for record in tasks:
        label = f"tunnel {record.get('Id')} ({record.get('Mode')} port {record.get('Port')})"
        owner = _owner(record, label, ids, report)
        if owner is None:
            continue
        mode = str(record.get("Mode") or "")
        options: dict[str, str] = {}
        accounts = (record.get("MultiAccount") or {}).get("AccountMap") if isinstance(
            record.get("MultiAccount"), dict) else None
        if isinstance(accounts, dict) and accounts:
            options[ACCOUNTS_OPTION] = format_accounts({str(u): str(p) for u, p in accounts.items()})
        try:
            tunnel = store.add_tunnel(
                owner, mode, int(record.get("Port") or 0), _targets(record),
                server_ip=str(record.get("ServerIp") or "") or "0.0.0.0", remark=str(record.get("Remark") or ""),
                password=str(record.get("Password") or ""), local_path=str(record.get("LocalPath") or ""),
                strip_pre=str(record.get("StripPre") or ""), enabled=bool(record.get("Status", True)),
                **({"options": options} if options else {}))
        except (StoreError, ValueError, TypeError) as e:
            report.skipped.append(f"{label}: {e}")
            continue
        _add_flow(traffic, "tunnel", tunnel.id, record)
        report.tunnels += 1
    for record in hosts:
        label = f"host {record.get('Id')} ({record.get('Host')})"
        owner = _owner(record, label, ids, report)
        if owner is None:
            continue
        headers = {}
        for line in str(record.get("HeaderChange") or "").splitlines():
            name, colon, value = line.partition(":")
            if colon and name.strip():
                headers[name.strip()] = value.strip()
        scheme = str(record.get("Scheme") or "all")
        try:
            host = store.add_host(
                owner, str(record.get("Host") or ""), _targets(record),
                location=str(record.get("Location") or "/"), scheme=scheme, headers=headers,
                host_change=str(record.get("HostChange") or ""), cert_file=str(record.get("CertFilePath") or ""),
                key_file=str(record.get("KeyFilePath") or ""), remark=str(record.get("Remark") or ""),
                enabled=not bool(record.get("IsClose", False)))
        except (StoreError, ValueError, TypeError) as e:
            report.skipped.append(f"{label}: {e}")
            continue
        _add_flow(traffic, "host", host.id, record)
        report.hosts += 1
    if traffic:
        store.add_traffic(traffic)
    return report
