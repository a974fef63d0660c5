# -*- test-case-name: test.test_vhost_registry -*-
"""The domain route table (nps.vhost.registry): matching, round robin, health."""
from __future__ import annotations

import pytest

from nps.model import Host
from nps.vhost.registry import Registry, normalize_name


def host(id: int, name: str, location: str = "/", scheme: str = "all", targets: tuple[str, ...] = ("t:1",),
         client_id: int = 1, **kw: object) -> Host:
    return Host(id=id, client_id=client_id, host=name, location=location, scheme=scheme, targets=targets,
                **kw)  # type: ignore[arg-type]


def test_normalize_name() -> None:
    """Host headers and SNI lose case, port, trailing dot and IPv6 brackets."""
    assert normalize_name("A.Example.COM:8080") == "a.example.com"
    assert normalize_name("a.example.com.") == "a.example.com"
    assert normalize_name("[::1]:80") == "::1"
    assert normalize_name("") == ""


def test_exact_wildcard_and_suffix() -> None:
    """Exact names win over wildcards; a wildcard matches only names ending in its suffix."""
    r = Registry()
    r.add(host(1, "a.example.com"))
    r.add(host(2, "*.example.com"))
    r.add(host(3, "*.b.example.com"))
    assert r.lookup("a.example.com", "/", "http").id == 1  # type: ignore[union-attr]
    assert r.lookup("x.example.com", "/", "http").id == 2  # type: ignore[union-attr]
    assert r.lookup("x.b.example.com", "/", "http").id == 3  # type: ignore[union-attr]
    assert r.lookup("deep.x.example.com", "/", "https").id == 2  # type: ignore[union-attr]
    for name in ("example.com", "a.example.com.evil.net", "evilexample.com", "xexample.com", ""):
        assert r.lookup(name, "/", "http") is None, name


def test_longest_location_and_scheme() -> None:
    """The longest matching location wins; schemes restrict which listener answers."""
    r = Registry()
    r.add(host(1, "a.com"))
    r.add(host(2, "a.com", "/static"))
    r.add(host(3, "a.com", "/static/img", scheme="https"))
    assert r.lookup("a.com", "/static/img/x.png", "http").id == 2  # type: ignore[union-attr]
    assert r.lookup("a.com", "/static/img/x.png", "https").id == 3  # type: ignore[union-attr]
    assert r.lookup("a.com", "/other", "https").id == 1  # type: ignore[union-attr]
    assert r.lookup_name("a.com", "https").id == 1  # type: ignore[union-attr]


def test_conflicts() -> None:
    """The same name and location may be routed once per scheme (all overlaps both)."""
    r = Registry()
    r.add(host(1, "a.com", scheme="http"))
    r.add(host(2, "a.com", scheme="https"))
    with pytest.raises(ValueError, match="already routed"):
        r.add(host(3, "A.com", scheme="all"))
    r.add(host(4, "a.com", "/x"))
    r.remove(1)
    r.add(host(5, "a.com", scheme="http"))


def test_round_robin_and_health() -> None:
    """Targets rotate; a target reported down by its client is skipped until reported up."""
    r = Registry()
    route = r.add(host(1, "a.com", targets=("t:1", "t:2", "t:3")))
    assert [r.next_target(route) for _ in range(6)] == ["t:1", "t:2", "t:3"] * 2
    assert r.set_health(1, "t:2", False) == 1
    assert r.set_health(2, "t:3", False) == 0  # another client's report changes nothing here
    assert [r.next_target(route) for _ in range(4)] == ["t:1", "t:3", "t:1", "t:3"]
    r.set_health(1, "t:1", False)
    r.set_health(1, "t:3", False)
    assert r.next_target(route) is None
    r.set_health(1, "t:2", True)
    assert r.next_target(route) == "t:2"
    r.clear_health(1)
    assert {r.next_target(route) for _ in range(3)} == {"t:1", "t:2", "t:3"}


def test_sync_keeps_unchanged_routes() -> None:
    """Syncing stored hosts keeps unchanged routes (and their rotation), replaces changed ones,
    leaves config-file (negative id) routes alone, and reports conflicts."""
    r = Registry()
    r.add(host(-1, "cfg.com"))
    assert r.sync([host(1, "A.com", targets=("t:1", "t:2")), host(2, "b.com")]) == []
    first = r.get(1)
    assert first is not None and first.host.host == "a.com"
    r.next_target(first)
    errors = r.sync([host(1, "a.com", targets=("t:1", "t:2")), host(3, "cfg.com")])
    assert r.get(1) is first and r.get(2) is None and r.get(-1) is not None
    assert [h.id for h, _ in errors] == [3]


def test_lookup_any_path() -> None:
    """A name has one route for every path only when its first matching bucket holds a lone '/' route."""
    registry = Registry()
    registry.add(Host(id=1, client_id=1, host="a.com", targets=("t:1",)))
    registry.add(Host(id=2, client_id=1, host="*.b.com", targets=("t:2",)))
    registry.add(Host(id=3, client_id=1, host="x.b.com", location="/api", targets=("t:3",)))
    assert registry.lookup_any_path("A.com:80", "http") is registry.get(1)
    assert registry.lookup_any_path("y.b.com", "http") is registry.get(2)
    assert registry.lookup_any_path("x.b.com", "http") is None  # /api there, *.b.com elsewhere
    assert registry.lookup_any_path("c.com", "http") is None
    generation = registry.generation
    registry.add(Host(id=4, client_id=1, host="a.com", location="/s", targets=("t:4",)))
    assert registry.lookup_any_path("a.com", "http") is None and registry.generation > generation
