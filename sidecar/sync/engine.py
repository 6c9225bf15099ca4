"""One sync run: list both sides, plan against the job's state, guard, transfer.

:func:`run_sync` is what ``eco sync run`` and a sidecar executing a
scheduled job call. Its order of work:

1. open the state database (read-only for a dry run) and both connectors;
2. list both sides at once (streamed; only the entries are kept);
3. plan every path (:mod:`sidecar.sync._plan`);
4. the deletion guard: a plan deleting more than ``max_delete`` percent of a
   side's entries stops here, before *any* change (copies included), so a
   mistaken run leaves both sides as they were;
5. a dry run stops here too, with the plan in the report;
6. transfers and directory creations, then deletions (so a rename, seen as a
   delete and a create, never leaves the data on neither side), each recorded
   in the state after it is verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sidecar.sync._plan import DESTINATION, SOURCE, Plan, make_plan
from sidecar.sync._spec import Mode, Progress, RunReport, SyncOptions
from sidecar.sync._state import JobBusyError, StateStore
from sidecar.sync._transfer import Executor, ProgressMeter, TokenBucket, with_retries
from sidecar.sync.connectors._base import Connector, Entry, ResumeToken, SyncStoreError

__all__ = ["run_sync"]

log = logging.getLogger(__name__)

#: Actions that change a store, in the order they run (deletions last).
_WRITES = ("copy", "mkdir", "keep-both")


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
            if connectors is None:
                connectors = await _open(options, stack)
            await _run(options, connectors, state, report, meter)
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
    connector: Connector, meter: ProgressMeter, options: SyncOptions
) -> dict[str, Entry]:
    """Every entry of one side; a throttled or broken listing starts again."""

    async def once() -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        async for entry in connector.list():
            entries[entry.path] = entry
            meter.listed += 1
            meter.emit()
        return entries

    return await with_retries(
        once, retries=options.retries, delay=options.retry_delay, what=f"list {connector.url}"
    )


async def _run(
    options: SyncOptions,
    pair: tuple[Connector, Connector],
    state: StateStore,
    report: RunReport,
    meter: ProgressMeter,
) -> None:
    bases: dict[str, tuple[Entry | None, Entry | None]] = {}
    resolutions: dict[str, str | None] = {}
    journal: dict[tuple[str, str], tuple[int, float, ResumeToken | None]] = {}
    if state.bind(options.source, options.destination):
        for side, path, entry in state.bases():
            s, d = bases.get(path, (None, None))
            bases[path] = (entry, d) if side == SOURCE else (s, entry)
        resolutions = {c.path: c.resolution for c in state.conflicts() if c.resolution}
        journal = state.journal()
    else:  # (a dry run cannot drop it, so it is ignored instead)
        log.warning("state at %s was for other stores; starting afresh", options.state_path)

    meter.enter("listing")
    async with asyncio.TaskGroup() as group:
        listing = [group.create_task(_list(c, meter, options)) for c in pair]
    sides = {SOURCE: pair[0], DESTINATION: pair[1]}

    async def hasher(side: str, path: str, kind: str) -> str | None:
        return await sides[side].hash(path, kind)

    meter.enter("planning")
    kinds = tuple(k for k in pair[0].listed_hashes if k in pair[1].listed_hashes)
    plan = await make_plan(
        options,
        listing[0].result(),
        listing[1].result(),
        bases,
        resolutions=resolutions,
        inflight={(path, direction.split(">")[-1]) for path, direction in journal},
        hasher=hasher,
        kinds=kinds,
    )
    del listing, bases  # the plan holds what is still needed
    report.decisions = plan.decisions
    report.files_skipped = plan.skipped
    report.conflicts = plan.conflicts

    guard = _guard(options, plan)
    if guard:
        report.status = "guarded"
        report.message = guard
        return
    writes = [a for a in plan.actions if a.kind in _WRITES]
    deletes = [a for a in plan.actions if a.kind == "delete"]
    if options.dry_run:
        report.files_copied = sum(1 for a in writes if a.kind != "keep-both")
        report.bytes_copied = sum(
            d.bytes for d in plan.decisions if d.action.startswith(("copy", "mkdir"))
        )
        report.files_deleted = len(deletes)
        report.status = "completed"
        report.message = (
            f"dry run: would copy {report.files_copied} file(s) ({report.bytes_copied} bytes),"
            f" delete {len(deletes)}, settle {plan.conflicts} conflict(s); nothing changed"
        )
        return

    meter.files_total = len(writes)
    meter.bytes_total = sum(d.bytes for d in plan.decisions)
    meter.deletes_total = len(deletes)
    meter.enter("transferring")
    executor = Executor(
        options,
        sides,
        state,
        report,
        meter,
        journal=journal,
        bucket=TokenBucket(options.bandwidth) if options.bandwidth else None,
    )
    bookkeeping = [a for a in plan.actions if a.kind not in (*_WRITES, "delete")]
    await executor.run(bookkeeping + writes)
    if report.errors and options.mode is not Mode.COPY:
        # A side that could not be brought up to date is not to be pruned
        # to match the other: its deletions wait for a clean run.
        report.status = "failed"
        report.message = (
            f"{len(report.errors)} error(s); {len(deletes)} deletion(s) not done"
            if deletes
            else f"{len(report.errors)} error(s)"
        )
        return
    await executor.run(deletes)
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
