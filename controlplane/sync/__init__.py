"""Scheduled data-sync jobs, kept in the control plane (SyncService).

Jobs and runs live in the store under ``/ecosystem/v1/sync/`` (``_book``),
so every replica answers for them; the elected replica schedules runs
(``_scheduler``, with the due-time rules of ``_schedule``) and publishes their
transitions on the bus (``_events``); a sidecar on the job's node claims and
runs them. See docs/sync-jobs.md.
"""

from __future__ import annotations

from ._book import ACTIVE, JOBS_PREFIX, RUNS_PREFIX, SYNC_PREFIX, Plan, SyncBook, run_dict
from ._events import SYNC_EVENTS_REVISION_KEY, SYNC_SUBJECT_PREFIX, build_run_message, sync_subject
from ._metrics import SyncCollector
from ._schedule import MAX_JITTER, Slots, first_slot, jitter, schedule_key, slots_through
from ._scheduler import SchedulerConfig, SyncScheduler
from ._servicer import MAX_REPORT_BYTES, SYNC_SERVICE, SyncServicer
from ._validation import CONFLICTS, MODES, SCHEMES, cron_problem, job_violations

__all__ = [
    "ACTIVE",
    "CONFLICTS",
    "JOBS_PREFIX",
    "MAX_JITTER",
    "MAX_REPORT_BYTES",
    "MODES",
    "RUNS_PREFIX",
    "SCHEMES",
    "SYNC_EVENTS_REVISION_KEY",
    "SYNC_PREFIX",
    "SYNC_SERVICE",
    "SYNC_SUBJECT_PREFIX",
    "Plan",
    "SchedulerConfig",
    "Slots",
    "SyncBook",
    "SyncCollector",
    "SyncScheduler",
    "SyncServicer",
    "build_run_message",
    "cron_problem",
    "first_slot",
    "jitter",
    "job_violations",
    "run_dict",
    "schedule_key",
    "slots_through",
    "sync_subject",
]
