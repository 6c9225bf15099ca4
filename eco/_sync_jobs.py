"""``eco sync job …`` and ``eco sync runs``: scheduled sync jobs, kept in the
control plane (docs/sync-jobs.md).

A job names two stores, a schedule (``--every 15m`` or ``--cron "…"``) and
where it runs: the node whose sidecar runs it (``--on NODE`` or ``--on
node:NODE``) or a platform, any of whose sidecars may (``--on
platform:NAME``); the control plane's elected replica schedules its runs and
the sidecar runs them where the data is.
Errors the control plane returns (a bad field, a missing job) are printed by
``eco``'s one error handler (exit 2 for a refused field, 1 otherwise).
"""

from __future__ import annotations

import re
import time
from typing import Any

import click
import yaml
from ecosystem.v1 import sync_pb2 as spb
from google.protobuf.message import Message

from eco._output import emit, render_table
from eco._settings import Settings, call, data_options, pass_settings
from sdk.lowlevel import struct_to_dict

__all__ = ["job", "parse_every", "parse_placement", "runs"]

_MODES = ("copy", "mirror", "bisync")
_POLICIES = ("newer", "keep-both", "source", "destination", "manual")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_every(text: str) -> float:
    """``15m``, ``1h30m``, ``90s``, ``1d`` → seconds (ValueError when it is none)."""
    compact = text.strip().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (e.g. 30s, 15m, 1h30m, 1d)")
    return sum(float(n) * _SECONDS[unit] for n, unit in _DURATION.findall(compact))


def parse_placement(text: str) -> tuple[str, str]:
    """``--on``'s value → (node, platform), one of them set: ``node:NAME``,
    ``platform:NAME``, or a bare NAME, which is a node (ValueError when empty)."""
    kind, sep, name = text.partition(":")
    if not sep:
        kind, name = "node", text
    if kind not in ("node", "platform"):
        raise ValueError(
            f"{text!r}: say node:NAME or platform:NAME (a bare NAME is a node), not {kind}:"
        )
    if not name:
        raise ValueError(f"{text!r}: the {kind}'s name is missing")
    return (name, "") if kind == "node" else ("", name)


def _placement(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    try:
        return parse_placement(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def where(item: spb.SyncJob) -> str:
    """Where a job runs, as ``--on`` takes it: NODE, or platform:NAME."""
    return f"platform:{item.on_platform}" if item.on_platform else item.on_node


def _run_where(item: spb.SyncRun) -> str:
    """The node that runs it, or the platform whose sidecars it waits for."""
    return item.node or (f"platform:{item.platform}" if item.platform else "")


def _every(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_every(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from eco._sync import parse_rate  # (eco._sync attaches these commands: imported late)

    try:
        return parse_rate(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def _call(settings: Settings, method: str, request: Message) -> Any:
    """One SyncService call; reads are retried on UNAVAILABLE, writes are not."""
    idempotent = method.startswith(("Get", "List", "Pause", "Resume"))
    return call(settings, method, request, idempotent=idempotent)


def _status(value: int) -> str:
    if value == spb.SYNC_RUN_STATUS_UNSPECIFIED:
        return ""
    return spb.SyncRunStatus.Name(value).removeprefix("SYNC_RUN_STATUS_").lower()


def _when(ms: int) -> str | None:
    if not ms:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _schedule(item: spb.SyncJob) -> str:
    if item.WhichOneof("schedule") == "cron":
        return f"cron {item.cron}"
    seconds = item.every_seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {seconds / size:g}{unit}"
    return f"every {seconds:g}s"


def job_dict(item: spb.SyncJob) -> dict[str, Any]:
    """A job as ``-o json`` shows it."""
    which = item.WhichOneof("schedule")
    return {
        "name": item.name,
        "source": item.source,
        "destination": item.destination,
        "mode": item.mode or "copy",
        "checksum": item.checksum,
        "conflict": item.conflict or "newer",
        "max_delete": item.max_delete if item.HasField("max_delete") else 50.0,
        "transfers": item.transfers or 8,
        "bandwidth": item.bandwidth or None,
        "source_profile": item.source_profile or None,
        "destination_profile": item.destination_profile or None,
        "every_seconds": item.every_seconds if which == "every_seconds" else None,
        "cron": item.cron if which == "cron" else None,
        "on_node": item.on_node,
        "on_platform": item.on_platform,
        "paused": item.paused,
        "revision": item.revision,
        "created_at": _when(item.created_at_ms),
        "updated_at": _when(item.updated_at_ms),
        "next_run_at": _when(item.next_run_at_ms),
        "last_run": item.last_run or None,
        "last_status": _status(item.last_status) or None,
    }


def run_dict(item: spb.SyncRun) -> dict[str, Any]:
    """A run as ``eco sync runs -o json`` shows it (with its report)."""
    c = item.counters
    return {
        "job": item.job,
        "number": item.number,
        "node": item.node,
        "platform": item.platform,
        "status": _status(item.status),
        "slots": item.slots,
        "scheduled_at": _when(item.scheduled_at_ms),
        "started_at": _when(item.started_at_ms),
        "finished_at": _when(item.finished_at_ms),
        "files_copied": c.files_copied,
        "bytes_copied": c.bytes_copied,
        "files_deleted": c.files_deleted,
        "files_skipped": c.files_skipped,
        "conflicts": c.conflicts,
        "errors": c.errors,
        "duration_seconds": round(c.duration_seconds, 3),
        "error": item.error,
        "report": struct_to_dict(item.report) if item.HasField("report") else None,
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@click.group("job")
def job() -> None:
    """Scheduled sync jobs, kept in the control plane.

    The control plane's elected replica schedules each job's runs (never two
    at once; missed runs after an outage run once); the sidecar on the job's
    node, or one of the sidecars of its platform, runs them, so the data moves
    where it lives. Each run publishes eco.sync.<job>.started|completed|failed
    on the bus.

    \b
    Examples:
      eco sync job add photos file:///data/photos s3://backup/photos --every 15m --on nas-1
      eco sync job add share sftp://nas/share gs://b/share --cron "0 2 * * *" --on core-3 \\
          --mode mirror --max-delete 10
      eco sync job add logs file:///var/log/app s3://logs/app --every 1h --on platform:onprem
      eco sync job list
      eco sync job pause photos
      eco sync runs photos -o json
    """


@job.command("add")
@click.argument("name")
@click.argument("source", metavar="SRC", required=False)
@click.argument("destination", metavar="DST", required=False)
@click.option(
    "--from",
    "from_",
    metavar="SRC",
    help="The source, instead of the SRC argument (a URL or dataset:NAME).",
)
@click.option(
    "--to",
    metavar="DST",
    help="The destination, instead of the DST argument (a URL or dataset:NAME).",
)
@click.option(
    "--every", callback=_every, metavar="DURATION", help="Run every DURATION (30s, 15m, 1h, 1d)."
)
@click.option("--cron", metavar="EXPR", help='Run when a cron expression fires, UTC ("0 2 * * *").')
@click.option(
    "--on",
    "placement",
    required=True,
    callback=_placement,
    metavar="NODE|node:NODE|platform:NAME",
    help="Where the job runs: a node's sidecar (a bare name is a node), or any one sidecar "
    "of a registered platform (platform:NAME).",
)
@click.option("--mode", type=click.Choice(_MODES), default="copy", show_default=True)
@click.option("--checksum", is_flag=True, help="Compare by hash, not size and time.")
@click.option("--conflict", type=click.Choice(_POLICIES), default="newer", show_default=True)
@click.option(
    "--max-delete",
    type=click.FloatRange(0, 100),
    default=50.0,
    show_default=True,
    metavar="PCT",
    help="Stop a run that would delete more than PCT%% of the destination (100: off).",
)
@click.option(
    "--transfers",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Concurrent transfers of a run.",
)
@click.option("--bwlimit", callback=_rate, metavar="RATE", help="Bytes per second (500K, 10M).")
@click.option(
    "--source-profile",
    metavar="NAME",
    default="",
    help="Read SRC's store with the named profile of connector settings (credentials, "
    "endpoint), defined on the host that runs the job, not here (docs/sync.md).",
)
@click.option(
    "--destination-profile",
    metavar="NAME",
    default="",
    help="The same for DST's store.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the settings of the existing job NAME (kept paused if it is).",
)
@data_options
@pass_settings
def add(
    settings: Settings,
    name: str,
    source: str | None,
    destination: str | None,
    from_: str | None,
    to: str | None,
    every: float | None,
    cron: str | None,
    placement: tuple[str, str],
    mode: str,
    checksum: bool,
    conflict: str,
    max_delete: float,
    transfers: int,
    bwlimit: int | None,
    source_profile: str,
    destination_profile: str,
    replace: bool,
) -> None:
    """Add a job: sync SRC to DST on a schedule, on a node's sidecar or a platform's.

    SRC and DST are URLs or catalog datasets (dataset:NAME, resolved to the
    dataset's location for each run), given as arguments or as --from/--to.
    Exactly one of --every and --cron. The control plane checks every field
    (exit 2, each refused field named). The node need not be connected yet:
    its runs wait for its sidecar (and fail after the claim timeout). With
    --on platform:NAME (a registered platform), each run is offered to every
    sidecar whose node.platform is NAME and run by the one that claims it
    first; `eco sync runs` shows which node ran it. With
    --replace, an existing job's settings are replaced instead (exit 1, "not
    found", when there is none); a changed schedule is planned again.

    --source-profile and --destination-profile name profiles of connector
    settings (credentials, an endpoint) that the sidecar running the job looks
    up in its host's profiles (its config's sync.profiles_file); only the
    names are stored in the control plane. A run naming a profile its host
    does not define fails, saying so.
    """
    if (every is None) == (cron is None):
        raise click.UsageError("give exactly one of --every and --cron")
    if from_ is not None and to is None and source is not None and destination is None:
        # `add NAME DST --from SRC`: the one argument is the destination.
        source, destination = None, source
    source = _one_of(source, from_, "SRC", "--from")
    destination = _one_of(destination, to, "DST", "--to")
    item = spb.SyncJob(
        name=name,
        source=source,
        destination=destination,
        mode=mode,
        checksum=checksum,
        conflict=conflict,
        max_delete=max_delete,
        transfers=transfers,
        bandwidth=bwlimit or 0,
        source_profile=source_profile,
        destination_profile=destination_profile,
        on_node=placement[0],
        on_platform=placement[1],
    )
    if every is not None:
        item.every_seconds = every
    else:
        item.cron = cron or ""
    if replace:
        stored = _call(settings, "UpdateSyncJob", spb.UpdateSyncJobRequest(job=item)).job
    else:
        stored = _call(settings, "CreateSyncJob", spb.CreateSyncJobRequest(job=item)).job
    verb = "replaced" if replace else "created"
    emit(
        job_dict(stored),
        settings.output,
        lambda: f"{verb} sync job {name} ({_schedule(stored)} on {_on(stored)})",
    )


def _on(item: spb.SyncJob) -> str:
    return f"platform {item.on_platform}" if item.on_platform else f"node {item.on_node}"


def _one_of(argument: str | None, option: str | None, metavar: str, flag: str) -> str:
    if argument is not None and option is not None:
        raise click.UsageError(f"give {metavar} or {flag}, not both")
    value = argument if argument is not None else option
    if value is None:
        raise click.UsageError(f"missing {metavar} (or {flag})")
    return value


@job.command("list")
@data_options
@pass_settings
def list_(settings: Settings) -> None:
    """List the jobs: schedule, stores, where they run, next run and the last run's status.

    ON is the job's node, or platform:NAME for a job any sidecar of platform
    NAME may run.
    """
    items = _call(settings, "ListSyncJobs", spb.ListSyncJobsRequest()).jobs

    def table() -> str:
        if not items:
            return "no sync jobs"
        return render_table(
            ("NAME", "SCHEDULE", "SOURCE", "DESTINATION", "ON", "MODE", "NEXT", "LAST"),
            [
                (
                    i.name,
                    _schedule(i) + (" (paused)" if i.paused else ""),
                    i.source,
                    i.destination,
                    where(i),
                    i.mode or "copy",
                    "-" if i.paused else _when(i.next_run_at_ms),
                    f"#{i.last_run} {_status(i.last_status)}" if i.last_run else None,
                )
                for i in items
            ],
        )

    emit({"jobs": [job_dict(i) for i in items]}, settings.output, table)


@job.command("get")
@click.argument("name")
@data_options
@pass_settings
def get(settings: Settings, name: str) -> None:
    """Show one job (exit 1, "not found", when there is none)."""
    item = _call(settings, "GetSyncJob", spb.GetSyncJobRequest(name=name)).job
    data = job_dict(item)
    emit(data, settings.output, lambda: yaml.safe_dump(data, sort_keys=False).rstrip())


@job.command("delete")
@click.argument("name")
@data_options
@pass_settings
def delete(settings: Settings, name: str) -> None:
    """Delete a job and its run history; a run in progress is stopped."""
    response = _call(settings, "DeleteSyncJob", spb.DeleteSyncJobRequest(name=name))
    emit(
        {"deleted": name, "revision": response.revision},
        settings.output,
        lambda: f"deleted sync job {name}",
    )


@job.command("pause")
@click.argument("name")
@data_options
@pass_settings
def pause(settings: Settings, name: str) -> None:
    """Stop scheduling a job's runs (a run in progress finishes)."""
    item = _call(settings, "PauseSyncJob", spb.PauseSyncJobRequest(name=name)).job
    emit(job_dict(item), settings.output, lambda: f"paused sync job {name}")


@job.command("resume")
@click.argument("name")
@data_options
@pass_settings
def resume(settings: Settings, name: str) -> None:
    """Schedule a paused job again, from its next slot."""
    item = _call(settings, "ResumeSyncJob", spb.ResumeSyncJobRequest(name=name)).job
    emit(job_dict(item), settings.output, lambda: f"resumed sync job {name}")


@click.command("runs")
@click.argument("name")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="The newest N runs.",
)
@data_options
@pass_settings
def runs(settings: Settings, name: str, limit: int) -> None:
    """A job's run history, newest first (-o json: with each run's report).

    NODE is the node whose sidecar ran it; a platform's run not claimed yet
    shows platform:NAME.
    """
    items = _call(settings, "ListSyncRuns", spb.ListSyncRunsRequest(job=name, limit=limit)).runs

    def table() -> str:
        if not items:
            return f"no runs of {name} yet"
        return render_table(
            (
                "RUN",
                "STATUS",
                "NODE",
                "SCHEDULED",
                "SECONDS",
                "COPIED",
                "BYTES",
                "DELETED",
                "ERROR",
            ),
            [
                (
                    f"#{r.number}",
                    _status(r.status),
                    _run_where(r),
                    _when(r.scheduled_at_ms),
                    f"{r.counters.duration_seconds:.1f}" if r.finished_at_ms else None,
                    r.counters.files_copied,
                    _size(r.counters.bytes_copied),
                    r.counters.files_deleted,
                    r.error[:60],
                )
                for r in items
            ],
        )

    emit({"runs": [run_dict(r) for r in items]}, settings.output, table)
