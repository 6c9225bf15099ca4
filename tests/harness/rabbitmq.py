"""A real RabbitMQ node for tests, on 127.0.0.1 in its own directory.

The server is Debian's ``rabbitmq-server`` package (3.10.x), which
``scripts/install-rabbitmq.sh`` installs (``make test`` runs it). A missing
server fails the test that needs it, never skips it. The node runs as the
current user with everything of its own: AMQP, distribution and epmd ports,
node name, data, logs, configuration and Erlang cookie (``HOME``), so it
neither needs nor disturbs a system RabbitMQ. It starts in about 5 s, so a
test module starts one per session: it imports :func:`rabbitmq_fixture` to
get the session-scoped ``rabbitmq`` fixture. ``restart()`` keeps the node's
data: durable queues and their persistent messages survive. Its AMQP,
distribution and epmd ports come from `free_port`: they go into the node's
configuration and environment before it starts, and the node cannot report
a port of its own choosing without a management tool that takes seconds.

Both the node and its epmd (run in the foreground, not as the daemon the node
would spawn) die with the test process: a parent death signal, kept across
the ``exec`` chain from the start script to the Erlang VM. ``stop()`` ends
them and removes the directory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ports import free_port

__all__ = ["RabbitMQServer", "rabbitmq_fixture", "rabbitmq_server_script"]

_READY_TIMEOUT = 60.0
_MISSING = "rabbitmq-server is not installed: run scripts/install-rabbitmq.sh (make test does)"
#: The AMQP 0-9-1 protocol header; a broker answers it with a Connection.Start method frame.
_PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
_SCRIPT_PLACES = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")


def rabbitmq_server_script() -> tuple[str, str]:
    """The package's ``rabbitmq-server`` start script (not the ``/usr/sbin`` wrapper,
    which switches to the ``rabbitmq`` user) and ``epmd``; fails the test without them."""
    script = next(
        (
            f"{d}/rabbitmq-server"
            for d in _SCRIPT_PLACES
            if os.access(f"{d}/rabbitmq-server", os.X_OK)
        ),
        None,
    )
    epmd = shutil.which("epmd") or shutil.which("epmd", path="/usr/lib/erlang/bin")
    if script is None or epmd is None:
        pytest.fail(_MISSING, pytrace=False)
    return script, epmd


def _with_parent_death_signal(cmd: list[str]) -> list[str]:
    # Not a preexec_fn: Python code between fork and exec in a process with gRPC's
    # threads can crash the child. pdeathsig survives exec, so it reaches the VM.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *cmd] if setpriv else cmd


class RabbitMQServer:
    """One RabbitMQ node. ``start()`` returns once it answers AMQP on :attr:`port`;
    ``restart()`` stops it (gracefully, or SIGKILL with ``kill``) and starts it again
    on the same ports and data; ``stop()`` ends it and removes its directory."""

    def __init__(self) -> None:
        # The parent death signal fires when the *thread* that started a process ends:
        # every process is started from this one thread, which lives until stop(),
        # whichever thread (an event loop's executor, say) calls restart().
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rabbitmq")
        self._dir: Path | None = None
        self._node: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.nodename = f"eco-test-{uuid.uuid4().hex[:8]}@localhost"

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/`` (the default user, allowed from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self._node is not None and self._node.poll() is None

    def start(self) -> RabbitMQServer:
        script, epmd = rabbitmq_server_script()
        shm = Path("/dev/shm")
        self._dir = Path(
            tempfile.mkdtemp(prefix="eco-rabbitmq-", dir=shm if shm.is_dir() else None)
        )
        # The free ports may be taken between the check and the binds: try again.
        for attempt in range(3):
            self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
            try:
                self._start_epmd(epmd)
                self._launch(script)
                return self
            except RuntimeError:
                self._terminate_node(signal.SIGKILL)
                self._terminate_epmd()
                if attempt == 2:
                    self.stop()
                    raise
        return self

    def restart(self, *, kill: bool = False) -> None:
        """Stops the node and starts it again on the same ports and data."""
        self.halt(kill=kill)
        self.resume()

    def halt(self, *, kill: bool = False) -> None:
        """Stops the node (gracefully, or SIGKILL), keeping ports and data for `resume`."""
        self._terminate_node(signal.SIGKILL if kill else signal.SIGTERM)

    def resume(self) -> None:
        """Starts a halted node again; returns once it answers AMQP."""
        script, _ = rabbitmq_server_script()
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            try:
                self._launch(script)
                return
            except RuntimeError:
                self._terminate_node(signal.SIGKILL)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _env(self) -> dict[str, str]:
        assert self._dir is not None
        d = self._dir
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(d),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            # Runs the VM by exec (no signal-forwarding shell in between): the parent
            # death signal reaches it, and SIGTERM stops it gracefully itself.
            "RABBITMQ_ALLOW_INPUT": "true",
            # ... and with no Erlang shell on standard input all the same.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-noinput",
        }

    def _spawn(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return self._spawner.submit(subprocess.Popen, cmd, **kwargs).result()

    def _start_epmd(self, epmd: str) -> None:
        # Our own epmd, in the foreground as our child: the node finds it on
        # ERL_EPMD_PORT and does not spawn a daemon that would outlive the test.
        self._epmd = self._spawn(
            _with_parent_death_signal(
                [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"]
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._env(),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._epmd.poll() is not None:
                raise RuntimeError(f"epmd exited at start (port {self.epmd_port} taken?)")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=1).close()
                return
            time.sleep(0.01)
        raise RuntimeError("epmd did not listen")

    def _launch(self, script: str) -> None:
        assert self._dir is not None
        d = self._dir
        (d / "log").mkdir(exist_ok=True)
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.file.level = warning\n"
            "log.console = false\n"
            # the suite's /dev/shm or /tmp may be small; RabbitMQ's 50 MB default would block
            "disk_free_limit.absolute = 1MB\n"
        )
        (d / "advanced.config").write_text("[].\n")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        log = open(d / "log" / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            self._node = self._spawn(
                _with_parent_death_signal([script]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=d,
            )
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._node.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited at start: {self.log()[-3000:]}")
            if self._accepts():
                return
            time.sleep(0.05)
        raise RuntimeError(
            f"rabbitmq-server not ready after {_READY_TIMEOUT}s: {self.log()[-3000:]}"
        )

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(_PROTOCOL_HEADER)
                return sock.recv(1)[:1] == b"\x01"
        except OSError:
            return False

    def log(self) -> str:
        """The node's own log and its standard output, for failure messages."""
        if self._dir is None:
            return ""
        parts = []
        for path in sorted((self._dir / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        self._terminate_node(signal.SIGTERM)
        self._terminate_epmd()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        self._spawner.shutdown(wait=False)

    def _terminate_node(self, sig: signal.Signals) -> None:
        proc, self._node = self._node, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _terminate_epmd(self) -> None:
        proc, self._epmd = self._epmd, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session", name="rabbitmq")
def rabbitmq_fixture() -> Iterator[RabbitMQServer]:
    """The session's RabbitMQ node, as the fixture ``rabbitmq`` (import this function
    into a test module; tests use exchanges and queues of their own)."""
    server = RabbitMQServer().start()
    try:
        yield server
    finally:
        server.stop()
