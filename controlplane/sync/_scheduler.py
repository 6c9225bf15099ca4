"""The sync scheduler: runs only on the elected replica (``Election.while_leader``).

Each step looks at every job in the :class:`SyncBook` at one moment (the
clock is injected, so the rules are tested without waiting):

- A job without a plan, or whose schedule changed, is planned: its first slot
  (now for ``every``, the next firing for cron) plus a jitter.
- A job whose run is due and that has no pending or running run gets one
  (PENDING, on the job's node or offered to its platform's sidecars, with a
  copy of the job's settings), and its next slot is planned. A run that
  starts late covers every slot up to now (``slots``): missed runs after an
  outage, a failover or a long previous run run once, not N times.
- A paused job's slots pass unrun (its plan moves on), so resuming it does
  not start a run at once.
- A run that no sidecar claims within ``claim_timeout``, or whose sidecar
  sends no heartbeat for ``run_timeout``, is FAILED with the reason. A new
  leader counts both from the start of its term, not before: sidecars could
  not report while no replica led.

Every write is one store transaction guarded by the revisions the step read
(the job's, the plan's, the run's), so a deposed leader's late step, or a
change made meanwhile, makes it fail harmlessly, to be looked at again at the
next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ecosystem.v1 import sync_pb2 as spb

from controlplane.catalog import resolve_datasets
from controlplane.store import Compare, DeleteOp, Op, PutOp, StoreClosed, StoreError
from serving.errors import UnavailableError

from ._book import Plan, SyncBook, job_key, run_key, state_key
from ._schedule import first_slot, jitter, schedule_key, slots_through

__all__ = ["SchedulerConfig", "SyncScheduler"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How often the scheduler looks, and when it gives up on a run."""

    #: seconds between steps (a change in the book wakes it earlier)
    tick: float = 0.25
    #: a pending run no sidecar claimed within this many seconds fails
    claim_timeout: float = 300.0
    #: a running run whose sidecar sent no heartbeat for this many seconds fails
    run_timeout: float = 60.0
    #: runs kept per job (older ones are deleted as new ones are made)
    history: int = 100
    max_jitter: float = 30.0

    def __post_init__(self) -> None:
        if not self.tick > 0 or not self.claim_timeout > 0 or not self.run_timeout > 0:
            raise ValueError("tick, claim_timeout and run_timeout must be > 0")
        if self.history < 1:
            raise ValueError("history must be at least 1")
        if self.max_jitter < 0:
            raise ValueError("max_jitter must not be negative")


class SyncScheduler:
    """Plans jobs, creates their runs, fails runs that time out (see the module
    docstring). ``run()`` is the leader-only work; ``step()`` one look."""

    def __init__(
        self,
        book: SyncBook,
        config: SchedulerConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.book = book
        self.config = config or SchedulerConfig()
        self._clock = clock
        self._rng = rng or random.Random()
        self._term_start = 0.0
        #: runs created, and runs failed for a timeout, by this scheduler
        self.scheduled = 0
        self.timed_out = 0

    async def run(self) -> None:
        """Steps until cancelled (the election cancels it when this replica stops leading)."""
        self._term_start = self._clock()
        log.info("sync scheduler started (%d job(s))", len(self.book.jobs))
        try:
            while True:
                changed = self.book.changed
                try:
                    await self.book.wait_for(self.book.store.revision)
                    await self.step()
                except StoreClosed:
                    raise
                except (StoreError, UnavailableError) as exc:  # the book is behind
                    log.warning("sync scheduler step failed (%s); trying again", exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.tick):
                        await changed.wait()
        finally:
            log.info("sync scheduler stopped")

    async def step(self) -> None:
        """Looks at every job once, at the clock's current time."""
        now = self._clock()
        for job in list(self.book.jobs.values()):
            try:
                await self._look(job, now)
            except StoreClosed:
                raise
            except StoreError as exc:
                log.warning("sync job %s: scheduling failed (%s); again next step", job.name, exc)

    async def _look(self, job: spb.SyncJob, now: float) -> None:
        name = job.name
        active = self.book.active.get(name)
        if active is not None and await self._timed_out(active, now):
            active = None
        plan = self.book.plans.get(name)
        key = schedule_key(job)
        if plan is None or plan.schedule != key:
            slot = first_slot(job, now)
            fresh = Plan(slot, slot + self._jitter(job, slot), key, plan.last if plan else 0)
            await self._write(job, plan, fresh, [])
            return
        if now < plan.due or active is not None:
            return  # not due, or due once the run in progress ends (coalesced)
        slots = slots_through(job, plan.slot, now)
        following = slots.next_slot
        if job.paused:
            moved = Plan(following, following + self._jitter(job, following), key, plan.last)
            await self._write(job, plan, moved, [])
            return
        number = plan.last + 1
        spec = spb.SyncJob()
        spec.CopyFrom(job)
        for field in ("revision", "next_run_at_ms", "last_run", "last_status"):
            spec.ClearField(field)
        # dataset:NAME ends become the datasets' locations as they are now.
        unresolved = await resolve_datasets(self.book.store, spec)
        run = spb.SyncRun(
            job=name,
            number=number,
            node=job.on_node,
            platform=job.on_platform,
            status=spb.SYNC_RUN_STATUS_FAILED if unresolved else spb.SYNC_RUN_STATUS_PENDING,
            scheduled_at_ms=int(now * 1000),
            finished_at_ms=int(now * 1000) if unresolved else 0,
            error=unresolved,
            spec=spec,
            slots=slots.covered,
        )
        ops: list[Op] = [PutOp(run_key(name, number), run.SerializeToString(deterministic=True))]
        if number > self.config.history:
            ops.append(DeleteOp(run_key(name, number - self.config.history)))
        planned = Plan(following, following + self._jitter(job, following), key, number)
        if await self._write(job, plan, planned, ops, [Compare(ops[0].key, "version", "==", 0)]):
            self.scheduled += 1
            log.info(
                "sync run %s#%d scheduled on %s%s",
                name,
                number,
                _where(run),
                f" (covers {slots.covered} slots)" if slots.covered > 1 else "",
            )

    def _jitter(self, job: spb.SyncJob, around: float) -> float:
        return jitter(job, around, self._rng, self.config.max_jitter)

    async def _write(
        self,
        job: spb.SyncJob,
        old: Plan | None,
        new: Plan,
        ops: list[Op],
        compares: list[Compare] | None = None,
    ) -> bool:
        """Writes the plan (and ``ops``) if the job and the plan are as read."""
        key = state_key(job.name)
        guards = [
            Compare(job_key(job.name), "mod_revision", "==", job.revision),
            Compare(key, "mod_revision", "==", old.revision if old else 0),
            *(compares or []),
        ]
        result = await self.book.store.txn(guards, [*ops, PutOp(key, new.encode())])
        if not result.succeeded:
            log.debug("sync job %s changed under the scheduler; looking again", job.name)
        return result.succeeded

    async def _timed_out(self, run: spb.SyncRun, now: float) -> bool:
        """Fails ``run`` when its sidecar is overdue; True when it did."""
        since = self._term_start * 1000
        if run.status == spb.SYNC_RUN_STATUS_PENDING:
            waited = now * 1000 - max(run.scheduled_at_ms, since)
            limit = self.config.claim_timeout
            if run.node:
                reason = (
                    f"no sidecar on node {run.node!r} claimed the run within {limit:g}s "
                    f"(is a sidecar with node id {run.node!r} running and connected?)"
                )
            else:
                reason = (
                    f"no sidecar of platform {run.platform!r} claimed the run within "
                    f"{limit:g}s (is a sidecar with node.platform {run.platform!r} running "
                    "and connected?)"
                )
        else:
            waited = now * 1000 - max(run.heartbeat_at_ms, since)
            limit = self.config.run_timeout
            reason = (
                f"the sidecar on node {run.node!r} went silent: no heartbeat for {limit:g}s "
                "(stopped or cut off while running)"
            )
        if waited <= limit * 1000:
            return False
        failed = spb.SyncRun()
        failed.CopyFrom(run)
        failed.status = spb.SYNC_RUN_STATUS_FAILED
        failed.finished_at_ms = int(now * 1000)
        failed.error = reason
        if await self.book.replace_run(failed) is None:
            return False  # it moved meanwhile (claimed, reported): look again next step
        self.timed_out += 1
        log.warning("sync run %s#%d failed: %s", run.job, run.number, reason)
        return True


def _where(run: spb.SyncRun) -> str:
    return f"platform {run.platform}" if run.platform and not run.node else f"node {run.node}"
