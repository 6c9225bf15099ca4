"""``eco node list`` and ``eco wait``: the fleet of sidecars as the control plane sees it."""

from __future__ import annotations

import time

import click

from eco._output import emit, render_table
from eco._settings import Settings, call, data_options, pass_settings

__all__ = ["node", "wait"]

#: eco's exit status for bad input (eco.cli.EXIT_USAGE; eco.cli imports this module lazily).
EXIT_USAGE = 2


@click.group()
def node() -> None:
    """Inspect the sidecars connected to the control plane.

    \b
    Examples:
      eco node list
      eco node list -o json
    """


def _ago(ms: int) -> str:
    if not ms:
        return "-"
    seconds = max(0.0, time.time() - ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


@node.command("list")
@data_options
@pass_settings
def list_nodes(settings: Settings) -> None:
    """List every sidecar: where it is connected, when it was last seen, and
    whether it has applied the latest update (SYNCED) or not (STALE); then
    every xDS client (gRPC proxyless, or Envoy, a sidecar's included): the
    worst state of what it was sent (ACKED, REQUESTED, or NACKED with the
    resource and the client's error: it keeps running what it had before).

    The control plane answers in pages; this follows them all. A sidecar
    gone for an hour (its instances removed) is no longer listed. xDS
    clients are those of the replica that answers (eco xds status has each
    resource).

    \b
    Examples:
      eco node list
      eco node list -o json | jq '.nodes[] | select(.state != "SYNCED")'
    """
    with settings.client() as client:
        nodes = client.list_nodes()
    from eco._xds import client_summaries

    xds_clients, xds_error = client_summaries(settings)

    def table() -> str:
        if xds_error:
            xds_table = xds_error
        elif not xds_clients:
            xds_table = "no xDS clients have connected"
        else:
            xds_table = render_table(
                ("XDS CLIENT", "KIND", "STATE", "APPLIED", "ERROR"),
                [
                    (c["node"], c["kind"], c["state"], ",".join(c["versions"]), c["error"])
                    for c in xds_clients
                ],
            )
        return sidecars() + "\n\n" + xds_table

    def sidecars() -> str:
        if not nodes:
            return "no sidecars have connected"
        return render_table(
            ("NODE", "STATE", "REPLICA", "LAST SEEN", "APPLIED", "INSTANCES", "ZONE", "ERROR"),
            [
                (
                    n.id,
                    n.state.value,
                    n.replica,
                    "now" if n.connected else _ago(n.last_seen_ms),
                    n.applied_version,
                    n.instance_count,
                    n.zone,
                    n.last_error,
                )
                for n in nodes
            ],
        )

    data: dict[str, object] = {"nodes": [n.to_dict() for n in nodes], "xds_clients": xds_clients}
    if xds_error:
        data["xds_error"] = xds_error
    emit(data, settings.output, table)


@click.command("wait")
@click.option(
    "--revision",
    required=True,
    type=click.IntRange(min=1),
    help="The store revision a write returned (e.g. printed by 'eco service register').",
)
@click.option(
    "--timeout",
    "wait_timeout",
    type=click.FloatRange(0.1, 600),
    default=30.0,
    show_default=True,
    help="Seconds to wait before giving up.",
)
@data_options
@pass_settings
def wait(settings: Settings, revision: int, wait_timeout: float) -> None:
    """Wait until a change has reached every sidecar that needs it.

    Returns once every connected sidecar subscribed to a service changed at
    REVISION has applied it; when none is (no sidecar uses that service), it
    says so and returns at once. On timeout it names the sidecars that have
    not, and exits 1. A REVISION newer than the store's is an error at once
    (exit 2): no write has made it yet.

    \b
    Examples:
      eco wait --revision 42
      eco wait --revision 42 --timeout 5 -o json
    """
    current = _store_revision(settings)
    if current is not None and revision > current:
        click.echo(
            f"eco: revision {revision} is newer than the store's revision ({current}): "
            "no write has made it yet; give a revision a write printed",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_USAGE)
    with settings.client() as client:
        result = client.wait_for_revision(revision, timeout=wait_timeout)

    def table() -> str:
        if result.applied and not result.affected:
            return (
                f"revision {revision}: no connected sidecar is affected (none uses a service "
                "changed at that revision), so there is nothing to wait for"
            )
        if result.applied:
            return f"revision {revision} applied by all {result.affected} affected sidecar(s)"
        lines = [
            f"revision {revision} not applied by {result.pending_count} of "
            f"{result.affected} affected sidecar(s) after {wait_timeout:g}s:"
        ]
        lines += [
            f"  {n.id} ({n.state.value}, applied {n.applied_version}"
            + (f", error: {n.last_error}" if n.last_error else "")
            + ")"
            for n in result.pending
        ]
        if result.pending_count > len(result.pending):
            lines.append(f"  … and {result.pending_count - len(result.pending)} more")
        return "\n".join(lines)

    emit(result.to_dict(), settings.output, table)
    if not result.applied:
        raise click.exceptions.Exit(1)


def _store_revision(settings: Settings) -> int | None:
    """The store's current revision, from the smallest read that carries it;
    None when the token may not read the registry (the wait itself may still
    be allowed: it then runs without this check)."""
    from ecosystem.v1 import registry_pb2

    import sdk

    try:
        response = call(
            settings, "ListServices", registry_pb2.ListServicesRequest(page_size=1), idempotent=True
        )
    except sdk.PermissionDeniedError:
        return None
    return int(response.revision)
