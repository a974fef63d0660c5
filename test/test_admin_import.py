"""`nps import DIR` (NPS's clients.json/tasks.json/hosts.json) and `nps admin passwd|token` through the real CLI."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nps.admin import passwords
from nps.admin.importer import ImportError_, read_records
from nps.store import Store

try:
    from . import support  # type: ignore[import-not-found]
except ImportError:
    import support  # type: ignore[no-redef]


def nps_file(records: list[dict[str, Any]]) -> str:
    """NPS's format: each object is JSON followed by "\\n*#*"."""
    return "".join(json.dumps(r) + "\n*#*" for r in records)


def client(id: int, vkey: str, **extra: Any) -> dict[str, Any]:
    record = {"Cnf": {"U": "basic", "P": "bp", "Compress": False, "Crypt": True}, "Id": id, "VerifyKey": vkey,
              "Addr": "", "Remark": f"c{id}", "Status": True, "IsConnect": False, "RateLimit": 0,
              "Flow": {"ExportFlow": 2298489, "InletFlow": 92324, "FlowLimit": 100}, "Rate": {"NowRate": 0},
              "NoStore": False, "NoDisplay": False, "MaxConn": 7, "NowConn": 0, "WebUserName": "", "WebPassword": "",
              "ConfigConnAllow": True, "MaxTunnelNum": 0}
    record.update(extra)
    return record


def write_nps_conf_dir(root: Path, tunnel_port: int) -> Path:
    conf = root / "conf"
    conf.mkdir(parents=True)
    clients = [client(2, "06j3twjj9vjy2kdg", WebUserName="admin55", WebPassword="123"),
               client(5, "k5k5k5k5k5k5k5k5", Status=False),
               client(9, "nostorenostore00", NoStore=True)]
    embedded = clients[0]
    tasks = [
        {"Id": 1, "Port": tunnel_port, "ServerIp": "127.0.0.1", "Mode": "tcp", "Status": True, "RunStatus": True,
         "Client": embedded, "Ports": "", "Flow": {"ExportFlow": 10, "InletFlow": 20, "FlowLimit": 0},
         "Password": "", "Remark": "ssh", "TargetAddr": "", "NoStore": False, "LocalPath": "", "StripPre": "",
         "Target": {"TargetStr": "127.0.0.1:22", "TargetArr": None, "LocalProxy": False},
         "MultiAccount": None},
        {"Id": 2, "Port": 0, "ServerIp": "", "Mode": "secret", "Status": True, "Client": embedded,
         "Password": "s3cret-pass", "Remark": "secret", "Target": {"TargetStr": "127.0.0.1:3389"}},
        {"Id": 3, "Port": 1080, "Mode": "socks5", "Status": True, "Client": {"Id": 77}, "Target": {}},
        {"Id": 4, "Port": 99999, "Mode": "tcp", "Status": True, "Client": embedded,
         "Target": {"TargetStr": "127.0.0.1:80"}},
    ]
    hosts = [{"Id": 1, "Host": "a.example.com", "HeaderChange": "X-From:nps\nX-Two:2", "HostChange": "",
              "Location": "/", "Remark": "web", "Scheme": "all", "CertFilePath": "", "KeyFilePath": "",
              "NoStore": False, "IsClose": False, "Flow": {"ExportFlow": 5, "InletFlow": 6, "FlowLimit": 0},
              "Client": embedded, "Target": {"TargetStr": "127.0.0.1:8080\n127.0.0.1:8081", "LocalProxy": False}}]
    (conf / "clients.json").write_text(nps_file(clients))
    (conf / "tasks.json").write_text(nps_file(tasks))
    (conf / "hosts.json").write_text(nps_file(hosts))
    return root


def run_nps(server: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(server.argv(*args), input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=server.workdir)


def test_import_nps_files(tmp_path: Path) -> None:
    port = support.free_port()
    root = write_nps_conf_dir(tmp_path / "nps-run", port)
    server = support.NpsServer(tmp_path / "ours")
    result = run_nps(server, "import", str(root))
    assert result.returncode == 0, result.stderr
    assert "imported 2 clients, 2 tunnels, 1 hosts" in result.stdout
    assert "client 9" in result.stdout and "NoStore" in result.stdout
    assert "its client 77 was not imported" in result.stdout
    assert "tunnel 4" in result.stdout
    store = Store(str(server.data_dir))
    try:
        first = store.get_client_by_vkey("06j3twjj9vjy2kdg")
        assert (first.remark, first.max_conn, first.flow_limit, first.crypt) == ("c2", 7, 100, True)
        assert (first.basic_username, first.basic_password, first.web_username) == ("basic", "bp", "admin55")
        assert first.web_password.startswith("scrypt$")
        assert passwords.verify_password("123", first.web_password)
        assert not store.get_client_by_vkey("k5k5k5k5k5k5k5k5").enabled
        tunnels = {t.mode: t for t in store.list_tunnels(first.id)}
        assert tunnels["tcp"].server_port == port and tunnels["tcp"].targets == ("127.0.0.1:22",)
        assert tunnels["secret"].password == "s3cret-pass"
        [host] = store.list_hosts(first.id)
        assert host.targets == ("127.0.0.1:8080", "127.0.0.1:8081")
        assert host.headers == {"X-From": "nps", "X-Two": "2"}
        assert store.traffic("client")[first.id] == (92324, 2298489)
        assert store.traffic("tunnel")[tunnels["tcp"].id] == (20, 10)
    finally:
        store.close()
    # importing again skips the clients whose vkey exists already
    again = run_nps(server, "import", str(root / "conf"))
    assert again.returncode == 0
    assert "imported 0 clients" in again.stdout and "vkey is already used" in again.stdout


def test_import_bad_input(tmp_path: Path) -> None:
    server = support.NpsServer(tmp_path / "ours")
    result = run_nps(server, "import", str(tmp_path / "missing"))
    assert result.returncode == 1
    assert "no clients.json" in result.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "clients.json").write_text('{"Id": 1}\n*#*{not json\n*#*')
    result = run_nps(server, "import", str(bad))
    assert result.returncode == 1
    assert "record 2 is not valid JSON" in result.stderr
    with pytest.raises(ImportError_):
        (bad / "tasks.json").write_text("[1]\n*#*")
        read_records(str(bad / "tasks.json"))


def test_admin_passwd_and_tokens(tmp_path: Path) -> None:
    server = support.NpsServer(tmp_path / "ours")
    result = run_nps(server, "admin", "passwd")
    assert result.returncode == 0, result.stderr
    password = result.stdout.split(": ")[-1].strip()
    assert len(password) >= 16
    store = Store(str(server.data_dir))
    try:
        stored = store.admin_password_hash("admin")
    finally:
        store.close()
    assert stored.startswith("scrypt$") and password not in stored
    assert passwords.verify_password(password, stored)
    result = run_nps(server, "admin", "passwd", "--stdin", stdin="short\n")
    assert result.returncode == 0
    assert "weak" in result.stderr
    result = run_nps(server, "admin", "token", "create", "ci")
    assert result.returncode == 0
    token = result.stdout.split(": ", 1)[1].splitlines()[0].strip()
    assert token.startswith("nps_")
    listed = run_nps(server, "admin", "token", "list")
    assert "ci\tadmin" in listed.stdout and token not in listed.stdout
    assert run_nps(server, "admin", "token", "revoke", "1").returncode == 0
    missing = run_nps(server, "admin", "token", "revoke", "1")
    assert missing.returncode == 1 and "no API token" in missing.stderr
