"""Settings of a long-running server process (``eco controlplane``, ``eco sidecar``, ``eco dev``).

Every connection costs a file descriptor, and the usual soft limit is 1,024
(while the hard limit, which a process may raise itself to, is far higher):
a control plane or sidecar with many clients would run out long before its
listeners' connection caps (docs/controlplane.md, docs/bus.md) are reached.
"""

from __future__ import annotations

import logging

__all__ = ["raise_open_files_limit"]

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
