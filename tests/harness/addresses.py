"""How a process started on port 0 tells the tests where it listens: a line it logs.

``eco controlplane`` logs ``control plane R serving on ADDRESS (admin ADDRESS, …``
once it serves, ``eco sidecar`` logs ``sidecar N running: …, local API ADDRESS,
admin ADDRESS`` once it runs, and ``eco dev`` prints ``Control plane ready on
ADDRESS``. The patterns here find those lines in a log file, after the byte
offset where the current run's output starts (a restarted process appends to
the same file).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

__all__ = [
    "CONTROL_PLANE_SERVING",
    "DEV_READY",
    "SIDECAR_RUNNING",
    "port_of",
    "read_addresses",
    "wait_addresses",
]

#: (gRPC address, admin address or "off")
CONTROL_PLANE_SERVING = re.compile(rb"control plane \S+ serving on (\S+) \(admin (\S+?),")
#: (local API address, admin address or "off")
SIDECAR_RUNNING = re.compile(rb"sidecar \S+ running: .*?local API (\S+), admin (\S+)\n")
#: (the control plane's gRPC address,)
DEV_READY = re.compile(rb"Control plane ready on (\S+) ")


def port_of(address: str) -> int:
    """The port of ``host:port``."""
    return int(address.rsplit(":", 1)[1])


def read_addresses(
    log: Path, pattern: re.Pattern[bytes], offset: int = 0
) -> tuple[str, ...] | None:
    """The groups of ``pattern``'s first match in ``log`` after byte ``offset``, or
    None while there is none."""
    try:
        with log.open("rb") as file:
            file.seek(offset)
            found = pattern.search(file.read())
    except OSError:
        return None
    return tuple(g.decode() for g in found.groups()) if found else None


def wait_addresses(
    log: Path,
    pattern: re.Pattern[bytes],
    proc: subprocess.Popen[bytes],
    timeout: float,
    offset: int = 0,
) -> tuple[str, ...]:
    """`read_addresses` once the line is there; fails with the log if ``proc`` exits
    or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while (found := read_addresses(log, pattern, offset)) is None:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{_text(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{proc.args}: no address after {timeout}s:\n{_text(log)}")
        time.sleep(0.02)
    return found


def _text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""
