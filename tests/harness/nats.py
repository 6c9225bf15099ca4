"""A real nats-server with JetStream for tests, on 127.0.0.1 port 0 in its own directory.

The binary is Debian's ``nats-server`` package (2.9.x), which
``scripts/install-nats.sh`` installs (``make test`` runs it). A missing binary
fails the test that needs it, never skips it: the NATS backend is part of the
suite. The server binds port 0 and writes the port it got to a ports file
(``--ports_file_dir``), which `NatsServer.start` reads. It starts in a few
tens of milliseconds; ``restart()`` keeps its port and JetStream store so
that a client's reconnect finds the same streams and consumers.
"""

from __future__ import annotations

import contextlib
import json
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

__all__ = ["NatsServer", "nats_server_binary"]

_READY_TIMEOUT = 15.0
_MISSING = "nats-server is not installed: run scripts/install-nats.sh (make test does)"


def nats_server_binary() -> str:
    """The nats-server executable on PATH (or /usr/sbin); fails the test when there is none."""
    found = shutil.which("nats-server") or shutil.which(
        "nats-server", path="/usr/sbin:/usr/local/sbin:/sbin"
    )
    if found is None:
        pytest.fail(_MISSING, pytrace=False)
    return found


class NatsServer(OwnedProcess):
    """One ``nats-server -js`` process. ``start()`` returns once it accepts clients with
    JetStream on; ``stop()`` ends it and removes its directory. ``extra_args`` are
    appended to the command line."""

    LOG_NAME = "nats.log"

    def __init__(self, extra_args: tuple[str, ...] = (), *, jetstream: bool = True) -> None:
        self._extra = extra_args
        self._jetstream = jetstream
        super().__init__()
        self.port = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        assert self._dir is not None, "not started"
        return self._dir / "jetstream"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> NatsServer:
        """Starts on a port of the server's choosing; returns once it accepts clients."""
        shm = Path("/dev/shm")
        self._dir = Path(tempfile.mkdtemp(prefix="eco-nats-", dir=shm if shm.is_dir() else None))
        self.port = 0
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, *, kill: bool = False) -> None:
        """Stops the process (SIGTERM, or SIGKILL with ``kill``) and starts it again on
        the same port and store; returns once it accepts clients."""
        self.halt(kill=kill)
        self.resume()

    def halt(self, *, kill: bool = False) -> None:
        """Stops the process, keeping its port and store for `resume`."""
        self._terminate(signal.SIGKILL if kill else signal.SIGTERM)

    def resume(self, *, jetstream: bool | None = None) -> None:
        """Starts a halted server again on the same port and store (with JetStream
        switched on or off when ``jetstream`` says)."""
        if jetstream is not None:
            self._jetstream = jetstream
        # The old process's socket may linger for a moment; retry binding briefly.
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
        # max_payload above the bus's 1 MiB default, so that a message at the bus's
        # limit fits with its headers (the same advice holds for production servers).
        config = self._dir / "nats.conf"
        config.write_text("max_payload: 2MB\n")
        ports_dir = self._dir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        cmd = [
            nats_server_binary(),
            f"--config={config}",
            "--addr=127.0.0.1",
            # -1: a port of the server's choosing (written to the ports file); on a
            # restart, the port it had.
            f"--port={self.port or -1}",
            f"--ports_file_dir={ports_dir}",
            "--server_name=eco-test",
            *(["--jetstream", f"--store_dir={self.store_dir}"] if self._jetstream else []),
            f"--log={self._dir / 'nats.log'}",
            *self._extra,
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
                raise RuntimeError(f"nats-server exited at start: {self.log()[-2000:]}")
            if not self.port:
                self.port = _bound_port(ports_dir)
            if self.port and self._accepts():
                return
            time.sleep(0.01)
        raise RuntimeError(f"nats-server not ready after {_READY_TIMEOUT}s: {self.log()[-2000:]}")

    def _accepts(self) -> bool:
        """True once the server sends its INFO (with JetStream on, if asked for: the
        store is recovered before the listener accepts)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                line = sock.makefile("rb").readline()
        except OSError:
            return False
        if not line.startswith(b"INFO "):
            return False
        with contextlib.suppress(ValueError):
            return bool(json.loads(line[5:]).get("jetstream")) or not self._jetstream
        return False


def _bound_port(ports_dir: Path) -> int:
    """The client port from the server's ports file, 0 while there is none yet."""
    for path in ports_dir.glob("*.ports"):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            url = json.loads(path.read_text())["nats"][0]
            return int(url.rsplit(":", 1)[1])
    return 0
