"""Settings of a long-running server process (``eco controlplane``, ``eco sidecar``,
``eco gateway``, ``eco dev``), and how the sidecar and the gateway run until a signal.

Every connection costs a file descriptor, and the usual soft limit is 1,024
(while the hard limit, which a process may raise itself to, is far higher):
a control plane or sidecar with many clients would run out long before its
listeners' connection caps (docs/controlplane.md, docs/bus.md) are reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

__all__ = ["Server", "raise_open_files_limit", "serve_until_signal"]

EXIT_FAILURE = 1

log = logging.getLogger(__name__)

#: Below this, warn: the connection caps of the listeners add up to more.
_FEW_FILES = 4096
#: What "unlimited" becomes: Linux refuses a soft limit above fs.nr_open (1 Mi by default).
_UNLIMITED = 1 << 20


def raise_open_files_limit() -> int:
    """Raises this process's soft limit of open files (RLIMIT_NOFILE) to its hard limit,
    logs the limit in force and returns it (``resource.RLIM_INFINITY``: unlimited;
    -1 too where the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        target = soft
    else:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
            target = soft
    shown = "unlimited" if target == resource.RLIM_INFINITY else str(target)
    if target != resource.RLIM_INFINITY and target < _FEW_FILES:
        log.warning(
            "open files limit: %s; raise the hard limit (ulimit -Hn, systemd's LimitNOFILE) "
            "to serve many connections",
            shown,
        )
    else:
        log.info("open files limit: %s", shown)
    return int(target)


class Server(Protocol):
    """What :func:`serve_until_signal` runs: started once, stopped once."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def serve_until_signal(
    make: Callable[[], Server], startup_errors: tuple[type[Exception], ...]
) -> int:
    """Runs the server ``make`` builds (on uvloop where there is one) until SIGTERM
    or SIGINT (a second one exits at once); returns the exit status (1 when it
    could not start: the error, one line, goes to standard error)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_serve(make, startup_errors))
    return uvloop.run(_serve(make, startup_errors))


async def _serve(make: Callable[[], Server], startup_errors: tuple[type[Exception], ...]) -> int:
    from serving.process import tune_gc

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: shutting down (send again to exit at once)", signal.Signals(signum).name)
        stop.set()

    server = make()
    # Installed before start, so a signal during start-up stops cleanly too;
    # removed only once the shutdown is over, so a second one cuts it short.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        try:
            await server.start()
        except startup_errors as err:
            print(f"eco: {err}", file=sys.stderr)
            return EXIT_FAILURE
        tune_gc()
        await stop.wait()
        await server.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
