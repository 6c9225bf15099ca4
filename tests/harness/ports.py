"""Ports for servers that cannot bind port 0 and report the port they got.

Every server the suite can start on ``127.0.0.1:0`` is started so and asked
for its address afterwards (the control plane, the sidecar and its
listeners, nats-server's client port, the proxy backends, aiohttp and gRPC
servers in the test process). `free_port` is for the rest, and only them:

- etcd: a member's peer URL is part of the cluster's configuration
  (``--initial-cluster``) before it starts, and its client URL is advertised
  as given;
- RabbitMQ: its AMQP, Erlang distribution and epmd ports go into its
  configuration and environment;
- Redis: ``--port 0`` turns its TCP listener off;
- a cluster port or an address written into another process's
  configuration before that process starts;
- an address where nothing listens (a dead control plane, an unreachable
  broker).

A port it hands out is free when it is chosen and never handed out again in
the run: a port chosen for one server and not bound yet (an etcd member not
started yet, say) must not be chosen again for another. The suite runs in
several worker processes (pytest-xdist), so "the run" is all of them: the
ports handed out are kept in a file the workers share, under a lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path

__all__ = ["free_port", "ledger_for"]

# One file per run: pytest-xdist gives every worker of a run the same id; a
# run without workers keeps its own file (its process id).
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"


def ledger_for(run: str) -> Path:
    """The file of the ports a run handed out (the suite removes it when the run ends)."""
    return Path(tempfile.gettempdir()) / f"eco-test-ports-{run}"


_LEDGER = ledger_for(_RUN)


def free_port() -> int:
    """A 127.0.0.1 port free now and not handed out before in this run (by any worker)."""
    with _LEDGER.open("a+") as ledger:
        fcntl.flock(ledger, fcntl.LOCK_EX)
        ledger.seek(0)
        handed_out = {int(line) for line in ledger.read().split()}
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in handed_out:
                ledger.write(f"{port}\n")
                ledger.flush()
                return port
