"""The health engine: every check of a sidecar, one scheduler, edge-triggered transitions.

Design, for a thousand checks at one-second intervals on a fraction of a
core: there is no task per check. One scheduler task keeps a heap of next
deadlines (probes to start, TTLs to expire); each time it wakes it takes
everything due (when it wakes for the first deadline, the probes due within
the next min(50ms, 5% of their interval) start with it, in one batch), and
starts one
short-lived probe task per due check, at most ``max_concurrent_probes`` at once (the
rest wait in a ready queue, in deadline order). A probe task records its
result, schedules the check's next run and ends. Every task is tracked and
``close()`` cancels and awaits them all.

Timing per check: the first probe starts at a random moment within
``min(interval, 1s)`` of the check being added (or of ``start()``), then each
next one an ``interval`` after the previous one started, give or take the
check's ``jitter`` — so many checks spread out over the interval instead of
firing in lockstep. A check never has two probes in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import heapq
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

from sdk import HealthStatus
from sidecar.health._base import CheckConfig, ProbeCheckConfig
from sidecar.health._checker import NetworkHealthChecker
from sidecar.health._clock import Clock, LoopClock
from sidecar.health._errors import (
    CheckNotFoundError,
    DuplicateCheckError,
    EngineClosedError,
    NotATtlCheckError,
)
from sidecar.health._kinds import TtlCheckConfig
from sidecar.health._probe import HealthChecker, Probe, ProbeResult, clip_output, fit_outputs
from sidecar.health._state import CheckDetail, CheckState, HealthTransition, worst_status
from sidecar.health._stream import TransitionStream

__all__ = ["HealthEngine", "TransitionCallback"]

logger = logging.getLogger(__name__)

TransitionCallback = Callable[[HealthTransition], object]

#: A probe may start this early (at most; and at most EARLY_FRACTION of its
#: interval) so that probes due close together start in one batch: fewer
#: wake-ups of the scheduler, and their I/O completes in shared loop turns.
EARLY_MAX = 0.05
EARLY_FRACTION = 0.05
#: The first probe of a new check starts within min(interval, this) seconds.
FIRST_PROBE_SPREAD = 1.0
TTL_EXPIRED = "TTL expired"


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class _Check:
    """The engine's record of one check: its state and its place in the schedule."""

    __slots__ = (
        "config",
        "due",
        "early",
        "interval",
        "jitter",
        "probe",
        "removed",
        "seq",
        "state",
        "task",
    )

    def __init__(self, state: CheckState, probe: Probe | None) -> None:
        self.state = state
        self.config = state.config
        self.probe = probe
        self.seq = 0  # the live heap entry's sequence number; 0 when none
        self.task: asyncio.Task[None] | None = None
        # Probes: when the current (or last) probe was due. TTL: when it expires.
        self.due = 0.0
        self.removed = False
        if isinstance(self.config, ProbeCheckConfig):
            self.interval = self.config.interval
            self.jitter = self.config.jitter
            self.early = min(EARLY_MAX, self.interval * EARLY_FRACTION)
        else:
            self.interval = self.jitter = self.early = 0.0


class HealthEngine:
    """Owns every health check of a sidecar and reports their transitions.

    Usage::

        async with HealthEngine(on_transition=send) as engine:
            check_id = engine.add("web-1", parse_check({"http": url, "interval": "1s"}))
            engine.status("web-1")          # the instance's aggregate
            engine.checks("web-1")          # per-check detail

    Transitions are edge-triggered: one :class:`HealthTransition` each time a
    check's *reported* status changes (after hysteresis), never one per
    probe. They go to ``on_transition`` (called inline; it must not block,
    and what it raises is logged) and to every :meth:`subscribe` stream.

    Checks may be added before ``start()``; nothing runs until then. The
    engine closes the checker it created, not one it was given. After
    ``close()`` it cannot be restarted.
    """

    def __init__(
        self,
        checker: HealthChecker | None = None,
        *,
        clock: Clock | None = None,
        on_transition: TransitionCallback | None = None,
        max_concurrent_probes: int = 512,
        rng: random.Random | None = None,
    ) -> None:
        if max_concurrent_probes < 1:
            raise ValueError("max_concurrent_probes must be at least 1")
        self._own_checker = checker is None
        self._checker: HealthChecker = checker or NetworkHealthChecker()
        self._clock = clock
        self._on_transition = on_transition
        self._max = max_concurrent_probes
        self._rng = rng or random.Random()
        self._state = _State.NEW
        self._checks: dict[str, _Check] = {}
        self._instances: dict[str, dict[str, _Check]] = {}
        self._heap: list[tuple[float, int, _Check]] = []
        self._seq = itertools.count(1)
        self._ready: deque[_Check] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._streams: set[TransitionStream] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wait_target = math.inf
        self._probes_started = 0

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Starts probing (idempotent while running)."""
        if self._state is _State.CLOSED:
            raise EngineClosedError("the health engine is closed")
        if self._state is _State.RUNNING:
            return
        self._loop = asyncio.get_running_loop()
        if self._clock is None:
            self._clock = LoopClock(self._loop)
        self._state = _State.RUNNING
        for check in self._checks.values():
            self._schedule_first(check)
        self._scheduler = self._loop.create_task(self._run(), name="health-scheduler")
        self._scheduler.add_done_callback(_log_crash)
        logger.info("health engine started with %d checks", len(self._checks))

    async def close(self) -> None:
        """Stops the scheduler and every probe, awaiting them; ends every stream. Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        tasks = list(self._tasks)
        if self._scheduler is not None:
            tasks.append(self._scheduler)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._scheduler = None
        self._heap.clear()
        self._ready.clear()
        for check in self._checks.values():
            check.removed = True
            if check.probe is not None and isinstance(check.config, ProbeCheckConfig):
                self._checker.release(check.config)
        if self._own_checker:
            await self._checker.close()
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()
        logger.info("health engine closed")

    async def __aenter__(self) -> HealthEngine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- checks ---------------------------------------------------------------

    def add(self, instance_id: str, config: CheckConfig) -> str:
        """Adds a check to an instance and returns its id, ``"<instance_id>:<name>"``.

        The check starts in its ``initial_status``; adding it emits no
        transition. Raises DuplicateCheckError if the instance already has a
        check of that name.
        """
        self._ensure_open()
        if not instance_id:
            raise ValueError("instance_id cannot be empty")
        check_id = f"{instance_id}:{config.name}"
        if check_id in self._checks:
            raise DuplicateCheckError(check_id)
        now = self._clock.time() if self._clock is not None else _wall()
        state = CheckState(check_id, instance_id, config, now)
        probe = self._checker.prepare(config) if isinstance(config, ProbeCheckConfig) else None
        check = _Check(state, probe)
        self._checks[check_id] = check
        self._instances.setdefault(instance_id, {})[check_id] = check
        if self._state is _State.RUNNING:
            self._schedule_first(check)
        logger.debug("health check %s added (%s)", check_id, config.target)
        return check_id

    def remove(self, check_id: str) -> None:
        """Removes a check, cancelling its probe if one runs; emits no transition."""
        self._ensure_open()
        check = self._checks.pop(check_id, None)
        if check is None:
            raise CheckNotFoundError(check_id)
        check.removed = True
        check.seq = 0
        instance_id = check.state.instance_id
        siblings = self._instances[instance_id]
        del siblings[check_id]
        if not siblings:
            del self._instances[instance_id]
        if check.task is not None:
            check.task.cancel()
        if isinstance(check.config, ProbeCheckConfig):
            self._checker.release(check.config)
        logger.debug("health check %s removed", check_id)

    def remove_instance(self, instance_id: str) -> list[str]:
        """Removes every check of an instance; returns their ids."""
        ids = list(self._instances.get(instance_id, ()))
        for check_id in ids:
            self.remove(check_id)
        return ids

    def update_ttl(self, check_id: str, status: HealthStatus | str, note: str = "") -> None:
        """Reports a TTL check's status (what the local API's UpdateTTL call does).

        Sets status and output at once (no hysteresis for TTL checks) and
        restarts the TTL. ``status`` is PASSING, WARNING or CRITICAL in any
        case. Raises CheckNotFoundError, NotATtlCheckError, or ValueError
        for another status.
        """
        self._ensure_open()
        check = self._checks.get(check_id)
        if check is None:
            raise CheckNotFoundError(check_id)
        config = check.config
        if not isinstance(config, TtlCheckConfig):
            raise NotATtlCheckError(check_id, config.kind)
        value = HealthStatus.parse(status)
        if value is HealthStatus.UNKNOWN:
            raise ValueError("a TTL update must be PASSING, WARNING or CRITICAL")
        self._apply(check, value, note, force=True)
        if self._state is _State.RUNNING:
            assert self._clock is not None
            check.due = self._clock.monotonic() + config.ttl
            # One heap entry per TTL check however often the application
            # reports: a live entry is moved on when it comes up (see _run).
            if check.seq == 0:
                self._push(check, check.due)

    # -- reading --------------------------------------------------------------

    def status(self, instance_id: str) -> HealthStatus:
        """The instance's aggregate: the worst of its checks (PASSING if it has none)."""
        checks = self._instances.get(instance_id)
        if not checks:
            return HealthStatus.PASSING
        return worst_status(c.state.status for c in checks.values())

    def checks(self, instance_id: str) -> list[CheckDetail]:
        """Per-check detail of an instance, in the order the checks were added; outputs
        that add up to more than the control plane takes for one instance (32 KiB) are
        cut, the longest first, to an even share of what the short ones leave."""
        details = [c.state.detail() for c in self._instances.get(instance_id, {}).values()]
        cap = fit_outputs([len(d.output) for d in details])
        if cap is None:
            return details
        return [
            d if len(d.output) <= cap else dataclasses.replace(d, output=clip_output(d.output, cap))
            for d in details
        ]

    def check(self, check_id: str) -> CheckDetail:
        check = self._checks.get(check_id)
        if check is None:
            raise CheckNotFoundError(check_id)
        return check.state.detail()

    def instances(self) -> list[str]:
        """Instances with at least one check."""
        return list(self._instances)

    def subscribe(self) -> TransitionStream:
        """A stream of every transition from now on (see :class:`TransitionStream`)."""
        self._ensure_open()
        stream = TransitionStream(self._streams.discard)
        self._streams.add(stream)
        return stream

    @property
    def in_flight(self) -> int:
        """Probes running now."""
        return self._in_flight

    @property
    def probes_started(self) -> int:
        """Probes started since the engine was created (for metrics and benchmarks)."""
        return self._probes_started

    # -- scheduling -----------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._state is _State.CLOSED:
            raise EngineClosedError("the health engine is closed")

    def _schedule_first(self, check: _Check) -> None:
        assert self._clock is not None
        now = self._clock.monotonic()
        config = check.config
        if isinstance(config, TtlCheckConfig):
            check.due = now + config.ttl
            self._push(check, check.due)
            return
        spread = min(check.interval, FIRST_PROBE_SPREAD) if check.jitter > 0 else 0.0
        self._push(check, now + self._rng.random() * spread)

    def _push(self, check: _Check, deadline: float) -> None:
        seq = next(self._seq)
        check.seq = seq
        heapq.heappush(self._heap, (deadline, seq, check))
        if deadline < self._wait_target:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self) -> None:
        assert self._clock is not None and self._loop is not None
        clock, loop, heap, ready = self._clock, self._loop, self._heap, self._ready
        while True:
            now = clock.monotonic()
            while heap:
                deadline, seq, check = heap[0]
                if deadline - check.early > now:
                    break
                heapq.heappop(heap)
                if check.seq != seq:
                    continue  # superseded or removed
                check.seq = 0
                if check.probe is None:
                    if check.due > now:
                        self._push(check, check.due)  # reported since: not expired yet
                    else:
                        self._expire(check)
                else:
                    check.due = deadline
                    ready.append(check)
            while ready and self._in_flight < self._max:
                check = ready.popleft()
                if not check.removed:
                    self._launch(check)
            # Sleep until the first deadline, not the first "may start early"
            # moment: that is what gathers the checks due soon after into one batch.
            target = heap[0][0] if heap else math.inf
            self._waiter = loop.create_future()
            self._wait_target = target
            handle = clock.call_at(target, self._wake) if heap else None
            try:
                await self._waiter
            finally:
                if handle is not None:
                    handle.cancel()
                self._waiter = None
                self._wait_target = math.inf

    def _launch(self, check: _Check) -> None:
        assert self._loop is not None
        self._in_flight += 1
        self._probes_started += 1
        task = self._loop.create_task(self._run_probe(check))
        check.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_probe(self, check: _Check) -> None:
        assert check.probe is not None and self._clock is not None
        try:
            try:
                result = await check.probe()
            except Exception as exc:  # a checker bug must not stop the schedule
                logger.warning("health probe %s failed: %r", check.state.check_id, exc)
                result = ProbeResult(HealthStatus.CRITICAL, f"probe error: {exc!r}")
            if not check.removed:
                self._apply(check, result.status, result.output, force=False)
        finally:
            check.task = None
            self._in_flight -= 1
            if self._ready:
                self._wake()
            if not check.removed and self._state is _State.RUNNING:
                now = self._clock.monotonic()
                jitter = check.jitter
                wait = check.interval
                if jitter:
                    wait *= 1.0 + jitter * (2.0 * self._rng.random() - 1.0)
                # From when it was due, not when it started: starting early
                # (batching) or late (a full ready queue) does not drift the cadence.
                self._push(check, max(check.due + wait, now))

    def _expire(self, check: _Check) -> None:
        self._apply(check, HealthStatus.CRITICAL, TTL_EXPIRED, force=True)

    def _apply(self, check: _Check, status: HealthStatus, output: str, *, force: bool) -> None:
        assert self._clock is not None or self._state is _State.NEW
        # The one place every output passes: probes, TTL notes, expiry.
        output = clip_output(output)
        now = self._clock.time() if self._clock is not None else _wall()
        state = check.state
        old = state.force(status, output, now) if force else state.record(status, output, now)
        if old is None:
            return
        transition = HealthTransition(
            instance_id=state.instance_id,
            check_id=state.check_id,
            name=state.config.name,
            old=old,
            new=state.status,
            output=state.output,
            at=now,
            instance_status=self.status(state.instance_id),
        )
        logger.info(
            "health check %s: %s -> %s (%s)",
            state.check_id,
            old.value,
            state.status.value,
            state.output.partition("\n")[0][:200],
        )
        if self._on_transition is not None:
            try:
                self._on_transition(transition)
            except Exception:
                logger.exception("health transition callback failed for %s", state.check_id)
        for stream in self._streams:
            stream.put(transition)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("health scheduler stopped", exc_info=task.exception())


def _wall() -> float:
    return time.time()
