"""The bus conformance suite's NATS backend: a real nats-server with JetStream.

tests/integration/bus/test_conformance.py runs the suite's test modules
(tests/unit/bus) with the ``backend`` fixture below in place of the unit
tier's embedded ones, so the NATS backend passes the very same tests. Brokers
created on one data directory share that directory's nats-server (started on
first use), as control-plane restarts against the same NATS would; the
servers are stopped after each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from bus.nats import NatsBroker
from tests.harness.nats import NatsServer
from tests.unit.bus.conftest import (  # noqa: F401 - fixtures, for the suite's tests
    QUEUE_LIMIT,
    Backend,
    _no_leaked_bus_threads,
    broker,
    brokers,
)

#: Servers started by the NATS backend during the current test, by data directory.
_SERVERS: dict[Path, NatsServer] = {}


def _nats(directory: Path) -> NatsBroker:
    """An unstarted `NatsBroker` on the nats-server of ``directory``."""
    server = _SERVERS.get(directory)
    if server is None:
        server = _SERVERS[directory] = NatsServer().start()
    return NatsBroker([server.url], queue_limit=QUEUE_LIMIT)


NATS = Backend("nats", _nats, persistent=True)


@pytest.fixture(params=[NATS], ids=["nats"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return cast(Backend, request.param)


@pytest.fixture(autouse=True)
def _stop_nats_servers() -> Iterator[None]:
    """Stops the nats-servers a test started, after its brokers are closed."""
    yield
    while _SERVERS:
        _SERVERS.popitem()[1].stop()
