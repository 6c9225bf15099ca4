"""What the harness's server processes share: a process of the test's own in a
directory of its own, its log there, and a stop that leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
from pathlib import Path

__all__ = ["EcoProcess", "OwnedProcess"]


class OwnedProcess:
    """A server process (``_proc``) and its directory (``_dir``), whose log is
    ``_dir / LOG_NAME``; a subclass starts them."""

    LOG_NAME = "server.log"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    def log(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / self.LOG_NAME).read_text(errors="replace")
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
            proc.send_signal(signal.SIGCONT)  # one stopped (SIGSTOP) too
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class EcoProcess:
    """An ``eco`` command run by a test as an asyncio subprocess (``proc``),
    its output in ``log_path``; a subclass starts it and reads its addresses."""

    proc: asyncio.subprocess.Process | None
    log_path: Path

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), 15)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
