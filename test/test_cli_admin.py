# -*- test-case-name: test.test_cli_admin -*-
"""Tests for L{nps.cli.admin}: the C{nps client} and C{nps tunnel} commands."""
from __future__ import annotations

import argparse
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from nps.cli import admin
from nps.store import Store

SERVER = "203.0.113.7:8024"


@attrs.define
class Result:
    """What one command did."""

    code: int
    out: str
    err: str


class Runner:
    """Parses argv like the nps front end would and calls L{admin.run}."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.parser = argparse.ArgumentParser(prog="nps")
        sub = self.parser.add_subparsers(dest="command")
        admin.add_arguments(sub)

    def __call__(self, *argv: str) -> Result:
        args = self.parser.parse_args(list(argv))
        out, err = io.StringIO(), io.StringIO()
        code = admin.run(args, self.store, SERVER, out, err)
        return Result(code, out.getvalue(), err.getvalue())

    def json(self, *argv: str) -> object:
        r = self(*argv, "--json")
        assert r.code == 0, r.err
        return json.loads(r.out)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store in a temporary data directory."""
    s = Store(str(tmp_path / "data"))
    yield s
    s.close()


@pytest.fixture
def nps(store: Store) -> Runner:
    """Runs admin commands against the temporary store."""
    return Runner(store)


def test_client_add_prints_npc_line(nps: Runner, store: Store) -> None:
    """client add prints the id, the vkey and the exact npc command on its own line."""
    r = nps("client", "add", "--remark", "home")
    assert r.code == 0 and r.err == ""
    (client,) = store.list_clients()
    assert client.remark == "home"
    lines = r.out.splitlines()
    assert f"npc -server={SERVER} -vkey={client.vkey} -type=tcp" in lines
    assert re.search(rf"\b{client.id}\b", r.out)
    assert f"vkey: {client.vkey}" in lines


def test_client_add_options(nps: Runner, store: Store) -> None:
    """--vkey, --no-config-conn and the limit options reach the store."""
    r = nps("client", "add", "--remark", "x", "--vkey", "myKey123", "--no-config-conn", "--max-tunnels", "2", "--crypt")
    assert r.code == 0, r.err
    (c,) = store.list_clients()
    assert (c.vkey, c.config_conn_allow, c.max_tunnels, c.crypt) == ("myKey123", False, 2, True)
    assert f"npc -server={SERVER} -vkey=myKey123 -type=tcp" in r.out.splitlines()


def test_client_add_json(nps: Runner, store: Store) -> None:
    """client add --json gives the record and the npc command."""
    data = nps.json("client", "add", "--remark", "j")
    assert isinstance(data, dict)
    (c,) = store.list_clients()
    assert data["client"]["id"] == c.id
    assert data["client"]["vkey"] == c.vkey
    assert data["npc_command"] == f"npc -server={SERVER} -vkey={c.vkey} -type=tcp"


def test_client_add_duplicate_vkey(nps: Runner) -> None:
    """A duplicate vkey is an error with exit code 1 and no traceback."""
    assert nps("client", "add", "--vkey", "dup").code == 0
    r = nps("client", "add", "--vkey", "dup")
    assert r.code == 1
    assert r.out == ""
    assert "vkey is already used by client 1" in r.err
    assert "Traceback" not in r.err


def test_client_add_negative_limit(nps: Runner, store: Store) -> None:
    """A negative limit is a usage error (exit 2) and adds nothing."""
    r = nps("client", "add", "--rate-limit", "-5")
    assert r.code == 2
    assert "--rate-limit" in r.err
    assert store.list_clients() == []


def test_client_list(nps: Runner, store: Store) -> None:
    """client list shows id, remark, vkey, online status with address and version, and tunnel counts."""
    a = store.add_client("alpha")
    b = store.add_client("beta")
    store.add_client("gamma")
    store.add_tunnel(a.id, "tcp", 8000, ["127.0.0.1:22"])
    store.add_tunnel(a.id, "udp", 8000, ["127.0.0.1:53"])
    store.set_client_online(a.id, True, "198.51.100.1:40000", "0.1.0")
    store.set_client_online(b.id, True, "198.51.100.2:40000", "0.0.9")
    store.set_client_online(b.id, False)
    r = nps("client", "list")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split() == ["ID", "REMARK", "VKEY", "STATUS", "TUNNELS"]
    row_a, row_b, row_c = lines[1:]
    assert row_a.split()[:3] == [str(a.id), "alpha", a.vkey]
    assert "online" in row_a and "198.51.100.1:40000" in row_a and "0.1.0" in row_a
    assert row_a.split()[-1] == "2"
    assert "offline" in row_b and "last seen" in row_b and "198.51.100.2:40000" in row_b
    assert row_b.split()[-1] == "0"
    assert re.search(r"\boffline\b", row_c) and "last seen" not in row_c


def test_client_list_empty_and_json(nps: Runner, store: Store) -> None:
    """An empty list says so; --json gives a list with tunnel counts."""
    r = nps("client", "list")
    assert r.code == 0 and "No clients" in r.out
    assert nps.json("client", "list") == []
    c = store.add_client("x")
    store.add_tunnel(c.id, "socks5", 1080)
    data = nps.json("client", "list")
    assert isinstance(data, list)
    assert data[0]["id"] == c.id and data[0]["tunnels"] == 1 and data[0]["online"] is False


def test_client_show(nps: Runner, store: Store) -> None:
    """client show prints the client, its tunnels and its npc line, but not its passwords."""
    c = store.add_client("box", web_password="hunter2")
    store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:3389"], remark="rdp")
    r = nps("client", "show", str(c.id))
    assert r.code == 0
    assert c.vkey in r.out
    assert "hunter2" not in r.out
    assert f"npc -server={SERVER} -vkey={c.vkey} -type=tcp" in r.out.splitlines()
    assert "127.0.0.1:3389" in r.out and "rdp" in r.out
    data = nps.json("client", "show", str(c.id))
    assert isinstance(data, dict)
    assert [t["server_port"] for t in data["tunnels"]] == [8002]


def test_client_show_unknown(nps: Runner) -> None:
    """Showing a missing client exits 1 with 'no client with id N'."""
    r = nps("client", "show", "7")
    assert (r.code, r.out) == (1, "")
    assert "no client with id 7" in r.err


def test_client_del(nps: Runner, store: Store) -> None:
    """client del removes the client and its tunnels; again, it exits 1."""
    c = store.add_client("x")
    store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:1"])
    r = nps("client", "del", str(c.id))
    assert r.code == 0
    assert "1 tunnel" in r.out
    assert store.list_clients() == [] and store.list_tunnels() == []
    r = nps("client", "del", str(c.id))
    assert r.code == 1 and f"no client with id {c.id}" in r.err


def test_tunnel_add(nps: Runner, store: Store) -> None:
    """tunnel add stores the tunnel with all its targets and reports its id."""
    c = store.add_client("x")
    r = nps(
        "tunnel", "add", "--client", str(c.id), "--mode", "tcp", "--port", "8002",
        "--target", "127.0.0.1:3389", "--target", "[::1]:3389", "--server-ip", "127.0.0.1", "--remark", "rdp",
    )
    assert r.code == 0, r.err
    (t,) = store.list_tunnels()
    assert (t.mode, t.server_port, t.server_ip, t.targets, t.remark) == (
        "tcp", 8002, "127.0.0.1", ("127.0.0.1:3389", "[::1]:3389"), "rdp",
    )
    assert f"tunnel {t.id}" in r.out


def test_tunnel_add_json(nps: Runner, store: Store) -> None:
    """tunnel add --json prints the tunnel record."""
    c = store.add_client("x")
    data = nps.json("tunnel", "add", "--client", str(c.id), "--mode", "socks5", "--port", "1080")
    assert isinstance(data, dict)
    assert data["mode"] == "socks5" and data["server_port"] == 1080 and data["client_id"] == c.id


def test_tunnel_add_secret(nps: Runner, store: Store) -> None:
    """A secret tunnel needs no port and prints the visitor's npc command."""
    c = store.add_client("x")
    r = nps("tunnel", "add", "--client", str(c.id), "--mode", "secret", "--target", "127.0.0.1:22", "--password", "pw")
    assert r.code == 0, r.err
    assert f"npc -server={SERVER} -vkey=VISITOR_VKEY -type=tcp -password=pw -local_type=secret" in r.out
    assert store.list_tunnels()[0].server_port == 0


def test_tunnel_add_file(nps: Runner, store: Store) -> None:
    """A file tunnel takes --local-path and --strip-pre."""
    c = store.add_client("x")
    r = nps("tunnel", "add", "--client", str(c.id), "--mode", "file", "--port", "8080",
            "--local-path", "/srv/www", "--strip-pre", "/web/")
    assert r.code == 0, r.err
    (t,) = store.list_tunnels()
    assert (t.local_path, t.strip_pre) == ("/srv/www", "/web/")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "tcp", "--port", "8002", "--target", "::1:22"], "brackets"),
        (["--mode", "tcp", "--port", "8002", "--target", "localhost"], "host:port"),
        (["--mode", "tcp", "--port", "8002", "--target", "host:99999"], "1-65535"),
        (["--mode", "ftp", "--port", "8002"], "unknown mode 'ftp'"),
        (["--mode", "tcp", "--target", "127.0.0.1:22"], "needs --port"),
        (["--mode", "tcp", "--port", "70000", "--target", "127.0.0.1:22"], "1-65535"),
        (["--mode", "secret", "--port", "8002", "--target", "127.0.0.1:22", "--password", "p"], "no public port"),
        (["--mode", "p2p", "--target", "127.0.0.1:22"], "needs --password"),
    ],
)
def test_tunnel_add_usage_errors(nps: Runner, store: Store, argv: list[str], message: str) -> None:
    """Bad modes, targets and ports exit 2 with a message and add nothing."""
    c = store.add_client("x")
    r = nps("tunnel", "add", "--client", str(c.id), *argv)
    assert r.code == 2
    assert message in r.err
    assert r.out == ""
    assert "Traceback" not in r.err
    assert store.list_tunnels() == []


def test_tunnel_add_store_errors(nps: Runner, store: Store) -> None:
    """A taken port or an unknown client exits 1 with the store's message."""
    c = store.add_client("x")
    assert nps("tunnel", "add", "--client", str(c.id), "--port", "8002", "--target", "127.0.0.1:1").code == 0
    r = nps("tunnel", "add", "--client", str(c.id), "--port", "8002", "--target", "127.0.0.1:2")
    assert r.code == 1
    assert "port 8002 is already used by tunnel 1" in r.err
    r = nps("tunnel", "add", "--client", "42", "--port", "8003", "--target", "127.0.0.1:2")
    assert r.code == 1
    assert "no client with id 42" in r.err


def test_tunnel_list(nps: Runner, store: Store) -> None:
    """tunnel list shows every tunnel, or one client's with --client."""
    a = store.add_client("a")
    b = store.add_client("b")
    ta = store.add_tunnel(a.id, "tcp", 8000, ["127.0.0.1:22"], remark="ssh")
    tb = store.add_tunnel(b.id, "secret", 0, ["127.0.0.1:22"], password="p", enabled=False)
    r = nps("tunnel", "list")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[0].split() == ["ID", "CLIENT", "MODE", "LISTEN", "TARGETS", "STATUS", "REMARK"]
    assert lines[1].split() == [str(ta.id), str(a.id), "tcp", "0.0.0.0:8000", "127.0.0.1:22", "enabled", "ssh"]
    assert lines[2].split() == [str(tb.id), str(b.id), "secret", "-", "127.0.0.1:22", "disabled"]
    r = nps("tunnel", "list", "--client", str(b.id))
    assert len(r.out.splitlines()) == 2 and "secret" in r.out and "ssh" not in r.out
    data = nps.json("tunnel", "list", "--client", str(a.id))
    assert isinstance(data, list) and [t["id"] for t in data] == [ta.id]
    r = nps("tunnel", "list", "--client", "99")
    assert r.code == 1 and "no client with id 99" in r.err


def test_tunnel_list_empty(nps: Runner) -> None:
    """An empty tunnel list says so."""
    r = nps("tunnel", "list")
    assert r.code == 0 and "No tunnels" in r.out


def test_tunnel_show_and_del(nps: Runner, store: Store) -> None:
    """tunnel show prints a tunnel; tunnel del removes it; a missing id exits 1."""
    c = store.add_client("x")
    t = store.add_tunnel(c.id, "tcp", 8000, ["[2001:db8::1]:22"], server_ip="::1")
    r = nps("tunnel", "show", str(t.id))
    assert r.code == 0 and "[::1]:8000" in r.out and "[2001:db8::1]:22" in r.out
    r = nps("tunnel", "del", str(t.id))
    assert r.code == 0 and f"Deleted tunnel {t.id}" in r.out
    assert store.list_tunnels() == []
    for argv in (("tunnel", "del", str(t.id)), ("tunnel", "show", str(t.id))):
        r = nps(*argv)
        assert r.code == 1 and f"no tunnel with id {t.id}" in r.err


def test_revision_changes_through_cli(nps: Runner, store: Store, tmp_path: Path) -> None:
    """
    Commands change the revision a running server would poll, as seen
    through another Store on the same directory.
    """
    server = Store(str(tmp_path / "data"))
    try:
        before = server.revision()
        nps("client", "add", "--remark", "x")
        nps("tunnel", "add", "--client", "1", "--port", "9000", "--target", "127.0.0.1:1")
        assert server.revision() == before + 2
        assert len(server.list_tunnels()) == 1
    finally:
        server.close()


def test_handles_and_missing_action(nps: Runner, store: Store) -> None:
    """handles() tells admin commands apart; run() on anything else exits 2."""
    assert admin.handles(nps.parser.parse_args(["client", "list"]))
    other = argparse.Namespace(command="start")
    assert not admin.handles(other)
    err = io.StringIO()
    assert admin.run(other, store, SERVER, io.StringIO(), err) == 2
    assert "not a client or tunnel command" in err.getvalue()


def test_parser_requires_action(nps: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    """'nps client' with no action is an argparse usage error (exit 2)."""
    with pytest.raises(SystemExit) as e:
        nps.parser.parse_args(["client"])
    assert e.value.code == 2


def test_npc_command_quotes_only_when_needed() -> None:
    """npc_command leaves plain values alone and shell-quotes odd ones."""
    assert admin.npc_command("1.2.3.4:8024", "abcDEF123") == "npc -server=1.2.3.4:8024 -vkey=abcDEF123 -type=tcp"
    assert admin.npc_command("[::1]:8024", "k$y") == "npc '-server=[::1]:8024' '-vkey=k$y' -type=tcp"
