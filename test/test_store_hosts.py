"""Hosts, traffic counters and registered addresses in the store (schema v3)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from nps.model import Host
from nps.store import Store, StoreError, normalize_host_pattern


@pytest.fixture
def store(tmp_path: object) -> Iterator[Store]:
    s = Store(str(tmp_path))
    yield s
    s.close()


def test_host_round_trip(store: Store) -> None:
    c = store.add_client("web")
    h = store.add_host(
        c.id, "A.Example.COM", ["8080"], location="static", headers={"X-Foo": "bar"},
        host_change="inner.lan", scheme="http",
    )
    assert h.host == "a.example.com"
    assert h.location == "/static"
    assert h.targets == ("127.0.0.1:8080",)
    assert store.get_host(h.id) == h
    assert store.list_hosts(c.id) == [h]
    assert store.snapshot().hosts == (h,)
    assert Host.from_wire(h.to_wire()) == h


def test_host_route_conflicts(store: Store) -> None:
    c = store.add_client()
    store.add_host(c.id, "a.example.com", ["10.0.0.1:80"], scheme="http")
    with pytest.raises(StoreError, match="already routed"):
        store.add_host(c.id, "a.example.com", ["10.0.0.2:80"])
    # another scheme or location is a different route
    store.add_host(c.id, "a.example.com", ["10.0.0.2:80"], scheme="https")
    store.add_host(c.id, "a.example.com", ["10.0.0.2:80"], location="/api")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"host": "bad host"}, "bad host"),
        ({"host": "a.*.com"}, "bad host"),
        ({"scheme": "ftp"}, "scheme"),
        ({"targets": []}, "at least one target"),
        ({"targets": ["nope"]}, "bad target"),
        ({"headers": {"Bad Name": "x"}}, "bad header"),
        ({"headers": {"X-A": "a\r\nInjected: 1"}}, "bad header"),
        ({"cert_file": "/x.pem"}, "go together"),
        ({"colour": "red"}, "unknown host field"),
    ],
)
def test_bad_hosts_refused(store: Store, fields: dict[str, object], message: str) -> None:
    c = store.add_client()
    args: dict[str, object] = {"host": "a.example.com", "targets": ["10.0.0.1:80"]}
    args.update(fields)
    with pytest.raises(StoreError, match=message):
        store.add_host(c.id, **args)  # type: ignore[arg-type]
    assert store.list_hosts() == []


def test_update_delete_and_cascade(store: Store) -> None:
    c = store.add_client()
    h = store.add_host(c.id, "*.example.com", ["10.0.0.1:80"])
    rev = store.revision()
    h2 = store.update_host(h.id, targets=["10.0.0.1:80", "10.0.0.2:80"])
    assert h2.targets == ("10.0.0.1:80", "10.0.0.2:80")
    assert store.revision() == rev + 1
    store.delete_client(c.id)
    assert store.list_hosts() == []
    with pytest.raises(StoreError, match="no host"):
        store.delete_host(h.id)


def test_normalize_host_pattern() -> None:
    assert normalize_host_pattern("*.Example.com.") == "*.example.com"
    with pytest.raises(ValueError):
        normalize_host_pattern("*")


def test_traffic_counters_add_up(store: Store) -> None:
    rev = store.revision()
    store.add_traffic([("client", 1, 10, 20), ("tunnel", 3, 1, 2)])
    store.add_traffic([("client", 1, 5, 5)])
    assert store.traffic("client") == {1: (15, 25)}
    assert store.traffic("tunnel") == {3: (1, 2)}
    store.reset_traffic("client", 1)
    assert store.traffic("client") == {}
    assert store.revision() == rev


def test_registered_ips_expire(store: Store) -> None:
    store.register_ip("127.0.0.2", expires=200.0)
    store.register_ip("::1", expires=50.0)
    assert store.registered_ips(now=100.0) == {"127.0.0.2": 200.0}
    with pytest.raises(StoreError):
        store.register_ip("not-an-ip", expires=1.0)
