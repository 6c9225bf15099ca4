"""``eco ca``: the built-in certificate authority, offline.

``eco ca init`` makes the root that the control plane signs certificates
with; ``eco ca root`` prints the root certificate that clients and sidecars
trust (from the CA's directory, the store, or a running control plane);
``eco ca rotate`` rotates the root of a CA kept in the store, online.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eco._extras import require_server
from eco._output import OutputFormat, emit
from eco._settings import OUTPUT_CHOICE, Settings, pass_settings

if TYPE_CHECKING:
    from controlplane.ca import CertificateAuthority

__all__ = ["ca"]

_DIR_HELP = "The CA's directory: ca.pem (the root certificate) and ca-key.pem (its key)."


@click.group()
def ca() -> None:
    """Create and inspect the built-in certificate authority (offline).

    The CA is one root certificate and its private key, in one directory.
    The control plane signs its own TLS certificate and the sidecars'
    workload certificates with it; clients trust the root.

    \b
    Examples:
      eco ca init --dir /etc/eco/ca                 # ca.pem and ca-key.pem (0600)
      eco ca init --dir ./ca --trust-domain prod.example.com
      eco ca root --dir /etc/eco/ca > root.pem      # give this to clients

    Keep ca-key.pem secret: whoever holds it can mint any identity.
    See docs/security.md.
    """


@ca.command("init")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help=_DIR_HELP + " Created if missing.",
)
@click.option(
    "--trust-domain",
    default="ecosystem.local",
    show_default=True,
    metavar="NAME",
    help="The name in every workload identity, spiffe://NAME/…: lower-case letters, "
    "digits, '.', '-' and '_'.",
)
@click.option(
    "--years",
    type=click.IntRange(1, 100),
    default=10,
    show_default=True,
    help="How long the root certificate is valid.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace a CA already in DIR. Everything it signed stops being trusted.",
)
@click.option(
    "-o",
    "--output",
    type=OUTPUT_CHOICE,
    default=None,
    help="Output format: table, json or yaml (as the global option).",
)
@pass_settings
def init(
    settings: Settings,
    directory: Path,
    trust_domain: str,
    years: int,
    force: bool,
    output: str | None,
) -> None:
    """Create a new CA in DIR: a self-signed root (EC P-256) and its key.

    Writes DIR/ca.pem (the root certificate, to share) and DIR/ca-key.pem
    (its private key, mode 0600, to keep secret). Refuses to replace a CA
    already in DIR unless --force is given. Works offline.

    \b
    Examples:
      eco ca init --dir /etc/eco/ca
      eco ca init --dir ./ca --trust-domain prod.example.com --years 5
      eco ca init --dir ./ca -o json
    """
    require_server("ca init", what="makes certificates")
    from controlplane.ca import CAError, CAExistsError, CertificateAuthority, InvalidIdentityError

    try:
        authority = CertificateAuthority.create(trust_domain, lifetime=timedelta(days=365 * years))
    except InvalidIdentityError as err:
        raise click.BadParameter(str(err), param_hint="'--trust-domain'") from None
    try:
        cert_path, key_path = authority.save(directory, force=force)
    except CAError as err:
        hint = " (add --force to replace it)" if isinstance(err, CAExistsError) else ""
        raise click.ClickException(f"{err}{hint}") from None
    expires = authority.certificate.not_valid_after_utc.isoformat()
    data = {
        "trust_domain": authority.trust_domain,
        "certificate": str(cert_path),
        "key": str(key_path),
        "expires": expires,
    }

    def text() -> str:
        return "\n".join(
            [
                f"created a CA for trust domain {authority.trust_domain}, valid until {expires}",
                f"  root certificate: {cert_path}  (share it: clients trust this)",
                f"  private key:      {key_path}  (mode 0600; keep it secret)",
            ]
        )

    emit(data, OutputFormat(output.lower()) if output else settings.output, text)


@ca.command("root")
@click.option(
    "--dir",
    "directory",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help=_DIR_HELP,
)
@click.option(
    "--server",
    "server",
    default=None,
    metavar="HOST:PORT",
    help="Ask a running control plane for its trust bundle (over TLS only with --ca-file "
    "or ECO_CA_FILE: a root you already trust).",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    metavar="URL",
    help="Read the bundle of a CA kept in the store (--tls-ca auto) straight from the "
    "store: etcd://… while the control plane runs, sqlite://… while it is stopped.",
)
@pass_settings
def root(
    settings: Settings, directory: Path | None, server: str | None, store_url: str | None
) -> None:
    """Print the CA's root certificate(s) (PEM) to standard output.

    With --dir: checks that DIR holds a matching certificate and key, then
    prints the certificate. With --store or --server: the trust bundle, every
    root to trust (more than one during a root rotation), the signing one first.

    --server is no way to get a first root: over TLS it needs a root you
    already trust (--ca-file), and a control plane without TLS could be
    anyone's. Copy the first root out of band (--dir on the CA's host, or
    --store with the store's credentials); use --server to follow rotations.

    \b
    Examples:
      eco ca root --dir /etc/eco/ca > root.pem
      eco ca root --store etcd://10.0.0.9:2379/eco > root.pem
      eco --ca-file root.pem ca root --server cp.example.com:7400 > bundle.pem
    """
    require_server("ca root", what="reads certificates")
    if sum(x is not None for x in (directory, server, store_url)) != 1:
        raise click.UsageError("give exactly one of --dir, --server and --store")
    if directory is not None:
        click.echo(_load(directory).root_pem.decode(), nl=False)
        return
    if store_url is not None:
        click.echo(b"".join(_stored_bundle(store_url)).decode(), nl=False)
        return
    assert server is not None
    bundle = _call(settings, server, "GetTrustBundle").bundle
    click.echo(b"".join(bundle.roots_pem).decode(), nl=False)


@ca.command("rotate")
@click.option(
    "--server",
    "server",
    default=None,
    metavar="HOST:PORT",
    help="The control plane (default: the global --server).",
)
@click.option(
    "--propagation",
    type=click.IntRange(1, 86400),
    default=10,
    show_default=True,
    metavar="SECONDS",
    help="Seconds the new root is in the bundle before it signs.",
)
@click.option(
    "-o",
    "--output",
    type=OUTPUT_CHOICE,
    default=None,
    help="Output format: table, json or yaml (as the global option).",
)
@pass_settings
def rotate(settings: Settings, server: str | None, propagation: int, output: str | None) -> None:
    """Rotate the root of a CA kept in the store (--tls-ca auto), online.

    A new root joins the trust bundle at once and every sidecar receives it;
    it starts signing after --propagation seconds (sidecars then renew their
    certificates from it). The old root leaves the bundle once every workload
    certificate it signed has expired (one workload lifetime plus a minute).
    Give clients the new bundle (eco ca root --server …) before restarting
    the replicas, whose server certificates come from the new root then.

    \b
    Examples:
      eco --ca-file root.pem ca rotate --server cp.example.com:7400
      eco ca rotate --propagation 60
    """
    require_server("ca rotate", what="talks to the control plane's CA")
    from ecosystem.v1 import ca_pb2

    answer = _call(
        settings,
        server or settings.server,
        "RotateRoot",
        ca_pb2.RotateRootRequest(propagation_seconds=propagation),
    )
    data = {
        "trust_domain": answer.bundle.trust_domain,
        "roots": len(answer.bundle.roots_pem),
        "new_root_signs_from": _iso_ms(answer.signs_from_ms),
        "old_root_removed_at": _iso_ms(answer.old_root_removed_at_ms),
    }

    def text() -> str:
        return (
            f"a new root is in the bundle ({data['roots']} roots); it signs from "
            f"{data['new_root_signs_from']}, the old root leaves the bundle at "
            f"{data['old_root_removed_at']}"
        )

    emit(data, OutputFormat(output.lower()) if output else settings.output, text)


def _iso_ms(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _call(settings: Settings, server: str, method: str, request: Any = None) -> Any:
    import grpc
    from ecosystem.v1 import ca_pb2, ca_pb2_grpc

    address = server.split(",")[0].strip()
    if settings.ca_file:
        try:
            roots = Path(settings.ca_file).read_bytes()
        except OSError as err:
            raise click.ClickException(f"--ca-file {settings.ca_file}: {err.strerror}") from None
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots))
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        stub = ca_pb2_grpc.CAServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            return getattr(stub, method)(
                request if request is not None else ca_pb2.GetTrustBundleRequest(),
                timeout=settings.timeout,
                # --token / ECO_TOKEN: RotateRoot needs operator:ca:write under --acl deny.
                metadata=(("authorization", f"Bearer {settings.token}"),)
                if settings.token
                else None,
            )
        except grpc.RpcError as err:
            code = err.code()
            raise click.ClickException(f"{address}: {code.name}: {err.details()}") from None


def _stored_bundle(store_url: str) -> list[bytes]:
    import asyncio
    import time

    from controlplane.identity import CA_ROOTS_KEY, RootSet
    from controlplane.store import open_store

    if store_url.startswith("sqlite://") and not Path(store_url[len("sqlite://") :]).exists():
        raise click.ClickException(f"--store {store_url}: no such file")

    async def read() -> bytes | None:
        store = open_store(store_url)
        await store.start()
        try:
            kv = await store.get(CA_ROOTS_KEY)
            return kv.value if kv is not None else None
        finally:
            await store.close()

    try:
        value = asyncio.run(read())
    except Exception as err:
        raise click.ClickException(f"--store {store_url}: {err}") from None
    if value is None:
        raise click.ClickException(
            f"--store {store_url}: no CA in it (a control plane with --tls-ca auto creates one)"
        )
    roots = RootSet.from_json(value)
    return [r.cert_pem for r in roots.bundle(int(time.time() * 1000))]


def _load(directory: Path) -> CertificateAuthority:
    from controlplane.ca import CAError, CertificateAuthority

    try:
        return CertificateAuthority.load_dir(directory)
    except CAError as err:
        raise click.ClickException(str(err)) from None
