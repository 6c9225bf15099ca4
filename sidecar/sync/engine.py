"""One sync run: list both sides, plan against the job's state, guard, transfer.

:func:`run_sync` is what ``eco sync run`` and a sidecar executing a
scheduled job call. Its order of work:

1. open the state database (read-only for a dry run) and both connectors;
2. list both sides at once, each streamed into the run's scratch database
   (:mod:`sidecar.sync._scratch`; memory does not grow with the listing);
3. plan every path in path order (:mod:`sidecar.sync._plan`), walking the two
   listings and the state through one cursor; the actions go to the scratch
   database, the report keeps counts and the first decisions;
4. the deletion guard, on the plan's totals: a plan deleting more than
   ``max_delete`` percent of a side's entries stops here, before *any* change
   (copies included), so a mistaken run leaves both sides as they were;
5. a dry run stops here too, with the plan in the report;
6. transfers and directory creations, then deletions (so a rename, seen as a
   delete and a create, never leaves the data on neither side), fed from the
   scratch table through a bounded queue, each recorded in the state after it
   is verified; every call to a store holds one of its process-wide
   connection slots (:mod:`sidecar.sync._limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sidecar.sync._feed import FeedingExecutor
from sidecar.sync._limits import LimitedConnector, default_connections, store_key, store_slots
from sidecar.sync._plan import DESTINATION, SOURCE, Plan, Planner
from sidecar.sync._scratch import BATCH, Scratch
from sidecar.sync._spec import Mode, Progress, RunReport, SyncOptions
from sidecar.sync._state import JobBusyError, StateStore
from sidecar.sync._transfer import ProgressMeter, TokenBucket, with_retries
from sidecar.sync.connectors._base import Connector, ResumeToken, SyncStoreError

__all__ = ["run_sync"]

log = logging.getLogger(__name__)

#: Actions that change a store, in the order they run (deletions last).
_WRITES = ("copy", "mkdir", "keep-both")

#: Actions that only write the job's state (done before the transfers).
_BOOKKEEPING = ("record", "forget", "queue")


async def run_sync(
    options: SyncOptions,
    *,
    progress: Callable[[Progress], None] | None = None,
    connectors: tuple[Connector, Connector] | None = None,
) -> RunReport:
    """Runs one sync of ``options.source`` to/with ``options.destination``.

    ``connectors`` (source, destination) are used as given and not closed
    (tests, fakes); otherwise each is opened from its URL with the job's
    profile for that role. Store errors do not raise: they are in the report
    (status "failed", ``errors``); a guarded run has status "guarded".
    """
    report = RunReport(
        job=options.job,
        mode=options.mode.value,
        source=options.source,
        destination=options.destination,
        dry_run=options.dry_run,
        started_at=time.time(),
    )
    meter = ProgressMeter(progress)
    try:
        async with contextlib.AsyncExitStack() as stack:
            # The state first: its lock turns a second run of the job away
            # before any store is touched.
            state = StateStore(
                options.state_path, read_only=options.dry_run, exclusive=not options.dry_run
            ).open()
            stack.callback(state.close)
            # A dry run writes nothing beside the state: its scratch is a temporary file.
            scratch = Scratch("" if options.dry_run else options.state_path).open()
            stack.callback(scratch.close)
            if connectors is None:
                connectors = await _open(options, stack)
            await _run(options, connectors, state, scratch, report, meter)
    except Exception as exc:
        err = _store_error(exc)
        if err is not None:
            report.message = f"{type(err).__name__}: {err}" + (f" ({err.url})" if err.url else "")
            report.errors.append(
                {
                    "path": err.path,
                    "action": "run",
                    "error": type(err).__name__,
                    "message": str(err),
                }
            )
        else:
            exc = _leaf(exc)
            if isinstance(exc, JobBusyError | ValueError):  # busy, or a URL no connector takes
                log.warning("sync run %s: %s", options.job or options.source, exc)
            else:  # a bug or a connector breaking its contract: still a report
                log.error("sync run %s failed", options.job or options.source, exc_info=exc)
            report.message = f"{type(exc).__name__}: {exc}"
            report.errors.append(
                {"path": "", "action": "run", "error": type(exc).__name__, "message": str(exc)}
            )
        report.status = "failed"
    report.finished_at = time.time()
    meter.enter("done")
    return report


def _store_error(exc: BaseException) -> SyncStoreError | None:
    """The store error behind ``exc`` (itself, or the first in a task group's)."""
    if isinstance(exc, SyncStoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _store_error(inner)
            if found is not None:
                return found
    return None


def _leaf(exc: Exception) -> Exception:
    """The first error inside a task group's (the group's own text says nothing)."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _open(
    options: SyncOptions, stack: contextlib.AsyncExitStack
) -> tuple[Connector, Connector]:
    # Imported here: the connectors package pulls in every store's SDK.
    from sidecar.sync.connectors import open_connector

    opened = []
    for role, url in ((SOURCE, options.source), (DESTINATION, options.destination)):
        connector = open_connector(url, options.profiles.get(role, {}))
        opened.append(await stack.enter_async_context(connector))
    return opened[0], opened[1]


async def _list(
    connector: Connector, side: str, scratch: Scratch, meter: ProgressMeter, options: SyncOptions
) -> None:
    """One side's listing into the scratch database; a throttled or broken
    listing starts again (from an empty table)."""

    def listed() -> None:
        meter.listed += 1
        meter.emit()

    async def once() -> int:
        scratch.clear(side)
        return await scratch.fill(side, connector.list(), listed)

    await with_retries(
        once, retries=options.retries, delay=options.retry_delay, what=f"list {connector.url}"
    )


async def _limited(options: SyncOptions, pair: tuple[Connector, Connector]) -> dict[str, Connector]:
    """The two connectors with their stores' process-wide slots held around each call."""
    keys = [store_key(c) for c in pair]
    slots = [
        await store_slots(key, options.max_connections or default_connections(c))
        for key, c in zip(keys, pair, strict=True)
    ]
    src = LimitedConnector(pair[0], (keys[0], slots[0]), (keys[1], slots[1]))
    dst = LimitedConnector(pair[1], (keys[1], slots[1]), (keys[0], slots[0]))
    return {SOURCE: src, DESTINATION: dst}


async def _plan(
    options: SyncOptions,
    sides: dict[str, Connector],
    state: StateStore,
    scratch: Scratch,
    journal: dict[tuple[str, str], tuple[int, float, ResumeToken | None]],
) -> Plan:
    """Plans every path into the scratch database's action table."""
    resolutions = {c.path: c.resolution for c in state.conflicts() if c.resolution}

    async def hasher(side: str, path: str, kind: str) -> str | None:
        return await sides[side].hash(path, kind)

    sink = scratch.sink()
    plan = Plan(sink)
    planner = Planner(
        options,
        plan,
        scratch.occupied,
        hasher,
        resolutions,
        inflight={(path, direction.split(">")[-1]) for path, direction in journal},
        kinds=tuple(
            k for k in sides[SOURCE].listed_hashes if k in sides[DESTINATION].listed_hashes
        ),
    )
    for count, (path, entries) in enumerate(scratch.walk(), 1):
        if entries is None:
            planner.as_base()
        else:
            await planner.step(path, *entries)
        if count % BATCH == 0:
            await asyncio.sleep(0)  # a long plan lets the process's other work run
    sink.flush()
    return plan


async def _run(
    options: SyncOptions,
    pair: tuple[Connector, Connector],
    state: StateStore,
    scratch: Scratch,
    report: RunReport,
    meter: ProgressMeter,
) -> None:
    journal: dict[tuple[str, str], tuple[int, float, ResumeToken | None]] = {}
    if state.bind(options.source, options.destination):
        journal = state.journal()
        scratch.attach_bases(options.state_path)
    else:  # (a dry run cannot drop it, so it is ignored instead)
        log.warning("state at %s was for other stores; starting afresh", options.state_path)

    meter.enter("listing")
    async with asyncio.TaskGroup() as group:
        for side, connector in zip((SOURCE, DESTINATION), pair, strict=True):
            group.create_task(_list(connector, side, scratch, meter, options))
    sides = await _limited(options, pair)

    meter.enter("planning")
    plan = await _plan(options, sides, state, scratch, journal)
    report.decisions = plan.decisions
    report.decisions_truncated = plan.decisions_truncated
    report.files_skipped = plan.skipped
    report.conflicts = plan.conflicts

    guard = _guard(options, plan)
    if guard:
        report.status = "guarded"
        report.message = guard
        return
    deletes = plan.deletes(SOURCE) + plan.deletes(DESTINATION)
    if options.dry_run:
        report.files_copied = plan.copies
        report.bytes_copied = plan.bytes_copied
        report.files_deleted = deletes
        report.status = "completed"
        report.message = (
            f"dry run: would copy {report.files_copied} file(s) ({report.bytes_copied} bytes),"
            f" delete {deletes}, settle {plan.conflicts} conflict(s); nothing changed"
        )
        return

    meter.files_total = plan.writes
    meter.bytes_total = plan.bytes
    meter.deletes_total = deletes
    meter.enter("transferring")
    executor = FeedingExecutor(
        options,
        sides,
        state,
        report,
        meter,
        journal=journal,
        bucket=TokenBucket(options.bandwidth) if options.bandwidth else None,
    )
    with state.grouped():  # a commit per recorded path would cost more than the rest
        await executor.run(scratch.actions(_BOOKKEEPING))
    await executor.run(scratch.actions(_WRITES))
    if report.errors and options.mode is not Mode.COPY:
        # A side that could not be brought up to date is not to be pruned
        # to match the other: its deletions wait for a clean run.
        report.status = "failed"
        report.message = (
            f"{len(report.errors)} error(s); {deletes} deletion(s) not done"
            if deletes
            else f"{len(report.errors)} error(s)"
        )
        return
    await executor.run(scratch.actions(("delete",)))
    report.status = "failed" if report.errors else "completed"
    report.message = f"{len(report.errors)} error(s)" if report.errors else ""
    if not report.errors:
        # Nothing is in flight after a clean run: what the journal still holds
        # is for transfers no longer wanted (a source changed or deleted since).
        state.clear_journal()


def _guard(options: SyncOptions, plan: Plan) -> str:
    """Why the run must stop before deleting (or "" to go on)."""
    if options.max_delete >= 100:
        return ""
    sides = (SOURCE, DESTINATION) if options.mode is Mode.BISYNC else (DESTINATION,)
    for side in sides:
        deletes, total = plan.deletes(side), plan.listed[side]
        if deletes and deletes * 100 > options.max_delete * total:
            return (
                f"deletion guard: the run would delete {deletes} of {total} entries on the {side}"
                f" ({deletes * 100 / total:.0f}% > --max-delete {options.max_delete:g}%);"
                " nothing was changed. Check the source, then run again with"
                f" --max-delete {min(100, int(deletes * 100 / total) + 1)} (or 100) to allow it"
            )
    return ""
