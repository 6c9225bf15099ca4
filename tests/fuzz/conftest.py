"""Fixtures of the fuzz tests: real servers, started once and reused by many examples.

``plane``: a fresh `eco controlplane` per test module (the registry and agent
tests change its store in ways the other modules must not see).
``stack``: one control plane, recording upstream and `eco sidecar` for the
whole package (the sidecar's local API, its relayed bus, its HTTP proxy and
its bus bridge), stopped once the last fuzz test has run rather than at the
end of the whole suite. See :mod:`tests.fuzz.stack`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tests.fuzz.stack import Plane, Stack
from tests.fuzz.upstream import RecordingUpstream


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    started = Plane(tmp_path_factory.mktemp("plane"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="package")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as running:
        yield running


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, upstream: RecordingUpstream
) -> AsyncIterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("stack")
    shared = Plane(tmp_path, "stack-controlplane")
    started = Stack(tmp_path, shared, upstream)
    try:
        await started.start()
        yield started
    finally:
        await started.stop()
        shared.stop()
