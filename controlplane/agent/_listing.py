"""Pages of node statuses, so that no answer about the fleet outgrows a client.

``ListNodes`` answers in pages ordered by node id: at most ``page_size``
nodes (0: 100, at most 1,000) and at most `PAGE_BYTES` serialized (always at
least one node: a node status is far smaller). The page token is the last
node id of the previous page, in the token format of every list of the API
(`serving.paging`); a node added or removed between pages is simply
seen or not, as with any paged listing. ``WaitForRevision`` lists at
most `PENDING_LISTED` pending nodes, within the same byte bound, and counts
them all.

A page is put together from several sources — the node records in the store,
this replica's sessions, and the pages the other replicas return for their
own — by `merge_page`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ecosystem.v1 import agent_pb2

from controlplane.validation import node_violations
from serving.errors import FieldViolation, InvalidArgumentError
from serving.paging import chunked, page_token, page_token_key

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PAGE_BYTES",
    "PENDING_LISTED",
    "PageRequest",
    "Source",
    "bounded",
    "merge_page",
    "page_request",
]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
#: one page, serialized: a quarter of what a stock client accepts
PAGE_BYTES = 1024 * 1024
#: pending nodes one WaitForRevision answer lists
PENDING_LISTED = 100


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A validated page request: the ids after ``after``, at most ``size``."""

    after: str
    size: int


def page_request(request: agent_pb2.ListNodesRequest) -> PageRequest:
    """The page a ListNodesRequest asks for; InvalidArgumentError naming the field."""
    problems: list[FieldViolation] = []
    if not 0 <= request.page_size <= MAX_PAGE_SIZE:
        problems.append(
            FieldViolation(
                "page_size",
                f"must be between 0 and {MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE}), "
                f"got {request.page_size}",
            )
        )
    after = ""
    if request.page_token:
        try:
            after = page_token_key(request.page_token)
            if node_violations(after, "page_token"):
                raise ValueError("not a node id")
        except ValueError:
            problems.append(FieldViolation("page_token", "is not a next_page_token from ListNodes"))
    if problems:
        raise InvalidArgumentError(problems)
    return PageRequest(after=after, size=request.page_size or DEFAULT_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class Source:
    """Node statuses from one source, sorted by id, all after the page's start.
    ``complete`` is false when the source has more than it gave (a replica's
    page): nothing past its last id may be listed, or its next ones would be
    skipped."""

    nodes: Sequence[agent_pb2.NodeStatus]
    complete: bool = True


def merge_page(sources: Iterable[Source], size: int) -> tuple[list[agent_pb2.NodeStatus], str]:
    """One page from ``sources`` (later ones win for the same node id) and the
    next page's token ("" when this is the last page)."""
    merged: dict[str, agent_pb2.NodeStatus] = {}
    cutoff: str | None = None
    for source in sources:
        for status in source.nodes:
            merged[status.node.id] = status
        if not source.complete and source.nodes:
            last = source.nodes[-1].node.id
            cutoff = last if cutoff is None else min(cutoff, last)
    ids = sorted(i for i in merged if cutoff is None or i <= cutoff)
    page, more = bounded([merged[i] for i in ids], size)
    more = more or cutoff is not None or len(ids) < len(merged)
    return page, page_token(page[-1].node.id) if more and page else ""


def bounded(
    nodes: Sequence[agent_pb2.NodeStatus], size: int
) -> tuple[list[agent_pb2.NodeStatus], bool]:
    """The first of ``nodes`` up to ``size`` of them and `PAGE_BYTES` (at least
    one), and whether any were left out."""
    page = next(chunked(nodes[:size], PAGE_BYTES))
    return page, len(page) < len(nodes)
