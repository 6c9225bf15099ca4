"""Small helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Collection
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")


async def assert_eventually(
    check: Callable[[], Awaitable[T] | T], *, timeout: float = 5.0, interval: float = 0.02
) -> T:
    """Calls ``check`` until it returns without raising AssertionError; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            return result  # type: ignore[return-value]
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)


async def assert_stays(
    check: Callable[[], Awaitable[object] | object], *, duration: float, interval: float = 0.05
) -> None:
    """Calls ``check`` every ``interval`` seconds for ``duration`` seconds; the first
    AssertionError fails the test at once. For what must *not* happen within a
    time the system sets (a grace period, an ack wait): it watches the whole
    window instead of sleeping through it and looking once at the end."""
    deadline = time.monotonic() + duration
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def conformance_tests(
    fixtures: Collection[str], *modules: ModuleType
) -> dict[str, Callable[..., Any]]:
    """The test functions defined in ``modules`` that take one of ``fixtures``, by name.

    This is how a tier runs another tier's conformance suite against its own
    backends without a copy of the tests: the unit tier runs the store and bus
    suites against the in-process backends, and tests/integration runs the same
    functions against etcd and NATS with ``globals().update(conformance_tests(...))``
    in a module whose conftest provides the fixtures for those backends.
    """
    found: dict[str, Callable[..., Any]] = {}
    for module in modules:
        for name, test in vars(module).items():
            if not name.startswith("test_") or getattr(test, "__module__", "") != module.__name__:
                continue
            if set(fixtures) & set(inspect.signature(test).parameters):
                assert name not in found, f"{name} is defined in two of {modules}"
                found[name] = test
    return found
