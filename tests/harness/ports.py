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
started yet, say) must not be chosen again for another.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A 127.0.0.1 port free now and not handed out before in this run."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
