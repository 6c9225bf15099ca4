"""When a job's runs are due: slots from ``every`` or a cron expression, and jitter.

Pure functions of a job and a time (seconds since the epoch), so the
scheduler's rules are tested with an injected clock and no store:

- A job's slots are the times it is meant to run: ``every`` seconds from its
  first slot (the moment the scheduler first planned it), or each time its
  cron expression fires (UTC).
- A run is *due* at its slot plus a jitter (up to a tenth of the interval, at
  most ``max_jitter``), so that many jobs on one schedule do not all start in
  the same second.
- When a run starts late (the scheduler was away, a previous run was still
  going), every slot up to now is covered by that one run, and the next slot
  is the first after now: missed runs run once, not N times.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from cronsim import CronSim
from ecosystem.v1 import sync_pb2 as spb

__all__ = ["MAX_JITTER", "Slots", "first_slot", "jitter", "schedule_key", "slots_through"]

#: The largest jitter added to a slot, in seconds.
MAX_JITTER = 30.0
# Slots counted when a cron job was away for long (an every-minute job down a
# month): the count is for the run's record, capped to keep the walk short.
_MAX_COUNTED = 10_000


def schedule_key(job: spb.SyncJob) -> str:
    """The schedule as one string: a change of it re-plans the job."""
    if job.WhichOneof("schedule") == "cron":
        return f"cron:{job.cron}"
    return f"every:{job.every_seconds:g}"


def _cron_after(expression: str, when: float) -> float:
    start = datetime.fromtimestamp(when, UTC)
    return next(CronSim(expression, start)).timestamp()


def _interval(job: spb.SyncJob, around: float) -> float:
    """The time between two slots (for a cron job, the two after ``around``)."""
    if job.WhichOneof("schedule") == "cron":
        first = _cron_after(job.cron, around)
        return _cron_after(job.cron, first) - first
    return job.every_seconds


def jitter(
    job: spb.SyncJob, around: float, rng: random.Random, max_jitter: float = MAX_JITTER
) -> float:
    """A random delay for the slot near ``around``: up to a tenth of the
    interval, at most ``max_jitter`` seconds."""
    return rng.uniform(0.0, min(_interval(job, around) / 10, max_jitter))


def first_slot(job: spb.SyncJob, now: float) -> float:
    """The first slot of a job planned at ``now``: now itself for ``every``
    (a new job runs soon), the next firing for cron."""
    if job.WhichOneof("schedule") == "cron":
        return _cron_after(job.cron, now)
    return now


@dataclass(frozen=True, slots=True)
class Slots:
    """The slots a run started at ``now`` covers, and the next one."""

    covered: int
    next_slot: float


def slots_through(job: spb.SyncJob, slot: float, now: float) -> Slots:
    """How many slots from ``slot`` (due, ≤ now) up to ``now`` one run covers,
    and the first slot after ``now``."""
    if now < slot:
        return Slots(0, slot)
    if job.WhichOneof("schedule") == "cron":
        covered, following = 1, _cron_after(job.cron, slot)
        while following <= now:
            covered += 1
            if covered >= _MAX_COUNTED:
                following = _cron_after(job.cron, now)
                break
            following = _cron_after(job.cron, following)
        return Slots(covered, following)
    every = job.every_seconds
    steps = math.floor((now - slot) / every) + 1
    return Slots(steps, slot + steps * every)
