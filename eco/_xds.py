"""``eco xds bootstrap``: the file a gRPC xDS client reads to find the control plane."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click

from eco._settings import Settings, check_server, pass_settings

__all__ = ["bootstrap_document", "xds"]

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
    """


def bootstrap_document(
    servers: list[str],
    node: str,
    *,
    ca_file: str | None = None,
    region: str = "",
    zone: str = "",
    cluster: str = "",
) -> dict[str, Any]:
    """The gRPC xDS bootstrap (JSON) for ``node``, pointing at ``servers`` in
    order; TLS when ``ca_file`` is given, plaintext otherwise."""
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
    return {
        "xds_servers": [
            {"server_uri": address, "channel_creds": [creds], "server_features": ["xds_v3"]}
            for address in servers
        ],
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
@click.option("--region", default="", help="The client's region (its node locality).")
@click.option("--zone", default="", help="The client's zone (its node locality).")
@click.option("--cluster", default="", help="The client's node cluster (free text).")
@pass_settings
def bootstrap(
    settings: Settings,
    node_id: str,
    out: Path | None,
    servers: str | None,
    region: str,
    zone: str,
    cluster: str,
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
    """
    addresses = [a.strip() for a in (servers or settings.server).split(",") if a.strip()]
    try:
        document = bootstrap_document(
            addresses,
            node_id,
            ca_file=str(Path(settings.ca_file).resolve()) if settings.ca_file else None,
            region=region,
            zone=zone,
            cluster=cluster,
        )
    except ValueError as err:
        raise click.BadParameter(str(err).split(": ", 1)[-1], param_hint="--node") from None
    text = json.dumps(document, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    directory = out.resolve().parent
    if not directory.is_dir():
        raise click.BadParameter(f"directory {directory} does not exist", param_hint="--out")
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    click.echo(f"wrote {out} (node {node_id}); set GRPC_XDS_BOOTSTRAP={out.resolve()}", err=True)
