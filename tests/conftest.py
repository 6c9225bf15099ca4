"""Suite-wide fixtures: no leaked asyncio tasks, and a nats-server and a redis-server
for a test of its own."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.harness.nats import NatsServer
from tests.harness.ports import ledger_for
from tests.harness.redis import RedisServer


def _port_ledger_run(config: pytest.Config) -> str:
    """The run id the workers' port ledger is named by (tests/harness/ports.py)."""
    uid = getattr(config.option, "testrunuid", None)
    return str(uid) if uid else f"pid{os.getpid()}"


def pytest_configure(config: pytest.Config) -> None:
    # The controller of a run with workers names the run itself, so that it
    # knows which ledger its workers share and can remove it at the end.
    controller = not hasattr(config, "workerinput")
    named = getattr(config.option, "testrunuid", None) is not None
    if controller and getattr(config.option, "numprocesses", None) and not named:
        config.option.testrunuid = uuid.uuid4().hex


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        ledger_for(_port_ledger_run(config)).unlink(missing_ok=True)


@pytest.fixture(autouse=True)
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fails a test that leaves asyncio tasks running after its own fixtures are torn down."""
    before = set(asyncio.all_tasks())
    yield
    # Give cancelled tasks one turn to finish unwinding.
    for _ in range(5):
        leaked = [
            t
            for t in asyncio.all_tasks() - before
            if not t.done() and t is not asyncio.current_task()
        ]
        if not leaked:
            return
        await asyncio.sleep(0.02)
    names = ", ".join(sorted(t.get_name() + ":" + repr(t.get_coro()) for t in leaked))
    pytest.fail(f"test leaked {len(leaked)} running task(s): {names}")


@pytest.fixture
def nats() -> Iterator[NatsServer]:
    """A nats-server with JetStream of this test's own, stopped after it."""
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own (no persistence), stopped after it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
