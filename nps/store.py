# -*- test-case-name: test.test_store -*-
"""Persistent configuration of the server: clients and tunnels in SQLite.

The database is one file, C{nps.db}, inside the server's data directory. It
is opened in WAL mode so that the running server and the C{nps} admin command
can use it at the same time: the command writes, the server notices that
L{Store.revision} changed and applies the new configuration without a
restart.

L{Store} is synchronous and is meant for one thread at a time. The Twisted
server must not block its reactor on SQLite, so it uses L{AsyncStore}, which
owns a one-thread pool and runs every call of a L{Store} there.

The schema is versioned with C{PRAGMA user_version}. L{MIGRATIONS} is an
ordered list of functions; function I{n} (counting from 1) brings a database
from version I{n - 1} to version I{n}. Later features (hosts, admin users,
traffic counters) append functions to it and never edit the ones already
released. A column whose name equals a field of L{ClientRecord} or L{Tunnel}
is read into and written from that field, so adding a field with a default
to a record only needs a migration that adds the column.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import sqlite3
import stat
import string
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar, cast

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from nps.model import HOST_SCHEMES, ClientRecord, Host, Tunnel

__all__ = [
    "DB_FILENAME",
    "KNOWN_MODES",
    "MIGRATIONS",
    "PORTLESS_MODES",
    "AsyncStore",
    "Snapshot",
    "Store",
    "StoreError",
    "normalize_host_pattern",
    "normalize_target",
    "schema_version",
]

#: Name of the database file inside the data directory.
DB_FILENAME = "nps.db"

#: The tunnel modes NPS knows. The store accepts other names too, so that a
#: third-party mode plugin can keep its tunnels here; the admin command
#: accepts only these.
KNOWN_MODES = ("tcp", "udp", "socks5", "httpProxy", "secret", "p2p", "file")

#: Modes with no public port: visitors reach them through another npc.
PORTLESS_MODES = frozenset({"secret", "p2p"})

#: Modes whose tunnels cannot work without at least one target.
_TARGET_MODES = frozenset({"tcp", "udp", "secret", "p2p"})

_MODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_VKEY_ALPHABET = string.ascii_letters + string.digits
_VKEY_LENGTH = 24
_WILDCARD_IPS = frozenset({"0.0.0.0", "::"})

#: Client fields that only the server's runtime writes, through
#: L{Store.set_client_online}.
_CLIENT_RUNTIME = frozenset({"online", "remote_addr", "version", "last_seen"})

_R = TypeVar("_R")


class StoreError(Exception):
    """
    A request the store refused (unknown id, duplicate key, port conflict,
    bad value) or a database that cannot be used. The message is meant for
    the user as it is.
    """


# --------------------------------------------------------------------------
# Migrations


def _migrate_v1(db: sqlite3.Connection) -> None:
    """
    Create the initial schema: C{clients}, C{tunnels} and C{meta}.

    @param db: A connection inside the migration's transaction.
    """
    db.execute(
        """
        CREATE TABLE clients (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            vkey TEXT NOT NULL UNIQUE,
            remark TEXT NOT NULL DEFAULT '',
            enabled INTEGER NOT NULL DEFAULT 1,
            config_conn_allow INTEGER NOT NULL DEFAULT 1,
            rate_limit INTEGER NOT NULL DEFAULT 0,
            flow_limit INTEGER NOT NULL DEFAULT 0,
            max_conn INTEGER NOT NULL DEFAULT 0,
            max_tunnels INTEGER NOT NULL DEFAULT 0,
            basic_username TEXT NOT NULL DEFAULT '',
            basic_password TEXT NOT NULL DEFAULT '',
            web_username TEXT NOT NULL DEFAULT '',
            web_password TEXT NOT NULL DEFAULT '',
            crypt INTEGER NOT NULL DEFAULT 0,
            compress INTEGER NOT NULL DEFAULT 0,
            online INTEGER NOT NULL DEFAULT 0,
            remote_addr TEXT NOT NULL DEFAULT '',
            version TEXT NOT NULL DEFAULT '',
            last_seen REAL NOT NULL DEFAULT 0
        )
        """
    )
    db.execute(
        """
        CREATE TABLE tunnels (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            client_id INTEGER NOT NULL
                REFERENCES clients(id) ON DELETE CASCADE,
            mode TEXT NOT NULL,
            server_port INTEGER NOT NULL DEFAULT 0,
            server_ip TEXT NOT NULL DEFAULT '0.0.0.0',
            targets TEXT NOT NULL DEFAULT '[]',
            remark TEXT NOT NULL DEFAULT '',
            password TEXT NOT NULL DEFAULT '',
            local_path TEXT NOT NULL DEFAULT '',
            strip_pre TEXT NOT NULL DEFAULT '',
            enabled INTEGER NOT NULL DEFAULT 1,
            options TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute("CREATE INDEX tunnels_client ON tunnels(client_id)")
    db.execute("CREATE INDEX tunnels_port ON tunnels(server_port)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES ('revision', 0)")


def _migrate_v2(db: sqlite3.Connection) -> None:
    """
    Add C{public_sessions}: npcs online with the server's C{public_vkey}
    (config-file mode). Runtime state only, so C{nps client list} can show them.

    @param db: A connection inside the migration's transaction.
    """
    db.execute(
        """
        CREATE TABLE public_sessions (
            id INTEGER PRIMARY KEY,
            remark TEXT NOT NULL DEFAULT '',
            remote_addr TEXT NOT NULL DEFAULT '',
            version TEXT NOT NULL DEFAULT '',
            since REAL NOT NULL DEFAULT 0,
            tunnels INTEGER NOT NULL DEFAULT 0
        )
        """
    )


def _migrate_v3(db: sqlite3.Connection) -> None:
    """
    Add C{hosts} (domain routes), C{traffic} (persisted byte counters per
    client, tunnel and host), C{admin_users} and C{api_tokens} (the web
    admin) and C{registered_ips} (C{ip_limit}: source addresses allowed by
    C{npc register} or an admin login, until C{expires}).

    @param db: A connection inside the migration's transaction.
    """
    db.execute(
        """
        CREATE TABLE hosts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            client_id INTEGER NOT NULL
                REFERENCES clients(id) ON DELETE CASCADE,
            host TEXT NOT NULL,
            location TEXT NOT NULL DEFAULT '/',
            scheme TEXT NOT NULL DEFAULT 'all',
            targets TEXT NOT NULL DEFAULT '[]',
            host_change TEXT NOT NULL DEFAULT '',
            headers TEXT NOT NULL DEFAULT '{}',
            cert_file TEXT NOT NULL DEFAULT '',
            key_file TEXT NOT NULL DEFAULT '',
            redirect_https INTEGER NOT NULL DEFAULT 0,
            remark TEXT NOT NULL DEFAULT '',
            enabled INTEGER NOT NULL DEFAULT 1,
            options TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute("CREATE INDEX hosts_client ON hosts(client_id)")
    db.execute("CREATE INDEX hosts_host ON hosts(host)")
    db.execute(
        """
        CREATE TABLE traffic (
            kind TEXT NOT NULL,
            id INTEGER NOT NULL,
            bytes_in INTEGER NOT NULL DEFAULT 0,
            bytes_out INTEGER NOT NULL DEFAULT 0,
            updated REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, id)
        )
        """
    )
    db.execute(
        """
        CREATE TABLE admin_users (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            created REAL NOT NULL DEFAULT 0
        )
        """
    )
    db.execute(
        """
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL DEFAULT '',
            token_hash TEXT NOT NULL UNIQUE,
            client_id INTEGER REFERENCES clients(id) ON DELETE CASCADE,
            created REAL NOT NULL DEFAULT 0,
            last_used REAL NOT NULL DEFAULT 0
        )
        """
    )
    db.execute(
        """
        CREATE TABLE registered_ips (
            ip TEXT PRIMARY KEY,
            client_id INTEGER,
            expires REAL NOT NULL
        )
        """
    )


#: Ordered schema migrations. C{MIGRATIONS[n - 1]} takes a database from
#: C{user_version} I{n - 1} to I{n}; it runs inside a write transaction
#: (so it must not use C{executescript} or change C{foreign_keys}) and must
#: not touch C{user_version} itself. Only ever append.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_v1,
    _migrate_v2,
    _migrate_v3,
]


def schema_version() -> int:
    """
    @return: The schema version this code writes: the number of migrations.
    """
    return len(MIGRATIONS)


# --------------------------------------------------------------------------
# Value checks


def normalize_target(text: str) -> str:
    """
    Check a target address and return it in canonical form.

    Accepts C{host:port}, C{[ipv6]:port}, and NPS's shorthand of a bare
    port, which means C{127.0.0.1:port}.

    @param text: The address as the user wrote it.
    @return: C{host:port}, with an IPv6 host in brackets.
    @raise ValueError: If C{text} is not such an address.
    """
    s = text.strip()
    if not s:
        raise ValueError("empty target address")
    if s.isdigit():
        host, port_text = "127.0.0.1", s
    elif s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1 : end + 2] != ":":
            raise ValueError(f"bad target {text!r}: expected [ipv6]:port")
        host, port_text = s[1:end], s[end + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ValueError(f"bad target {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad target {text!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"bad target {text!r}: write an IPv6 address in brackets, [addr]:port")
        if not _HOSTNAME_RE.match(host):
            raise ValueError(f"bad target {text!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad target {text!r}: port must be a number in 1-65535")
    port = int(port_text)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _normalize_ip(text: str) -> str:
    """
    @return: C{text} as a canonical IP address string; empty means 0.0.0.0.
    @raise StoreError: If C{text} is not an IP address.
    """
    if text == "":
        return "0.0.0.0"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise StoreError(f"server ip {text!r} is not an IP address") from None


def _ips_overlap(a: str, b: str) -> bool:
    """
    @return: Whether listening on C{a} and on C{b} (same port) would clash.
    """
    return a in _WILDCARD_IPS or b in _WILDCARD_IPS or a == b


def _transports(mode: str) -> frozenset[str]:
    """
    @return: The socket kinds a tunnel of C{mode} listens with. A UDP tunnel
        and a TCP tunnel may share a port number (think DNS on 53).
    """
    if mode in PORTLESS_MODES:
        return frozenset()
    if mode == "udp":
        return frozenset({"udp"})
    return frozenset({"tcp"})


def _check_targets(value: object) -> tuple[str, ...]:
    """
    @return: C{value}, a list of target addresses, normalized.
    @raise StoreError: If it is not a list of C{host:port} strings.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise StoreError("targets must be a list of host:port strings")
    targets = []
    for t in value:
        if not isinstance(t, str):
            raise StoreError(f"target {t!r} is not a string")
        try:
            targets.append(normalize_target(t))
        except ValueError as e:
            raise StoreError(str(e)) from None
    return tuple(targets)


def normalize_host_pattern(text: str) -> str:
    """
    Check a domain for a host route and return it lower-cased.

    @param text: C{example.com}, or C{*.example.com} for every name under
        C{example.com} (not C{example.com} itself).
    @raise ValueError: If it is not such a name.
    """
    s = text.strip().lower().rstrip(".")
    name = s[2:] if s.startswith("*.") else s
    if not name or not _HOSTNAME_RE.match(name) or "*" in name:
        raise ValueError(f"bad host {text!r}: expected a domain name or *.domain")
    return s


def _check_vkey(vkey: object) -> str:
    """
    @return: C{vkey} if it is usable as a client key.
    @raise StoreError: Otherwise.
    """
    if not isinstance(vkey, str) or not vkey:
        raise StoreError("vkey must be a non-empty string")
    if len(vkey) > 128:
        raise StoreError("vkey is longer than 128 characters")
    if not all(c.isprintable() and not c.isspace() for c in vkey):
        raise StoreError("vkey must not contain spaces or control characters")
    return vkey


def _check_field(kind: str, name: str, value: object, default: object) -> object:
    """
    Check one record field against the type of its default value.

    @param kind: C{"client"} or C{"tunnel"}, for messages.
    @return: C{value}, converted where harmless (int to float).
    @raise StoreError: If C{value} has the wrong type or is negative.
    """
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise StoreError(f"{kind} field {name} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise StoreError(f"{kind} field {name} must be an integer, got {value!r}")
        if value < 0:
            raise StoreError(f"{kind} field {name} must not be negative, got {value}")
    elif isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise StoreError(f"{kind} field {name} must be a number, got {value!r}")
        return float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise StoreError(f"{kind} field {name} must be a string, got {value!r}")
    return value


# --------------------------------------------------------------------------
# Rows <-> records


@attrs.frozen
class _Codec:
    """
    Maps between a record class and rows of its table. Only columns that
    exist in both the table and the record are used.
    """

    table: str
    record: type[Any]
    columns: tuple[str, ...]
    json_fields: frozenset[str] = frozenset()

    def from_row(self, row: sqlite3.Row) -> Any:
        """
        @return: A record built from C{row}.
        """
        values: dict[str, Any] = {}
        for f in attrs.fields(self.record):
            if f.name not in row.keys():
                continue
            value = row[f.name]
            if f.name in self.json_fields:
                value = json.loads(value)
                if isinstance(value, list):
                    value = tuple(value)
            elif isinstance(f.default, bool):
                value = bool(value)
            values[f.name] = value
        return self.record(**values)

    def to_row(self, record: Any) -> dict[str, Any]:
        """
        @return: Column values for C{record}, without C{id}.
        """
        row: dict[str, Any] = {}
        for name in self.columns:
            if name == "id":
                continue
            value = getattr(record, name)
            if name in self.json_fields:
                value = json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True)
            elif isinstance(value, bool):
                value = int(value)
            row[name] = value
        return row

    def insert(self, db: sqlite3.Connection, record: Any) -> Any:
        """
        Insert C{record} as a new row.

        @return: C{record} with the C{id} the database gave it.
        """
        row = self.to_row(record)
        cur = db.execute(
            f"INSERT INTO {self.table} ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
            tuple(row.values()),
        )
        assert cur.lastrowid is not None
        return attrs.evolve(record, id=cur.lastrowid)


@attrs.frozen
class Snapshot:
    """
    The whole configuration as of one revision, read in one transaction.
    """

    revision: int
    clients: tuple[ClientRecord, ...]
    tunnels: tuple[Tunnel, ...]
    hosts: tuple[Host, ...] = ()


# --------------------------------------------------------------------------
# The store


class Store:
    """
    Synchronous access to C{nps.db}. Every write is one transaction, and
    every configuration change bumps L{revision}.

    A L{Store} may be used from any thread, but by one thread at a time.

    @ivar path: Path of the database file.
    @ivar data_dir: The data directory.
    """

    _client_fields: ClassVar[dict[str, object]] = {
        f.name: f.default for f in attrs.fields(ClientRecord) if f.name != "id" and f.name not in _CLIENT_RUNTIME
    }
    _tunnel_fields: ClassVar[dict[str, object]] = {f.name: f.default for f in attrs.fields(Tunnel) if f.name != "id"}
    _host_fields: ClassVar[dict[str, object]] = {f.name: f.default for f in attrs.fields(Host) if f.name != "id"}

    def __init__(self, data_dir: str) -> None:
        """
        Open (creating if needed) the database in C{data_dir} and bring its
        schema up to date.

        @param data_dir: Directory for C{nps.db}; created with mode 0700 if
            missing.
        @raise StoreError: If the directory or database cannot be used, or
            the database was written by a newer version of nps.
        """
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, DB_FILENAME)
        self._db: sqlite3.Connection | None = None
        try:
            if not os.path.isdir(data_dir):
                os.makedirs(data_dir, mode=0o700, exist_ok=True)
                os.chmod(data_dir, 0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
                    os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot use data directory {data_dir}: {e.strerror or e}") from e
        try:
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {self.path}: {e}") from e
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA foreign_keys = ON")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch {self.path} to WAL mode (got {mode})")
            db.execute("PRAGMA synchronous = NORMAL")
            self._db = db
            self._migrate()
            self._clients = self._codec("clients", ClientRecord, frozenset())
            self._tunnels = self._codec("tunnels", Tunnel, frozenset({"targets", "options"}))
            self._hosts = self._codec("hosts", Host, frozenset({"targets", "headers", "options"}))
        except sqlite3.Error as e:
            db.close()
            self._db = None
            raise StoreError(f"cannot open {self.path}: {e}") from e
        except BaseException:
            db.close()
            self._db = None
            raise

    # -- plumbing -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """
        @return: The open connection.
        @raise StoreError: If the store was closed.
        """
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    def _migrate(self) -> None:
        """
        Apply the migrations this database lacks, each in its own write
        transaction together with its C{user_version} bump.
        """
        target = len(MIGRATIONS)
        while True:
            with self._write() as db:
                current = int(db.execute("PRAGMA user_version").fetchone()[0])
                if current > target:
                    raise StoreError(
                        f"{self.path} has schema version {current}, newer than this nps"
                        f" understands ({target}); upgrade nps"
                    )
                if current == target:
                    return
                MIGRATIONS[current](db)
                db.execute(f"PRAGMA user_version = {current + 1:d}")

    def _codec(self, table: str, record: type[Any], json_fields: frozenset[str]) -> _Codec:
        """
        @return: A codec for C{table} using the columns the table has now.
        """
        names = {row["name"] for row in self._conn().execute(f"PRAGMA table_info({table})")}
        fields = [f.name for f in attrs.fields(record)]
        return _Codec(table, record, tuple(n for n in fields if n in names), json_fields)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """
        A write transaction (C{BEGIN IMMEDIATE}): committed when the block
        ends, rolled back if it raises. SQLite errors become L{StoreError}.
        """
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"cannot write {self.path}: {e}") from e
        try:
            yield db
        except BaseException as e:
            db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"database error in {self.path}: {e}") from e
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise StoreError(f"cannot write {self.path}: {e}") from e

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """
        A read transaction, so that several queries see one state.
        """
        db = self._conn()
        try:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from e

    @staticmethod
    def _bump(db: sqlite3.Connection) -> None:
        """
        Count one configuration change.
        """
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")

    def close(self) -> None:
        """
        Close the database. Further calls raise L{StoreError}. Closing twice
        is harmless.
        """
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def schema_version(self) -> int:
        """
        @return: The C{user_version} of the open database.
        """
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    def revision(self) -> int:
        """
        @return: The configuration revision, bumped by every change to
            clients or tunnels (not by status updates). A server polls it to
            pick up changes another process made.
        """
        try:
            row = self._conn().execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from e
        return int(row[0])

    def snapshot(self) -> Snapshot:
        """
        @return: Revision, clients and tunnels read in one transaction, so
            that they agree with each other.
        """
        with self._read() as db:
            revision = int(db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
            clients = db.execute("SELECT * FROM clients ORDER BY id").fetchall()
            tunnels = db.execute("SELECT * FROM tunnels ORDER BY id").fetchall()
            hosts = db.execute("SELECT * FROM hosts ORDER BY id").fetchall()
        return Snapshot(
            revision,
            tuple(self._clients.from_row(r) for r in clients),
            tuple(self._tunnels.from_row(r) for r in tunnels),
            tuple(self._hosts.from_row(r) for r in hosts),
        )

    # -- clients --------------------------------------------------------------

    def _check_client_fields(self, fields: dict[str, object]) -> dict[str, Any]:
        """
        @return: C{fields}, checked against the editable client fields.
        @raise StoreError: On an unknown or read-only field or a bad value.
        """
        checked: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in self._client_fields:
                if name in _CLIENT_RUNTIME:
                    raise StoreError(f"client field {name} is runtime status, not configuration")
                raise StoreError(f"unknown client field {name!r}")
            if name == "vkey":
                checked[name] = _check_vkey(value)
            else:
                checked[name] = _check_field("client", name, value, self._client_fields[name])
        return checked

    @staticmethod
    def _ensure_vkey_free(db: sqlite3.Connection, vkey: str, client_id: int | None) -> None:
        """
        @raise StoreError: If another client already has C{vkey}.
        """
        row = db.execute("SELECT id FROM clients WHERE vkey = ?", (vkey,)).fetchone()
        if row is not None and row["id"] != client_id:
            raise StoreError(f"vkey is already used by client {row['id']}")

    @staticmethod
    def _new_vkey(db: sqlite3.Connection) -> str:
        """
        @return: A random vkey no client has yet.
        """
        while True:
            vkey = "".join(secrets.choice(_VKEY_ALPHABET) for _ in range(_VKEY_LENGTH))
            if db.execute("SELECT 1 FROM clients WHERE vkey = ?", (vkey,)).fetchone() is None:
                return vkey

    def _get_client(self, db: sqlite3.Connection, client_id: int) -> ClientRecord:
        """
        @raise StoreError: If there is no such client.
        """
        row = db.execute("SELECT * FROM clients WHERE id = ?", (client_id,)).fetchone()
        if row is None:
            raise StoreError(f"no client with id {client_id}")
        return cast(ClientRecord, self._clients.from_row(row))

    def add_client(self, remark: str = "", vkey: str | None = None, **fields: object) -> ClientRecord:
        """
        Add a client.

        @param remark: A note for humans.
        @param vkey: The client's key; a random 24-character alphanumeric key
            when L{None}.
        @param fields: Other editable L{ClientRecord} fields.
        @return: The new client, with its id.
        @raise StoreError: If C{vkey} is taken or a field is bad.
        """
        checked = self._check_client_fields(dict(fields, remark=remark))
        if vkey is not None:
            _check_vkey(vkey)
        with self._write() as db:
            if vkey is None:
                vkey = self._new_vkey(db)
            else:
                self._ensure_vkey_free(db, vkey, None)
            record = ClientRecord(id=0, vkey=vkey, **checked)
            record = self._clients.insert(db, record)
            self._bump(db)
        return record

    def get_client(self, client_id: int) -> ClientRecord:
        """
        @return: The client with id C{client_id}.
        @raise StoreError: If there is none.
        """
        with self._read() as db:
            return self._get_client(db, client_id)

    def get_client_by_vkey(self, vkey: str) -> ClientRecord:
        """
        @return: The client whose key is C{vkey}.
        @raise StoreError: If there is none.
        """
        with self._read() as db:
            row = db.execute("SELECT * FROM clients WHERE vkey = ?", (vkey,)).fetchone()
        if row is None:
            raise StoreError("no client with that vkey")
        return cast(ClientRecord, self._clients.from_row(row))

    def list_clients(self) -> list[ClientRecord]:
        """
        @return: All clients, by id.
        """
        with self._read() as db:
            rows = db.execute("SELECT * FROM clients ORDER BY id").fetchall()
        return [self._clients.from_row(r) for r in rows]

    def update_client(self, client_id: int, **fields: object) -> ClientRecord:
        """
        Change editable fields of a client.

        @return: The updated client.
        @raise StoreError: If there is no such client, a field is bad or the
            new vkey is taken.
        """
        checked = self._check_client_fields(fields)
        with self._write() as db:
            current = self._get_client(db, client_id)
            if "vkey" in checked:
                self._ensure_vkey_free(db, cast(str, checked["vkey"]), client_id)
            record = attrs.evolve(current, **checked)
            if record != current:
                row = self._clients.to_row(record)
                db.execute(
                    f"UPDATE clients SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
                    (*row.values(), client_id),
                )
                self._bump(db)
        return record

    def delete_client(self, client_id: int) -> None:
        """
        Delete a client and all its tunnels.

        @raise StoreError: If there is no such client.
        """
        with self._write() as db:
            cur = db.execute("DELETE FROM clients WHERE id = ?", (client_id,))
            if cur.rowcount == 0:
                raise StoreError(f"no client with id {client_id}")
            self._bump(db)

    def set_client_online(
        self,
        client_id: int,
        online: bool,
        remote_addr: str = "",
        version: str = "",
        when: float | None = None,
    ) -> None:
        """
        Record a client's connection status. This is runtime state: it does
        not bump L{revision}.

        When the client goes offline, an empty C{remote_addr} or C{version}
        keeps the last known value, so that C{nps client list} can say where
        the client was last seen from.

        @param when: Time of the event; now when L{None}.
        @raise StoreError: If there is no such client.
        """
        if when is None:
            when = time.time()
        with self._write() as db:
            if online:
                cur = db.execute(
                    "UPDATE clients SET online = 1, remote_addr = ?, version = ?, last_seen = ? WHERE id = ?",
                    (remote_addr, version, when, client_id),
                )
            else:
                cur = db.execute(
                    "UPDATE clients SET online = 0, last_seen = ?,"
                    " remote_addr = CASE WHEN ? = '' THEN remote_addr ELSE ? END,"
                    " version = CASE WHEN ? = '' THEN version ELSE ? END"
                    " WHERE id = ?",
                    (when, remote_addr, remote_addr, version, version, client_id),
                )
            if cur.rowcount == 0:
                raise StoreError(f"no client with id {client_id}")

    def mark_all_offline(self) -> None:
        """
        Mark every client offline (a server calls this when it starts, since
        no client can be connected yet). Does not bump L{revision}.
        """
        with self._write() as db:
            db.execute("UPDATE clients SET online = 0 WHERE online != 0")
            db.execute("DELETE FROM public_sessions")

    def set_public_session(
        self, session_id: int, remark: str = "", remote_addr: str = "", version: str = "",
        tunnels: int = 0, when: float | None = None,
    ) -> None:
        """
        Record (or update) an npc online with the public key. Runtime state:
        does not bump L{revision}.
        """
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO public_sessions (id, remark, remote_addr, version, since, tunnels)"
                " VALUES (?, ?, ?, ?, COALESCE((SELECT since FROM public_sessions WHERE id = ?), ?), ?)",
                (session_id, remark, remote_addr, version, session_id,
                 time.time() if when is None else when, tunnels),
            )

    def end_public_session(self, session_id: int) -> None:
        """
        Forget a public-key npc that went offline.
        """
        with self._write() as db:
            db.execute("DELETE FROM public_sessions WHERE id = ?", (session_id,))

    def list_public_sessions(self) -> list[dict[str, Any]]:
        """
        @return: The public-key npcs online now, oldest first.
        """
        with self._read() as db:
            rows = db.execute("SELECT * FROM public_sessions ORDER BY since, id").fetchall()
        return [dict(row) for row in rows]

    # -- tunnels ------------------------------------------------------------

    def _get_tunnel(self, db: sqlite3.Connection, tunnel_id: int) -> Tunnel:
        """
        @raise StoreError: If there is no such tunnel.
        """
        row = db.execute("SELECT * FROM tunnels WHERE id = ?", (tunnel_id,)).fetchone()
        if row is None:
            raise StoreError(f"no tunnel with id {tunnel_id}")
        return cast(Tunnel, self._tunnels.from_row(row))

    def _check_tunnel_fields(self, fields: dict[str, object]) -> dict[str, Any]:
        """
        @return: C{fields} checked for type and converted (targets to a
            normalized tuple, server_ip to canonical form, options to a dict).
        @raise StoreError: On an unknown field or a bad value.
        """
        checked: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in self._tunnel_fields:
                raise StoreError(f"unknown tunnel field {name!r}")
            if name == "targets":
                checked[name] = _check_targets(value)
            elif name == "options":
                if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()
                ):
                    raise StoreError("tunnel options must map strings to strings")
                checked[name] = dict(value)
            elif name == "mode":
                if not isinstance(value, str) or not _MODE_RE.match(value):
                    raise StoreError(f"bad tunnel mode {value!r}")
                checked[name] = value
            elif name == "server_ip":
                if not isinstance(value, str):
                    raise StoreError(f"tunnel field server_ip must be a string, got {value!r}")
                checked[name] = _normalize_ip(value)
            elif name in ("client_id", "server_port"):
                checked[name] = _check_field("tunnel", name, value, 0)
            else:
                checked[name] = _check_field("tunnel", name, value, self._tunnel_fields[name])
        return checked

    def _validate_tunnel(self, db: sqlite3.Connection, tunnel: Tunnel, old: Tunnel | None) -> Tunnel:
        """
        Check a tunnel against the mode's needs and the other tunnels.

        @param tunnel: The tunnel as it would be stored.
        @param old: The stored tunnel it replaces, or L{None} for a new one.
        @return: C{tunnel}, normalized (a portless mode gets port 0).
        @raise StoreError: If it cannot be stored.
        """
        exclude = old.id if old is not None else -1
        if old is None or old.client_id != tunnel.client_id:
            client = self._get_client(db, tunnel.client_id)
            if client.max_tunnels:
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM tunnels WHERE client_id = ?", (tunnel.client_id,)
                ).fetchone()
                if count >= client.max_tunnels:
                    raise StoreError(
                        f"client {client.id} already has its maximum of {client.max_tunnels} tunnels"
                    )
        mode = tunnel.mode
        if mode in PORTLESS_MODES:
            tunnel = attrs.evolve(tunnel, server_port=0)
            if not tunnel.password:
                raise StoreError(f"mode {mode} needs a password")
            for row in db.execute(
                "SELECT id, mode FROM tunnels WHERE password = ? AND id != ?", (tunnel.password, exclude)
            ):
                if row["mode"] in PORTLESS_MODES:
                    raise StoreError(f"password is already used by tunnel {row['id']}")
        elif not 1 <= tunnel.server_port <= 65535:
            raise StoreError(f"mode {mode} needs a server port in 1-65535, got {tunnel.server_port}")
        if mode in _TARGET_MODES and not tunnel.targets:
            raise StoreError(f"mode {mode} needs at least one target")
        if mode == "file" and not tunnel.local_path:
            raise StoreError("mode file needs a local path")
        if tunnel.enabled and mode not in PORTLESS_MODES:
            wanted = _transports(mode)
            for row in db.execute(
                "SELECT id, mode, server_ip FROM tunnels WHERE server_port = ? AND enabled != 0 AND id != ?"
                " ORDER BY id",
                (tunnel.server_port, exclude),
            ):
                if _transports(row["mode"]) & wanted and _ips_overlap(row["server_ip"], tunnel.server_ip):
                    raise StoreError(f"port {tunnel.server_port} is already used by tunnel {row['id']}")
        return tunnel

    def add_tunnel(
        self,
        client_id: int,
        mode: str,
        server_port: int = 0,
        targets: Sequence[str] = (),
        server_ip: str = "0.0.0.0",
        remark: str = "",
        **fields: object,
    ) -> Tunnel:
        """
        Add a tunnel to a client.

        @param mode: The npc.conf C{mode=} value.
        @param server_port: Public port; not used (stored as 0) by the
            C{secret} and C{p2p} modes.
        @param targets: C{host:port} addresses on the client's side.
        @param server_ip: Address to listen on; C{0.0.0.0} (or C{::}) means
            all and clashes with any other address on the same port.
        @param fields: Other L{Tunnel} fields (password, local_path,
            strip_pre, enabled, options).
        @return: The new tunnel, with its id.
        @raise StoreError: If the client does not exist, the port is out of
            range or taken by another enabled tunnel, or a value is bad.
        """
        checked = self._check_tunnel_fields(
            dict(
                fields,
                client_id=client_id,
                mode=mode,
                server_port=server_port,
                targets=targets,
                server_ip=server_ip,
                remark=remark,
            )
        )
        with self._write() as db:
            tunnel = Tunnel(id=0, **checked)
            tunnel = self._validate_tunnel(db, tunnel, None)
            tunnel = self._tunnels.insert(db, tunnel)
            self._bump(db)
        return tunnel

    def get_tunnel(self, tunnel_id: int) -> Tunnel:
        """
        @return: The tunnel with id C{tunnel_id}.
        @raise StoreError: If there is none.
        """
        with self._read() as db:
            return self._get_tunnel(db, tunnel_id)

    def list_tunnels(self, client_id: int | None = None) -> list[Tunnel]:
        """
        @param client_id: Only this client's tunnels, if not L{None}.
        @return: Tunnels, by id.
        """
        with self._read() as db:
            if client_id is None:
                rows = db.execute("SELECT * FROM tunnels ORDER BY id").fetchall()
            else:
                rows = db.execute("SELECT * FROM tunnels WHERE client_id = ? ORDER BY id", (client_id,)).fetchall()
        return [self._tunnels.from_row(r) for r in rows]

    def update_tunnel(self, tunnel_id: int, **fields: object) -> Tunnel:
        """
        Change fields of a tunnel; the result is checked like a new tunnel.

        @return: The updated tunnel.
        @raise StoreError: As L{add_tunnel}, or if there is no such tunnel.
        """
        checked = self._check_tunnel_fields(fields)
        with self._write() as db:
            current = self._get_tunnel(db, tunnel_id)
            tunnel = self._validate_tunnel(db, attrs.evolve(current, **checked), current)
            if tunnel != current:
                row = self._tunnels.to_row(tunnel)
                db.execute(
                    f"UPDATE tunnels SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
                    (*row.values(), tunnel_id),
                )
                self._bump(db)
        return tunnel

    def delete_tunnel(self, tunnel_id: int) -> None:
        """
        Delete a tunnel.

        @raise StoreError: If there is no such tunnel.
        """
        with self._write() as db:
            cur = db.execute("DELETE FROM tunnels WHERE id = ?", (tunnel_id,))
            if cur.rowcount == 0:
                raise StoreError(f"no tunnel with id {tunnel_id}")
            self._bump(db)


    # -- hosts ----------------------------------------------------------------

    def _get_host(self, db: sqlite3.Connection, host_id: int) -> Host:
        """
        @raise StoreError: If there is no such host.
        """
        row = db.execute("SELECT * FROM hosts WHERE id = ?", (host_id,)).fetchone()
        if row is None:
            raise StoreError(f"no host with id {host_id}")
        return cast(Host, self._hosts.from_row(row))

    def _check_host_fields(self, fields: dict[str, object]) -> dict[str, Any]:
        """
        @return: C{fields} checked and normalized (host lower-cased, location
            starting with C{/}, targets normalized).
        @raise StoreError: On an unknown field or a bad value.
        """
        checked: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in self._host_fields:
                raise StoreError(f"unknown host field {name!r}")
            if name == "host":
                if not isinstance(value, str):
                    raise StoreError(f"host must be a string, got {value!r}")
                try:
                    checked[name] = normalize_host_pattern(value)
                except ValueError as e:
                    raise StoreError(str(e)) from None
            elif name == "location":
                if not isinstance(value, str) or any(c.isspace() or not c.isprintable() for c in value):
                    raise StoreError(f"host location must be a URL path without spaces, got {value!r}")
                checked[name] = value if value.startswith("/") else "/" + value
            elif name == "scheme":
                if value not in HOST_SCHEMES:
                    raise StoreError(f"host scheme must be one of {', '.join(HOST_SCHEMES)}, got {value!r}")
                checked[name] = value
            elif name == "targets":
                checked[name] = _check_targets(value)
            elif name in ("headers", "options"):
                if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()
                ):
                    raise StoreError(f"host {name} must map strings to strings")
                if name == "headers":
                    for k, v in value.items():
                        if not _HEADER_NAME_RE.match(k) or "\r" in v or "\n" in v:
                            raise StoreError(f"bad header {k!r}: {v!r}")
                checked[name] = dict(value)
            elif name == "client_id":
                checked[name] = _check_field("host", name, value, 0)
            else:
                checked[name] = _check_field("host", name, value, self._host_fields[name])
        return checked

    def _validate_host(self, db: sqlite3.Connection, host: Host, old: Host | None) -> None:
        """
        Check a host route against its client and the other routes: the same
        host and location may be used once per scheme.

        @raise StoreError: If it cannot be stored.
        """
        if old is None or old.client_id != host.client_id:
            self._get_client(db, host.client_id)
        if not host.targets:
            raise StoreError("a host needs at least one target")
        if bool(host.cert_file) != bool(host.key_file):
            raise StoreError("a host's cert_file and key_file go together")
        exclude = old.id if old is not None else -1
        for row in db.execute(
            "SELECT id, scheme FROM hosts WHERE host = ? AND location = ? AND id != ? AND enabled != 0",
            (host.host, host.location, exclude),
        ):
            if host.enabled and (row["scheme"] == "all" or host.scheme == "all" or row["scheme"] == host.scheme):
                raise StoreError(
                    f"host {host.host}{host.location} ({host.scheme}) is already routed by host {row['id']}"
                )

    def add_host(self, client_id: int, host: str, targets: Sequence[str] = (), **fields: object) -> Host:
        """
        Add a domain route to a client.

        @param host: The domain, or C{*.domain} for every name under it.
        @param targets: C{host:port} addresses on the client's side.
        @param fields: Other L{Host} fields.
        @return: The new host, with its id.
        @raise StoreError: If the client does not exist, the route is taken
            or a value is bad.
        """
        checked = self._check_host_fields(dict(fields, client_id=client_id, host=host, targets=targets))
        with self._write() as db:
            record = Host(id=0, **checked)
            self._validate_host(db, record, None)
            record = self._hosts.insert(db, record)
            self._bump(db)
        return record

    def get_host(self, host_id: int) -> Host:
        """
        @return: The host with id C{host_id}.
        @raise StoreError: If there is none.
        """
        with self._read() as db:
            return self._get_host(db, host_id)

    def list_hosts(self, client_id: int | None = None) -> list[Host]:
        """
        @param client_id: Only this client's hosts, if not L{None}.
        @return: Hosts, by id.
        """
        with self._read() as db:
            if client_id is None:
                rows = db.execute("SELECT * FROM hosts ORDER BY id").fetchall()
            else:
                rows = db.execute("SELECT * FROM hosts WHERE client_id = ? ORDER BY id", (client_id,)).fetchall()
        return [self._hosts.from_row(r) for r in rows]

    def update_host(self, host_id: int, **fields: object) -> Host:
        """
        Change fields of a host; the result is checked like a new host.

        @return: The updated host.
        @raise StoreError: As L{add_host}, or if there is no such host.
        """
        checked = self._check_host_fields(fields)
        with self._write() as db:
            current = self._get_host(db, host_id)
            record = attrs.evolve(current, **checked)
            self._validate_host(db, record, current)
            if record != current:
                row = self._hosts.to_row(record)
                db.execute(
                    f"UPDATE hosts SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
                    (*row.values(), host_id),
                )
                self._bump(db)
        return record

    def delete_host(self, host_id: int) -> None:
        """
        Delete a host.

        @raise StoreError: If there is no such host.
        """
        with self._write() as db:
            cur = db.execute("DELETE FROM hosts WHERE id = ?", (host_id,))
            if cur.rowcount == 0:
                raise StoreError(f"no host with id {host_id}")
            db.execute("DELETE FROM traffic WHERE kind = 'host' AND id = ?", (host_id,))
            self._bump(db)

    # -- traffic counters ---------------------------------------------------

    def add_traffic(self, deltas: Sequence[tuple[str, int, int, int]], when: float | None = None) -> None:
        """
        Add byte counts to the persisted counters, in one transaction. Runtime
        state: does not bump L{revision}.

        @param deltas: C{(kind, id, bytes_in, bytes_out)} with kind one of
            C{client}, C{tunnel}, C{host}; ids of records that no longer exist
            are ignored when read.
        """
        if when is None:
            when = time.time()
        with self._write() as db:
            db.executemany(
                "INSERT INTO traffic (kind, id, bytes_in, bytes_out, updated) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, id) DO UPDATE SET bytes_in = bytes_in + excluded.bytes_in,"
                " bytes_out = bytes_out + excluded.bytes_out, updated = excluded.updated",
                [(kind, rid, b_in, b_out, when) for kind, rid, b_in, b_out in deltas],
            )

    def traffic(self, kind: str) -> dict[int, tuple[int, int]]:
        """
        @param kind: C{client}, C{tunnel} or C{host}.
        @return: C{{id: (bytes_in, bytes_out)}} as persisted.
        """
        with self._read() as db:
            rows = db.execute("SELECT id, bytes_in, bytes_out FROM traffic WHERE kind = ?", (kind,)).fetchall()
        return {int(r["id"]): (int(r["bytes_in"]), int(r["bytes_out"])) for r in rows}

    def reset_traffic(self, kind: str, record_id: int) -> None:
        """
        Zero one persisted counter (an admin resetting a client's flow).
        """
        with self._write() as db:
            db.execute("DELETE FROM traffic WHERE kind = ? AND id = ?", (kind, record_id))

    # -- registered source addresses (ip_limit) -------------------------------

    def register_ip(self, ip: str, expires: float, client_id: int | None = None) -> None:
        """
        Allow C{ip} to use tunnels until C{expires} (C{npc register}).
        """
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO registered_ips (ip, client_id, expires) VALUES (?, ?, ?)",
                (_normalize_ip(ip), client_id, expires),
            )

    def registered_ips(self, now: float | None = None) -> dict[str, float]:
        """
        @return: C{{ip: expires}} of registrations not expired at C{now}.
        """
        if now is None:
            now = time.time()
        with self._read() as db:
            rows = db.execute("SELECT ip, expires FROM registered_ips WHERE expires > ?", (now,)).fetchall()
        return {str(r["ip"]): float(r["expires"]) for r in rows}

    # -- web admin users and API tokens (nps.admin) ---------------------------

    def admin_password_hash(self, username: str) -> str:
        """
        @return: The stored password hash of an admin user, or C{""} if none.
        """
        with self._read() as db:
            row = db.execute("SELECT password_hash FROM admin_users WHERE username = ?", (username,)).fetchone()
        return str(row["password_hash"]) if row is not None else ""

    def set_admin_password(self, username: str, password_hash: str) -> None:
        """
        Create an admin user or replace its password hash (not configuration:
        does not bump L{revision}).
        """
        with self._write() as db:
            db.execute(
                "INSERT INTO admin_users (username, password_hash, created) VALUES (?, ?, ?)"
                " ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash",
                (username, password_hash, time.time()),
            )

    def add_api_token(self, name: str, token_hash: str, client_id: int | None = None) -> int:
        """
        Store the hash of a new API bearer token.

        @param client_id: Scope the token to this client, or L{None} for an
            admin token.
        @return: The token's id.
        """
        with self._write() as db:
            if client_id is not None:
                self._get_client(db, client_id)
            cur = db.execute(
                "INSERT INTO api_tokens (name, token_hash, client_id, created) VALUES (?, ?, ?, ?)",
                (name, token_hash, client_id, time.time()),
            )
            return int(cur.lastrowid or 0)

    def find_api_token(self, token_hash: str) -> dict[str, Any] | None:
        """
        Look a token up by its hash and note its use.

        @return: C{{id, name, client_id}}, or L{None}.
        """
        with self._write() as db:
            row = db.execute("SELECT id, name, client_id FROM api_tokens WHERE token_hash = ?",
                             (token_hash,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", (time.time(), row["id"]))
        return dict(row)

    def list_api_tokens(self) -> list[dict[str, Any]]:
        """
        @return: Tokens (without their hashes), by id.
        """
        with self._read() as db:
            rows = db.execute("SELECT id, name, client_id, created, last_used FROM api_tokens ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def delete_api_token(self, token_id: int) -> None:
        """
        @raise StoreError: If there is no such token.
        """
        with self._write() as db:
            if db.execute("DELETE FROM api_tokens WHERE id = ?", (token_id,)).rowcount == 0:
                raise StoreError(f"no API token with id {token_id}")


# --------------------------------------------------------------------------
# Off the reactor thread


class AsyncStore(Service):
    """
    A L{Store} living in its own one-thread pool, for the Twisted server.
    Every call returns a L{Deferred}; the reactor thread never touches
    SQLite. Calls run one at a time, in the order they were made.

    Use L{start} and L{stop} directly, or add this object to a
    C{MultiService}.
    """

    log = Logger()

    def __init__(self, data_dir: str, reactor: IReactorCore) -> None:
        """
        @param data_dir: Passed to L{Store}.
        @param reactor: A reactor that also provides L{IReactorFromThreads}.
        """
        self._data_dir = data_dir
        self._reactor = reactor
        self._pool: ThreadPool | None = None
        self._trigger: object | None = None
        self._stopping: list[Deferred[None]] | None = None
        #: Touched only in the worker thread.
        self._store: Store | None = None
        self._open_error: StoreError | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Start the worker thread and open the store in it.

        @return: A L{Deferred} that fires when the store is open, or fails
            with L{StoreError}. Calls made before it fires are queued after
            the opening.
        """
        if self._pool is not None:
            raise RuntimeError("AsyncStore is already started")
        pool = ThreadPool(1, 1, name="nps-store")
        pool.start()
        self._pool = pool
        self._stopping = None
        self._trigger = self._reactor.addSystemEventTrigger("during", "shutdown", self._stopAtShutdown)
        return self._run(self._open)

    def _open(self) -> None:
        """
        In the worker: open the store.
        """
        self._store = None
        self._open_error = None
        try:
            self._store = Store(self._data_dir)
        except StoreError as e:
            self._open_error = e
            raise

    def _close(self) -> None:
        """
        In the worker: close the store.
        """
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def stop(self) -> Deferred[None]:
        """
        Close the store and stop the worker thread, after the calls already
        queued. Calling it again (or when not started) is harmless.

        @return: A L{Deferred} that fires when the thread is gone.
        """
        waiter: Deferred[None] = Deferred()
        if self._stopping is not None:
            self._stopping.append(waiter)
            return waiter
        pool = self._pool
        if pool is None:
            return succeed(None)
        self._stopping = [waiter]
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None

        def finish(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure("closing the store failed", result)
            pool.stop()
            self._pool = None
            waiters, self._stopping = self._stopping or [], None
            for w in waiters:
                w.callback(None)

        deferToThreadPool(cast(IReactorFromThreads, self._reactor), pool, self._close).addBoth(finish)
        return waiter

    def _stopAtShutdown(self) -> Deferred[None]:
        """
        The reactor is shutting down: stop, so its thread does not keep the
        process alive.
        """
        self._trigger = None
        return self.stop()

    def startService(self) -> None:
        """
        Start with the service tree; a failure to open is logged and then
        reported by every call.
        """
        super().startService()
        self.start().addErrback(lambda f: self.log.failure("cannot open the store", f))

    def stopService(self) -> Deferred[None]:
        """
        Stop with the service tree.
        """
        super().stopService()
        return self.stop()

    # -- calls --------------------------------------------------------------

    def _run(self, f: Callable[..., _R], *args: object, **kwargs: object) -> Deferred[_R]:
        """
        Run C{f} in the worker thread.
        """
        if self._pool is None or self._stopping is not None:
            return fail(StoreError("the store is not running"))
        return deferToThreadPool(cast(IReactorFromThreads, self._reactor), self._pool, f, *args, **kwargs)

    def _invoke(self, method_name: str, args: tuple[object, ...], kwargs: dict[str, object]) -> object:
        """
        In the worker: call a method of the store.
        """
        if self._store is None:
            if self._open_error is not None:
                raise StoreError(f"the store is not open: {self._open_error}")
            raise StoreError("the store is not open")
        return getattr(self._store, method_name)(*args, **kwargs)

    def call(self, method_name: str, *args: object, **kwargs: object) -> Deferred[Any]:
        """
        Run C{store.<method_name>(*args, **kwargs)} in the worker thread.

        @param method_name: A public method of L{Store} other than C{close}.
        @return: A L{Deferred} firing with the method's result or failing
            with its exception.
        """
        if method_name.startswith("_") or method_name == "close" or not callable(getattr(Store, method_name, None)):
            return fail(AttributeError(f"Store has no public method {method_name!r}"))
        return self._run(self._invoke, method_name, args, kwargs)

    def revision(self) -> Deferred[int]:
        """
        @return: L{Store.revision}, later.
        """
        return self.call("revision")

    def snapshot(self) -> Deferred[Snapshot]:
        """
        @return: L{Store.snapshot}, later.
        """
        return self.call("snapshot")

    def get_client(self, client_id: int) -> Deferred[ClientRecord]:
        """
        @return: L{Store.get_client}, later.
        """
        return self.call("get_client", client_id)

    def get_client_by_vkey(self, vkey: str) -> Deferred[ClientRecord]:
        """
        @return: L{Store.get_client_by_vkey}, later.
        """
        return self.call("get_client_by_vkey", vkey)

    def list_clients(self) -> Deferred[list[ClientRecord]]:
        """
        @return: L{Store.list_clients}, later.
        """
        return self.call("list_clients")

    def list_tunnels(self, client_id: int | None = None) -> Deferred[list[Tunnel]]:
        """
        @return: L{Store.list_tunnels}, later.
        """
        return self.call("list_tunnels", client_id)

    def set_client_online(
        self,
        client_id: int,
        online: bool,
        remote_addr: str = "",
        version: str = "",
        when: float | None = None,
    ) -> Deferred[None]:
        """
        @return: L{Store.set_client_online}, later.
        """
        return self.call("set_client_online", client_id, online, remote_addr, version, when)

    def mark_all_offline(self) -> Deferred[None]:
        """
        @return: L{Store.mark_all_offline}, later.
        """
        return self.call("mark_all_offline")
