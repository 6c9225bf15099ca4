"""Small helpers shared by the test tiers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

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


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A 127.0.0.1 port free now and not handed out before in this run: a port
    chosen for one server and not bound yet (an etcd member not started yet,
    say) must not be chosen again for another."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
