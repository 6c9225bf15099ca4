"""Sync runs as bus messages: ``eco.sync.<job>.started|completed|failed``.

The control plane publishes them, not the sidecars: a run's transitions are
committed in the store (a claim and a report by whichever replica the sidecar
reached, a timeout by the leader), and one leader-only
:class:`~controlplane.events.EventPublisher` follows the runs' keys from the
revision it last persisted, as it does for registry events. So each
transition is published once, after a restart or a failover too; a replay of
the few events between the last persisted revision and a crash carries the
same message id (``sync:<job>:<number>:<kind>``), which a durable stream's
duplicate window drops. Payload (JSON): ``controlplane.sync.run_dict``.

A run that ends GUARDED (the deletion guard stopped it) is published as
``failed`` with ``"status": "guarded"``: the data is not in step.
"""

from __future__ import annotations

import json

from ecosystem.v1 import sync_pb2 as spb

from bus import OutgoingMessage
from controlplane.registry import ROOT_PREFIX
from controlplane.store import Event, EventType

from ._book import RUNS_PREFIX, run_dict

__all__ = ["SYNC_EVENTS_REVISION_KEY", "SYNC_SUBJECT_PREFIX", "build_run_message", "sync_subject"]

SYNC_SUBJECT_PREFIX = "eco.sync"
#: Where the sync events' publisher keeps the last revision it published.
SYNC_EVENTS_REVISION_KEY = ROOT_PREFIX + "meta/sync-events-revision"

_KIND = {
    spb.SYNC_RUN_STATUS_RUNNING: "started",
    spb.SYNC_RUN_STATUS_COMPLETED: "completed",
    spb.SYNC_RUN_STATUS_FAILED: "failed",
    spb.SYNC_RUN_STATUS_GUARDED: "failed",
}


def sync_subject(job: str, kind: str) -> str:
    return f"{SYNC_SUBJECT_PREFIX}.{job}.{kind}"


def build_run_message(revision: int, event: Event) -> OutgoingMessage | None:
    """The message for one store event of a run key (None: not a transition)."""
    if event.type is not EventType.PUT or not event.kv.key.startswith(RUNS_PREFIX):
        return None
    run = spb.SyncRun.FromString(event.kv.value)
    kind = _KIND.get(run.status)
    if kind is None:
        return None
    if event.prev_kv is not None:
        before = spb.SyncRun.FromString(event.prev_kv.value).status
        if before == run.status:
            return None  # a heartbeat
    run.revision = revision
    payload = {"event": kind, "revision": revision, **run_dict(run)}
    return OutgoingMessage(
        subject=sync_subject(run.job, kind),
        data=json.dumps(payload, separators=(",", ":")).encode(),
        headers={"eco-revision": str(revision), "eco-event-type": kind},
        id=f"sync:{run.job}:{run.number}:{kind}",
    )
