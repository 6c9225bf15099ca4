"""The unit tier's rule: a unit test opens no socket and starts no process.

While a test under ``tests/unit`` is set up, run and torn down, binding or
connecting a socket (Python's ``socket``, asyncio's transports, a gRPC server
port or channel) and starting a process (``subprocess``, asyncio's subprocesses,
``os.fork``/``posix_spawn``/``system``) raise `UnitTierError`, and the test
fails naming what it tried, even if the code under test caught the error. A
test that needs a real server or a subprocess belongs in ``tests/integration``
or ``tests/e2e``. The event loop's own wake-up ``socketpair`` needs neither
bind nor connect, so asyncio works as usual.
"""

from __future__ import annotations

import os
import socket
import subprocess
import traceback
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

_TESTS = str(Path(__file__).parent.parent)


class UnitTierError(RuntimeError):
    """A unit test tried to open a socket or start a process."""


def _caller() -> str:
    """The innermost test-suite frame that led here, as ``path:line``."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_TESTS) and frame.filename != __file__:
            return f"{os.path.relpath(frame.filename, Path(_TESTS).parent)}:{frame.lineno}"
    return "outside the test suite"


def _address(args: tuple[Any, ...]) -> str:
    return next((repr(a) for a in args if not isinstance(a, socket.socket)), "")


@contextmanager
def _refusing(found: list[str]) -> Iterator[None]:
    """Replaces every way out of the process with one that raises and records."""
    saved: list[tuple[object, str, object]] = []

    def refuse(owner: object, name: str, what: str) -> None:
        def guard(*args: Any, **kwargs: Any) -> Any:
            message = (
                f"unit tests open no sockets and start no processes: {what}"
                f"{' ' + _address(args) if what.startswith('socket') else ''}"
                f" at {_caller()}; a test that needs a server or a subprocess belongs in "
                "tests/integration or tests/e2e (servers from tests/harness)"
            )
            found.append(message)
            raise UnitTierError(message)

        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, guard)

    for name in ("bind", "connect", "connect_ex"):
        refuse(socket.socket, name, f"socket.{name}")
    refuse(subprocess.Popen, "_execute_child", "a subprocess")
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            refuse(os, name, f"os.{name}")
    # gRPC opens its sockets in C: refuse its channels and server ports where they are made.
    for module in (grpc, grpc.aio):
        for name in ("insecure_channel", "secure_channel"):
            refuse(module, name, f"a gRPC channel ({module.__name__}.{name})")
    refuse(grpc, "server", "a gRPC server (grpc.server)")
    for server in grpc.aio.Server.__subclasses__():
        for name in ("add_insecure_port", "add_secure_port"):
            refuse(server, name, f"a gRPC server port ({name})")
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


@contextmanager
def _phase() -> Iterator[None]:
    """One phase of a unit test (setup, call or teardown) under the rule; a refusal
    fails it even when the code under test caught the error."""
    found: list[str] = []
    try:
        with _refusing(found):
            yield
    except BaseException as error:
        if found and not isinstance(error, UnitTierError):
            raise UnitTierError(found[0]) from error
        raise
    if found:
        raise UnitTierError(found[0])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup() -> Generator[None, object, object]:
    with _phase():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call() -> Generator[None, object, object]:
    with _phase():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown() -> Generator[None, object, object]:
    with _phase():
        return (yield)
