"""``eco sidecar --config sidecar.yaml``: run a sidecar agent in this process.

The sidecar is imported inside the command, so that the registry commands
start fast and need nothing but the SDK; the command checks first that the
server dependencies are installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from eco._extras import require_server
from eco._process import raise_open_files_limit, serve_until_signal
from eco._settings import Settings, configure_logging, pass_settings

if TYPE_CHECKING:
    from sidecar.config import SidecarConfig

__all__ = ["sidecar_command"]

log = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_USAGE = 2
#: Problems of a configuration file `--check` lists; the rest are counted.
MAX_PROBLEMS_SHOWN = 20


@click.command("sidecar")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="sidecar.yaml",
    show_default=True,
    help="The sidecar's configuration file (YAML).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Only validate the configuration file (listing every problem), print a summary and exit.",
)
@pass_settings
@click.pass_context
def sidecar_command(ctx: click.Context, settings: Settings, config_path: Path, check: bool) -> None:
    """Run a sidecar agent until SIGTERM or Ctrl-C (twice: at once).

    It registers the local services of the configuration file with the
    control plane, runs their health checks, keeps the endpoints of the
    upstream services (also on disk, for when the control plane is
    unreachable), and serves the local API and admin HTTP. Upstreams with a
    `listen` address and `inbound` entries are proxy listeners (tcp, http or
    grpc): applications dial 127.0.0.1:PORT and the sidecar forwards (or,
    with `dataplane: envoy`, an Envoy it runs and restarts: docs/xds.md;
    --check says which data plane serves each listener). A bad
    configuration file prints every problem (file, line and field, a
    suggestion for a misspelt key) and exits 2; nothing is started.

    \b
    Examples:
      eco sidecar --config sidecar.yaml
      eco sidecar --config sidecar.yaml --check
    """
    require_server("sidecar")
    from sidecar.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as err:
        # Every problem, one a line (up to MAX_PROBLEMS_SHOWN), with or without --check.
        lines = err.lines()
        for line in lines[:MAX_PROBLEMS_SHOWN]:
            click.echo(f"eco: {line}", err=True)
        if len(lines) > MAX_PROBLEMS_SHOWN:
            click.echo(f"eco: … and {len(lines) - MAX_PROBLEMS_SHOWN} more problems", err=True)
        ctx.exit(EXIT_USAGE)
    if check:
        # Which data plane serves each proxy listener: the sidecar's own, or Envoy.
        plane = config.dataplane
        listeners = [
            f"{u.protocol} {u.listen} -> {u.service} [{plane}]"
            for u in config.upstreams
            if u.listen
        ] + [f"{i.protocol} {i.listen} -> {i.to} (inbound) [{plane}]" for i in config.inbound]
        click.echo(
            f"{config_path}: ok — node {config.node.id}, {len(config.services)} local "
            f"service(s), {len(config.upstreams)} upstream(s), control plane "
            f"{', '.join(config.controlplane.addresses)}, data plane {plane}"
        )
        for line in listeners:
            click.echo(f"  proxy: {line}")
        if plane == "envoy":
            from sidecar.envoy import find_binary

            try:
                click.echo(f"  envoy: {find_binary(config.envoy.binary)}")
            except FileNotFoundError as exc:
                click.echo(f"eco: {exc}", err=True)
                ctx.exit(EXIT_FAILURE)
        ctx.exit(0)
    configure_logging(settings.verbose, base=logging.INFO)
    raise_open_files_limit()
    ctx.exit(run(config))


def run(config: SidecarConfig) -> int:
    """Runs a sidecar until SIGTERM/SIGINT; returns the exit status."""
    from sidecar.app import Sidecar
    from sidecar.errors import StartupError

    return serve_until_signal(lambda: Sidecar(config), (StartupError,))
