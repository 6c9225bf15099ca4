"""``eco ca``: the built-in certificate authority, offline.

``eco ca init`` makes the root that the control plane signs certificates
with; ``eco ca root`` prints the root certificate that clients and sidecars
trust. Neither talks to a control plane.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

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
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help=_DIR_HELP,
)
def root(directory: Path) -> None:
    """Print the CA's root certificate (PEM) to standard output.

    Checks that DIR holds a matching certificate and key first. The output
    is what clients and sidecars are given to trust the control plane.

    \b
    Examples:
      eco ca root --dir /etc/eco/ca
      eco ca root --dir /etc/eco/ca > root.pem
    """
    require_server("ca root", what="reads certificates")
    click.echo(_load(directory).root_pem.decode(), nl=False)


def _load(directory: Path) -> CertificateAuthority:
    from controlplane.ca import CAError, CertificateAuthority

    try:
        return CertificateAuthority.load_dir(directory)
    except CAError as err:
        raise click.ClickException(str(err)) from None
