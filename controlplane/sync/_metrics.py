"""The sync jobs' metrics on the control plane's ``/metrics``.

Read when scraped, from the book (jobs, runs in progress) and from the
scheduler's own counts, so they cannot drift. The counts are this replica's:
only the leader schedules, so sum them over the replicas. What runs did
(files, bytes, durations) is counted where they run: the sidecar's
``/metrics`` (``eco_sidecar_sync_*``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ._book import SyncBook
from ._scheduler import SyncScheduler

__all__ = ["SyncCollector"]


class SyncCollector:
    def __init__(self, book: SyncBook, scheduler: SyncScheduler) -> None:
        self._book = book
        self._scheduler = scheduler

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        book = self._book
        yield GaugeMetricFamily("eco_controlplane_sync_jobs", "Sync jobs", value=len(book.jobs))
        paused = sum(1 for job in book.jobs.values() if job.paused)
        yield GaugeMetricFamily(
            "eco_controlplane_sync_jobs_paused", "Sync jobs paused", value=paused
        )
        yield GaugeMetricFamily(
            "eco_controlplane_sync_runs_active",
            "Sync runs pending or running",
            value=len(book.active),
        )
        yield GaugeMetricFamily(
            "eco_controlplane_sync_watchers",
            "Sidecar streams following their node's sync runs (on this replica)",
            value=book.watcher_count,
        )
        yield CounterMetricFamily(
            "eco_controlplane_sync_runs_scheduled",
            "Sync runs created by this replica's scheduler",
            value=self._scheduler.scheduled,
        )
        yield CounterMetricFamily(
            "eco_controlplane_sync_runs_timed_out",
            "Sync runs failed by this replica's scheduler because their sidecar was silent",
            value=self._scheduler.timed_out,
        )
