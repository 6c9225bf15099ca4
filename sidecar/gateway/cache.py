"""The gateway's response cache: RFC 9111 as a shared cache, with coalescing, LRU and purge.

The server asks it once per request, before going upstream::

    async with cache.lookup(request, route_cache, wait=route.timeout) as slot:
        if slot.hit is not None:        # a fresh stored response: send it
            ...
        elif slot.refusal is not None:  # only-if-cached and nothing fresh: 504
            ...
        else:                           # go upstream; x-cache is slot.x_cache
            collect = slot.begin(status, headers)   # False: do not collect
            for chunk in body: slot.feed(chunk)     # while streaming it out
            slot.finish()

Concurrent misses for one resource wait for the first one (the leader)
instead of each going upstream: when the leader stores its response, they
are served that entry; when it turns out not storable (``begin`` returns
False, the body grows past ``max_entry_bytes``, the leader fails or the
slot is left without ``finish``), they are released at once and each goes
upstream on its own — a response the cache may not store is never shared
between clients. The wait is bounded by ``wait`` (the route's timeout);
past it a waiter goes upstream too. After a response that could not be
stored, misses for that resource go side by side for :data:`SOLO_SECONDS`
rather than queue behind responses they may not share.

What is stored and for how long is RFC 9111's rule for a shared cache,
narrowed as docs/gateway.md ("Caching") lists: no ``no-store``, no
``private``, no unqualified ``no-cache`` (the cache does not revalidate), no
``Set-Cookie``, no ``Vary: *``; credentialed requests only with
``cache_authorized`` and per consumer. Everything here is synchronous
dictionary work on the event loop but the waiting; no sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any, Self

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from sidecar.gateway._freshness import (
    Directives,
    VaryValues,
    corrected_initial_age,
    delta_seconds,
    freshness_lifetime,
    http_date,
    parse_cache_control,
    storable_directives,
    stored_fields,
    vary_names,
    vary_values,
)
from sidecar.gateway.request import GatewayRequest, LocalResponse, header_lines
from sidecar.health import Duration

__all__ = [
    "CacheConfig",
    "CacheSlot",
    "CacheStats",
    "CacheStoreConfig",
    "CachedResponse",
    "ResponseCache",
]

MiB = 1024 * 1024
#: RFC 9110 §15.1: the statuses a cache may give a heuristic lifetime.
HEURISTIC_STATUSES = (200, 203, 204, 300, 301, 404, 405, 410, 414, 501)
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
#: After a response that cannot be stored, misses for that resource stop waiting for each
#: other this long (they would only queue up behind a response they may not share).
SOLO_SECONDS = 30.0
_MAX_SOLO = 4096
# What an entry costs beside its body and fields: the objects, the key, the LRU links.
_ENTRY_OVERHEAD = 256
_FIELD_OVERHEAD = 48


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CacheConfig(_Model):
    """A route's ``plugins.cache``: what of its responses is stored, and for how long."""

    #: the lifetime of a response that says nothing about its freshness; 0: only what it says
    ttl: Annotated[Duration, Field(ge=0.0, le=365 * 86400.0)] = 30.0
    methods: tuple[str, ...] = ("GET", "HEAD")
    statuses: tuple[int, ...] = HEURISTIC_STATUSES
    #: store responses to credentialed requests (Authorization, or a consumer), per consumer
    cache_authorized: bool = False
    #: the largest entry of this route (body and fields); None: the store's ``max_entry_bytes``
    max_entry_bytes: ByteSize | None = None
    #: how many variants (``Vary``) of one resource are kept; the least recently used goes
    vary_limit: Annotated[int, Field(ge=1, le=1024)] = 16

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            methods = tuple(str(m).upper() for m in value)
            wrong = sorted(set(methods) - _CACHEABLE_METHODS)
            if wrong:
                raise ValueError(f"only GET and HEAD responses are cached, not {', '.join(wrong)}")
            return methods
        return value

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        for status in value:
            if not 200 <= status <= 599 or status in (206, 304):
                raise ValueError(
                    f"{status} cannot be cached: a final status from 200 to 599, "
                    "other than 206 and 304"
                )
        return value

    @field_validator("max_entry_bytes")
    @classmethod
    def _entry_bytes(cls, value: ByteSize | None) -> ByteSize | None:
        if value is not None and value < 1:
            raise ValueError("max_entry_bytes must be at least 1 byte")
        return value


class CacheStoreConfig(_Model):
    """The top-level ``cache``: the memory every route's entries share."""

    #: the bound on all entries together (bodies and fields); the least recently used go
    max_bytes: ByteSize = ByteSize(64 * MiB)
    #: the largest entry of any route; larger responses are passed on, not stored
    max_entry_bytes: ByteSize = ByteSize(1 * MiB)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.max_bytes < 64 * 1024:
            raise ValueError("max_bytes must be at least 64KiB")
        if self.max_bytes > 1024**4:
            raise ValueError("max_bytes must be at most 1TiB")
        if not 1 <= self.max_entry_bytes <= self.max_bytes:
            raise ValueError("max_entry_bytes must be at least 1 byte and at most max_bytes")
        return self


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored response as sent: ``headers`` carry ``content-length``, ``age`` and ``x-cache``."""

    status: int
    headers: tuple[tuple[str, str], ...]
    #: empty for HEAD (``content-length`` still says the GET body's length)
    body: bytes
    #: the ``Age`` sent, in seconds
    age: int
    #: ``headers`` as the answer's head has them (``LocalResponse.lines``)
    lines: bytes | None = None
    #: the answer to send for it (None: made from the fields above)
    response: LocalResponse | None = None


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since start (``hits`` … ``coalesced``) and the size now (``entries``, ``bytes``)."""

    hits: int = 0
    misses: int = 0
    #: requests the cache did not consult (method, credentials, no-cache)
    bypasses: int = 0
    stores: int = 0
    evictions: int = 0
    purged: int = 0
    #: requests that waited for another request's response instead of going upstream first
    coalesced: int = 0
    entries: int = 0
    bytes: int = 0


# route, host, path, query: what a purge or an unsafe method reaches.
_Uri = tuple[str, str, str, str]
# method (GET or HEAD), consumer ("" when not keyed by one).
_Sub = tuple[str, str]


@dataclass(slots=True, eq=False)
class _Entry:
    uri: _Uri
    sub: _Sub
    vary: VaryValues
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    size: int
    response_time: float
    initial_age: float
    lifetime: float
    #: when it was last stored or served, in the cache's own ticks (which variant is LRU)
    used: int = 0
    #: ``headers`` as an answer's head has them, written once (``LocalResponse.lines``)
    lines: bytes = b""
    #: what it was last served as to a GET: served again while its Age is the same
    served: CachedResponse | None = None


@dataclass(slots=True, eq=False)
class _Resource:
    """The stored variants of one resource; they share the ``Vary`` of the latest response."""

    vary_names: tuple[str, ...]
    variants: dict[VaryValues, _Entry] = field(default_factory=dict)


#: the request's fields the cache reads: credentials, and what the client says of caching
_REQUEST_FIELDS = ("authorization", "cache-control", "pragma")


class ResponseCache:
    """The entries, their LRU order, the requests in flight, and the counters."""

    def __init__(self, config: CacheStoreConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._uris: dict[_Uri, dict[_Sub, _Resource]] = {}
        self._lru: OrderedDict[int, _Entry] = OrderedDict()
        self._flights: dict[tuple[_Uri, _Sub], asyncio.Future[_Entry | None]] = {}
        # Resources whose last response could not be stored → until when misses go alone.
        self._solo: OrderedDict[tuple[_Uri, _Sub], float] = OrderedDict()
        self._bytes = 0
        self._tick = 0
        # Bumped by every purge: a response fetched across one is not stored.
        self._epoch = 0
        self._hits = self._misses = self._bypasses = self._stores = 0
        self._evictions = self._purged = self._coalesced = 0

    def lookup(self, request: GatewayRequest, config: CacheConfig, *, wait: float) -> CacheSlot:
        """The slot for ``request`` on a route cached with ``config``; enter it with ``async with``.

        ``wait`` bounds how long a miss waits for a concurrent request's
        response to the same resource (the route's timeout).
        """
        return CacheSlot(self, request, config, wait)

    def hit(self, request: GatewayRequest, config: CacheConfig) -> CachedResponse | None:
        """The stored response for the most common request, served at once: a GET
        the route caches, without credentials or caching directives, whose entry
        is fresh. None: anything else, for which :meth:`lookup` decides (what it
        would decide for this one too; this only skips making a slot)."""
        if (
            request.method != "GET"
            or request.consumer is not None
            or "GET" not in config.methods
            or request.headers.has_any(_REQUEST_FIELDS)
        ):
            return None
        now = self._clock()
        uri = (request.route, request.host, request.path, request.query)
        entry = self._find(uri, ("GET", ""), request, now)
        if entry is None:
            return None
        self._hits += 1
        return self._serve(entry, False, now)

    def purge(self, route: str, path: str | None = None) -> int:
        """Drops the entries of ``route`` (of ``path`` on it: any query, any variant); the count."""
        self._epoch += 1
        uris = [u for u in self._uris if u[0] == route and (path is None or u[2] == path)]
        count = sum(self._drop_uri(uri) for uri in uris)
        self._purged += count
        return count

    def invalidate(self, request: GatewayRequest, status: int) -> int:
        """RFC 9111 §4.4: an unsafe request answered 2xx/3xx drops its target's entries."""
        if request.method in ("GET", "HEAD", "OPTIONS", "TRACE") or not 200 <= status < 400:
            return 0
        self._epoch += 1
        return self._drop_uri((request.route, request.host, request.path, request.query))

    def clear(self) -> None:
        """Drops every entry (requests in flight are not stored)."""
        self._epoch += 1
        self._uris.clear()
        self._lru.clear()
        self._bytes = 0

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            bypasses=self._bypasses,
            stores=self._stores,
            evictions=self._evictions,
            purged=self._purged,
            coalesced=self._coalesced,
            entries=len(self._lru),
            bytes=self._bytes,
        )

    # -- inside ---------------------------------------------------------------------------

    def _find(self, uri: _Uri, sub: _Sub, request: GatewayRequest, now: float) -> _Entry | None:
        """The stored variant matching ``request``; an expired one is dropped here."""
        subs = self._uris.get(uri)
        if subs is None:
            return None
        resource = subs.get(sub)
        if resource is None:
            return None
        entry = resource.variants.get(vary_values(request.headers, resource.vary_names))
        if entry is None:
            return None
        if _age(entry, now) >= entry.lifetime:
            self._remove(entry)
            return None
        return entry

    def _serve(self, entry: _Entry, head_only: bool, now: float) -> CachedResponse:
        self._lru.move_to_end(id(entry))
        self._tick += 1
        entry.used = self._tick
        age = int(_age(entry, now))
        served = entry.served
        if served is not None and served.age == age and not head_only:
            return served  # (the same response as the last hit's: it is immutable)
        headers = (*entry.headers, ("age", str(age)), ("x-cache", "HIT"))
        if head_only:
            return CachedResponse(entry.status, headers, b"", age)
        lines = b"%sage: %d\r\nx-cache: HIT\r\n" % (entry.lines, age)
        response = LocalResponse(entry.status, headers, entry.body, lines)
        served = entry.served = CachedResponse(
            entry.status, headers, entry.body, age, lines, response
        )
        return served

    def _add(self, entry: _Entry, names: tuple[str, ...], vary_limit: int) -> bool:
        if entry.size > self.config.max_bytes:
            return False
        subs = self._uris.setdefault(entry.uri, {})
        resource = subs.get(entry.sub)
        if resource is not None and resource.vary_names != names:
            # The resource now varies on other fields: its old variants cannot be matched.
            for variant in list(resource.variants.values()):
                self._remove(variant)
            resource = None
        if resource is None:
            resource = _Resource(names)
        old = resource.variants.get(entry.vary)
        if old is not None:
            self._remove(old)
        while len(resource.variants) >= vary_limit:
            self._remove(min(resource.variants.values(), key=lambda e: e.used))
            self._evictions += 1
        # _remove drops a resource or uri it empties: (re)attach them.
        self._uris.setdefault(entry.uri, subs)[entry.sub] = resource
        resource.variants[entry.vary] = entry
        self._lru[id(entry)] = entry
        self._tick += 1
        entry.used = self._tick
        self._bytes += entry.size
        self._stores += 1
        if self._solo:
            self._solo.pop((entry.uri, entry.sub), None)
        while self._bytes > self.config.max_bytes:
            self._remove(next(iter(self._lru.values())))
            self._evictions += 1
        return True

    def _is_solo(self, key: tuple[_Uri, _Sub], now: float) -> bool:
        until = self._solo.get(key)
        if until is None:
            return False
        if until <= now:
            del self._solo[key]
            return False
        return True

    def _mark_solo(self, key: tuple[_Uri, _Sub], now: float) -> None:
        self._solo[key] = now + SOLO_SECONDS
        self._solo.move_to_end(key)
        while len(self._solo) > _MAX_SOLO:
            self._solo.popitem(last=False)

    def _remove(self, entry: _Entry) -> None:
        if self._lru.pop(id(entry), None) is None:
            return
        self._bytes -= entry.size
        subs = self._uris.get(entry.uri)
        if subs is None:
            return
        resource = subs.get(entry.sub)
        if resource is not None and resource.variants.get(entry.vary) is entry:
            del resource.variants[entry.vary]
            if not resource.variants:
                del subs[entry.sub]
                if not subs:
                    del self._uris[entry.uri]

    def _drop_uri(self, uri: _Uri) -> int:
        subs = self._uris.get(uri)
        if subs is None:
            return 0
        entries = [e for resource in subs.values() for e in resource.variants.values()]
        for entry in entries:
            self._remove(entry)
        return len(entries)


class CacheSlot:
    """One request's turn at the cache: a hit, a refusal, or a miss that may store the response.

    Enter it with ``async with``; leaving it without :meth:`finish` (or
    :meth:`store`) abandons the response, which releases the requests that
    waited for it.
    """

    __slots__ = (
        "_body",
        "_cache",
        "_config",
        "_epoch",
        "_flight",
        "_head",
        "_head_only",
        "_request",
        "_request_time",
        "_response_time",
        "_size",
        "_storable",
        "_sub",
        "_uri",
        "_wait",
        "_waiting",
        "hit",
        "max_entry_bytes",
        "refusal",
        "x_cache",
    )

    def __init__(
        self, cache: ResponseCache, request: GatewayRequest, config: CacheConfig, wait: float
    ) -> None:
        self._cache = cache
        self._request = request
        self._config = config
        self._wait = wait
        #: the fresh stored response to send, on a hit
        self.hit: CachedResponse | None = None
        #: the answer to send instead of going upstream (504 for only-if-cached), else None
        self.refusal: LocalResponse | None = None
        #: the ``x-cache`` to send with an upstream response: MISS or BYPASS (HIT on a hit)
        self.x_cache = "MISS"
        limit = cache.config.max_entry_bytes
        if config.max_entry_bytes is not None:
            limit = min(limit, config.max_entry_bytes)
        #: the largest response this slot stores; collect no more body than this
        self.max_entry_bytes = int(limit)
        self._storable = False
        self._flight: asyncio.Future[_Entry | None] | None = None
        self._uri: _Uri = (request.route, request.host, request.path, request.query)
        self._sub: _Sub = (request.method, "")
        self._head_only = request.method == "HEAD"
        self._head: tuple[int, list[tuple[str, str]], Directives] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._epoch = cache._epoch
        self._request_time = 0.0
        self._response_time = 0.0
        #: entering stopped to wait for another request's response: (its flight, the
        #: request's directives, the key)
        self._waiting: tuple[asyncio.Future[_Entry | None], Directives, Any] | None = None

    def enter_now(self) -> bool:
        """Enters the slot without waiting when it can (a hit, a miss to fetch, a
        bypass: True); False when another request is fetching this response: then
        ``await slot.__aenter__()`` waits for it (at most ``wait``)."""
        cache, request, config = self._cache, self._request, self._config
        self._request_time = now = cache._clock()
        if request.method not in config.methods:
            self._bypass(store=False)
            return True
        directives: Directives = {}
        may_store = True
        if request.consumer is not None or request.headers.has_any(_REQUEST_FIELDS):
            # (most requests say none of this: they skip it)
            if request.consumer is not None or "authorization" in request.headers:
                if not config.cache_authorized or request.consumer is None:
                    self._bypass(store=False)
                    return True
                self._sub = (request.method, request.consumer.name)
            cc_values = request.headers.get_all("cache-control")
            directives = parse_cache_control(cc_values) if cc_values else {}
            may_store = "no-store" not in directives
            if (
                "no-cache" in directives
                or (
                    not cc_values
                    and any("no-cache" in v.lower() for v in request.headers.get_all("pragma"))
                )
                or ("max-age" in directives and not delta_seconds(directives["max-age"]))
            ):
                self._bypass(store=may_store)
                return True
        entry = self._fresh(directives, now)
        if entry is not None:
            cache._hits += 1
            self.hit = cache._serve(entry, self._head_only, now)
            self.x_cache = "HIT"
            return True
        if "only-if-cached" in directives:
            cache._misses += 1
            self.refusal = LocalResponse.error(
                504, "not_cached", "only-if-cached: no fresh response is stored"
            )
            return True
        key = (self._uri, self._sub)
        coalesce = may_store and not (cache._solo and cache._is_solo(key, now))
        flight = cache._flights.get(key) if coalesce else None
        if flight is not None:
            cache._coalesced += 1
            self._waiting = (flight, directives, key)
            return False
        self._settle(None, directives, key, coalesce, may_store, now)
        return True

    def _settle(
        self,
        entry: _Entry | None,
        directives: Directives,
        key: Any,
        coalesce: bool,
        may_store: bool,
        now: float,
    ) -> None:
        cache = self._cache
        if entry is not None:
            cache._hits += 1
            self.hit = cache._serve(entry, self._head_only, now)
            self.x_cache = "HIT"
            return
        cache._misses += 1
        self._storable = may_store
        if coalesce and key not in cache._flights:
            self._flight = cache._flights[key] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> Self:
        if self._waiting is None and self.enter_now():
            return self
        assert self._waiting is not None
        flight, directives, key = self._waiting
        self._waiting = None
        cache = self._cache
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(flight), self._wait)
        # A waiter that goes upstream after all sends its request only now.
        self._request_time = now = cache._clock()
        entry = self._fresh(directives, now)
        coalesce = not cache._is_solo(key, now)
        self._settle(entry, directives, key, coalesce, True, now)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abandon()

    def _bypass(self, *, store: bool) -> Self:
        self._cache._bypasses += 1
        self.x_cache = "BYPASS"
        self._storable = store
        return self

    def _fresh(self, directives: Directives, now: float) -> _Entry | None:
        cache = self._cache
        entry: _Entry | None = None
        if self._head_only:
            entry = cache._find(self._uri, ("GET", self._sub[1]), self._request, now)
        if entry is None:
            entry = cache._find(self._uri, self._sub, self._request, now)
        if entry is None or not directives:
            return entry
        age = _age(entry, now)
        max_age = delta_seconds(directives.get("max-age"))
        if max_age is not None and age > max_age:
            return None
        min_fresh = delta_seconds(directives.get("min-fresh"))
        if min_fresh is not None and entry.lifetime - age < min_fresh:
            return None
        return entry

    # -- the response, as it comes from upstream -------------------------------------------

    def begin(self, status: int, headers: Iterable[tuple[str, str]]) -> bool:
        """The upstream response's head; True when its body should be collected to store it.

        False abandons the slot (the waiting requests go upstream themselves).
        """
        if not self._storable or self._head is not None:
            self.abandon()
            return False
        self._response_time = self._cache._clock()
        fields = [(name.lower(), value) for name, value in headers]
        directives = storable_directives(
            status, fields, self._config.statuses, credentialed=bool(self._sub[1])
        )
        if directives is None:
            self._not_storable()
            return False
        self._head = (status, fields, directives)
        return True

    def feed(self, chunk: bytes) -> bool:
        """A piece of the body as it streams to the client; False once it is too large to store."""
        if self._head is None:
            return False
        self._size += len(chunk)
        if self._size > self.max_entry_bytes:
            self._not_storable()
            return False
        self._body.append(chunk)
        return True

    def finish(self) -> bool:
        """The body is complete: stores the response; True when it was stored."""
        if self._head is None:
            self.abandon()
            return False
        status, fields, directives = self._head
        body = b"".join(self._body)
        self._body = []
        self._head = None
        self._storable = False
        entry = self._entry(status, fields, directives, body)
        if entry is None:
            self._not_storable()
            return False
        cache = self._cache
        stored = self._epoch == cache._epoch and cache._add(
            entry, vary_names(fields), self._config.vary_limit
        )
        self._release(entry if stored else None)
        return stored

    def store(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> bool:
        """:meth:`begin`, :meth:`feed` and :meth:`finish` at once; True when it was stored."""
        return self.begin(status, headers) and self.feed(body) and self.finish()

    def abandon(self) -> None:
        """Stores nothing; the requests waiting for this one go upstream."""
        self._storable = False
        self._head = None
        self._body = []
        self._release(None)

    def _not_storable(self) -> None:
        self._cache._mark_solo((self._uri, self._sub), self._response_time)
        self.abandon()

    def _release(self, entry: _Entry | None) -> None:
        flight, self._flight = self._flight, None
        if flight is None:
            return
        key = (self._uri, self._sub)
        if self._cache._flights.get(key) is flight:
            del self._cache._flights[key]
        if not flight.done():
            flight.set_result(entry)

    def _entry(
        self, status: int, fields: list[tuple[str, str]], directives: Directives, body: bytes
    ) -> _Entry | None:
        lifetime = freshness_lifetime(fields, directives, self._response_time, self._config.ttl)
        if lifetime <= 0.0:
            return None
        stored = stored_fields(fields, directives, None if self._head_only else len(body))
        size = len(body) + _ENTRY_OVERHEAD
        size += sum(len(n) + len(v) + _FIELD_OVERHEAD for n, v in stored)
        if size > self.max_entry_bytes:
            return None
        initial_age = corrected_initial_age(
            age_header=next((v for n, v in fields if n == "age"), None),
            date=http_date(next((v for n, v in fields if n == "date"), None)),
            request_time=self._request_time,
            response_time=self._response_time,
        )
        if initial_age >= lifetime:
            return None
        return _Entry(
            uri=self._uri,
            sub=self._sub,
            vary=vary_values(self._request.headers, vary_names(fields)),
            status=status,
            headers=tuple(stored),
            body=body,
            size=size,
            response_time=self._response_time,
            initial_age=initial_age,
            lifetime=lifetime,
            lines=header_lines(stored),
        )


def _age(entry: _Entry, now: float) -> float:
    """RFC 9111 §4.2.3: current_age = corrected_initial_age + resident_time."""
    return entry.initial_age + max(0.0, now - entry.response_time)
