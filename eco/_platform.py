"""``eco platform``: the platforms services run on, kept in the control plane.

A platform is the core platform, a public cloud account or an on-premise site
(docs/registry-tools.md, "Platforms"). Sidecars and instances name theirs in
their ``platform`` field; ``eco platform get`` shows what runs there. Errors
the control plane returns (a refused field, a platform still in use, a
revision that moved) are printed by ``eco``'s one error handler.
"""

from __future__ import annotations

from typing import Any

import click
import yaml
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import platform_pb2 as ppb
from ecosystem.v1 import registry_pb2 as pb
from google.protobuf.message import Message

from eco._output import emit, render_table
from eco._settings import Settings, call, data_options, pass_settings

__all__ = ["KINDS", "parse_labels", "platform", "platform_dict"]

KINDS = {
    "core": ppb.PLATFORM_KIND_CORE,
    "cloud": ppb.PLATFORM_KIND_CLOUD,
    "onprem": ppb.PLATFORM_KIND_ONPREM,
}


def kind_name(kind: int) -> str:
    return next((name for name, value in KINDS.items() if value == kind), "")


def parse_labels(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """``k=v`` options → a mapping (a bad one is a usage error, exit 2)."""
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx=ctx, param=param)
        labels[key] = val
    return labels


def _call(settings: Settings, method: str, request: Message) -> Any:
    """One PlatformService call; reads are retried on UNAVAILABLE, writes not."""
    return call(settings, method, request, idempotent=method.startswith(("Get", "List")))


def platform_dict(item: ppb.Platform) -> dict[str, Any]:
    """A platform as ``-o json`` shows it (and as an apply document writes it)."""
    return {
        "name": item.name,
        "kind": kind_name(item.kind),
        "provider": item.provider,
        "regions": list(item.regions),
        "labels": dict(sorted(item.labels.items())),
        "description": item.description,
        "create_revision": item.create_revision,
        "mod_revision": item.mod_revision,
    }


def _health(value: int) -> str:
    return pb.HealthStatus.Name(value).removeprefix("HEALTH_STATUS_").lower()


def _node_status(value: int) -> str:
    return apb.NodeSyncStatus.Name(value).removeprefix("NODE_SYNC_STATUS_").lower()


def _labels(labels: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@click.group("platform")
def platform() -> None:
    """Platforms: the core platform, public clouds and on-premise sites.

    Sidecars name their platform (the sidecar config's node.platform), and so
    do the instances they register; 'eco platform get' shows a platform's
    nodes, services and their health.

    \b
    Examples:
      eco platform register core --kind core --description "Shared core"
      eco platform register aws-eu --kind cloud --provider aws --region eu-west-1 -l env=prod
      eco platform register plant-7 --kind onprem --region lyon
      eco platform list --kind cloud -l env=prod
      eco platform get plant-7
      eco platform deregister plant-7
    """


@platform.command("register")
@click.argument("name")
@click.option("--kind", type=click.Choice(tuple(KINDS)), required=True, help="What it is.")
@click.option("--provider", default="", help="Who runs it: aws, gcp, azure, … (cloud: required).")
@click.option("--region", "regions", multiple=True, metavar="R", help="A region (repeatable).")
@click.option(
    "--label",
    "-l",
    "labels",
    multiple=True,
    callback=parse_labels,
    metavar="K=V",
    help="A label (repeatable).",
)
@click.option("--description", default="", help="Free text.")
@click.option(
    "--replace", is_flag=True, help="Replace the platform NAME if it exists (else create it)."
)
@click.option(
    "--if-revision",
    type=click.IntRange(min=1),
    metavar="REV",
    help="Replace it only if it is still at revision REV (its mod_revision).",
)
@data_options
@pass_settings
def register(
    settings: Settings,
    name: str,
    kind: str,
    provider: str,
    regions: tuple[str, ...],
    labels: dict[str, str],
    description: str,
    replace: bool,
    if_revision: int | None,
) -> None:
    """Register a platform (exit 1 "already exists" unless --replace or --if-revision).

    The control plane checks every field (exit 2, each refused field named).
    With --if-revision, a platform changed by someone else since revision REV
    is not overwritten (exit 1, "revision conflict").
    """
    if replace and if_revision:
        raise click.UsageError("give at most one of --replace and --if-revision")
    item = ppb.Platform(
        name=name,
        kind=KINDS[kind],
        provider=provider,
        regions=regions,
        labels=labels,
        description=description,
    )
    answer = _call(
        settings,
        "RegisterPlatform",
        ppb.RegisterPlatformRequest(
            platform=item, replace=replace, expected_revision=if_revision or 0
        ),
    )
    stored = answer.platform
    verb = "registered" if answer.created else "updated" if answer.changed else "unchanged:"
    emit(
        platform_dict(stored),
        settings.output,
        lambda: f"{verb} platform {name} (revision {stored.mod_revision})",
    )


@platform.command("list")
@click.option("--kind", type=click.Choice(tuple(KINDS)), help="Only platforms of this kind.")
@click.option("--provider", default="", help="Only platforms of this provider.")
@click.option(
    "--label",
    "-l",
    "labels",
    multiple=True,
    callback=parse_labels,
    metavar="K=V",
    help="Only platforms with this label (repeatable: all of them).",
)
@data_options
@pass_settings
def list_(settings: Settings, kind: str | None, provider: str, labels: dict[str, str]) -> None:
    """List the platforms, filtered by kind, provider and labels."""
    request = ppb.ListPlatformsRequest(
        kind=KINDS[kind] if kind else ppb.PLATFORM_KIND_UNSPECIFIED,
        provider=provider,
        labels=labels,
    )
    items = _call(settings, "ListPlatforms", request).platforms

    def table() -> str:
        if not items:
            return "no platforms"
        return render_table(
            ("NAME", "KIND", "PROVIDER", "REGIONS", "LABELS", "DESCRIPTION"),
            [
                (
                    i.name,
                    kind_name(i.kind),
                    i.provider,
                    list(i.regions),
                    _labels(i.labels),
                    i.description[:40],
                )
                for i in items
            ],
        )

    emit({"platforms": [platform_dict(i) for i in items]}, settings.output, table)


@platform.command("get")
@click.argument("name")
@click.option(
    "--max-instances",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Instances listed at most (the counts cover all).",
)
@data_options
@pass_settings
def get(settings: Settings, name: str, max_instances: int) -> None:
    """Show a platform with its nodes, services and their health."""
    answer = _call(
        settings,
        "GetPlatform",
        ppb.GetPlatformRequest(name=name, max_instances=max_instances),
    )
    data = {
        **platform_dict(answer.platform),
        "nodes": [
            {
                "id": n.node.id,
                "region": n.node.region,
                "zone": n.node.zone,
                "status": _node_status(n.status),
                "connected": n.connected,
                "instances": n.instance_count,
            }
            for n in answer.nodes
        ],
        "services": [
            {
                "namespace": s.namespace,
                "name": s.name,
                "instances": s.instance_count,
                "passing": s.passing_count,
                "warning": s.warning_count,
                "critical": s.critical_count,
                "unknown": s.unknown_count,
            }
            for s in answer.services
        ],
        "instances": [
            {
                "namespace": i.namespace,
                "service": i.service,
                "id": i.id,
                "address": f"{i.address}:{i.port}",
                "node": i.node,
                "zone": i.zone,
                "health": _health(i.health),
            }
            for i in answer.instances
        ],
        "instance_count": answer.instance_count,
        "datasets": list(answer.datasets),
    }

    def text() -> str:
        p = answer.platform
        head = {
            "name": p.name,
            "kind": kind_name(p.kind),
            "provider": p.provider or None,
            "regions": list(p.regions) or None,
            "labels": dict(sorted(p.labels.items())) or None,
            "description": p.description or None,
            "revision": p.mod_revision,
            "datasets": list(answer.datasets) or None,
        }
        parts = [yaml.safe_dump({k: v for k, v in head.items() if v}, sort_keys=False).rstrip()]
        parts.append("\nNODES")
        parts.append(
            render_table(
                ("NODE", "REGION", "ZONE", "STATUS", "INSTANCES"),
                [
                    (n["id"], n["region"], n["zone"], n["status"], n["instances"])
                    for n in data["nodes"]
                ],
            )
            if data["nodes"]
            else "none"
        )
        parts.append("\nSERVICES")
        parts.append(
            render_table(
                ("NAMESPACE", "SERVICE", "INSTANCES", "PASSING", "WARNING", "CRITICAL"),
                [
                    (
                        s["namespace"],
                        s["name"],
                        s["instances"],
                        s["passing"],
                        s["warning"],
                        s["critical"],
                    )
                    for s in data["services"]
                ],
            )
            if data["services"]
            else "none"
        )
        if data["instances"]:
            parts.append("\nINSTANCES")
            parts.append(
                render_table(
                    ("SERVICE", "ID", "ADDRESS", "NODE", "ZONE", "HEALTH"),
                    [
                        (
                            f"{i['namespace']}/{i['service']}",
                            i["id"],
                            i["address"],
                            i["node"],
                            i["zone"],
                            i["health"],
                        )
                        for i in data["instances"]
                    ],
                )
            )
            if answer.instance_count > len(answer.instances):
                parts.append(f"… {answer.instance_count - len(answer.instances)} more")
        return "\n".join(parts)

    emit(data, settings.output, text)


@platform.command("deregister")
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Even while instances, nodes, datasets or sync jobs still name it.",
)
@click.option(
    "--if-revision",
    type=click.IntRange(min=1),
    metavar="REV",
    help="Only if it is still at revision REV.",
)
@data_options
@pass_settings
def deregister(settings: Settings, name: str, force: bool, if_revision: int | None) -> None:
    """Deregister a platform (refused while anything still names it, unless --force)."""
    answer = _call(
        settings,
        "DeregisterPlatform",
        ppb.DeregisterPlatformRequest(name=name, force=force, expected_revision=if_revision or 0),
    )
    emit(
        {"deregistered": name, "revision": answer.revision},
        settings.output,
        lambda: f"deregistered platform {name}",
    )
