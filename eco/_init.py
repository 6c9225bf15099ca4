"""``eco init``: a new platform's files, from a template (docs/templates.md).

A template is a directory of ``eco/templates/`` (shipped in the wheel as
package data), laid over ``eco/templates/_common/`` (the scripts, the
Containerfile and the README every template has). Its placeholders
(``__NAME__``, ``__VERSION__``…) are replaced in every file's text and path.
Everything is rendered in memory before anything is written, so a bad name
or a non-empty directory writes nothing; each file is then written through a
temporary file and a rename, so none is ever left half-written.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

import click

from eco._output import emit, render_table
from eco._settings import Settings, pass_settings

__all__ = ["TEMPLATES", "Template", "init_command", "render", "write"]

EXIT_USAGE = 2
#: Names (``--name``) are DNS labels, short enough that the longest name made
#: from one (``NAME-controlplane-tls``, a Kubernetes Secret) is one too.
MAX_NAME = 40
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_COMMON = "_common"
#: Files written executable.
_EXECUTABLE = re.compile(r"^scripts/.*\.sh$")


@dataclass(frozen=True)
class Template:
    """One template: its name, a line for ``--list``, a paragraph for its README,
    and the ports its units listen on (what ``scripts/check.sh`` checks are free)."""

    name: str
    summary: str
    about: str
    ports: tuple[int, ...]


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "core",
            "The core platform: the control plane, a sidecar running a service, a shared "
            "database, a dataset in the catalog.",
            "The core platform: where the control plane and the shared services live. A "
            "Platform (kind core), a database registered as a Service (no sidecar runs "
            "beside it), an Intention letting the api call it, a Dataset of reports, and "
            "the sidecar of the first host, registering the api service and reaching the "
            "database on a local port.",
            (7400, 7401, 7410, 7411, 15432),
        ),
        Template(
            "cloud",
            "A public-cloud platform: a sidecar, an API gateway serving routes kept in the "
            "control plane, a managed queue, a bucket in the catalog.",
            "A platform in a public cloud account. A Platform (kind cloud, provider aws), a "
            "managed queue registered as a Service, an Intention, a Dataset of uploads in a "
            "bucket, a Route, the sidecar of the first host registering the api service, "
            "and an API gateway that serves the routes apply writes (config/gateway.yaml, "
            "on port 8080).",
            (7400, 7401, 7410, 7411, 15672, 8080, 8081),
        ),
        Template(
            "onprem",
            "An on-premise site backed up to the cloud: a sidecar that runs a nightly sync "
            "job copying the site's files to a bucket.",
            "An on-premise site whose files are backed up to the cloud. Two Platforms (the "
            "site, kind onprem, and the cloud account the backups go to), the site's "
            "database as a Service, two Datasets (the files and their copy in a bucket), "
            "and a SyncJob copying one to the other every night at 02:00 UTC on the "
            "site's first host, whose sidecar runs it.",
            (7400, 7401, 7410, 7411, 15432),
        ),
    )
}


def _version() -> str:
    try:
        return importlib.metadata.version("ecosystem")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0.1.0"


def check_name(name: str) -> str | None:
    """Why ``name`` is not a template name (None when it is one)."""
    if len(name) > MAX_NAME:
        return f"{name!r} is longer than {MAX_NAME} characters"
    if not _NAME.fullmatch(name):
        return (
            f"{name!r} is not a DNS label: lowercase letters, digits and '-', starting and "
            "ending with a letter or digit"
        )
    return None


def _walk(
    root: Traversable, prefix: PurePosixPath | None = None
) -> Iterator[tuple[PurePosixPath, Traversable]]:
    prefix = prefix or PurePosixPath()
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        path = prefix / entry.name
        if entry.is_dir():
            yield from _walk(entry, path)
        else:
            yield path, entry


def render(template: Template, name: str) -> dict[PurePosixPath, str]:
    """Every file of ``template`` for platform ``name``, by its path in the directory."""
    root = importlib.resources.files("eco").joinpath("templates")
    values = {
        "__NAME__": name,
        "__VERSION__": _version(),
        "__TEMPLATE__": template.name,
        "__ABOUT__": template.about,
        "__PORTS__": " ".join(str(p) for p in template.ports),
    }
    pattern = re.compile("|".join(re.escape(k) for k in values))

    def fill(text: str) -> str:
        return pattern.sub(lambda m: values[m.group(0)], text)

    files: dict[PurePosixPath, str] = {}
    for source in (_COMMON, template.name):  # the template's own files win
        for path, entry in _walk(root.joinpath(source)):
            files[PurePosixPath(fill(str(path)))] = fill(entry.read_text(encoding="utf-8"))
    return files


def write(directory: Path, files: dict[PurePosixPath, str]) -> None:
    """Writes ``files`` under ``directory``, each through a temporary file and a rename."""
    for path, text in files.items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(temporary, 0o755 if _EXECUTABLE.match(str(path)) else 0o644)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _list(settings: Settings) -> None:
    data = {
        "templates": [
            {"name": t.name, "summary": t.summary, "about": t.about} for t in TEMPLATES.values()
        ]
    }
    emit(
        data,
        settings.output,
        lambda: (
            render_table(["TEMPLATE", "WHAT"], [(t.name, t.summary) for t in TEMPLATES.values()])
            + "\n\nWrite one with: eco init --template TEMPLATE DIR [--name NAME]"
        ),
    )


@click.command("init")
@click.argument("directory", metavar="DIR", required=False, type=click.Path(path_type=Path))
@click.option(
    "-t",
    "--template",
    "template_name",
    type=click.Choice(list(TEMPLATES)),
    help="The kind of platform to start from (see --list).",
)
@click.option(
    "--name",
    metavar="NAME",
    help="The platform's name, put in every file: a DNS label of at most "
    f"{MAX_NAME} characters (default: DIR's name when it is one, else the template's).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into DIR even when it is not empty (files of the template's names are replaced).",
)
@click.option("--list", "list_templates", is_flag=True, help="Describe the templates and exit.")
@pass_settings
def init_command(
    settings: Settings,
    directory: Path | None,
    template_name: str | None,
    name: str | None,
    force: bool,
    list_templates: bool,
) -> None:
    """Write a new platform's files into DIR, from a template.

    A complete, commented starting point: apply documents (the Platform,
    its services, datasets…), sidecar and gateway configurations, a
    compose.yaml, systemd units, Kubernetes manifests, and scripts/ to
    install and start it on a fresh host. Everything written passes
    'eco validate'; 'eco dev --from DIR' runs it on this machine. See
    docs/templates.md.

    \b
    Examples:
      eco init --list
      eco init --template cloud shop-eu --name shop-eu
      eco validate shop-eu && eco dev --from shop-eu
    """
    if list_templates:
        _list(settings)
        return
    if template_name is None:
        raise click.UsageError("give --template (one of " + ", ".join(TEMPLATES) + "), or --list")
    if directory is None:
        raise click.UsageError("give DIR, the directory to write the template into")
    template = TEMPLATES[template_name]
    if name is None:
        name = (
            directory.resolve().name
            if check_name(directory.resolve().name) is None
            else template.name
        )
    elif (problem := check_name(name)) is not None:
        raise click.BadParameter(problem, param_hint="'--name'")
    if directory.exists() and not directory.is_dir():
        raise click.UsageError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise click.UsageError(
            f"{directory} is not empty: give --force to write the template into it "
            "(files of the same names are replaced, others left alone)"
        )
    files = render(template, name)
    try:
        write(directory, files)
    except OSError as err:
        raise click.ClickException(
            f"cannot write {err.filename or directory}: {err.strerror}"
        ) from None
    data = {
        "template": template.name,
        "name": name,
        "directory": str(directory),
        "files": sorted(str(p) for p in files),
    }

    def text() -> str:
        return "\n".join(
            [
                f"Wrote the {template.name} template ({name}) to {directory}/: {len(files)} files.",
                "",
                "Next:",
                f"  eco validate {directory}      # every file eco reads: all ok",
                f"  eco dev --from {directory}    # run it here: control plane, sidecars, apply",
                f"  less {directory}/README.md    # what each file is, how to adapt it",
            ]
        )

    emit(data, settings.output, text)
