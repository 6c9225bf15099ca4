"""``eco xds``: the bootstrap file a gRPC xDS client reads to find the control
plane, and what every xDS client was sent and did with it (over CSDS)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click

from eco._output import emit, render_table
from eco._settings import Settings, check_server, data_options, pass_settings

__all__ = ["bootstrap_document", "client_summaries", "xds"]

# What a node id may hold: printable, no spaces (it names the node in logs,
# in the control plane's /xds status and in the client's own CSDS dump).
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,253}$")


@click.group()
def xds() -> None:
    """Serve the registry to gRPC's proxyless xDS clients (any language).

    The control plane serves xDS on its gRPC port. A gRPC client finds it
    through a bootstrap file (GRPC_XDS_BOOTSTRAP=FILE) and then dials
    xds:///SERVICE (or xds:///SERVICE.NAMESPACE). docs/xds.md has the rest.

    \b
    Examples:
      eco xds bootstrap --node orders-client-1 --out xds-bootstrap.json
      GRPC_XDS_BOOTSTRAP=xds-bootstrap.json python my_client.py
      eco xds status
    """


def bootstrap_document(
    servers: list[str],
    node: str,
    *,
    ca_file: str | None = None,
    region: str = "",
    zone: str = "",
    cluster: str = "",
    token_file: str | None = None,
) -> dict[str, Any]:
    """The gRPC xDS bootstrap (JSON) for ``node``, pointing at ``servers`` in
    order; TLS when ``ca_file`` is given, plaintext otherwise. With
    ``token_file`` (a token envelope, :func:`serving.acl.token_envelope`) the
    client presents that token on its xDS calls (call credentials, over TLS only)."""
    if not _NODE_ID.match(node):
        raise ValueError(
            f"--node {node!r}: a node id is 1-254 letters, digits and . _ : / @ -, "
            "starting with a letter or digit"
        )
    if ca_file:
        creds: dict[str, Any] = {"type": "tls", "config": {"ca_certificate_file": ca_file}}
    else:
        creds = {"type": "insecure"}
    locality = {key: value for key, value in (("region", region), ("zone", zone)) if value}
    node_doc: dict[str, Any] = {"id": node}
    if cluster:
        node_doc["cluster"] = cluster
    if locality:
        node_doc["locality"] = locality
    server: dict[str, Any] = {"channel_creds": [creds], "server_features": ["xds_v3"]}
    if token_file:
        if not ca_file:
            raise ValueError(
                "--token-file: gRPC sends a token only over TLS; "
                "give eco --ca-file (the control plane's CA)"
            )
        server["call_creds"] = [
            {"type": "jwt_token_file", "config": {"jwt_token_file": token_file}}
        ]
    return {
        "xds_servers": [{"server_uri": address, **server} for address in servers],
        "node": node_doc,
    }


@xds.command("bootstrap")
@click.option(
    "--node",
    "node_id",
    required=True,
    metavar="ID",
    help="The client's node id: names it in the control plane's xDS status and logs.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the file here (atomically) instead of to standard output.",
)
@click.option(
    "--server",
    "servers",
    metavar="HOST:PORT[,HOST:PORT…]",
    default=None,
    callback=check_server,
    help="Control plane(s) the client asks; default: eco's own --server.",
)
@click.option(
    "--region",
    default="",
    help="The client's region: instances in it are preferred over the others.",
)
@click.option(
    "--zone",
    default="",
    help="The client's zone: instances in it come first, then its region, then the rest.",
)
@click.option("--cluster", default="", help="The client's node cluster (free text).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write eco's --token (ECO_TOKEN) here, readable by its owner only, and have "
    "the client send it on its xDS calls (needed under --acl deny; TLS only: give "
    "--ca-file). The client needs GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true "
    "in gRPC releases that gate this.",
)
@pass_settings
def bootstrap(
    settings: Settings,
    node_id: str,
    out: Path | None,
    servers: str | None,
    region: str,
    zone: str,
    cluster: str,
    token_file: Path | None,
) -> None:
    """Write a gRPC xDS bootstrap file for one client.

    The file lists the control plane(s) (plaintext, or TLS trusting eco's
    --ca-file) and the client's node id. Point the client at it with the
    GRPC_XDS_BOOTSTRAP environment variable, then dial xds:///SERVICE.

    \b
    Examples:
      eco xds bootstrap --node web-1
      eco --server cp.internal:7400 --ca-file ca.pem xds bootstrap --node web-1 --out boot.json
      eco xds bootstrap --node web-1 --zone eu-west-1a --out /etc/grpc/xds.json
      ECO_TOKEN=… eco --ca-file ca.pem xds bootstrap --node web-1 \\
          --out boot.json --token-file /etc/grpc/xds-token.jwt
    """
    addresses = [a.strip() for a in (servers or settings.server).split(",") if a.strip()]
    if token_file is not None and not settings.token:
        raise click.BadParameter(
            "no token to write: give eco --token or set ECO_TOKEN (a token whose "
            "policy grants service:*:read)",
            param_hint="--token-file",
        )
    try:
        document = bootstrap_document(
            addresses,
            node_id,
            ca_file=str(Path(settings.ca_file).resolve()) if settings.ca_file else None,
            region=region,
            zone=zone,
            cluster=cluster,
            token_file=str(token_file.resolve()) if token_file is not None else None,
        )
    except ValueError as err:
        option, _, message = str(err).partition(": ")
        raise click.BadParameter(message, param_hint=option.split()[0]) from None
    if token_file is not None:
        from serving.acl import token_envelope

        _write_private(token_file, token_envelope(settings.token), "--token-file")
    text = json.dumps(document, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    _write_private(out, text, "--out")
    click.echo(f"wrote {out} (node {node_id}); set GRPC_XDS_BOOTSTRAP={out.resolve()}", err=True)


def _write_private(path: Path, text: str, option: str) -> None:
    """Writes ``text`` to ``path`` atomically, readable by its owner only."""
    directory = path.resolve().parent
    if not directory.is_dir():
        raise click.BadParameter(f"directory {directory} does not exist", param_hint=option)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fetch(settings: Settings, node_id: str) -> Any:
    """FetchClientStatus from the first control plane that answers."""
    from eco._extras import require_server

    require_server("xds status", what="reads the xDS API types")
    import grpc
    import grpc.aio
    from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

    from sdk.lowlevel import client_channels

    request = csds_pb2.ClientStatusRequest(exclude_resource_contents=True)
    if node_id:
        request.node_matchers.add().node_id.exact = node_id
    metadata = (("authorization", f"Bearer {settings.token}"),) if settings.token else None
    factory = client_channels(settings.ca_file or None, None)
    addresses = [a.strip() for a in settings.server.split(",") if a.strip()]

    async def main() -> Any:
        failure: grpc.aio.AioRpcError | None = None
        for address in addresses:
            channel = factory(address) if factory else grpc.aio.insecure_channel(address)
            try:
                stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
                return await stub.FetchClientStatus(
                    request, timeout=settings.timeout, metadata=metadata
                )
            except grpc.aio.AioRpcError as err:
                if err.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise click.ClickException(
                        f"control plane at {address}: {err.code().name}: {err.details()}"
                    ) from None
                failure = err
            finally:
                await channel.close(None)
        assert failure is not None
        raise click.ClickException(
            f"cannot reach control plane at {', '.join(addresses)}: {failure.details()}"
        )

    return asyncio.run(main())


#: A client's state is its worst resource's (CSDS client status names).
_WORST_FIRST = ("NACKED", "REQUESTED", "DOES_NOT_EXIST", "UNKNOWN", "ACKED")


def client_summaries(settings: Settings) -> tuple[list[dict[str, Any]], str]:
    """One row per xDS client the control plane serves (its kind, the worst
    state of its resources, the versions it applied, its NACK), and why they
    could not be read ("" when they were): for ``eco node list``."""
    from eco._extras import SERVER_INSTALL, missing_server_modules

    if missing_server_modules():
        return [], f"xDS clients not listed: reading them needs {SERVER_INSTALL}"
    try:
        response = _fetch(settings, "")
    except click.ClickException as err:
        return [], f"xDS clients not listed: {err.message}"
    from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2

    rows = []
    for config in response.config:
        entries = [
            (dump_pb2.ClientResourceStatus.Name(e.client_status), e)
            for e in config.generic_xds_configs
        ]
        states = {state for state, _ in entries}
        nacked = [
            f"{e.type_url.rsplit('.', 1)[-1]} {e.name}: {e.error_state.details}"
            for state, e in entries
            if state == "NACKED"
        ]
        versions = sorted({e.version_info for state, e in entries if state == "ACKED"})
        rows.append(
            {
                "node": config.node.id,
                "kind": "envoy" if config.node.user_agent_name == "envoy" else "proxyless",
                "state": next((s for s in _WORST_FIRST if s in states), "REQUESTED"),
                "versions": versions,
                "error": "; ".join(nacked),
            }
        )
    return rows, ""


@xds.command("status")
@click.option("--node", "node_id", default="", metavar="ID", help="Only this node.")
@data_options
@pass_settings
def status(settings: Settings, node_id: str) -> None:
    """Show what each xDS client holds and whether it applied it.

    One row per client (node) and resource: the version it was last sent,
    and ACKED (applied), NACKED (rejected: ERROR says why; the client keeps
    running the version before it) or REQUESTED (no answer yet). Read from
    the control plane's CSDS (it needs node:*:read with --acl deny); a
    control plane shows the clients connected to it since it started.

    \b
    Examples:
      eco xds status
      eco xds status --node web-1 -o json
    """
    response = _fetch(settings, node_id)
    from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2

    rows = [
        {
            "node": config.node.id,
            "user_agent": config.node.user_agent_name,
            "type": entry.type_url.rsplit(".", 1)[-1],
            "name": entry.name,
            "version": entry.version_info,
            "status": dump_pb2.ClientResourceStatus.Name(entry.client_status),
            "error": entry.error_state.details,
        }
        for config in response.config
        for entry in config.generic_xds_configs
    ]

    def table() -> str:
        if not rows:
            return "no xDS clients" + (f" named {node_id}" if node_id else "") + " have connected"
        return render_table(
            ("NODE", "TYPE", "RESOURCE", "VERSION", "STATUS", "ERROR"),
            [
                (r["node"], r["type"], r["name"], r["version"], r["status"], r["error"])
                for r in rows
            ],
        )

    emit({"resources": rows}, settings.output, table)
