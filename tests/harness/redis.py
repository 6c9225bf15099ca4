"""A real redis-server for tests, on 127.0.0.1 in its own directory, without persistence.

The binary is Debian's ``redis-server`` package (7.0), which
``scripts/install-redis.sh`` installs (``make test`` runs it). A missing binary
fails the test that needs it, never skips it: the gateway's global rate limit
is part of the suite. Redis cannot report a port of its own choosing (``--port
0`` turns its TCP listener off), so the port comes from `free_port`. It starts
in a few milliseconds, so every test gets its own (the ``redis_server``
fixture in tests/conftest.py): tests stop it and start it again mid-test, or
freeze it (SIGSTOP) to play a server that hangs. ``halt()`` and ``resume()``
keep its port, so that clients find it again where it was; the data does not
survive (nothing is saved).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness._process import OwnedProcess
from tests.harness.etcd import with_parent_death_signal
from tests.harness.ports import free_port

__all__ = ["RedisServer", "redis_server_binary"]

_READY_TIMEOUT = 15.0
_MISSING = "redis-server is not installed: run scripts/install-redis.sh (make test does)"


def redis_server_binary() -> str:
    """The redis-server executable on PATH (or /usr/sbin); fails the test when there is none."""
    found = shutil.which("redis-server") or shutil.which(
        "redis-server", path="/usr/sbin:/usr/local/sbin:/sbin"
    )
    if found is None:
        pytest.fail(_MISSING, pytrace=False)
    return found


class RedisServer(OwnedProcess):
    """One ``redis-server`` process. ``start()`` returns once it answers PING;
    ``stop()`` ends it and removes its directory."""

    LOG_NAME = "redis.log"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        shm = Path("/dev/shm")
        self._dir = Path(tempfile.mkdtemp(prefix="eco-redis-", dir=shm if shm.is_dir() else None))
        self.port = free_port()
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def halt(self, *, kill: bool = True) -> None:
        """Stops the process (SIGKILL by default: a crash), keeping its port for `resume`."""
        self._terminate(signal.SIGKILL if kill else signal.SIGTERM)

    def freeze(self) -> None:
        """Stops the process without ending it (SIGSTOP): connections stay open and
        nothing answers, as with a hung server or a lost network."""
        assert self._proc is not None, "not running"
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Lets a frozen server go on (SIGCONT)."""
        assert self._proc is not None, "not running"
        self._proc.send_signal(signal.SIGCONT)

    def resume(self) -> None:
        """Starts a halted server again on the same port (empty); returns once it answers."""
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            try:
                self._launch()
                return
            except RuntimeError:
                self._terminate(signal.SIGKILL)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _launch(self) -> None:
        assert self._dir is not None
        cmd = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
            "--logfile",
            str(self._dir / "redis.log"),
            "--daemonize",
            "no",
        ]
        self._proc = subprocess.Popen(
            with_parent_death_signal(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: {self.log()[-2000:]}")
            if self._answers():
                return
            time.sleep(0.01)
        raise RuntimeError(f"redis-server not ready after {_READY_TIMEOUT}s: {self.log()[-2000:]}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
