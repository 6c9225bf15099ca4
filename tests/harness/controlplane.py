"""`eco controlplane` as a real subprocess that tests can kill and restart.

The process listens on ``127.0.0.1:0`` (gRPC and admin HTTP) and reports the
addresses it bound in the line it logs once it serves
(`tests.harness.addresses`); `ControlPlaneProcess.start` waits for that line
and reads them from it. A restart binds the same ports again, so that sidecars
and clients find it where it was.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.harness.addresses import CONTROL_PLANE_SERVING, port_of, wait_addresses

__all__ = ["ECO", "ControlPlaneProcess"]

#: The ``eco`` command of the environment the tests run in.
ECO = Path(sys.executable).with_name("eco")


class ControlPlaneProcess:
    """One `eco controlplane`: on ports of its own choosing at the first start, and on
    the same ones at every restart, with the same store."""

    def __init__(
        self,
        store_url: str,
        log_path: Path,
        extra_args: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        assert ECO.exists(), f"{ECO} is missing: run 'make install'"
        self.store_url = store_url
        self.extra_args = tuple(extra_args)
        self.cwd = cwd
        #: 0 until the first start has bound them
        self.port = 0
        self.admin_port = 0
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        assert self.port, "the control plane has not been started yet: it has no address"
        return f"127.0.0.1:{self.port}"

    @property
    def admin_address(self) -> str:
        assert self.admin_port, "the control plane has not been started yet: it has no address"
        return f"127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 20.0) -> None:
        """Starts the process; returns once it serves (its health is SERVING)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(ECO),
                    "controlplane",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    "--admin-listen",
                    f"127.0.0.1:{self.admin_port}",
                    "--store",
                    self.store_url,
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
        address, admin = wait_addresses(
            self.log_path, CONTROL_PLANE_SERVING, self.proc, timeout, offset
        )
        self.port, self.admin_port = port_of(address), port_of(admin)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
