"""Settings of a long-running server process, shared by the control plane and the sidecar."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc() -> None:
    """Collector settings for a long-running server process (call once started).

    A server keeps many long-lived objects (a control plane's instances,
    history and leases; every process's modules, gRPC and protobuf state);
    with the default thresholds a full collection walks all of them every few
    seconds under load and stalls the event loop for tens of milliseconds,
    which every watcher or message in flight then sees as latency. Objects
    alive after start-up are moved out of the collector's sight, and young
    collections run less often (each is still cheap), so full ones become
    rare.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)
