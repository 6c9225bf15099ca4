"""The Envoy process of ``dataplane: envoy``: started, watched, restarted, stopped.

:meth:`EnvoyProcess.start` starts the sidecar's SDS server (with an
identity: sidecar.envoy._sds), writes the bootstrap (``<data_dir>/envoy/``),
starts Envoy and waits until its admin port answers; a binary that is
missing or exits at once is a :class:`~sidecar.errors.StartupError`. After
that a supervisor task restarts Envoy whenever it exits, after
``envoy.restart_backoff`` (doubling up to ``envoy.max_restart_backoff``;
back to the first step once it ran a minute). Envoy's output goes to the
sidecar's log, one line each, under ``sidecar.envoy``. :meth:`stop` ends
the supervisor, then Envoy (SIGTERM, SIGKILL after the grace), awaits it,
and stops the SDS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sidecar.config import SidecarConfig
from sidecar.envoy._bootstrap import SDS_SOCKET, bootstrap, envoy_listeners, find_binary
from sidecar.envoy._sds import SecretServer
from sidecar.errors import StartupError

if TYPE_CHECKING:
    from sidecar.identity import SidecarIdentity

__all__ = ["EnvoyProcess"]

logger = logging.getLogger("sidecar.envoy")

_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
except OSError:
    _LIBC = None


def _die_with_the_sidecar() -> None:
    """In the child before exec: SIGTERM when the sidecar dies, even by SIGKILL,
    so that no Envoy outlives it holding the listeners' ports (Linux)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


#: A Unix socket's path is at most this long (Linux's sun_path, less its NUL).
_MAX_SOCKET_PATH = 107
_STABLE = 60.0  # seconds up after which a crash starts the backoff over
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class EnvoyProcess:
    """One supervised Envoy; ``start`` once, ``stop`` (idempotent) once. With
    ``identity``, the sidecar's certificates reach Envoy by SDS (sidecar.envoy._sds)."""

    def __init__(self, config: SidecarConfig, identity: SidecarIdentity | None = None) -> None:
        self.config = config
        self.directory = config.data_dir / "envoy"
        #: Envoy's workload certificates and trust bundle (None: no identity given).
        self.secrets = (
            SecretServer(
                identity,
                [(s.namespace, s.name) for s in config.services],
                self.directory / SDS_SOCKET,
            )
            if identity is not None
            else None
        )
        self.bootstrap_path = self.directory / "bootstrap.json"
        self._admin_path = self.directory / "admin-address"
        self.listeners = envoy_listeners(config)
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._binary: Path | None = None
        #: times Envoy was started again after it exited
        self.restarts = 0
        self.last_exit: int | None = None
        self.admin_address = ""

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def status(self) -> dict[str, Any]:
        if not self.admin_address and self.pid is not None:
            self._read_admin()
        return {
            "binary": str(self._binary or ""),
            "pid": self.pid,
            "admin": self.admin_address,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "listeners": [listener.listen for listener in self.listeners],
        }

    def inbound_port(self, service: str) -> int | None:
        """The port of the inbound listener fronting a local service, if Envoy serves one."""
        for listener in self.listeners:
            if listener.name == f"inbound/{service}":
                return int(listener.spec["port"])
        return None

    async def start(self, timeout: float = 15.0) -> None:
        try:
            self._binary = find_binary(self.config.envoy.binary)
        except FileNotFoundError as exc:
            raise StartupError(str(exc)) from None
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.secrets is not None:
            path = str(self.secrets.path)
            if len(path.encode()) > _MAX_SOCKET_PATH:
                raise StartupError(
                    f"data_dir: {self.config.data_dir} is too long for Envoy's secrets socket "
                    f"({path}: over {_MAX_SOCKET_PATH} bytes); choose a shorter data_dir"
                )
            await self.secrets.start()
        try:
            await self._launch(timeout)
        except BaseException:
            if self.secrets is not None:  # nothing left listening when Envoy did not start
                await self.secrets.stop()
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="envoy-supervisor")
        logger.info(
            "Envoy %s running (pid %s, admin %s): %s",
            self._binary,
            self.pid,
            self.admin_address,
            ", ".join(f"{lst.protocol} {lst.listen}" for lst in self.listeners) or "no listeners",
        )

    async def _launch(self, timeout: float) -> None:
        """Writes the bootstrap, starts Envoy and waits for its admin port."""
        document = json.dumps(bootstrap(self.config), indent=1)
        # The bootstrap may hold the control-plane token: readable by the sidecar's user only.
        descriptor = os.open(self.bootstrap_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(document)
        await self._spawn()
        deadline = time.monotonic() + timeout
        while not self.admin_address:
            proc = self._proc
            assert proc is not None
            if proc.returncode is not None:
                await self._drain_pumps()
                raise StartupError(
                    f"Envoy ({self._binary}) exited with status {proc.returncode} at startup; "
                    "its log lines above say why"
                )
            if time.monotonic() > deadline:
                await self._terminate(1.0)
                raise StartupError(f"Envoy ({self._binary}) did not start within {timeout:g}s")
            self._read_admin()
            await asyncio.sleep(0.05)

    def _read_admin(self) -> None:
        with contextlib.suppress(OSError):
            text = self._admin_path.read_text(encoding="utf-8").strip()
            if text:
                self.admin_address = text

    async def _spawn(self) -> None:
        envoy = self.config.envoy
        with contextlib.suppress(FileNotFoundError):
            self._admin_path.unlink()
        self.admin_address = ""
        self._proc = await asyncio.create_subprocess_exec(
            str(self._binary),
            "--config-path",
            str(self.bootstrap_path),
            "--admin-address-path",
            str(self._admin_path),
            "--concurrency",
            str(envoy.concurrency),
            "--log-level",
            envoy.log_level,
            "--log-format",
            "[%l] %v",
            "--disable-hot-restart",
            # A listener whose rules changed (intentions) closes the connections it
            # holds within a second, instead of over Envoy's default ten minutes.
            "--drain-time-s",
            "1",
            "--drain-strategy",
            "immediate",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C reaches the sidecar, which stops Envoy
            preexec_fn=_die_with_the_sidecar,  # libc loaded before the fork: one syscall
        )
        for stream in (self._proc.stdout, self._proc.stderr):
            assert stream is not None
            task = asyncio.create_task(self._pump(stream), name="envoy-log")
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line past the reader's limit
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            if not text:
                continue
            level = logging.INFO
            if text.startswith("["):
                name, _, rest = text[1:].partition("] ")
                if name in _LEVELS:
                    level, text = _LEVELS[name], rest
            logger.log(level, "envoy: %s", text)

    async def _drain_pumps(self) -> None:
        if self._pumps:
            await asyncio.wait(set(self._pumps), timeout=2.0)

    async def _supervise(self) -> None:
        envoy = self.config.envoy
        backoff = envoy.restart_backoff
        while True:
            proc = self._proc
            assert proc is not None
            started = time.monotonic()
            code = await proc.wait()
            await self._drain_pumps()
            self.last_exit = code
            if self._stopping:
                return
            if time.monotonic() - started > _STABLE:
                backoff = envoy.restart_backoff
            logger.error("Envoy exited with status %s; starting it again in %.1fs", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, envoy.max_restart_backoff)
            try:
                await self._spawn()
            except OSError as exc:
                logger.error("Envoy could not be started again: %s", exc)
                continue
            self.restarts += 1
            logger.info("Envoy started again (pid %s, restart %d)", self.pid, self.restarts)

    async def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self, grace: float = 5.0) -> None:
        """Stops restarting Envoy, then stops it; idempotent."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.wait({self._supervisor})
        await self._terminate(grace)
        await self._drain_pumps()
        for task in list(self._pumps):
            task.cancel()
        if self._pumps:
            await asyncio.wait(set(self._pumps))
        if self.secrets is not None:
            await self.secrets.stop()
