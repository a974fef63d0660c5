# -*- test-case-name: test.test_vhost_registry -*-
"""
The domain route table, with no I/O: which L{Host} answers a request for a
name, a path and a scheme; round robin over its targets; targets taken out
of rotation by health reports.

Matching: routes for exactly the requested name come first, then wildcard
routes from the most specific suffix (C{*.a.example.com} before
C{*.example.com}).  Among the routes for one name the longest C{location}
prefix of the path wins.  A wildcard C{*.example.com} matches names that
end in C{.example.com} and nothing else (NPS matched any name containing
the suffix, e.g. C{a.example.com.evil.net}).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import attrs

from nps.model import Host
from nps.store import normalize_host_pattern

__all__ = ["Route", "Registry", "normalize_name", "schemes_overlap"]

#: Labels checked for wildcard matches (DNS names have at most 127).
MAX_LABELS = 127


def normalize_name(value: str) -> str:
    """
    A requested name (Host header or SNI) as the table keys it: lower case,
    no port, no trailing dot, IPv6 literals without brackets.
    """
    name = value.strip().lower()
    if name.startswith("["):
        end = name.find("]")
        name = name[1:end] if end > 0 else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return name.rstrip(".")


def schemes_overlap(a: str, b: str) -> bool:
    return a == "all" or b == "all" or a == b


@attrs.define(eq=False)
class Route:
    """A L{Host} in the table, with its round-robin position."""

    host: Host
    _next: int = 0

    @property
    def id(self) -> int:
        return self.host.id

    def next_target(self, down: set[str] | frozenset[str] = frozenset()) -> str | None:
        """
        The next target in turn that is not in C{down}; None if all are down.
        """
        targets = self.host.targets
        count = len(targets)
        for _ in range(count):
            target = targets[self._next % count]
            self._next = (self._next + 1) % count
            if target not in down:
                return target
        return None


class Registry:
    """All routes the vhost listeners know, keyed by host id."""

    def __init__(self) -> None:
        self._routes: dict[int, Route] = {}
        self._exact: dict[str, list[Route]] = {}
        self._wild: dict[str, list[Route]] = {}
        #: Targets reported down, per client id.
        self._down: dict[int, set[str]] = {}
        #: Changes with every route added or removed (callers cache lookups by it).
        self.generation = 0

    def __len__(self) -> int:
        return len(self._routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def get(self, host_id: int) -> Route | None:
        return self._routes.get(host_id)

    # -- changes ---------------------------------------------------------------

    def conflict(self, host: Host) -> Route | None:
        """An enabled route already answering C{host}'s name, location and scheme."""
        pattern = normalize_host_pattern(host.host)
        for route in self._bucket(pattern):
            other = route.host
            if other.id != host.id and other.location == host.location and \
                    schemes_overlap(other.scheme, host.scheme):
                return route
        return None

    def add(self, host: Host) -> Route:
        """
        Route C{host} (replacing a route with the same id).

        @raise ValueError: if its name is bad, it has no target, or another
            route already answers its name, location and scheme.
        """
        pattern = normalize_host_pattern(host.host)
        if not host.targets:
            raise ValueError(f"host {host.host}: no target_addr")
        if not host.location.startswith("/"):
            raise ValueError(f"host {host.host}: location must start with '/'")
        other = self.conflict(host)
        if other is not None:
            raise ValueError(f"host {pattern}{host.location} ({host.scheme}) is already routed "
                             f"(host {other.id} of client {other.host.client_id})")
        self.remove(host.id)
        route = Route(attrs.evolve(host, host=pattern))
        self._routes[host.id] = route
        self.generation += 1
        self._bucket(pattern, create=True).append(route)
        return route

    def remove(self, host_id: int) -> Route | None:
        route = self._routes.pop(host_id, None)
        if route is None:
            return None
        self.generation += 1
        pattern = route.host.host
        table, key = self._table(pattern)
        bucket = table.get(key, [])
        if route in bucket:
            bucket.remove(route)
        if not bucket:
            table.pop(key, None)
        return route

    def sync(self, hosts: Iterable[Host]) -> list[tuple[Host, str]]:
        """
        Make the stored routes (positive ids) exactly C{hosts}; routes whose
        record did not change keep their round-robin position.

        @return: (host, error) for each host that could not be routed.
        """
        wanted = {h.id: h for h in hosts}
        for host_id in [i for i in self._routes if i > 0]:
            new = wanted.get(host_id)
            if new is None or _normal(new) != self._routes[host_id].host:
                self.remove(host_id)
        errors = []
        for host_id, host in wanted.items():
            if host_id in self._routes:
                continue
            try:
                self.add(host)
            except ValueError as e:
                errors.append((host, str(e)))
        return errors

    # -- health ------------------------------------------------------------------

    def set_health(self, client_id: int, target: str, up: bool) -> int:
        """
        Record a health report of C{client_id}'s C{target}.

        @return: how many of the client's routes use that target.
        """
        down = self._down.setdefault(client_id, set())
        if up:
            down.discard(target)
        else:
            down.add(target)
        if not down:
            self._down.pop(client_id, None)
        return sum(1 for r in self._routes.values() if r.host.client_id == client_id and target in r.host.targets)

    def clear_health(self, client_id: int) -> None:
        self._down.pop(client_id, None)

    def down_targets(self, client_id: int) -> frozenset[str]:
        return frozenset(self._down.get(client_id, ()))

    def usable(self, route: Route, target: str) -> bool:
        """Whether C{target} is one of the route's targets and not reported down."""
        return target in route.host.targets and target not in self._down.get(route.host.client_id, ())

    def next_target(self, route: Route) -> str | None:
        """The route's next healthy target (None: every target is down)."""
        return route.next_target(self._down.get(route.host.client_id, frozenset()))

    # -- lookups -------------------------------------------------------------------

    def lookup(self, name: str, path: str, scheme: str) -> Route | None:
        """
        The route for a request.

        @param name: the Host header or SNI (any case, port allowed).
        @param path: the request path (C{/} for TLS pass-through).
        @param scheme: C{"http"} or C{"https"}.
        """
        for bucket in self._candidates(normalize_name(name)):
            best: Route | None = None
            for route in bucket:
                host = route.host
                if not host.enabled or host.scheme not in ("all", scheme):
                    continue
                if path.startswith(host.location) and (best is None or
                                                       len(host.location) > len(best.host.location)):
                    best = route
            if best is not None:
                return best
        return None

    def lookup_any_path(self, name: str, scheme: str) -> Route | None:
        """
        The route that L{lookup} gives for C{name} whatever the path, if there
        is one such (the usual single C{location=/} site), else None.
        """
        for bucket in self._candidates(normalize_name(name)):
            routes = [r for r in bucket if r.host.enabled and r.host.scheme in ("all", scheme)]
            if routes:
                return routes[0] if len(routes) == 1 and routes[0].host.location == "/" else None
        return None

    def lookup_name(self, name: str, scheme: str) -> Route | None:
        """
        The route for a name alone (TLS pass-through, where no path is seen):
        the one with the shortest location among the most specific name's routes.
        """
        for bucket in self._candidates(normalize_name(name)):
            routes = [r for r in bucket if r.host.enabled and r.host.scheme in ("all", scheme)]
            if routes:
                return min(routes, key=lambda r: len(r.host.location))
        return None

    def _candidates(self, name: str) -> Iterator[list[Route]]:
        if not name:
            return
        exact = self._exact.get(name)
        if exact:
            yield exact
        labels = name.split(".")
        for i in range(1, min(len(labels), MAX_LABELS)):
            bucket = self._wild.get("." + ".".join(labels[i:]))
            if bucket:
                yield bucket

    def _table(self, pattern: str) -> tuple[dict[str, list[Route]], str]:
        if pattern.startswith("*."):
            return self._wild, pattern[1:]
        return self._exact, pattern

    def _bucket(self, pattern: str, create: bool = False) -> list[Route]:
        table, key = self._table(pattern)
        if create:
            return table.setdefault(key, [])
        return table.get(key, [])


def _normal(host: Host) -> Host:
    """C{host} with its name as the table keeps it (lower case)."""
    try:
        return attrs.evolve(host, host=normalize_host_pattern(host.host))
    except ValueError:
        return host
