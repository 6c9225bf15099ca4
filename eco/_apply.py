"""``eco apply``, ``eco diff`` and ``eco export``: the registry as files.

A run reads the documents (every error of every file reported before the
control plane is asked anything), reads the live objects of their kinds,
and plans per unit (``eco._kinds``): create, update, unchanged, and with
``--prune`` delete what apply's set owns and the files no longer name.
Each write carries the revision read (or is checked against it just before,
for kinds whose calls take none): a change made meanwhile is a *conflict*,
reported and not overwritten, and the other units go on.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click
import yaml

import sdk
from eco._documents import KINDS, DocumentError, LoadedDocument, load_documents
from eco._kinds import Handler, IntentionHandler, ServiceHandler, StaleError, Unit
from eco._kinds_catalog import DatasetHandler, PlatformHandler
from eco._kinds_named import RouteHandler, SyncJobHandler
from eco._output import OutputFormat, emit
from eco._settings import Settings, data_options, pass_settings

__all__ = [
    "HANDLERS",
    "Plan",
    "Result",
    "apply_command",
    "diff_command",
    "execute",
    "export_command",
    "export_documents",
    "make_plan",
]

EXIT_CHANGES = 1
EXIT_CONFLICT = 1
EXIT_INVALID = 2
DEFAULT_SET = "default"
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")

#: Every kind apply handles, in the order it writes them (deletes go in reverse).
HANDLERS: dict[str, Handler] = {
    handler.kind: handler
    for handler in (
        PlatformHandler(),
        ServiceHandler(),
        IntentionHandler(),
        RouteHandler(),
        DatasetHandler(),
        SyncJobHandler(),
    )
}


class DocumentsInvalid(click.ClickException):
    """Documents with errors: nothing is sent; exit 2."""

    exit_code = EXIT_INVALID


@dataclass
class Step:
    """One planned change of a unit."""

    verb: str  # create, update, unchanged, delete
    handler: Handler
    unit: Unit | None
    live: Unit | None

    @property
    def key(self) -> str:
        unit = self.unit or self.live
        assert unit is not None
        return unit.key


@dataclass
class DocDiff:
    kind: str
    doc: str
    live: dict[str, Any] | None
    desired: dict[str, Any] | None


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    docs: list[DocDiff] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return sum(step.verb != "unchanged" for step in self.steps)


@dataclass(frozen=True)
class Result:
    kind: str
    key: str
    verb: str  # created, updated, unchanged, deleted, conflict, failed
    detail: str = ""


def _documents(paths: Sequence[str]) -> list[LoadedDocument]:
    """The valid documents, or :class:`DocumentsInvalid` listing every problem."""
    loaded = load_documents(paths)
    errors: list[DocumentError] = [e for item in loaded for e in item.errors]
    seen: dict[tuple[str, str], LoadedDocument] = {}
    for item in loaded:
        if item.document is None:
            continue
        key = (item.kind, HANDLERS[item.kind].doc_key(item.document))
        first = seen.setdefault(key, item)
        if first is not item:
            errors.append(
                DocumentError(
                    item.file,
                    item.line,
                    "",
                    f"{item.kind} {key[1]} is also at {first.file}:{first.line}",
                )
            )
    if errors:
        raise DocumentsInvalid(
            f"{len(errors)} problem(s) in the documents; nothing was sent\n  "
            + "\n  ".join(str(e) for e in errors)
        )
    if not loaded:
        raise DocumentsInvalid(f"no documents in {', '.join(paths)}")
    return loaded


def make_plan(
    settings: Settings, loaded: Sequence[LoadedDocument], *, owner: str, prune: bool
) -> Plan:
    """What apply would do: reads the live objects of the documents' kinds
    (of every kind with ``prune``) and compares unit by unit."""
    plan = Plan()
    kinds = {item.kind for item in loaded}
    for kind, handler in HANDLERS.items():
        if kind not in kinds and not prune:
            continue
        documents = [item.document for item in loaded if item.kind == kind]
        desired = {
            unit.key: unit
            for document in documents
            if document is not None
            for unit in handler.units(document)
        }
        desired_docs = {handler.doc_key(d) for d in documents if d is not None}
        live = {unit.key: unit for unit in handler.read(settings)}
        by_doc: dict[str, tuple[list[Unit], list[Unit]]] = {
            doc: ([], []) for doc in sorted(desired_docs)
        }
        for key, unit in desired.items():
            current = live.get(key)
            if current is None:
                verb = "create"
            elif current.body == unit.body:
                verb = "unchanged"
            else:
                verb = "update"
            plan.steps.append(Step(verb, handler, unit, current))
            by_doc[unit.doc][0].append(unit)
            if current is not None:
                by_doc[unit.doc][1].append(current)
        if prune:
            for key, unit in sorted(live.items()):
                if key not in desired and unit.owner == owner:
                    plan.steps.append(Step("delete", handler, None, unit))
                    by_doc.setdefault(unit.doc, ([], []))[1].append(unit)
        for doc, (wanted, present) in sorted(by_doc.items()):
            plan.docs.append(
                DocDiff(
                    kind,
                    doc,
                    handler.assemble(doc, present) if present else None,
                    handler.assemble(doc, wanted) if wanted or doc in desired_docs else None,
                )
            )
    order = list(HANDLERS)
    # Creations and updates in kind order, deletions after them in reverse.
    plan.steps.sort(
        key=lambda s: (
            s.verb == "delete",
            -order.index(s.handler.kind) if s.verb == "delete" else order.index(s.handler.kind),
        )
    )
    return plan


def execute(settings: Settings, plan: Plan, *, owner: str) -> list[Result]:
    """Carries out a plan; a unit changed since it was read is a conflict,
    a unit the control plane refuses is failed; the others go on."""
    results = []
    past = {"create": "created", "update": "updated", "delete": "deleted"}
    for step in plan.steps:
        kind = step.handler.kind
        if step.verb == "unchanged":
            results.append(Result(kind, step.key, "unchanged"))
            continue
        try:
            if step.verb == "delete":
                assert step.live is not None
                step.handler.delete(settings, step.live)
            else:
                assert step.unit is not None
                step.handler.write(settings, step.unit, step.live, owner)
        except StaleError as err:
            results.append(Result(kind, step.key, "conflict", str(err)))
            continue
        except (sdk.InvalidArgumentError, sdk.NotFoundError, sdk.FailedPreconditionError) as err:
            detail = err.message
            if isinstance(err, sdk.InvalidArgumentError) and err.field_violations:
                detail = "; ".join(f"{v.field}: {v.description}" for v in err.field_violations)
            results.append(Result(kind, step.key, "failed", detail))
            continue
        results.append(Result(kind, step.key, past[step.verb]))
    return results


def _check_set(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _SET_NAME.fullmatch(value):
        raise click.BadParameter(
            "letters, digits, '-', '_' and '.', starting with a letter or digit (at most 63)",
            ctx=ctx,
            param=param,
        )
    return value


_files = click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True),
    help="A YAML file, or a directory of *.yaml/*.yml files; repeat for more.",
)
_set = click.option(
    "--set",
    "owner",
    default=DEFAULT_SET,
    show_default=True,
    callback=_check_set,
    help="The name apply marks its objects with: --prune deletes only this set's.",
)
_prune = click.option(
    "--prune", is_flag=True, help="Also delete this set's objects that the files no longer name."
)


@click.command("apply")
@_files
@_prune
@_set
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@data_options
@pass_settings
def apply_command(
    settings: Settings, paths: tuple[str, ...], prune: bool, owner: str, dry_run: bool
) -> None:
    """Make the registry match the documents in FILE or DIR.

    Creates what is missing, updates what differs, and with --prune deletes
    the objects an earlier apply of the same --set created that the files no
    longer name (an object created by hand is never deleted). Applying the
    same files again changes nothing and says "no changes". An object
    someone else changed after apply read it is reported as a conflict and
    left as it is. Exit 0 when everything is applied; 1 on a conflict or an
    object the control plane refused; 2 when a document is invalid (then
    nothing is sent).

    \b
    Examples:
      eco apply -f platform/                     # every *.yaml under platform/
      eco apply -f services.yaml --prune --set shop
      eco apply -f services.yaml --dry-run
    """
    loaded = _documents(paths)
    plan = make_plan(settings, loaded, owner=owner, prune=prune)
    if dry_run:
        would = {"create": "would create", "update": "would update", "delete": "would delete"}
        results = [Result(s.handler.kind, s.key, would.get(s.verb, s.verb)) for s in plan.steps]
    else:
        results = (
            execute(settings, plan, owner=owner)
            if plan.changes
            else [Result(s.handler.kind, s.key, "unchanged") for s in plan.steps]
        )
    counts: dict[str, int] = {}
    for result in results:
        counts[result.verb] = counts.get(result.verb, 0) + 1
    data = {
        "results": [
            {
                "kind": r.kind,
                "name": r.key,
                "result": r.verb,
                **({"detail": r.detail} if r.detail else {}),
            }
            for r in results
        ],
        "summary": counts,
        "dry_run": dry_run,
    }

    def text() -> str:
        if not plan.changes:
            return f"no changes ({len(results)} unchanged)"
        lines = [
            f"{r.verb} {r.kind} {r.key}" + (f": {r.detail}" if r.detail else "")
            for r in results
            if r.verb != "unchanged"
        ]
        summary = ", ".join(f"{n} {verb}" for verb, n in counts.items())
        return "\n".join([*lines, summary + (" (dry run: nothing changed)" if dry_run else "")])

    emit(data, settings.output, text)
    if counts.get("conflict"):
        click.echo(
            "eco: objects changed by someone else since apply read them were left as they are; "
            "see them with 'eco diff', then apply again",
            err=True,
        )
    if counts.get("conflict") or counts.get("failed"):
        raise SystemExit(EXIT_CONFLICT)


def _yaml(document: dict[str, Any] | None) -> list[str]:
    if document is None:
        return []
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).splitlines(True)


@click.command("diff")
@_files
@_prune
@_set
@data_options
@pass_settings
def diff_command(settings: Settings, paths: tuple[str, ...], prune: bool, owner: str) -> None:
    """Show what apply would change, as a unified diff per document.

    Each diff goes from the live object (as export writes it) to the
    document; with --prune, the objects apply would delete show as removed.
    Exit 0 when nothing would change, 1 when something would, 2 on an
    invalid document or when the control plane cannot be read.

    \b
    Examples:
      eco diff -f platform/
      eco diff -f services.yaml --prune --set shop || echo "apply would change something"
    """
    try:
        loaded = _documents(paths)
        plan = make_plan(settings, loaded, owner=owner, prune=prune)
    except DocumentsInvalid as err:
        click.echo(f"eco: {err.format_message()}", err=True)
        raise SystemExit(EXIT_INVALID) from None
    except sdk.EcoError as err:
        click.echo(f"eco: cannot read the registry: {err.message or err.code}", err=True)
        raise SystemExit(EXIT_INVALID) from None
    changed = False
    for doc in plan.docs:
        if doc.live == doc.desired:
            continue
        changed = True
        name = f"{doc.kind}/{doc.doc}"
        lines = difflib.unified_diff(
            _yaml(doc.live), _yaml(doc.desired), fromfile=f"live/{name}", tofile=f"desired/{name}"
        )
        click.echo("".join(lines), nl=False)
    raise SystemExit(EXIT_CHANGES if changed else 0)


def export_documents(settings: Settings, kinds: Sequence[str]) -> list[dict[str, Any]]:
    """Every object of ``kinds`` (all when empty) as documents, in a stable order."""
    documents: list[dict[str, Any]] = []
    for kind, handler in HANDLERS.items():
        if kinds and kind not in kinds:
            continue
        grouped: dict[str, list[Unit]] = {}
        for unit in handler.read(settings):
            grouped.setdefault(unit.doc, []).append(unit)
        documents.extend(handler.assemble(doc, units) for doc, units in sorted(grouped.items()))
    return documents


@click.command("export")
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=click.Choice(list(KINDS)),
    help="Only objects of this kind; repeat for more (default: every kind).",
)
@data_options
@pass_settings
def export_command(settings: Settings, kinds: tuple[str, ...]) -> None:
    """Write the registry's objects as apply documents (YAML) to stdout.

    Only what a document can say is written (no revisions, times or
    health; no instances held by a lease, which their sidecars register),
    in a stable order, so that export → apply on an empty control plane
    reproduces the registry and export again prints the same.

    \b
    Examples:
      eco export > all.yaml
      eco export --kind Service --kind Route > gateway.yaml
    """
    documents = export_documents(settings, kinds)
    if settings.output is OutputFormat.JSON:
        emit(documents, settings.output, str)
        return
    click.echo(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False), nl=False)
