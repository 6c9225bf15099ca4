"""``eco service …``: register, deregister, list, get and watch instances."""

from __future__ import annotations

import asyncio

import click

from eco._output import emit, json_line, render_table
from eco._settings import Settings, data_options, pass_settings

__all__ = ["service"]

_HEALTH_ORDER = ("PASSING", "WARNING", "CRITICAL", "UNKNOWN")


@click.group()
def service() -> None:
    """Register, inspect and watch service instances.

    \b
    Examples:
      eco service register web --address 10.0.0.9 --port 8080 --tag v2
      eco service list
      eco service get web -o json
      eco service watch web --since 42
      eco service deregister web --id web-7f3a9c01d2e4
    """


def _parse_meta(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        metadata[key] = value
    return metadata


@service.command("register")
@click.argument("name")
@click.option("--address", required=True, help="IP address or host name the instance serves on.")
@click.option(
    "--port", required=True, type=click.IntRange(1, 65535), help="Port it serves on (1-65535)."
)
@click.option(
    "--id",
    "instance_id",
    help="Instance id. Omitted: that of the instance already at --address and --port "
    "(updated, not duplicated), else a new NAME-<12 hex digits>.",
)
@click.option("--namespace", default="", help="Namespace (empty: default).")
@click.option("--node", default="", help="Node (host) it runs on.")
@click.option("--platform", default="", help="Platform it runs on, e.g. core, aws, onprem.")
@click.option("--region", default="", help="Region, for locality-aware balancing.")
@click.option("--zone", default="", help="Zone, for locality-aware balancing.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="A tag; repeat for more.")
@click.option(
    "--meta",
    "metadata",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_meta,
    help="A metadata entry; repeat for more.",
)
@click.option(
    "--weight",
    type=click.IntRange(min=0),
    default=0,
    help="Relative weight for weighted balancing, 1-10000 (0: 1).",
)
@data_options
@pass_settings
def register(
    settings: Settings,
    name: str,
    address: str,
    port: int,
    instance_id: str | None,
    namespace: str,
    node: str,
    platform: str,
    region: str,
    zone: str,
    tags: tuple[str, ...],
    metadata: dict[str, str],
    weight: int,
) -> None:
    """Register a persistent instance of service NAME (it stays until deregistered).

    Registering the same --id again replaces the instance; so does registering
    the same address and port again without --id.

    \b
    Example:
      eco service register web --address 10.0.0.9 --port 8080 \\
          --id web-1 --zone eu-west-1a --tag v2 --meta version=2.3.1
    """
    with settings.client() as client:
        instance = client.register(
            name,
            address,
            port,
            id=instance_id,
            namespace=namespace,
            node=node,
            platform=platform,
            region=region,
            zone=zone,
            tags=tags,
            metadata=metadata,
            weight=weight,
        )
    emit(
        instance.to_dict(),
        settings.output,
        lambda: (
            f"registered {instance.service}/{instance.id} at {instance.address}:{instance.port}"
            f" (revision {instance.mod_revision})"
        ),
    )


@service.command("deregister")
@click.argument("name")
@click.option("--id", "instance_id", required=True, help="The instance to remove.")
@click.option("--namespace", default="", help="Namespace (empty: default).")
@data_options
@pass_settings
def deregister(settings: Settings, name: str, instance_id: str, namespace: str) -> None:
    """Remove the instance --id of service NAME.

    Removing an instance that is not registered succeeds too (as a retry
    would): the output says nothing was removed ("deleted": false).

    \b
    Example:
      eco service deregister web --id web-1
    """
    with settings.client() as client:
        done = client.deregister(name, instance_id, namespace=namespace)
    emit(
        {"service": name, "namespace": namespace, "id": instance_id, **done.to_dict()},
        settings.output,
        lambda: (
            f"deregistered {name}/{instance_id} (revision {done.revision})"
            if done.deleted
            else f"{name}/{instance_id} was not registered; nothing removed "
            f"(revision {done.revision})"
        ),
    )


@service.command("list")
@click.option("--namespace", default="", help="Only this namespace (empty: all).")
@data_options
@pass_settings
def list_services(settings: Settings, namespace: str) -> None:
    """List services with their instance counts by health.

    \b
    Examples:
      eco service list
      eco service list -o json | jq '.services[].name'
    """
    with settings.client() as client:
        services = client.list_services(namespace=namespace)

    def table() -> str:
        if not services.services:
            return "no services registered"
        return render_table(
            ("NAMESPACE", "NAME", "INSTANCES", *_HEALTH_ORDER),
            [
                (
                    s.namespace,
                    s.name,
                    s.instance_count,
                    s.passing_count,
                    s.warning_count,
                    s.critical_count,
                    s.unknown_count,
                )
                for s in services
            ],
        )

    emit(services.to_dict(), settings.output, table)


@service.command("get")
@click.argument("name")
@click.option("--namespace", default="", help="Namespace (empty: default).")
@data_options
@pass_settings
def get_service(settings: Settings, name: str, namespace: str) -> None:
    """Show service NAME and each of its instances with their health.

    Health is one of PASSING, WARNING, CRITICAL or UNKNOWN. WEIGHT is the
    stored weight, as -o json gives it (0 balances as 1); METADATA lists the
    KEY=VALUE entries.

    \b
    Examples:
      eco service get web
      eco service get web -o yaml
    """
    with settings.client() as client:
        detail = client.get_service(name, namespace=namespace)

    def table() -> str:
        s = detail.service
        counts = ", ".join(
            f"{n} {h.lower()}"
            for h, n in zip(
                _HEALTH_ORDER,
                (s.passing_count, s.warning_count, s.critical_count, s.unknown_count),
                strict=True,
            )
            if n
        )
        header = (
            f"service {s.name} (namespace {s.namespace or 'default'}): "
            f"{s.instance_count} instance(s){': ' + counts if counts else ''}"
            f"  [revision {detail.revision}]"
        )
        if not detail.instances:
            return header
        rows = [
            (
                i.id,
                f"{i.address}:{i.port}",
                i.health.value,
                i.liveness.value.lower(),
                i.node,
                i.platform,
                i.zone,
                i.weight,
                i.tags,
                [f"{k}={v}" for k, v in sorted(i.metadata.items())],
            )
            for i in detail.instances
        ]
        headers = ("ID", "ENDPOINT", "HEALTH", "LIVENESS", "NODE", "PLATFORM", "ZONE")
        return header + "\n\n" + render_table((*headers, "WEIGHT", "TAGS", "METADATA"), rows)

    emit(detail.to_dict(), settings.output, table)


@service.command("watch")
@click.argument("name", required=False, default="")
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=0,
    help="Resume after this revision (0: start with a full snapshot).",
)
@click.option("--namespace", default="", help="Only this namespace (empty: all).")
@click.option("--platform", default="", help="Only instances on this platform.")
@click.option("--zone", default="", help="Only instances in this zone.")
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Only instances with this tag.")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Exit 0 after N PUT or DELETE events (the snapshot's PUTs count).",
)
@click.option(
    "--timeout",
    "watch_timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Stop after SECONDS: exit 0, or 1 when --count events have not all come by then.",
)
@click.option(
    "--progress",
    is_flag=True,
    help="Print the PROGRESS events the control plane sends while nothing changes.",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(0.1, 60.0),
    default=5.0,
    show_default=True,
    help="Seconds between PROGRESS events while nothing changes.",
)
@data_options
@pass_settings
def watch(
    settings: Settings,
    name: str,
    since: int,
    namespace: str,
    platform: str,
    zone: str,
    tags: tuple[str, ...],
    count: int | None,
    watch_timeout: float | None,
    progress: bool,
    progress_interval: float,
) -> None:
    """Stream changes to instances of NAME (or of every service) until Ctrl-C,
    --count events or --timeout.

    Prints one JSON object per line: "type" (PUT, DELETE, RESYNC or
    SNAPSHOT_END, and PROGRESS with --progress), "revision", and for PUT and
    DELETE the "instance". Without --since it starts with RESYNC, the current
    instances as PUTs and SNAPSHOT_END. It survives control-plane restarts,
    resuming after the last revision printed. The output is JSON lines
    whatever -o says.

    \b
    Examples:
      eco service watch web
      eco service watch web --count 1 --timeout 30    # wait for one change
      eco service watch --since 1042 | jq -c 'select(.type=="DELETE")'
    """
    seen = asyncio.run(
        _watch(
            settings,
            name,
            namespace=namespace,
            platform=platform,
            zone=zone,
            tags=tags,
            since=since,
            count=count,
            watch_timeout=watch_timeout,
            progress=progress,
            progress_interval=progress_interval,
        )
    )
    if count is not None and seen < count:
        within = f" within {watch_timeout:g}s" if watch_timeout is not None else ""
        click.echo(f"eco: {seen} of {count} event(s) came{within}", err=True)
        raise click.exceptions.Exit(1)


async def _watch(
    settings: Settings,
    name: str,
    *,
    namespace: str,
    platform: str,
    zone: str,
    tags: tuple[str, ...],
    since: int,
    count: int | None,
    watch_timeout: float | None,
    progress: bool,
    progress_interval: float,
) -> int:
    """Prints the watch's events until ``count`` changes or ``watch_timeout``
    seconds; returns how many PUT and DELETE events it printed."""
    import sdk

    seen = 0
    async with settings.async_client() as client:
        # Fail fast when nothing answers: the watch itself would retry forever.
        await client.list_services(namespace=namespace)
        events = client.watch(
            name,
            namespace=namespace,
            platform=platform,
            zone=zone,
            tags=tags,
            since_revision=since,
            progress_interval=progress_interval,
        )
        try:
            async with asyncio.timeout(watch_timeout):
                async for event in events:
                    if event.type is sdk.WatchEventType.PROGRESS and not progress:
                        continue
                    click.echo(json_line(event.to_dict()))
                    if event.type in (sdk.WatchEventType.PUT, sdk.WatchEventType.DELETE):
                        seen += 1
                        if count is not None and seen >= count:
                            break
        except TimeoutError:
            pass  # --timeout: the watch ends here, as asked
        finally:
            await events.aclose()
    return seen
