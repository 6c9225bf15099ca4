"""Pages of list responses: bounded in count and in bytes, continued by a token.

Every list RPC answers with at most ``page_size`` items (0: no count limit)
and never more than :data:`MAX_RESPONSE_BYTES` of them, so a response always
fits in what a stock gRPC client accepts (4 MiB by default) however large the
registry grows. ``next_page_token`` is set when more follow; it is the sort
key of the last item sent, opaque to clients (base64), so the next page
starts after it even if items were added or removed in between.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from serving.errors import FieldViolation

__all__ = [
    "MAX_PAGE_SIZE",
    "MAX_RESPONSE_BYTES",
    "Page",
    "check_paging",
    "chunked",
    "page_of",
    "page_token",
    "page_token_key",
    "wire_size",
]

T = TypeVar("T", bound=Message)

#: Bytes of items in one response, below the 4 MiB stock clients accept
#: (the rest of the response and gRPC's framing fit in what is left).
MAX_RESPONSE_BYTES = 3 * 1024 * 1024
#: The largest ``page_size`` a request may ask for.
MAX_PAGE_SIZE = 10_000
_TOKEN_PREFIX = b"p1\x00"
_MAX_TOKEN = 1024


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """The items of one page, and the token of the next ("" after the last)."""

    items: list[T]
    next_token: str


def _encode(key: str) -> str:
    return base64.urlsafe_b64encode(_TOKEN_PREFIX + key.encode()).decode()


def _decode(token: str) -> str:
    if len(token) > _MAX_TOKEN:
        raise ValueError("too long")
    raw = base64.urlsafe_b64decode(token.encode("ascii"))
    if not raw.startswith(_TOKEN_PREFIX):
        raise ValueError("not a page token")
    return raw[len(_TOKEN_PREFIX) :].decode()


def page_token(key: str) -> str:
    """The token of the page that starts after ``key``, as :func:`page_of`
    hands out (for a listing that puts its pages together itself)."""
    return _encode(key)


def page_token_key(token: str) -> str:
    """The key ``token`` continues after; ValueError when it is not one of ours."""
    return _decode(token)


def check_paging(page_size: int, page_token: str) -> list[FieldViolation]:
    """The problems of a request's ``page_size`` and ``page_token``."""
    problems = []
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        problems.append(
            FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {page_size}")
        )
    if page_token:
        try:
            _decode(page_token)
        except (ValueError, UnicodeError, binascii.Error):
            problems.append(FieldViolation("page_token", "is not a next_page_token of this API"))
    return problems


def wire_size(message: Message) -> int:
    """The bytes ``message`` takes as one element of a repeated field (its
    bytes, plus a tag and a length)."""
    return message.ByteSize() + 6


def chunked(
    items: Iterable[T], budget: int, size: Callable[[T], int] = wire_size
) -> Iterator[list[T]]:
    """``items`` in consecutive lists of at most ``budget`` bytes by ``size``
    (an item larger than that alone in its list); at least one list, maybe empty."""
    chunk: list[T] = []
    total = 0
    for item in items:
        grown = total + size(item)
        if chunk and grown > budget:
            yield chunk
            chunk, grown = [], size(item)
        chunk.append(item)
        total = grown
    yield chunk


def page_of(
    items: Sequence[T],
    key: Callable[[T], str],
    size: Callable[[T], int] = wire_size,
    *,
    page_size: int,
    page_token: str,
) -> Page[T]:
    """The page of ``items`` (sorted by ``key``) that starts after ``page_token``
    and holds at most ``page_size`` items (0: any number) and
    :data:`MAX_RESPONSE_BYTES` of them by ``size``; at least one item when any
    remain. The request must have passed :func:`check_paging`."""
    start = 0
    if page_token:
        after = _decode(page_token)
        start = bisect.bisect_right([key(item) for item in items], after)
    limit = page_size or len(items)
    taken: list[T] = []
    total = 0
    for item in items[start:]:
        if len(taken) >= limit:
            break
        total += size(item)
        if taken and total > MAX_RESPONSE_BYTES:
            break
        taken.append(item)
    more = start + len(taken) < len(items)
    return Page(taken, _encode(key(taken[-1])) if more and taken else "")
