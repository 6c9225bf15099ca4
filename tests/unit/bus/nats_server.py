"""A real nats-server with JetStream for tests, on a free 127.0.0.1 port in its own directory.

The binary is Debian's ``nats-server`` package (2.9.x), which
``scripts/install-nats.sh`` installs (``make test`` runs it). A missing binary
fails the test that needs it, never skips it: the NATS backend is part of the
suite. The process starts in a few tens of milliseconds; ``restart()`` keeps
its port and JetStream store so that a client's reconnect finds the same
streams and consumers.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bus.nats import NatsBroker

__all__ = ["NatsServer", "nats_broker_factory", "nats_server_binary"]

_READY_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1
_MISSING = "nats-server is not installed: run scripts/install-nats.sh (make test does)"


def nats_server_binary() -> str:
    """The nats-server executable on PATH (or /usr/sbin); fails the test when there is none."""
    found = shutil.which("nats-server") or shutil.which(
        "nats-server", path="/usr/sbin:/usr/local/sbin:/sbin"
    )
    if found is None:
        pytest.fail(_MISSING, pytrace=False)
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class NatsServer:
    """One ``nats-server -js`` process. ``start()`` returns once it accepts clients with
    JetStream on; ``stop()`` ends it and removes its directory. ``extra_args`` are
    appended to the command line."""

    def __init__(self, extra_args: tuple[str, ...] = (), *, jetstream: bool = True) -> None:
        self._extra = extra_args
        self._jetstream = jetstream
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
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
        # The free port may be taken between the check and the server's bind: try again.
        shm = Path("/dev/shm")
        self._dir = Path(tempfile.mkdtemp(prefix="eco-nats-", dir=shm if shm.is_dir() else None))
        for attempt in range(3):
            self.port = _free_port()
            try:
                self._launch()
                return self
            except RuntimeError:
                self._terminate(signal.SIGKILL)
                if attempt == 2:
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
        cmd = [
            nats_server_binary(),
            f"--config={config}",
            "--addr=127.0.0.1",
            f"--port={self.port}",
            "--server_name=eco-test",
            *(["--jetstream", f"--store_dir={self.store_dir}"] if self._jetstream else []),
            f"--log={self._dir / 'nats.log'}",
            *self._extra,
        ]
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited at start: {self.log()[-2000:]}")
            if self._accepts():
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

    def log(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / "nats.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        self._terminate(signal.SIGTERM)
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the conformance suite's NATS backend ----------------------------------------------------

#: Servers started by the NATS backend during the current test, by data directory.
_SERVERS: dict[Path, NatsServer] = {}


def nats_broker_factory(queue_limit: int) -> Callable[[Path], NatsBroker]:
    """``create(directory)`` of the conformance suite's NATS backend: an unstarted
    `NatsBroker` on the nats-server of ``directory`` (started on first use, so that
    brokers on one directory share its streams and consumers, as a restart of the
    control plane against the same NATS would)."""

    def create(directory: Path) -> NatsBroker:
        server = _SERVERS.get(directory)
        if server is None:
            server = _SERVERS[directory] = NatsServer().start()
        return NatsBroker([server.url], queue_limit=queue_limit)

    return create


@pytest.fixture(autouse=True)
def _stop_nats_servers() -> Iterator[None]:
    """Stops the nats-servers a test started, after its brokers are closed."""
    yield
    while _SERVERS:
        _SERVERS.popitem()[1].stop()
