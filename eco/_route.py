"""``eco route``: the API gateway's routes, kept in the control plane.

Every gateway replica follows them (docs/gateway.md, "Routes in the control
plane"). ``apply`` checks a routes file with the gateway's own route model
before it sends anything, so a mistake is reported with its line, as
``eco gateway --check`` would; the control plane checks the shape again.
Errors are printed by ``eco``'s one error handler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml
from ecosystem.v1 import gateway_pb2 as gpb
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from eco._output import emit, render_table
from eco._settings import Settings, call, data_options, pass_settings
from sdk.lowlevel import struct_to_dict

__all__ = ["route"]

#: Bytes of a routes file read (a gateway's config file has the same bound).
MAX_FILE_BYTES = 1024 * 1024


class RoutesRefused(click.ClickException):
    """A routes file that cannot be applied; exit 2, like a route the control plane refuses."""

    exit_code = 2


def _call(settings: Settings, method: str, request: Message) -> Any:
    """One RouteService call: an apply of the same routes twice is one apply
    (retried), a delete is not."""
    return call(settings, method, request, idempotent=method != "DeleteRoute")


def _dict(item: gpb.Route) -> dict[str, Any]:
    spec = struct_to_dict(item.spec)
    return {
        "name": item.name,
        "group": item.group,
        "revision": item.revision,
        # The name first, as a routes file writes it (a Struct's keys come back sorted).
        "spec": {"name": spec.pop("name", item.name), **spec},
    }


def _target(spec: dict[str, Any]) -> str:
    """Where a route sends requests, in a few words (for the table)."""
    if "upstream" in spec:
        return str(spec["upstream"])
    if isinstance(spec.get("split"), list):
        parts = [
            f"{entry.get('service')}:{entry.get('weight', 1)}"
            for entry in spec["split"]
            if isinstance(entry, dict)
        ]
        return "split " + ",".join(parts)
    if isinstance(spec.get("redirect"), dict):
        redirect = spec["redirect"]
        return "redirect " + str(redirect.get("location") or redirect.get("host") or "")
    return "-"


def _match(spec: dict[str, Any]) -> str:
    match = spec.get("match")
    if not isinstance(match, dict):
        return "*"
    hosts = ",".join(str(h) for h in match.get("hosts") or ()) or "*"
    path = (
        match.get("path_prefix")
        or match.get("path")
        or (f"~{match['path_regex']}" if match.get("path_regex") else "/")
    )
    methods = ",".join(str(m) for m in match.get("methods") or ())
    return f"{hosts}{path}" + (f" {methods}" if methods else "")


def _read_routes(path: Path) -> list[dict[str, Any]]:
    """The routes of a file (``routes: [...]``), checked with the gateway's
    route model when the server extra is installed, else for shape only."""
    try:
        raw = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise RoutesRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise RoutesRefused(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    text = raw.decode("utf-8", errors="replace")
    _check_with_gateway_model(text, str(path))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RoutesRefused(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("routes"), list):
        raise RoutesRefused(f"{path}: expected a mapping with a list of routes (routes: [...])")
    extra = sorted(str(key) for key in data if key != "routes")
    if extra:
        raise RoutesRefused(
            f"{path}: {', '.join(extra)}: a routes file holds routes only (routes: [...])"
        )
    routes: list[dict[str, Any]] = data["routes"]
    for index, item in enumerate(routes):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise RoutesRefused(f"{path}: routes[{index}]: a mapping with a name")
    return routes


def _check_with_gateway_model(text: str, source: str) -> None:
    """Checks the routes as the gateway will, every problem with its line;
    without the gateway's model (no server extra), leaves it to the gateways."""
    try:
        from sidecar.gateway.config import ConfigError, parse_config
    except ImportError:
        click.echo(
            "eco: warning: routes checked for shape only (the gateway's checks need "
            "pip install 'ecosystem[server]'); gateways refuse a route they cannot use",
            err=True,
        )
        return
    try:
        parse_config(text, source)
    except ConfigError as err:
        # A routes file names no control plane: the gateways that follow it have one.
        problems = [
            line
            for line, p in zip(err.lines(), err.problems, strict=True)
            if p.field != "controlplane"
        ]
        if problems:
            raise RoutesRefused(
                f"{len(problems)} problem(s) in the routes; nothing was applied\n  "
                + "\n  ".join(problems)
            ) from None


def _spec(item: dict[str, Any], source: str, index: int) -> struct_pb2.Struct:
    spec = struct_pb2.Struct()
    try:
        # Through JSON: YAML's dates and other non-JSON values are refused here.
        spec.update(json.loads(json.dumps(item)))
    except (TypeError, ValueError) as exc:
        raise RoutesRefused(f"{source}: routes[{index}]: not JSON data: {exc}") from None
    return spec


@click.group()
def route() -> None:
    """The API gateway's routes, kept in the control plane.

    Every gateway replica that follows the control plane gets them over a
    watch and applies a change without dropping a connection. A routes file
    holds routes exactly as a gateway's config file writes them:

    \b
      routes:
        - name: orders
          match: {hosts: [api.example.com], path_prefix: /api/orders}
          upstream: orders
          rewrite: {strip_prefix: /api}
          timeout: 5s
    \b
    Examples:
      eco route apply -f routes.yaml                 # create or replace these routes
      eco route apply -f team-a.yaml --group team-a --prune
      eco route list
      eco route get orders -o yaml
      eco route delete orders
    """


@route.command("apply")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A YAML file with 'routes: [...]' in the gateway's route syntax.",
)
@click.option(
    "--group",
    default="",
    metavar="NAME",
    help="Record the routes under this group (what --prune covers); default: no group.",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete the routes of the group that the file does not name.",
)
@data_options
@pass_settings
def apply(settings: Settings, path: Path, group: str, prune: bool) -> None:
    """Create or replace the routes of a file, all at once or not at all.

    The routes are checked as a gateway would check them first (every
    problem, with its line); then one request writes them in one
    transaction. A route already stored as written is left alone, so
    applying the same file twice changes nothing. Exit 2 when a route is
    refused; nothing is written then.
    """
    items = _read_routes(path)
    request = gpb.ApplyRoutesRequest(group=group, prune=prune)
    for index, item in enumerate(items):
        request.routes.add(name=item["name"], spec=_spec(item, str(path), index))
    response = _call(settings, "ApplyRoutes", request)
    data = {
        "created": list(response.created),
        "updated": list(response.updated),
        "unchanged": list(response.unchanged),
        "deleted": list(response.deleted),
        "revision": response.revision,
    }

    def text() -> str:
        lines = [
            f"{verb} route {name}"
            for verb, key in (
                ("created", "created"),
                ("updated", "updated"),
                ("unchanged", "unchanged"),
                ("deleted", "deleted"),
            )
            for name in data[key]
        ]
        lines.append(
            f"{len(data['created'])} created, {len(data['updated'])} updated, "
            f"{len(data['unchanged'])} unchanged, {len(data['deleted'])} deleted "
            f"(revision {response.revision})"
        )
        return "\n".join(lines)

    emit(data, settings.output, text)


@route.command("list")
@data_options
@pass_settings
def list_(settings: Settings) -> None:
    """List every route, by name: what it matches and where it sends requests."""
    response = _call(settings, "ListRoutes", gpb.ListRoutesRequest())
    items = [_dict(r) for r in response.routes]

    def table() -> str:
        if not items:
            return "no routes"
        return render_table(
            ("NAME", "MATCH", "TARGET", "GROUP", "REVISION"),
            [
                (i["name"], _match(i["spec"]), _target(i["spec"]), i["group"], i["revision"])
                for i in items
            ],
        )

    emit({"routes": items, "revision": response.revision}, settings.output, table)


@route.command("get")
@click.argument("name")
@data_options
@pass_settings
def get(settings: Settings, name: str) -> None:
    """Show one route as stored (exit 1, "not found", when there is none).

    The default output is the route in the routes-file syntax, ready to
    paste into a file for apply.
    """
    response = _call(settings, "GetRoute", gpb.GetRouteRequest(name=name))
    item = _dict(response.route)

    def text() -> str:
        header = f"# group: {item['group'] or '-'}, revision {item['revision']}\n"
        return header + yaml.safe_dump(item["spec"], sort_keys=False).rstrip()

    emit(item, settings.output, text)


@route.command("delete")
@click.argument("name")
@data_options
@pass_settings
def delete(settings: Settings, name: str) -> None:
    """Delete one route (exit 1, "not found", when there is none).

    Gateways that follow the control plane drop it as the change reaches them.
    """
    response = _call(settings, "DeleteRoute", gpb.DeleteRouteRequest(name=name))
    emit(
        {"deleted": name, "revision": response.revision},
        settings.output,
        lambda: f"deleted route {name}",
    )
