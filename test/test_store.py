# -*- test-case-name: test.test_store -*-
"""Tests for L{nps.store}."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.application.service import MultiService
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorCore
from twisted.trial import unittest

from nps import store as store_module
from nps.model import ClientRecord, Tunnel
from nps.store import (
    DB_FILENAME,
    MIGRATIONS,
    AsyncStore,
    Store,
    StoreError,
    normalize_target,
    schema_version,
)

reactor: IReactorCore = _reactor


def _temp_path(case: unittest.TestCase) -> str:
    """
    A fresh path under the system temp directory, removed after C{case}.
    (trial's C{mktemp} is relative to the working directory, which under
    pytest is the source tree.)
    """
    top = tempfile.mkdtemp(prefix="nps-test-")
    case.addCleanup(shutil.rmtree, top, True)
    return os.path.join(top, "data")


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    """A data directory that does not exist yet."""
    return str(tmp_path / "data")


@pytest.fixture
def store(data_dir: str):  # type: ignore[no-untyped-def]
    """An open store, closed after the test."""
    s = Store(data_dir)
    yield s
    s.close()


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- opening, migrations, files ------------------------------------------------


def test_fresh_database_is_at_latest_version(store: Store) -> None:
    """A new database gets every migration and the v1 tables."""
    assert store.schema_version() == schema_version() == len(MIGRATIONS)
    db = sqlite3.connect(store.path)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert {"clients", "tunnels", "meta"} <= tables
    assert store.revision() == 0


def test_wal_and_foreign_keys(store: Store) -> None:
    """The connection uses WAL, enforces foreign keys and waits 5 s on locks."""
    db = store._conn()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_older_database_is_migrated(data_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A database at an older C{user_version} gets only the missing migrations,
    in order, and keeps its data.
    """
    s = Store(data_dir)
    client = s.add_client("old")
    s.close()
    ran: list[int] = []

    def v2(db: sqlite3.Connection) -> None:
        ran.append(2)
        db.execute("CREATE TABLE extra_table (id INTEGER PRIMARY KEY, host TEXT NOT NULL)")

    def v3(db: sqlite3.Connection) -> None:
        ran.append(3)
        db.execute("ALTER TABLE extra_table ADD COLUMN location TEXT NOT NULL DEFAULT '/'")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, v2, v3])
    s = Store(data_dir)
    try:
        assert ran == [2, 3]
        assert s.schema_version() == len(MIGRATIONS) + 2
        assert s.get_client(client.id) == client
        s._conn().execute("INSERT INTO extra_table (host) VALUES ('a.example')")
    finally:
        s.close()
    s = Store(data_dir)
    s.close()
    assert ran == [2, 3], "migrations must not run twice"


def test_empty_file_at_version_zero_is_migrated(data_dir: str) -> None:
    """An existing empty database file (user_version 0) gets the schema."""
    os.makedirs(data_dir)
    sqlite3.connect(os.path.join(data_dir, DB_FILENAME)).close()
    s = Store(data_dir)
    try:
        assert s.schema_version() == schema_version()
    finally:
        s.close()


def test_failed_migration_is_rolled_back(data_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails leaves the database at the previous version."""
    Store(data_dir).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x)")
        db.execute("THIS IS NOT SQL")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(StoreError):
        Store(data_dir)
    monkeypatch.undo()
    s = Store(data_dir)
    try:
        assert s.schema_version() == schema_version()
        names = {r[0] for r in s._conn().execute("SELECT name FROM sqlite_master")}
        assert "half" not in names
    finally:
        s.close()


def test_newer_database_is_refused(data_dir: str) -> None:
    """A database written by a newer nps (higher user_version) is not touched."""
    Store(data_dir).close()
    db = sqlite3.connect(os.path.join(data_dir, DB_FILENAME))
    db.execute("PRAGMA user_version = 999")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(data_dir)


def test_not_a_database(data_dir: str) -> None:
    """A garbage nps.db gives a StoreError naming the file."""
    os.makedirs(data_dir)
    Path(data_dir, DB_FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="nps.db"):
        Store(data_dir)


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    """A data directory path that is a file gives a StoreError."""
    p = tmp_path / "file"
    p.write_text("x")
    with pytest.raises(StoreError, match="data directory"):
        Store(str(p))


def test_file_permissions(data_dir: str) -> None:
    """A new data directory is 0700; the database and its WAL files are 0600."""
    old = os.umask(0o022)
    try:
        s = Store(data_dir)
        s.add_client("x")
    finally:
        os.umask(old)
    try:
        assert _mode(data_dir) == 0o700
        assert _mode(s.path) == 0o600
        for suffix in ("-wal", "-shm"):
            if os.path.exists(s.path + suffix):
                assert _mode(s.path + suffix) == 0o600
    finally:
        s.close()


def test_loose_db_permissions_are_tightened(data_dir: str) -> None:
    """An existing world-readable nps.db is made 0600; an existing dir is left alone."""
    os.makedirs(data_dir, mode=0o755)
    os.chmod(data_dir, 0o755)
    path = os.path.join(data_dir, DB_FILENAME)
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)
    Store(data_dir).close()
    assert _mode(path) == 0o600
    assert _mode(data_dir) == 0o755


def test_survives_reopen(data_dir: str) -> None:
    """Clients, tunnels and the revision are still there after close and reopen."""
    s = Store(data_dir)
    c = s.add_client("home", rate_limit=100, crypt=True)
    t = s.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:3389"], options={"k": "v"}, password="pw")
    rev = s.revision()
    s.close()
    s = Store(data_dir)
    try:
        assert s.list_clients() == [c]
        assert s.list_tunnels() == [t]
        assert s.revision() == rev
    finally:
        s.close()


def test_closed_store_raises(data_dir: str) -> None:
    """Using a closed store raises StoreError; closing twice is fine."""
    s = Store(data_dir)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.list_clients()


# -- clients ------------------------------------------------------------------


def test_add_client_generates_vkey(store: Store) -> None:
    """Without a vkey, a random alphanumeric key of 22+ characters is made."""
    keys = {store.add_client(f"c{i}").vkey for i in range(20)}
    assert len(keys) == 20
    for k in keys:
        assert re.fullmatch(r"[A-Za-z0-9]{22,}", k)


def test_add_client_fields(store: Store) -> None:
    """add_client stores the given fields and returns the record with its id."""
    c = store.add_client("office", vkey="abc123", config_conn_allow=False, max_tunnels=3, compress=True)
    assert c.id > 0
    assert (c.remark, c.vkey, c.config_conn_allow, c.max_tunnels, c.compress) == ("office", "abc123", False, 3, True)
    assert store.get_client(c.id) == c
    assert store.get_client_by_vkey("abc123") == c


def test_duplicate_vkey(store: Store) -> None:
    """A vkey already used by a client is refused, on add and on update."""
    a = store.add_client("a", vkey="samekey")
    b = store.add_client("b")
    with pytest.raises(StoreError, match=f"vkey is already used by client {a.id}"):
        store.add_client("c", vkey="samekey")
    with pytest.raises(StoreError, match=f"vkey is already used by client {a.id}"):
        store.update_client(b.id, vkey="samekey")
    assert store.update_client(a.id, vkey="samekey").vkey == "samekey"


@pytest.mark.parametrize("vkey", ["", "has space", "tab\tkey", "x" * 129])
def test_bad_vkey(store: Store, vkey: str) -> None:
    """Empty, over-long or whitespace-containing vkeys are refused."""
    with pytest.raises(StoreError, match="vkey"):
        store.add_client("x", vkey=vkey)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nonsense": 1}, "unknown client field"),
        ({"online": True}, "runtime status"),
        ({"rate_limit": "fast"}, "must be an integer"),
        ({"rate_limit": -1}, "must not be negative"),
        ({"enabled": 1}, "true or false"),
        ({"web_username": 5}, "must be a string"),
    ],
)
def test_bad_client_fields(store: Store, fields: dict[str, Any], message: str) -> None:
    """Unknown, runtime-only or wrongly typed client fields are refused with a clear message."""
    with pytest.raises(StoreError, match=message):
        store.add_client("x", **fields)
    c = store.add_client("y")
    with pytest.raises(StoreError, match=message):
        store.update_client(c.id, **fields)


def test_unknown_client(store: Store) -> None:
    """Every client operation on a missing id says 'no client with id N'."""
    for call in (
        lambda: store.get_client(7),
        lambda: store.update_client(7, remark="x"),
        lambda: store.delete_client(7),
        lambda: store.set_client_online(7, True),
        lambda: store.add_tunnel(7, "tcp", 8000, ["127.0.0.1:80"]),
    ):
        with pytest.raises(StoreError, match="^no client with id 7$"):
            call()
    with pytest.raises(StoreError, match="no client with that vkey"):
        store.get_client_by_vkey("nope")


def test_update_client(store: Store) -> None:
    """update_client changes only the named fields."""
    c = store.add_client("a", max_conn=5)
    u = store.update_client(c.id, remark="b", enabled=False)
    assert u == attrs.evolve(c, remark="b", enabled=False)
    assert store.get_client(c.id) == u


def test_client_status(store: Store) -> None:
    """
    set_client_online records address, version and time; going offline
    keeps the last address and version; mark_all_offline clears every flag.
    """
    a = store.add_client("a")
    b = store.add_client("b")
    store.set_client_online(a.id, True, "10.0.0.1:5555", "0.1.0", when=100.0)
    store.set_client_online(b.id, True, "10.0.0.2:5555", "0.1.0", when=100.0)
    got = store.get_client(a.id)
    assert (got.online, got.remote_addr, got.version, got.last_seen) == (True, "10.0.0.1:5555", "0.1.0", 100.0)
    store.set_client_online(a.id, False, when=200.0)
    got = store.get_client(a.id)
    assert (got.online, got.remote_addr, got.version, got.last_seen) == (False, "10.0.0.1:5555", "0.1.0", 200.0)
    store.mark_all_offline()
    assert [c.online for c in store.list_clients()] == [False, False]


# -- revision -----------------------------------------------------------------


def test_revision_bumps_on_configuration_changes(store: Store) -> None:
    """Every add, update and delete of a client or tunnel bumps the revision by one."""
    revs = [store.revision()]
    c = store.add_client("a")
    revs.append(store.revision())
    store.update_client(c.id, remark="b")
    revs.append(store.revision())
    t = store.add_tunnel(c.id, "tcp", 8000, ["127.0.0.1:80"])
    revs.append(store.revision())
    store.update_tunnel(t.id, server_port=8001)
    revs.append(store.revision())
    store.delete_tunnel(t.id)
    revs.append(store.revision())
    store.delete_client(c.id)
    revs.append(store.revision())
    assert revs == list(range(revs[0], revs[0] + 7))


def test_revision_not_bumped_by_status_or_failures(store: Store) -> None:
    """Status updates, no-op updates and refused changes leave the revision alone."""
    c = store.add_client("a")
    rev = store.revision()
    store.set_client_online(c.id, True, "1.2.3.4:5", "v")
    store.set_client_online(c.id, False)
    store.mark_all_offline()
    store.update_client(c.id, remark="a")
    with pytest.raises(StoreError):
        store.add_tunnel(c.id, "tcp", 0, ["127.0.0.1:80"])
    with pytest.raises(StoreError):
        store.delete_client(999)
    assert store.revision() == rev


def test_concurrent_writer(data_dir: str) -> None:
    """
    Two Store objects on one directory (say the server and the CLI): what
    one writes, the other sees, including the new revision.
    """
    server = Store(data_dir)
    cli = Store(data_dir)
    try:
        before = server.revision()
        c = cli.add_client("from cli")
        t = cli.add_tunnel(c.id, "tcp", 9000, ["127.0.0.1:22"])
        assert server.revision() == before + 2
        snap = server.snapshot()
        assert snap.revision == before + 2
        assert snap.clients == (c,)
        assert snap.tunnels == (t,)
        server.set_client_online(c.id, True, "1.1.1.1:1", "x")
        assert cli.get_client(c.id).online
        assert cli.revision() == before + 2
    finally:
        server.close()
        cli.close()


def test_writer_waits_for_lock(data_dir: str) -> None:
    """A writer blocked by another process's transaction waits instead of failing at once."""
    a = Store(data_dir)
    b = Store(data_dir)
    try:
        a._conn().execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.3, lambda: a._conn().execute("COMMIT"))
        timer.start()
        b.add_client("waited")
        timer.join()
        assert [c.remark for c in a.list_clients()] == ["waited"]
    finally:
        a.close()
        b.close()


# -- tunnels ------------------------------------------------------------------


def test_add_tunnel_roundtrip(store: Store) -> None:
    """A tunnel comes back as it was stored, with targets normalized."""
    c = store.add_client("a")
    t = store.add_tunnel(
        c.id, "tcp", 8002, ["127.0.0.1:3389", "[::1]:22", "8080"], server_ip="127.0.0.1", remark="rdp",
        options={"multi_account": "a=b"},
    )
    assert t.targets == ("127.0.0.1:3389", "[::1]:22", "127.0.0.1:8080")
    assert t.server_ip == "127.0.0.1"
    assert store.get_tunnel(t.id) == t
    assert store.list_tunnels(c.id) == [t]
    assert isinstance(t, Tunnel)


def test_port_conflicts(store: Store) -> None:
    """
    A port taken by an enabled tunnel is refused on the same address and
    whenever either side listens on 0.0.0.0 or ::, but not on another
    specific address.
    """
    c = store.add_client("a")
    t1 = store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:1"], server_ip="10.0.0.1")
    with pytest.raises(StoreError, match=f"^port 8002 is already used by tunnel {t1.id}$"):
        store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:1"], server_ip="10.0.0.1")
    with pytest.raises(StoreError, match=f"port 8002 is already used by tunnel {t1.id}"):
        store.add_tunnel(c.id, "socks5", 8002)
    with pytest.raises(StoreError, match=f"port 8002 is already used by tunnel {t1.id}"):
        store.add_tunnel(c.id, "httpProxy", 8002, server_ip="::")
    store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:1"], server_ip="10.0.0.2")
    t3 = store.add_tunnel(c.id, "tcp", 8003, ["127.0.0.1:1"])
    with pytest.raises(StoreError, match=f"port 8003 is already used by tunnel {t3.id}"):
        store.add_tunnel(c.id, "tcp", 8003, ["127.0.0.1:1"], server_ip="10.0.0.9")


def test_port_conflict_across_clients(store: Store) -> None:
    """Ports are unique on the server, not per client."""
    a = store.add_client("a")
    b = store.add_client("b")
    t = store.add_tunnel(a.id, "tcp", 8002, ["127.0.0.1:1"])
    with pytest.raises(StoreError, match=f"port 8002 is already used by tunnel {t.id}"):
        store.add_tunnel(b.id, "tcp", 8002, ["127.0.0.1:1"])


def test_tcp_and_udp_share_port(store: Store) -> None:
    """A UDP tunnel and a TCP tunnel may use the same port number; two UDP ones may not."""
    c = store.add_client("a")
    store.add_tunnel(c.id, "tcp", 53, ["127.0.0.1:53"])
    u = store.add_tunnel(c.id, "udp", 53, ["127.0.0.1:53"])
    with pytest.raises(StoreError, match=f"port 53 is already used by tunnel {u.id}"):
        store.add_tunnel(c.id, "udp", 53, ["127.0.0.1:53"])


def test_disabled_tunnels_do_not_hold_ports(store: Store) -> None:
    """A disabled tunnel does not hold its port, but enabling it checks again."""
    c = store.add_client("a")
    off = store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:1"], enabled=False)
    on = store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:1"])
    with pytest.raises(StoreError, match=f"port 8002 is already used by tunnel {on.id}"):
        store.update_tunnel(off.id, enabled=True)
    store.update_tunnel(on.id, enabled=False)
    assert store.update_tunnel(off.id, enabled=True).enabled


def test_update_tunnel_keeps_own_port(store: Store) -> None:
    """Updating a tunnel does not conflict with itself, and is checked like a new one."""
    c = store.add_client("a")
    t = store.add_tunnel(c.id, "tcp", 8002, ["127.0.0.1:1"])
    other = store.add_tunnel(c.id, "tcp", 8003, ["127.0.0.1:1"])
    assert store.update_tunnel(t.id, remark="x").remark == "x"
    with pytest.raises(StoreError, match=f"port 8003 is already used by tunnel {other.id}"):
        store.update_tunnel(t.id, server_port=8003)
    with pytest.raises(StoreError, match="unknown tunnel field 'id'"):
        store.update_tunnel(t.id, id=5)
    with pytest.raises(StoreError, match="^no tunnel with id 99$"):
        store.update_tunnel(99, remark="x")
    moved = store.update_tunnel(t.id, client_id=store.add_client("b").id)
    assert store.list_tunnels(c.id) == [other]
    assert store.get_tunnel(t.id) == moved


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_port_range(store: Store, port: int) -> None:
    """Port-based modes need a port in 1-65535."""
    c = store.add_client("a")
    with pytest.raises(StoreError, match="port"):
        store.add_tunnel(c.id, "tcp", port, ["127.0.0.1:1"])


def test_secret_and_p2p(store: Store) -> None:
    """secret and p2p need no port (stored as 0) but a password unique among them."""
    c = store.add_client("a")
    s = store.add_tunnel(c.id, "secret", 0, ["127.0.0.1:22"], password="pw1")
    assert s.server_port == 0
    p = store.add_tunnel(c.id, "p2p", 1234, ["127.0.0.1:22"], password="pw2")
    assert p.server_port == 0
    store.add_tunnel(c.id, "secret", 0, ["127.0.0.1:22"], password="pw3")
    with pytest.raises(StoreError, match=f"password is already used by tunnel {s.id}"):
        store.add_tunnel(c.id, "p2p", 0, ["127.0.0.1:22"], password="pw1")
    with pytest.raises(StoreError, match="needs a password"):
        store.add_tunnel(c.id, "secret", 0, ["127.0.0.1:22"])
    # A tcp tunnel's password is not a secret-mode key.
    store.add_tunnel(c.id, "tcp", 8000, ["127.0.0.1:22"], password="pw1")


def test_mode_requirements(store: Store) -> None:
    """tcp/udp/secret/p2p need a target; file needs a local path; socks5 needs neither."""
    c = store.add_client("a")
    with pytest.raises(StoreError, match="needs at least one target"):
        store.add_tunnel(c.id, "tcp", 8000)
    with pytest.raises(StoreError, match="needs a local path"):
        store.add_tunnel(c.id, "file", 8000)
    store.add_tunnel(c.id, "file", 8000, local_path="/srv", strip_pre="/web/")
    store.add_tunnel(c.id, "socks5", 8001)
    store.add_tunnel(c.id, "myPluginMode", 8002)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": ["nohost"]}, "bad target"),
        ({"targets": ["::1:80"]}, "brackets"),
        ({"targets": "127.0.0.1:80"}, "list"),
        ({"server_ip": "example.com"}, "not an IP address"),
        ({"mode": "no spaces"}, "bad tunnel mode"),
        ({"options": {"a": 1}}, "options"),
        ({"enabled": "yes"}, "true or false"),
        ({"colour": "red"}, "unknown tunnel field"),
    ],
)
def test_bad_tunnel_values(store: Store, kwargs: dict[str, object], message: str) -> None:
    """Malformed tunnel values are refused with a clear message, and nothing is stored."""
    c = store.add_client("a")
    args: dict[str, object] = {"mode": "tcp", "server_port": 8000, "targets": ["127.0.0.1:80"]}
    args.update(kwargs)
    with pytest.raises(StoreError, match=message):
        store.add_tunnel(c.id, **args)  # type: ignore[arg-type]
    assert store.list_tunnels() == []


def test_max_tunnels(store: Store) -> None:
    """A client's max_tunnels limit is enforced when tunnels are added."""
    c = store.add_client("a", max_tunnels=1)
    store.add_tunnel(c.id, "tcp", 8000, ["127.0.0.1:80"])
    with pytest.raises(StoreError, match="maximum of 1 tunnels"):
        store.add_tunnel(c.id, "tcp", 8001, ["127.0.0.1:80"])


def test_delete_client_cascades(store: Store) -> None:
    """Deleting a client deletes its tunnels and no one else's."""
    a = store.add_client("a")
    b = store.add_client("b")
    store.add_tunnel(a.id, "tcp", 8000, ["127.0.0.1:80"])
    store.add_tunnel(a.id, "udp", 8000, ["127.0.0.1:80"])
    kept = store.add_tunnel(b.id, "tcp", 8001, ["127.0.0.1:80"])
    store.delete_client(a.id)
    assert store.list_tunnels() == [kept]
    assert store.list_clients() == [b]
    # Its port is free again.
    store.add_tunnel(b.id, "tcp", 8000, ["127.0.0.1:80"])


def test_delete_tunnel(store: Store) -> None:
    """delete_tunnel removes one tunnel; a missing id is an error."""
    c = store.add_client("a")
    t = store.add_tunnel(c.id, "tcp", 8000, ["127.0.0.1:80"])
    store.delete_tunnel(t.id)
    assert store.list_tunnels() == []
    with pytest.raises(StoreError, match=f"^no tunnel with id {t.id}$"):
        store.delete_tunnel(t.id)
    with pytest.raises(StoreError, match=f"^no tunnel with id {t.id}$"):
        store.get_tunnel(t.id)


def test_records_are_model_types(store: Store) -> None:
    """The store hands out the shared model records."""
    c = store.add_client("a")
    assert isinstance(c, ClientRecord)
    assert all(isinstance(x, ClientRecord) for x in store.list_clients())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", "127.0.0.1:80"),
        (" example.com:443 ", "example.com:443"),
        ("my_host.lan:22", "my_host.lan:22"),
        ("[::1]:22", "[::1]:22"),
        ("[2001:DB8::0:1]:8080", "[2001:db8::1]:8080"),
        ("3389", "127.0.0.1:3389"),
    ],
)
def test_normalize_target_ok(text: str, expected: str) -> None:
    """Good targets, including bracketed IPv6 and NPS's bare-port form, are normalized."""
    assert normalize_target(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host", ":80", "host:", "host:0", "host:65536", "host:http", "::1:80", "[::1]80", "[nope]:80", "a b:80", "[::1"],
)
def test_normalize_target_bad(text: str) -> None:
    """Malformed targets raise ValueError."""
    with pytest.raises(ValueError):
        normalize_target(text)


# -- AsyncStore ----------------------------------------------------------------


class AsyncStoreTests(unittest.TestCase):
    """L{AsyncStore} with the real reactor."""

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        self.data_dir = _temp_path(self)
        self.store = AsyncStore(self.data_dir, reactor)
        self.addCleanup(self.store.stop)
        return self.store.start()

    @inlineCallbacks
    def test_call_runs_off_reactor_thread(self) -> Generator[Deferred[Any], Any, None]:
        """Store methods run in a worker thread, never in the reactor's, and always the same one."""
        seen: list[threading.Thread] = []

        def record(store: Store) -> int:
            seen.append(threading.current_thread())
            return 42

        self.patch(Store, "schema_version", record)
        result = yield self.store.call("schema_version")
        yield self.store.call("schema_version")
        self.assertEqual(result, 42)
        self.assertEqual(len(seen), 2)
        self.assertIsNot(seen[0], threading.current_thread())
        self.assertIs(seen[0], seen[1])

    @inlineCallbacks
    def test_calls_return_results(self) -> Generator[Deferred[Any], Any, None]:
        """call() and the named helpers fire with the store's results."""
        client = yield self.store.call("add_client", "remote", vkey="k1")
        self.assertEqual(client.vkey, "k1")
        tunnel = yield self.store.call("add_tunnel", client.id, "tcp", 8000, ["127.0.0.1:80"])
        clients = yield self.store.list_clients()
        tunnels = yield self.store.list_tunnels(client.id)
        rev = yield self.store.revision()
        by_key = yield self.store.get_client_by_vkey("k1")
        self.assertEqual(clients, [client])
        self.assertEqual(tunnels, [tunnel])
        self.assertEqual(by_key, client)
        self.assertEqual(rev, 2)
        yield self.store.set_client_online(client.id, True, "1.2.3.4:5", "v1")
        got = yield self.store.get_client(client.id)
        self.assertTrue(got.online)
        yield self.store.mark_all_offline()
        snap = yield self.store.snapshot()
        self.assertEqual(snap.revision, 2)
        self.assertFalse(snap.clients[0].online)

    @inlineCallbacks
    def test_errors_propagate(self) -> Generator[Deferred[Any], Any, None]:
        """A StoreError raised in the worker fails the Deferred with that error."""
        d = self.store.call("get_client", 7)
        yield self.assertFailure(d, StoreError)
        try:
            yield self.store.call("get_client", 7)
        except StoreError as e:
            self.assertEqual(str(e), "no client with id 7")

    def test_private_or_unknown_method(self) -> Deferred[object]:
        """Only public Store methods can be called."""
        d1 = self.assertFailure(self.store.call("_write"), AttributeError)
        d2 = self.assertFailure(self.store.call("close"), AttributeError)
        d3 = self.assertFailure(self.store.call("path"), AttributeError)
        return d1.addCallback(lambda _: d2).addCallback(lambda _: d3)

    @inlineCallbacks
    def test_stop(self) -> Generator[Deferred[Any], Any, None]:
        """After stop the thread is gone, calls fail, and stopping again is harmless."""
        yield self.store.call("add_client", "x")
        stopping = self.store.stop()
        again = self.store.stop()
        yield stopping
        yield again
        yield self.store.stop()
        self.assertFalse(any("nps-store" in t.name for t in threading.enumerate()))
        yield self.assertFailure(self.store.call("list_clients"), StoreError)
        # Data written through the async store is on disk.
        s = Store(self.data_dir)
        try:
            self.assertEqual([c.remark for c in s.list_clients()], ["x"])
        finally:
            s.close()

    def test_start_twice(self) -> None:
        """Starting a running AsyncStore is a programming error."""
        self.assertRaises(RuntimeError, self.store.start)


class AsyncStoreOpenFailureTests(unittest.TestCase):
    """Opening failures of L{AsyncStore}."""

    @inlineCallbacks
    def test_open_failure(self) -> Generator[Deferred[Any], Any, None]:
        """If the store cannot open, start() fails and calls report why."""
        path = _temp_path(self)
        with open(path, "w") as f:
            f.write("not a directory")
        store = AsyncStore(path, reactor)
        self.addCleanup(store.stop)
        yield self.assertFailure(store.start(), StoreError)
        try:
            yield store.call("list_clients")
        except StoreError as e:
            self.assertIn("not open", str(e))
        else:
            self.fail("call succeeded")

    @inlineCallbacks
    def test_as_service(self) -> Generator[Deferred[Any], Any, None]:
        """AsyncStore starts and stops with a service tree."""
        parent = MultiService()
        store = AsyncStore(_temp_path(self), reactor)
        store.setServiceParent(parent)
        parent.startService()
        client = yield store.call("add_client", "svc")
        self.assertEqual(client.remark, "svc")
        yield parent.stopService()
        yield self.assertFailure(store.call("list_clients"), StoreError)


def test_public_sessions_are_runtime_state(tmp_path: Path) -> None:
    """Public-key npcs are recorded, updated in place (keeping their start time), ended,
    cleared by mark_all_offline, and never bump the revision."""
    store = Store(str(tmp_path))
    try:
        revision = store.revision()
        store.set_public_session(-1, remark="a", remote_addr="127.0.0.1:5000", version="0.1.0", when=100.0)
        store.set_public_session(-1, remark="a", remote_addr="127.0.0.1:5000", version="0.1.0", tunnels=2,
                                 when=200.0)
        store.set_public_session(-3, remark="b", when=150.0)
        sessions = store.list_public_sessions()
        assert [(s["id"], s["since"], s["tunnels"]) for s in sessions] == [(-1, 100.0, 2), (-3, 150.0, 0)]
        store.end_public_session(-3)
        assert [s["id"] for s in store.list_public_sessions()] == [-1]
        store.mark_all_offline()
        assert store.list_public_sessions() == []
        assert store.revision() == revision
    finally:
        store.close()
