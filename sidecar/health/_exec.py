"""Running an exec check: a child in its own process group, killed whole at the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from sdk import HealthStatus
from sidecar.health._duration import format_duration
from sidecar.health._probe import OUTPUT_LIMIT, ProbeResult

__all__ = ["run_command"]

logger = logging.getLogger(__name__)

_CHUNK = 4096


async def run_command(argv: tuple[str, ...], timeout: float) -> ProbeResult:
    """Runs ``argv``; exit 0 is PASSING, 1 WARNING, anything else CRITICAL.

    The child starts a new session, so it and everything it starts share a
    process group; when ``timeout`` passes before it exits and closes its
    output, the whole group gets SIGKILL and the child is reaped. The same
    happens when the probe is cancelled. Output (stdout and stderr together)
    is kept up to :data:`OUTPUT_LIMIT` bytes; the rest is read and dropped so
    a chatty command cannot block on a full pipe.
    """
    try:
        proc = await _spawn(argv)
    except OSError as exc:
        return ProbeResult(HealthStatus.CRITICAL, f"cannot run {argv[0]!r}: {exc.strerror or exc}")
    output = bytearray()
    try:
        async with asyncio.timeout(timeout):
            assert proc.stdout is not None
            await _drain(proc.stdout, output)
            code = await proc.wait()
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        text = f"timed out after {format_duration(timeout)}; process group killed"
        partial = _text(output)
        return ProbeResult(HealthStatus.CRITICAL, f"{text}\n{partial}" if partial else text)
    finally:
        if proc.returncode is None:  # cancelled: leave nothing running behind
            _kill_group(proc.pid)
            await proc.wait()
    return ProbeResult(_status_of(code), _describe(code, _text(output)))


async def _spawn(argv: tuple[str, ...]) -> asyncio.subprocess.Process:
    """Starts the child. The process exists before its pipes are connected:
    a probe cancelled in between still has it killed, not left running."""
    spawning = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            proc = await spawning
            _kill_group(proc.pid)
            await proc.wait()
        raise


async def _drain(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(_CHUNK):
        room = OUTPUT_LIMIT - len(into)
        if room > 0:
            into += chunk[:room]


def _kill_group(pgid: int) -> None:
    # With start_new_session the child leads its own group: pgid == pid. The
    # id cannot be reused while any member of the group is alive.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _status_of(code: int) -> HealthStatus:
    if code == 0:
        return HealthStatus.PASSING
    if code == 1:
        return HealthStatus.WARNING
    return HealthStatus.CRITICAL


def _describe(code: int, text: str) -> str:
    if code == 0:
        return text or "exit status 0"
    if code < 0:
        try:
            head = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            head = f"killed by signal {-code}"
    else:
        head = f"exit status {code}"
    return f"{head}: {text}" if text else head


def _text(output: bytearray) -> str:
    return output.decode("utf-8", "replace").strip()
