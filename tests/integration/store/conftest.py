"""The store conformance suite's etcd backend: a real etcd process per store.

tests/integration/store/test_conformance.py runs the suite's test modules
(tests/unit/store) with the ``backend`` fixture below in place of the unit
tier's in-process ones. Every store the backend builds gets a fresh etcd
(about 0.1 s to start): the suite checks exact revisions from 1 on, and etcd's
revision counter can only grow. The processes are stopped after each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from controlplane.store import Store
from controlplane.store.etcd import EtcdStore
from tests.harness.etcd import EtcdServer
from tests.unit.store.conftest import (  # noqa: F401 - fixtures, for the suite's tests
    Backend,
    _no_leaked_store_threads,
    open_store,
    store,
)

# Started by the etcd backend during the current test; stopped after it.
_ETCD_SERVERS: list[EtcdServer] = []


def _etcd(_: Path, history_limit: int | None) -> Store:
    assert history_limit is None, "etcd compacts on its own schedule"
    server = EtcdServer().start()
    _ETCD_SERVERS.append(server)
    # Under a prefix, so that the suite also covers the key namespace.
    return EtcdStore(f"etcd://{server.endpoint}/conformance")


ETCD = Backend("etcd", _etcd, configurable_history=False)


@pytest.fixture(params=[ETCD], ids=["etcd"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return cast(Backend, request.param)


@pytest.fixture(autouse=True)
def _stop_etcd_servers() -> Iterator[None]:
    """Stops the etcd processes a test started, after its stores are closed."""
    yield
    while _ETCD_SERVERS:
        _ETCD_SERVERS.pop().stop()
