"""RFC 9111 for the response cache: ``Cache-Control``, dates, storability, freshness, age, Vary.

Kept apart from :mod:`sidecar.gateway.cache` so that module holds the
store and its coalescing, and this one only pure functions of header values.
"""

from __future__ import annotations

from collections.abc import Collection
from email.utils import mktime_tz, parsedate_tz

from sidecar.gateway.request import Headers

__all__ = [
    "MAX_VARY_FIELDS",
    "Directives",
    "VaryValues",
    "corrected_initial_age",
    "delta_seconds",
    "field_names",
    "freshness_lifetime",
    "http_date",
    "parse_cache_control",
    "storable_directives",
    "stored_fields",
    "vary_names",
    "vary_values",
]

Fields = list[tuple[str, str]]
VaryValues = tuple[str | None, ...]

#: A response naming more request fields than this in ``Vary`` is not stored.
MAX_VARY_FIELDS = 16
# Fields that describe one hop, or that the cache writes itself on every answer.
_NOT_STORED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "age",
        "x-cache",
        "content-length",
    }
)
# Vary'd fields whose values are case-insensitive (RFC 9110 §12.5): lower-cased in the key.
_CASELESS = frozenset({"accept", "accept-encoding", "accept-language", "accept-charset"})

#: Directive name (lower case) → its argument (None when it has none).
Directives = dict[str, str | None]

#: RFC 9111 §1.2.2: a delta-seconds larger than this is taken as this.
MAX_DELTA = 2**31


def parse_cache_control(values: list[str]) -> Directives:
    """Parses every ``Cache-Control`` field value into one mapping.

    Names are lower-cased; a quoted argument is unquoted. When a directive
    is repeated, the smaller number wins (the more restrictive reading, as
    RFC 9111 §4.2.1 asks of a conflict), else the first one stays.
    """
    directives: Directives = {}
    for value in values:
        for part in _split(value):
            name, eq, arg = part.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            argument: str | None = arg.strip() if eq else None
            if argument is not None and len(argument) >= 2 and argument[0] == argument[-1] == '"':
                argument = argument[1:-1].replace('\\"', '"')
            if name in directives:
                old, new = delta_seconds(directives[name]), delta_seconds(argument)
                if old is not None and new is not None and new < old:
                    directives[name] = argument
                continue
            directives[name] = argument
    return directives


def _split(value: str) -> list[str]:
    """Splits a list-valued field at commas that are not inside a quoted string."""
    if '"' not in value:
        return value.split(",")
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def delta_seconds(argument: str | None) -> int | None:
    """A directive's delta-seconds (capped at 2^31), or None when it is missing or not digits."""
    if argument is None or not argument.isdigit() or not argument.isascii():
        return None
    return min(int(argument), MAX_DELTA)


def field_names(argument: str | None) -> tuple[str, ...]:
    """The lower-case field names of a qualified ``no-cache="a, b"`` or ``private="a"``."""
    if not argument:
        return ()
    return tuple(name.strip().lower() for name in argument.split(",") if name.strip())


def http_date(value: str | None) -> float | None:
    """An HTTP date (IMF-fixdate, RFC 850 or asctime form) as a POSIX time; None when invalid."""
    if not value:
        return None
    parsed = parsedate_tz(value)
    if parsed is None:
        return None
    if parsed[9] is None:
        # asctime carries no zone; HTTP dates are always UTC (RFC 9110 §5.6.7).
        parsed = (*parsed[:9], 0)
    try:
        return float(mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def corrected_initial_age(
    *, age_header: str | None, date: float | None, request_time: float, response_time: float
) -> float:
    """RFC 9111 §4.2.3: how old the response already was when it reached the cache.

    ``apparent_age = max(0, response_time - date_value)``,
    ``corrected_age_value = age_value + (response_time - request_time)``, and
    the answer is the larger of the two. A missing ``Date`` counts as the
    response time (the cache's own clock, RFC 9110 §6.6.1); a missing or
    invalid ``Age`` as 0.
    """
    date_value = response_time if date is None else date
    apparent_age = max(0.0, response_time - date_value)
    age_value = 0
    if age_header is not None:
        age_value = delta_seconds(age_header.split(",")[0].strip()) or 0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, age_value + response_delay)


def storable_directives(
    status: int, fields: Fields, statuses: Collection[int], *, credentialed: bool
) -> Directives | None:
    """RFC 9111 §3 for a shared cache: the response's directives, or None when it is not storable.

    Beyond the RFC's rules, a response is not stored with ``Set-Cookie`` (it
    is one client's), with an unqualified ``no-cache`` (it would need a
    revalidation this cache does not make), or with ``Vary: *`` or more than
    :data:`MAX_VARY_FIELDS` fields in ``Vary``.
    """
    if status not in statuses:
        return None
    cc = [v for n, v in fields if n == "cache-control"]
    directives = parse_cache_control(cc) if cc else {}
    if "no-store" in directives or any(n == "set-cookie" for n, _ in fields):
        return None
    if "private" in directives and directives["private"] is None:
        return None
    if "no-cache" in directives and directives["no-cache"] is None:
        return None
    names = vary_names(fields)
    if "*" in names or len(names) > MAX_VARY_FIELDS:
        return None
    if credentialed and not (
        "public" in directives or "s-maxage" in directives or "must-revalidate" in directives
    ):
        # §3.5: a response to a request with credentials only when it says it may be shared.
        return None
    return directives


def freshness_lifetime(
    fields: Fields, directives: Directives, response_time: float, heuristic: float
) -> float:
    """RFC 9111 §4.2.1 for a shared cache: s-maxage, else max-age, else Expires - Date, else
    ``heuristic`` (the route's ttl). An invalid number or date means already expired."""
    for name in ("s-maxage", "max-age"):
        if name in directives:
            return float(delta_seconds(directives[name]) or 0)
    expires_values = [v for n, v in fields if n == "expires"]
    if expires_values:
        expires = http_date(expires_values[0])
        if expires is None:
            return 0.0
        date = http_date(next((v for n, v in fields if n == "date"), None))
        return max(0.0, expires - (response_time if date is None else date))
    return heuristic


def stored_fields(fields: Fields, directives: Directives, body_length: int | None) -> Fields:
    """The fields kept with a response: no hop-by-hop ones, none that a qualified ``no-cache``
    or ``private`` names; framed by ``content-length`` (the body's, or the upstream's for a
    HEAD response, ``body_length`` None)."""
    dropped = set(_NOT_STORED)
    for name, value in fields:
        if name == "connection":
            dropped.update(part.strip().lower() for part in value.split(","))
    dropped.update(field_names(directives.get("no-cache")))
    dropped.update(field_names(directives.get("private")))
    stored = [(n, v) for n, v in fields if n not in dropped]
    if body_length is not None:
        stored.append(("content-length", str(body_length)))
    else:
        length = next((v for n, v in fields if n == "content-length"), None)
        if length is not None:
            stored.append(("content-length", length))
    return stored


def vary_names(fields: Fields) -> tuple[str, ...]:
    """The request fields a response varies on (lower case, in order, once each)."""
    names: list[str] = []
    for name, value in fields:
        if name == "vary":
            for part in value.split(","):
                part = part.strip().lower()
                if part and part not in names:
                    names.append(part)
    return tuple(names)


def vary_values(headers: Headers, names: tuple[str, ...]) -> VaryValues:
    """A request's values of the fields ``names``, normalized (RFC 9111 §4.1).

    Several lines of a field are joined with commas, whitespace around list
    items dropped and runs of it made one space; the ``Accept*`` fields are
    lower-cased. A field the request lacks is None, apart from an empty one.
    """
    if not names:
        return ()
    values: list[str | None] = []
    for name in names:
        found = headers.get_all(name)
        if not found:
            values.append(None)
            continue
        text = ",".join(" ".join(part.split()) for v in found for part in v.split(","))
        values.append(text.lower() if name in _CASELESS else text)
    return tuple(values)
