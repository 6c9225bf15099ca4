"""Keeping a write's source errors the source's.

A write reads its source (another store) and writes its own store in the
same block of code; an error of the source (a dropped download, an OSError of
a file being read) must reach the engine as the source raised it, not be
translated into this store's errors, nor make this store's connection pool
drop a healthy connection. The source is read through :func:`guarded`, which
carries its errors past the store's translation as :class:`SourceFailed`;
the write unwraps them at its edge with :func:`source_errors_unwrapped`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

__all__ = ["SourceFailed", "guarded", "source_errors_unwrapped"]


class SourceFailed(Exception):
    """The source of a write raised ``error`` (never leaves the connector)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks``, with any Exception it raises wrapped in SourceFailed."""
    iterator = aiter(chunks)
    while True:
        try:
            chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except Exception as exc:
            raise SourceFailed(exc) from exc
        yield chunk


@contextlib.contextmanager
def source_errors_unwrapped() -> Iterator[None]:
    """Re-raises a SourceFailed's original error, as the source raised it."""
    try:
        yield
    except SourceFailed as failed:
        # ``from`` its own cause: the chain stays the source's.
        raise failed.error from failed.error.__cause__
