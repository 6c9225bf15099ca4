"""``eco sync``: keep two stores in step (docs/sync.md).

``run`` syncs once, here, and prints the run report; ``conflicts`` and
``resolve`` read and answer the manual conflict queue in a job's state. The
engine and the connectors are imported inside the commands (they pull in the
stores' SDKs, which come with the server extra), so ``eco`` starts fast.

Exit status of ``run``: 0 completed (pending manual conflicts included); 1
errors (the report lists them); 2 bad usage; 3 stopped by the deletion guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eco._extras import require_server
from eco._lazy import LazyGroup
from eco._output import OutputFormat, emit, render_table
from eco._settings import Settings, pass_settings

if TYPE_CHECKING:
    from sidecar.sync import Progress, RunReport

__all__ = ["EXIT_GUARDED", "job_name", "parse_rate", "resolve_state_dir", "sync"]

EXIT_FAILURE = 1
EXIT_GUARDED = 3

STATE_DIR_ENV = "ECO_SYNC_STATE_DIR"
_MODES = ("copy", "mirror", "bisync")
_POLICIES = ("newer", "keep-both", "source", "destination", "manual")
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


class GuardedError(click.ClickException):
    """The deletion guard stopped the run (exit status 3)."""

    exit_code = EXIT_GUARDED


def resolve_state_dir(given: str | None) -> Path:
    """Where ad-hoc runs keep their state: --state-dir, $ECO_SYNC_STATE_DIR,
    else ~/.local/state/eco/sync (XDG_STATE_HOME when set)."""
    if given:
        return Path(given)
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "eco" / "sync"


def job_name(source: str, destination: str) -> str:
    """A stable, file-safe name for the pair: readable words of both URLs and a
    short hash of the two (so two pairs never share state)."""
    digest = hashlib.sha256(f"{source}\n{destination}".encode()).hexdigest()[:10]
    words = re.sub(r"[^A-Za-z0-9]+", "-", f"{source}-to-{destination}").strip("-")
    return f"{words[:60].rstrip('-')}-{digest}"


def parse_rate(text: str) -> int:
    """``10M`` → 10 MiB/s in bytes per second (K, M, G: powers of 1024; a
    trailing ``/s`` or ``B`` is allowed)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?(?:/s)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a rate: {text!r} (e.g. 500K, 10M, 1G: bytes per second)")
    rate = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if rate <= 0:
        raise ValueError(f"not a rate: {text!r} (above 0)")
    return rate


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_rate(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def _format(settings: Settings, output: str | None) -> OutputFormat:
    if output is None:
        return settings.output
    return OutputFormat.TABLE if output.lower() in ("text", "table") else OutputFormat(output)


_OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "table", "json", "yaml"], case_sensitive=False),
    default=None,
    help="text for people (the default), json or yaml for scripts.",
)
_STATE_DIR = click.option(
    "--state-dir",
    metavar="DIR",
    help=f"Where ad-hoc runs keep their state (NAME.db) [default: ${STATE_DIR_ENV} or "
    "~/.local/state/eco/sync].",
)


# job and runs (scheduled jobs, kept in the control plane: eco._sync_jobs,
# docs/sync-jobs.md) talk gRPC and protobuf: imported only when they run,
# so that ``eco sync run`` between two stores starts without them.
@click.group(
    "sync", cls=LazyGroup, lazy={"job": "eco._sync_jobs:job", "runs": "eco._sync_jobs:runs"}
)
def sync() -> None:
    """Keep two stores in step: directories, S3, GCS, Azure Blob, SFTP.

    \b
    A five-minute start (docs/sync.md):
      eco sync run file:///data/photos s3://backup/photos            # copy
      eco sync run file:///data/photos s3://backup/photos --mode mirror --dry-run
      eco sync run file:///srv/share sftp://nas/share --mode bisync --conflict manual --name share
      eco sync conflicts share                                       # what waits for you
      eco sync resolve share report.odt --keep source
    \b
    Stores: file:///abs/path, s3://bucket/prefix, gs://bucket/prefix,
    az://container/prefix, sftp://user@host[:port]/path (docs/sync-connectors.md).
    """


@sync.command("run")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DST")
@click.option(
    "--mode",
    type=click.Choice(_MODES),
    default="copy",
    show_default=True,
    help="copy: SRC to DST, nothing deleted; mirror: DST made equal to SRC (deletes); "
    "bisync: both ways against the last run.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing (state included).")
@click.option(
    "--checksum",
    is_flag=True,
    help="Compare changed files by content hash instead of size and modification time.",
)
@click.option(
    "--conflict",
    type=click.Choice(_POLICIES),
    default="newer",
    show_default=True,
    help="bisync: what wins when a file changed on both sides (manual: queue it for "
    "'eco sync resolve').",
)
@click.option(
    "--max-delete",
    type=click.FloatRange(0, 100),
    default=50.0,
    show_default=True,
    metavar="PCT",
    help="Stop before changing anything when a run would delete more than PCT percent of "
    "a side's entries (100: no guard).",
)
@click.option(
    "--transfers",
    type=click.IntRange(1, 1024),
    default=8,
    show_default=True,
    metavar="N",
    help="Transfers at once.",
)
@click.option(
    "--bwlimit",
    callback=_rate,
    metavar="RATE",
    help="Bandwidth limit across the run, bytes per second: 500K, 10M, 1G (powers of 1024).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="Retries of a throttled, failed or mismatched transfer, with backoff.",
)
@click.option(
    "--source-profile",
    metavar="NAME",
    default="",
    help="Connector settings for SRC's store (credentials, endpoint) from the named profile "
    "in the profiles file, over the store's standard environment.",
)
@click.option(
    "--destination-profile",
    metavar="NAME",
    default="",
    help="The same for DST's store.",
)
@click.option(
    "--profiles",
    "profiles_file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The profiles file (YAML: profiles: {NAME: {KEY: VALUE}}) [default: "
    "$ECO_SYNC_PROFILES or ~/.config/eco/sync-profiles.yaml].",
)
@click.option("--name", metavar="NAME", help="The run's name: its state is NAME.db.")
@_STATE_DIR
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="A progress bar on a terminal, else JSON counters on stderr (once a second).",
)
@_OUTPUT
@pass_settings
def run_command(
    settings: Settings,
    source: str,
    destination: str,
    mode: str,
    dry_run: bool,
    checksum: bool,
    conflict: str,
    max_delete: float,
    transfers: int,
    bwlimit: int | None,
    retries: int,
    source_profile: str,
    destination_profile: str,
    profiles_file: Path | None,
    name: str | None,
    state_dir: str | None,
    progress: bool,
    output: str | None,
) -> None:
    """Sync SRC to DST once, here, and print what was done.

    State (what each side held when they last agreed) is kept in NAME.db
    under --state-dir, so the next run of the same pair transfers only what
    changed. NAME defaults to one made from SRC and DST. Exit status: 0
    done, 1 errors, 2 bad usage, 3 stopped by the deletion guard.

    \b
    Examples:
      eco sync run file:///data s3://bucket/data
      eco sync run s3://bucket/data az://backup/data --mode mirror --checksum
      eco sync run file:///home/me/notes sftp://me@nas/notes --mode bisync --conflict keep-both
      eco sync run file:///data s3://bucket/data --mode mirror --dry-run -o json
      eco sync run file:///data gs://bucket/data --transfers 32 --bwlimit 20M
      eco sync run file:///data s3://backup/data --destination-profile minio
    """
    require_server("sync run", what="moves data with the stores' SDKs")
    from sidecar.sync import (
        ConflictPolicy,
        Mode,
        SyncOptions,
        load_profiles,
        profile_settings,
        run_sync,
    )

    fmt = _format(settings, output)
    job = name or job_name(source, destination)
    try:
        options = SyncOptions(
            source=source,
            destination=destination,
            mode=Mode(mode),
            checksum=checksum,
            conflict=ConflictPolicy(conflict),
            max_delete=max_delete,
            dry_run=dry_run,
            transfers=transfers,
            bandwidth=bwlimit,
            retries=retries,
            state_path=str(resolve_state_dir(state_dir) / f"{job}.db"),
            job=job,
            profiles=profile_settings(
                source,
                destination,
                source_profile,
                destination_profile,
                lambda: load_profiles(profiles_file, explicit=profiles_file is not None),
            ),
        )
        _check_urls(source, destination)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    meter = _ProgressPrinter() if progress else None
    try:
        report = asyncio.run(run_sync(options, progress=meter))
    finally:
        if meter is not None:
            meter.close()
    emit(report.to_dict(), fmt, lambda: _report_text(report))
    if report.status == "guarded":
        raise GuardedError(report.message)
    if report.status != "completed":
        raise click.ClickException(f"sync {report.status}: {report.message}")


def _check_urls(*urls: str) -> None:
    from sidecar.sync.connectors import open_connector

    for url in urls:
        open_connector(url, {})  # ValueError for a malformed URL; no I/O


class _ProgressPrinter:
    """The progress callback: a bar on a terminal's stderr, else a JSON line
    of counters on stderr at most once a second."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._drawn = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if progress.phase != "done" and now - self._last < (0.1 if self.tty else 1.0):
            return
        self._last = now
        if not self.tty:
            click.echo(json.dumps({"progress": progress.to_dict()}), err=True)
            return
        if progress.phase in ("listing", "planning"):
            line = f"{progress.phase}: {progress.listed} entries"
        else:
            total = max(progress.bytes_total, 1)
            share = min(1.0, progress.bytes_done / total) if progress.bytes_total else 1.0
            bar = "#" * int(share * 30)
            line = (
                f"[{bar:<30}] {share:4.0%}  {progress.files_done}/{progress.files_total} files"
                f"  {_size(progress.bytes_done)}/{_size(progress.bytes_total)}"
                f"  {progress.deletes_done}/{progress.deletes_total} deleted"
            )
            if progress.errors:
                line += f"  {progress.errors} errors"
        click.echo(f"\r{line}\x1b[K", err=True, nl=False)
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            click.echo("", err=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


#: Decisions the text report lists (the JSON report has the engine's first 10,000).
_TEXT_DECISIONS = 200


def _report_text(report: RunReport) -> str:
    title = "dry run of " if report.dry_run else ""
    lines = [
        f"{title}{report.mode} {report.source} -> {report.destination}: {report.status}"
        + (f" ({report.message})" if report.message else ""),
        f"  copied   {report.files_copied} file(s), {_size(report.bytes_copied)}",
        f"  deleted  {report.files_deleted}",
        f"  skipped  {report.files_skipped} (unchanged)",
        f"  conflicts {report.conflicts}",
        f"  errors   {len(report.errors)}",
        f"  duration {report.to_dict()['duration']:.2f}s   (state: job {report.job})",
    ]
    if report.decisions:
        lines.append("")
        lines.append(
            render_table(
                ["PATH", "ACTION", "REASON"],
                [(d.path, d.action, d.reason) for d in report.decisions[:_TEXT_DECISIONS]],
            )
        )
        more = len(report.decisions) - _TEXT_DECISIONS + report.decisions_truncated
        if more > 0:
            listed = (
                f"-o json lists the first {len(report.decisions):,}"
                if report.decisions_truncated
                else "-o json lists them all"
            )
            lines.append(f"… and {more:,} more ({listed})")
    for error in report.errors:
        lines.append(f"error: {error['path'] or '-'}: {error['error']}: {error['message']}")
    return "\n".join(lines)


def _open_state(name: str, given: str | None) -> Any:
    from sidecar.sync import StateStore

    path = resolve_state_dir(given) / f"{name}.db"
    if not path.exists():
        raise click.ClickException(
            f"no state for sync job {name!r} at {path} (run it first, or give --state-dir)"
        )
    return StateStore(str(path))


@sync.command("conflicts")
@click.argument("name")
@_STATE_DIR
@_OUTPUT
@pass_settings
def conflicts_command(
    settings: Settings, name: str, state_dir: str | None, output: str | None
) -> None:
    """List the conflicts of job NAME waiting for 'eco sync resolve'.

    Only runs with --conflict manual queue conflicts; a path is listed with
    what each side held and the resolution recorded, if any (applied by the
    next run).

    \b
    Examples:
      eco sync conflicts photos
      eco sync conflicts photos -o json
    """
    with _open_state(name, state_dir) as state:
        queued = state.conflicts()
    rows = [
        (
            c.path,
            _side(c.source),
            _side(c.destination),
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.detected)),
            c.resolution or "(waiting)",
        )
        for c in queued
    ]
    emit(
        [c.to_dict() for c in queued],
        _format(settings, output),
        lambda: (
            render_table(["PATH", "SOURCE", "DESTINATION", "SINCE", "RESOLUTION"], rows)
            if rows
            else f"no conflicts waiting in job {name}"
        ),
    )


def _side(entry: Any) -> str:
    if entry is None:
        return "(deleted)"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.mtime))
    return f"{_size(entry.size)} {when}"


@sync.command("resolve", short_help="Settle a queued conflict; the next run applies it.")
@click.argument("name")
@click.argument("path")
@click.option(
    "--keep",
    type=click.Choice(["source", "destination", "both"]),
    required=True,
    help="Whose version wins; both: the newer stays at PATH and the older is kept "
    "beside it, on both sides, as name.conflict-<time>-<side>.ext.",
)
@_STATE_DIR
def resolve_command(name: str, path: str, keep: str, state_dir: str | None) -> None:
    """Record how a queued conflict of job NAME at PATH is settled; the next
    run of the job applies it.

    \b
    Examples:
      eco sync resolve photos 2024/beach.jpg --keep source
      eco sync resolve notes todo.md --keep both
    """
    with _open_state(name, state_dir) as state:
        if not state.resolve(path, keep):
            raise click.ClickException(
                f"no conflict queued at {path!r} in job {name!r} (see 'eco sync conflicts {name}')"
            )
    click.echo(f"{path}: keep {keep}; the next run of {name} applies it")
