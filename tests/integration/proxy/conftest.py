"""Backends as real processes on 127.0.0.1, and proxy listeners in front of them.

A backend script in ``backends/`` binds port 0, prints ``LISTENING <port>``
on its first stdout line, and serves until killed. :class:`Backend` starts
one, waits for that line, and can kill it (``kill -9``), stop it or restart
it on the same port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import ProxyPolicy
from sidecar.proxy import Listener, Target

BACKENDS = Path(__file__).with_name("backends")


class Backend:
    """One backend process: ``Backend("tcp_backend.py", "--mode", "echo")``."""

    def __init__(self, script: str, *args: str, port: int = 0) -> None:
        self.script = BACKENDS / script
        assert self.script.exists(), self.script
        self.args = args
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self, timeout: float = 15.0) -> Backend:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script), "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=None,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"LISTENING "):
                self.port = int(line.split()[1])
                return self
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"{self.script.name} did not start: {line!r}")

    def kill(self) -> None:
        """``kill -9``: connections are reset, nothing is flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart(self) -> Backend:
        """Starts again on the same port."""
        self.stop()
        return self.start()


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """``backends("tcp_backend.py", "--mode", "echo")`` starts one; all are stopped after."""
    started: list[Backend] = []

    def start(script: str, *args: str) -> Backend:
        backend = Backend(script, *args).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def policy(protocol: str, **overrides: Any) -> ProxyPolicy:
    """A policy for tests: short timeouts unless overridden."""
    values: dict[str, Any] = {"protocol": protocol, "connect_timeout": 1.0, "timeout": 5.0}
    values.update(overrides)
    return ProxyPolicy.model_validate(values)


@pytest.fixture
async def listeners() -> AsyncIterator[list[Listener]]:
    """Append started listeners; they are drained (grace 0) after the test."""
    started: list[Listener] = []
    yield started
    for listener in started:
        await listener.drain(0.0)


def target(name: str, protocol: str, *backends: Backend, **overrides: Any) -> Target:
    """A target over the backends' addresses (``policy(protocol, **overrides)``)."""
    return Target.fixed(name, policy(protocol, **overrides), [b.address for b in backends])
