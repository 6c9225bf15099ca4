"""The gateway's routing table: which route takes a request, compiled once.

A request is matched in host order: routes naming its exact host, then
routes with a ``*.`` wildcard its name ends with (the longest suffix first),
then routes for any host. Within one host group the path decides: an exact
``path``, then ``path_prefix`` (the longest first, by whole segments), then
``path_regex``, then routes without a path condition. Routes tied on all of
that are tried with the most method, header and query conditions first, then
in file order; the first whose conditions all hold wins.

Each step is a dict lookup: hosts by name and by suffix, exact paths by
path, prefixes by walking the path's own segment boundaries from the
longest configured depth down. Only regex routes are tried one by one (those
of the request's host groups), so 10,000 routes cost about what 10 do
(benchmarks/bench_gateway.py, ``route_match``). When no route has a method,
header or query condition, host and path alone decide: the routes of the
last few thousand (host, path) pairs are remembered.
"""

from __future__ import annotations

import bisect
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from sidecar.gateway.config import Backend, RouteConfig
from sidecar.gateway.request import Headers, LocalResponse

__all__ = ["Match", "Router", "not_found", "redirect_location", "redirect_response", "rewrite_path"]

#: The most query fields read to match ``query`` conditions.
MAX_QUERY_FIELDS = 256
#: The most (host, path) pairs whose route is remembered, and the longest path.
MAX_KNOWN = 4096
MAX_KNOWN_PATH = 256
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class Match:
    """The route a request matched, and the backend chosen for it (by weight for a
    split; None for a redirect)."""

    route: RouteConfig
    backend: Backend | None

    @property
    def name(self) -> str:
        return self.route.name


class _Route:
    """One route, compiled: what the conditions beyond host and path need."""

    __slots__ = (
        "backends",
        "config",
        "cumulative",
        "headers",
        "index",
        "methods",
        "query",
        "regex",
        "unconditional",
    )

    def __init__(self, config: RouteConfig, index: int) -> None:
        self.config = config
        self.index = index
        match = config.match
        self.methods = frozenset(match.methods) if match.methods else None
        self.headers = tuple(match.headers.items())
        self.query = tuple(match.query.items())
        self.regex = match.path_regex
        #: no method, header or query condition: every request on its host and path
        self.unconditional = self.methods is None and not self.headers and not self.query
        self.backends = config.backends
        self.cumulative: list[int] = []
        total = 0
        for backend in self.backends:
            total += backend.weight
            self.cumulative.append(total)

    @property
    def rank(self) -> tuple[int, int]:
        """Sort key within one path key: more conditions first, then file order."""
        return (-self.config.match.conditions, self.index)

    def accepts(self, method: str, headers: Headers, query: _Query) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        for name, value in self.headers:
            if value not in headers.get_all(name):
                return False
        if self.query:
            fields = query.fields()
            for name, value in self.query:
                if value not in fields.get(name, ()):
                    return False
        return True


class _Query:
    """The request's query, parsed only when a route has query conditions."""

    __slots__ = ("_fields", "raw")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self._fields: dict[str, list[str]] | None = None

    def fields(self) -> dict[str, list[str]]:
        if self._fields is None:
            self._fields = {}
            pairs = parse_qsl(self.raw, keep_blank_values=True)[:MAX_QUERY_FIELDS]
            for name, value in pairs:
                self._fields.setdefault(name, []).append(value)
        return self._fields


class _Table:
    """The routes of one host group, by path condition."""

    __slots__ = ("depth", "exact", "prefix", "regex", "rest")

    def __init__(self) -> None:
        self.exact: dict[str, list[_Route]] = {}
        # path_prefix without its trailing "/" -> routes
        self.prefix: dict[str, list[_Route]] = {}
        self.regex: list[_Route] = []
        # no path condition, or path_prefix "/"
        self.rest: list[_Route] = []
        # the most segments of a prefix: deeper parts of a path are never looked up
        self.depth = 0

    def add(self, route: _Route) -> None:
        match = route.config.match
        if match.path is not None:
            self.exact.setdefault(match.path, []).append(route)
        elif match.path_regex is not None:
            self.regex.append(route)
        elif match.path_prefix is not None and match.path_prefix != "/":
            self.prefix.setdefault(match.path_prefix, []).append(route)
            self.depth = max(self.depth, match.path_prefix.count("/"))
        else:
            self.rest.append(route)

    def seal(self) -> None:
        for routes in (*self.exact.values(), *self.prefix.values(), self.regex, self.rest):
            routes.sort(key=lambda r: r.rank)

    def find(self, path: str, method: str, headers: Headers, query: _Query) -> _Route | None:
        routes = self.exact.get(path)
        if routes:
            for route in routes:
                if route.unconditional or route.accepts(method, headers, query):
                    return route
        if self.prefix:
            found = self._prefix(path, method, headers, query)
            if found is not None:
                return found
        for route in self.regex:
            regex = route.regex
            if (
                regex is not None
                and regex.fullmatch(path)
                and (route.unconditional or route.accepts(method, headers, query))
            ):
                return route
        for route in self.rest:
            if route.unconditional or route.accepts(method, headers, query):
                return route
        return None

    def _prefix(self, path: str, method: str, headers: Headers, query: _Query) -> _Route | None:
        # The longest candidate is the path cut before its (depth + 1)th "/" (or the
        # whole path); then each shorter one at a "/" down to the first segment.
        end = 0
        for _ in range(self.depth):
            end = path.find("/", end + 1)
            if end < 0:
                end = len(path)
                break
        prefixes = self.prefix
        while end > 0:
            routes = prefixes.get(path[:end])
            if routes:
                for route in routes:
                    if route.unconditional or route.accepts(method, headers, query):
                        return route
            end = path.rfind("/", 0, end)
        return None


class Router:
    """The routes of one configuration, compiled once; :meth:`match` per request.

    ``random`` picks among a split's backends (a float in [0, 1)); tests pass
    their own to make the choice deterministic.
    """

    __slots__ = (
        "_any",
        "_exact",
        "_known",
        "_known_count",
        "_random",
        "_routes",
        "_suffix_len",
        "_wildcard",
    )

    def __init__(
        self, routes: Sequence[RouteConfig], *, random: Callable[[], float] = _random.random
    ) -> None:
        self._routes = tuple(routes)
        self._random = random
        self._exact: dict[str, _Table] = {}
        self._wildcard: dict[str, _Table] = {}  # ".example.com" -> table
        self._any = _Table()
        unconditional = True
        for index, config in enumerate(self._routes):
            route = _Route(config, index)
            unconditional = unconditional and route.unconditional
            hosts = config.match.hosts
            if not hosts:
                self._any.add(route)
            for host in hosts:
                if host.startswith("*."):
                    self._wildcard.setdefault(host[1:], _Table()).add(route)
                else:
                    self._exact.setdefault(host, _Table()).add(route)
        for table in (*self._exact.values(), *self._wildcard.values(), self._any):
            table.seal()
        self._suffix_len = max((len(s) for s in self._wildcard), default=0)
        #: when no route has a method, header or query condition, the route is a
        #: function of host and path: the routes found lately, by host then path
        self._known: dict[str, dict[str, _Route | None]] | None = None
        self._known_count = 0
        if unconditional:
            self._known = {}

    @property
    def routes(self) -> tuple[RouteConfig, ...]:
        return self._routes

    def __len__(self) -> int:
        return len(self._routes)

    def match(
        self, host: str, path: str, method: str, headers: Headers, query: str = ""
    ) -> Match | None:
        """The route for a request (host in lower case, without its port; the raw
        path and query), with the backend chosen; None when no route takes it."""
        route = self._find(host, path, method, headers, query)
        if route is None:
            return None
        return Match(route.config, self._choose(route))

    def match_index(
        self, host: str, path: str, method: str, headers: Headers, query: str = ""
    ) -> tuple[int, int] | None:
        """What :meth:`match` finds, as positions: the route's in the
        configuration and its chosen backend's in ``backends`` (0 for a route
        without backends); for a caller that keeps its own state per route."""
        route = self._find(host, path, method, headers, query)
        if route is None:
            return None
        backends = route.backends
        if len(backends) <= 1:
            return route.index, 0
        return route.index, self._choose_index(route)

    def _find(
        self, host: str, path: str, method: str, headers: Headers, query: str
    ) -> _Route | None:
        known = self._known
        if known is None or len(path) > MAX_KNOWN_PATH:
            return self._search(host, path, method, headers, query)
        paths = known.get(host)
        if paths is not None:
            route = paths.get(path, _UNKNOWN)
            if route is not _UNKNOWN:
                return route  # type: ignore[return-value]
        route = self._search(host, path, method, headers, query)
        if self._known_count >= MAX_KNOWN:
            known.clear()
            self._known_count = 0
        if paths is None:
            paths = known[host] = {}
        paths[path] = route
        self._known_count += 1
        return route

    def _search(
        self, host: str, path: str, method: str, headers: Headers, query: str
    ) -> _Route | None:
        if host.endswith("."):
            host = host[:-1]
        parsed = _Query(query)
        route: _Route | None = None
        table = self._exact.get(host)
        if table is not None:
            route = table.find(path, method, headers, parsed)
        if route is None and self._wildcard:
            # Suffixes longer than the longest wildcard's are never looked up.
            dot = host.find(".", max(1, len(host) - self._suffix_len))
            while route is None and dot > 0:
                table = self._wildcard.get(host[dot:])
                if table is not None:
                    route = table.find(path, method, headers, parsed)
                dot = host.find(".", dot + 1)
        if route is None:
            route = self._any.find(path, method, headers, parsed)
        return route

    def _choose(self, route: _Route) -> Backend | None:
        backends = route.backends
        if len(backends) <= 1:
            return backends[0] if backends else None
        return backends[self._choose_index(route)]

    def _choose_index(self, route: _Route) -> int:
        point = self._random() * route.cumulative[-1]
        return min(bisect.bisect_right(route.cumulative, point), len(route.backends) - 1)


def rewrite_path(route: RouteConfig, path: str) -> str:
    """The path to send upstream (or to redirect to) after the route's ``rewrite``."""
    rewrite = route.rewrite
    if rewrite is None:
        return path
    prefix = rewrite.strip_prefix
    if prefix is not None:
        if path == prefix:
            return "/"
        if path.startswith(prefix) and path[len(prefix)] == "/":
            return path[len(prefix) :]
        return path
    if rewrite.path_regex is None or rewrite.replacement is None:  # pragma: no cover - validated
        return path
    new = rewrite.path_regex.sub(rewrite.replacement, path, count=1)
    return new if new.startswith("/") else "/" + new


def redirect_location(route: RouteConfig, scheme: str, host: str, path: str, query: str) -> str:
    """Where a redirect route sends a request: its ``location``, or the request's URL
    with the route's scheme, host, port and path (the request's path after
    ``rewrite`` when it gives none). Only a path given: a relative location, so
    the client keeps the host and port it used."""
    redirect = route.redirect
    if redirect is None:
        raise ValueError(f"route {route.name!r} is not a redirect")
    if redirect.location is not None:
        return redirect.location
    target = redirect.path if redirect.path is not None else rewrite_path(route, path)
    target = quote(target, safe="/%:@!$&'()*+,;=-._~")
    if redirect.keep_query and query:
        target = f"{target}?{query}"
    if redirect.scheme is None and redirect.host is None and redirect.port is None:
        return target
    authority = redirect.host or host
    if redirect.port is not None:
        authority = f"{authority}:{redirect.port}"
    return f"{redirect.scheme or scheme}://{authority}{target}"


def redirect_response(
    route: RouteConfig, scheme: str, host: str, path: str, query: str
) -> LocalResponse:
    """The answer of a redirect route: its status, ``location`` and no body."""
    assert route.redirect is not None, "not a redirect route"
    location = redirect_location(route, scheme, host, path, query)
    return LocalResponse(route.redirect.status, (("location", location),), b"")


_NOT_FOUND = LocalResponse.error(404, "no_route", "no route matches this request")


def not_found() -> LocalResponse:
    """The answer when no route takes a request: 404 with a JSON body."""
    return _NOT_FOUND
