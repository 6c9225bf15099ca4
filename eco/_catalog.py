"""``eco catalog``: the data catalog, kept in the control plane.

A dataset has a location (a sync connector URL), an owner, a JSON Schema,
tags and the platform it lives on (docs/registry-tools.md, "Data catalog").
Sync jobs may name a dataset (``dataset:NAME``) instead of a URL;
``eco catalog get`` shows where each copy those jobs keep lives and when it
was last synced. The schema file is read and sent as it is: the control
plane checks that it is a valid JSON Schema (exit 2, naming where not).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import yaml
from ecosystem.v1 import catalog_pb2 as cpb
from ecosystem.v1 import sync_pb2 as spb
from google.protobuf.message import Message

from eco._output import emit, render_table
from eco._settings import Settings, call, data_options, pass_settings

__all__ = ["catalog", "dataset_dict"]

#: Bytes of a schema file read (the control plane's bound).
MAX_SCHEMA_BYTES = 256 * 1024


class SchemaFileRefused(click.ClickException):
    """A schema file that cannot be sent; exit 2, like a refused field."""

    exit_code = 2


def _call(settings: Settings, method: str, request: Message) -> Any:
    """One CatalogService call; reads are retried on UNAVAILABLE, writes not."""
    return call(settings, method, request, idempotent=method.startswith(("Get", "List")))


def _when(ms: int) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else None


def _status(value: int) -> str:
    if value == spb.SYNC_RUN_STATUS_UNSPECIFIED:
        return ""
    return spb.SyncRunStatus.Name(value).removeprefix("SYNC_RUN_STATUS_").lower()


def _schema(text: str) -> Any:
    """The schema as data (for -o json/yaml); its text when it is not JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def copy_dict(item: cpb.DatasetCopy) -> dict[str, Any]:
    return {
        "location": item.location,
        "job": item.job,
        "direction": item.direction,
        "dataset": item.dataset or None,
        "last_synced_at": _when(item.last_synced_at_ms),
        "last_synced_run": item.last_synced_run or None,
        "last_run": item.last_run or None,
        "last_status": _status(item.last_status) or None,
    }


def dataset_dict(item: cpb.Dataset, *, copies: bool = False) -> dict[str, Any]:
    """A dataset as ``-o json`` shows it (and as an apply document writes it)."""
    data: dict[str, Any] = {
        "name": item.name,
        "location": item.location,
        "platform": item.platform,
        "owner": item.owner,
        "schema": _schema(item.schema),
        "tags": list(item.tags),
        "description": item.description,
        "create_revision": item.create_revision,
        "mod_revision": item.mod_revision,
    }
    if copies:
        data["copies"] = [copy_dict(c) for c in item.copies]
    return data


def read_schema(path: str) -> str:
    """The schema file's text (JSON, checked to parse; the control plane checks the rest)."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_SCHEMA_BYTES:
            raise SchemaFileRefused(f"{path}: {size} bytes; a schema is at most {MAX_SCHEMA_BYTES}")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.FileError(path, hint=str(exc)) from None
    try:
        json.loads(text)
    except ValueError as exc:
        raise SchemaFileRefused(f"{path}: not JSON: {exc}") from None
    return text


@click.group("catalog")
def catalog() -> None:
    """The data catalog: datasets, where they live, who owns them, their schemas.

    A dataset's location is a sync connector URL (file://, s3://, gs://, az://,
    sftp://). A sync job may name a dataset instead of a URL:
    'eco sync job add nightly dataset:orders-eu dataset:orders-us …'.

    \b
    Examples:
      eco catalog add orders-eu --location s3://orders-eu/ --platform aws-eu \\
          --owner team-orders --schema orders.schema.json --tag pii --tag orders
      eco catalog list --owner team-orders --tag pii
      eco catalog get orders-eu
      eco catalog remove orders-eu
    """


_FIELDS = [
    click.option("--platform", default="", help="The platform it lives on (registered)."),
    click.option("--owner", default="", help="Who owns it (a team or a person)."),
    click.option(
        "--schema",
        "schema_file",
        metavar="FILE.json",
        help="Its records' JSON Schema (checked to be a valid schema).",
    ),
    click.option("--tag", "tags", multiple=True, metavar="T", help="A tag (repeatable)."),
    click.option("--description", default="", help="Free text."),
]


def _dataset_options(command: Any) -> Any:
    for option in reversed(_FIELDS):
        command = option(command)
    return command


@catalog.command("add")
@click.argument("name")
@click.option("--location", required=True, metavar="URI", help="Where it lives (a sync URL).")
@_dataset_options
@click.option(
    "--replace", is_flag=True, help="Replace the fields of the existing dataset NAME instead."
)
@click.option(
    "--if-revision",
    type=click.IntRange(min=1),
    metavar="REV",
    help="With --replace: only if it is still at revision REV.",
)
@data_options
@pass_settings
def add(
    settings: Settings,
    name: str,
    location: str,
    platform: str,
    owner: str,
    schema_file: str | None,
    tags: tuple[str, ...],
    description: str,
    replace: bool,
    if_revision: int | None,
) -> None:
    """Add a dataset (exit 1 "already exists" when there is one; --replace updates it).

    The control plane checks every field (exit 2, each refused field named):
    the location's shape, that the platform is registered, that the schema is
    a valid JSON Schema.
    """
    if if_revision and not replace:
        raise click.UsageError("--if-revision goes with --replace")
    item = cpb.Dataset(
        name=name,
        location=location,
        platform=platform,
        owner=owner,
        schema=read_schema(schema_file) if schema_file else "",
        tags=tags,
        description=description,
    )
    if replace:
        answer = _call(
            settings,
            "UpdateDataset",
            cpb.UpdateDatasetRequest(dataset=item, expected_revision=if_revision or 0),
        )
        verb = "updated" if answer.changed else "unchanged:"
    else:
        answer = _call(settings, "AddDataset", cpb.AddDatasetRequest(dataset=item))
        verb = "added"
    stored = answer.dataset
    emit(
        dataset_dict(stored),
        settings.output,
        lambda: f"{verb} dataset {name} (revision {stored.mod_revision})",
    )


@catalog.command("list")
@click.option("--platform", default="", help="Only datasets on this platform.")
@click.option("--owner", default="", help="Only datasets of this owner.")
@click.option(
    "--tag", "tags", multiple=True, metavar="T", help="Only datasets with this tag (all given)."
)
@data_options
@pass_settings
def list_(settings: Settings, platform: str, owner: str, tags: tuple[str, ...]) -> None:
    """List the datasets, filtered by platform, owner and tags."""
    request = cpb.ListDatasetsRequest(platform=platform, owner=owner, tags=tags)
    items = _call(settings, "ListDatasets", request).datasets

    def table() -> str:
        if not items:
            return "no datasets"
        return render_table(
            ("NAME", "LOCATION", "PLATFORM", "OWNER", "TAGS", "SCHEMA"),
            [
                (
                    i.name,
                    i.location,
                    i.platform,
                    i.owner,
                    list(i.tags),
                    "yes" if i.schema else None,
                )
                for i in items
            ],
        )

    emit({"datasets": [dataset_dict(i) for i in items]}, settings.output, table)


@catalog.command("get")
@click.argument("name")
@data_options
@pass_settings
def get(settings: Settings, name: str) -> None:
    """Show a dataset, where each copy lives and when it was last synced."""
    item = _call(settings, "GetDataset", cpb.GetDatasetRequest(name=name)).dataset
    data = dataset_dict(item, copies=True)

    def text() -> str:
        head = {k: v for k, v in data.items() if v and k not in ("copies", "schema")}
        if item.schema:
            head["schema"] = "(JSON Schema, -o json shows it)"
        parts = [yaml.safe_dump(head, sort_keys=False).rstrip(), "\nCOPIES"]
        if not item.copies:
            parts.append("none (no sync job names this dataset)")
        else:
            parts.append(
                render_table(
                    ("LOCATION", "JOB", "DIRECTION", "LAST SYNCED", "LAST RUN"),
                    [
                        (
                            c.location,
                            c.job,
                            c.direction,
                            _when(c.last_synced_at_ms) or "never",
                            f"#{c.last_run} {_status(c.last_status)}" if c.last_run else None,
                        )
                        for c in item.copies
                    ],
                )
            )
        return "\n".join(parts)

    emit(data, settings.output, text)


@catalog.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Even while sync jobs name it (their runs fail).")
@click.option(
    "--if-revision",
    type=click.IntRange(min=1),
    metavar="REV",
    help="Only if it is still at revision REV.",
)
@data_options
@pass_settings
def remove(settings: Settings, name: str, force: bool, if_revision: int | None) -> None:
    """Remove a dataset from the catalog (its data is left where it is)."""
    answer = _call(
        settings,
        "RemoveDataset",
        cpb.RemoveDatasetRequest(name=name, force=force, expected_revision=if_revision or 0),
    )
    emit(
        {"removed": name, "revision": answer.revision},
        settings.output,
        lambda: f"removed dataset {name}",
    )
