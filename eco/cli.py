"""The ``eco`` command: one entry point for the control plane and the registry.

Exit codes: 0 success; 1 the control plane failed or could not be reached;
2 bad usage or input (including a request the control plane rejected as
INVALID_ARGUMENT); 130 interrupted.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from eco._lazy import LazyGroup
from eco._output import OutputFormat
from eco._settings import (
    CA_FILE_ENV,
    DEFAULT_SERVER,
    OUTPUT_CHOICE,
    SERVER_ENV,
    TOKEN_ENV,
    Settings,
    check_server,
    configure_logging,
)

if TYPE_CHECKING:
    import sdk

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "cli", "describe_error", "main"]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# Each command's module, imported only when that command runs (or for
# ``eco --help``): see eco/_lazy.py.
_COMMANDS = {
    "acl": "eco._acl:acl",
    "apply": "eco._apply:apply_command",
    "bus": "eco._bus:bus",
    "ca": "eco._ca:ca",
    "catalog": "eco._catalog:catalog",
    "controlplane": "eco._controlplane:controlplane_command",
    "dev": "eco._controlplane:dev_command",
    "diff": "eco._apply:diff_command",
    "export": "eco._apply:export_command",
    "gateway": "eco._gateway:gateway_command",
    "init": "eco._init:init_command",
    "intention": "eco._intention:intention",
    "node": "eco._node:node",
    "platform": "eco._platform:platform",
    "route": "eco._route:route",
    "schema": "eco._schemas:schema_command",
    "service": "eco._service:service",
    "sidecar": "eco._sidecar:sidecar_command",
    "sync": "eco._sync:sync",
    "validate": "eco._validate:validate_command",
    "wait": "eco._node:wait",
    "xds": "eco._xds:xds",
}


class _EcoGroup(LazyGroup):
    """Turns SDK errors from any subcommand into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            # Only a command that imported the SDK can raise its errors.
            loaded = sys.modules.get("sdk")
            if loaded is None or not isinstance(err, loaded.EcoError):
                raise
            settings = ctx.find_object(Settings) or Settings()
            for line in describe_error(err, settings.server):
                click.echo(f"eco: {line}", err=True)
            usage = isinstance(err, loaded.InvalidArgumentError)
            ctx.exit(EXIT_USAGE if usage else EXIT_FAILURE)


def describe_error(err: sdk.EcoError, server: str) -> list[str]:
    """Lines naming what went wrong; the first says it all."""
    import sdk  # an SDK error was raised: the SDK is imported already
    from sdk.lowlevel import SIDECAR_LOCAL_API

    servers = ", ".join(sdk.resolve_servers(server))
    if isinstance(err, sdk.InvalidArgumentError):
        if not err.field_violations:
            return [f"invalid request: {err.message or 'rejected by the control plane'}"]
        count = len(err.field_violations)
        lines = [f"invalid request: {count} field(s) rejected by the control plane"]
        return lines + [f"  {v.field}: {v.description}" for v in err.field_violations]
    if isinstance(err, sdk.UnavailableError):
        detail = err.message or "unavailable"
        problem = _tls_problem(detail)
        if problem:
            return [f"cannot reach control plane at {servers}: {problem}", f"  ({detail})"]
        return [f"cannot reach control plane at {servers}: {detail}"]
    if isinstance(err, sdk.DeadlineExceededError):
        return [f"control plane at {servers} did not answer in time: {err.message}"]
    if isinstance(err, sdk.UnimplementedError) and err.reason == SIDECAR_LOCAL_API:
        return [
            f"{err.address or servers} is a sidecar's local API, not a control plane; "
            "use --server (or ECO_SERVER) with the control plane's address "
            f"(eco dev's: {DEFAULT_SERVER})",
        ]
    if isinstance(err, sdk.NotFoundError):
        return [f"not found: {err.message}"]
    if isinstance(err, sdk.ConflictError):
        return [f"conflict: {err.message}"]
    return [f"{err.code.lower().replace('_', ' ')}: {err.message}"]


def _tls_problem(detail: str) -> str:
    """What a failed connection's gRPC detail means for TLS, in words ("": nothing)."""
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return (
            "TLS handshake failed: its certificate is not signed by the CA in --ca-file/ECO_CA_FILE"
        )
    if "Tls handshake failed" in detail or "WRONG_VERSION_NUMBER" in detail:
        return "TLS handshake failed (does it serve TLS, and name this address in its certificate?)"
    if "Socket closed" in detail:
        return "the connection was closed at once (if it serves TLS, give --ca-file or ECO_CA_FILE)"
    return ""


@click.group(
    cls=_EcoGroup,
    lazy=_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--server",
    metavar="HOST:PORT[,HOST:PORT…]",
    envvar=SERVER_ENV,
    default=DEFAULT_SERVER,
    show_default=True,
    show_envvar=True,
    callback=check_server,
    help="Control plane(s) to talk to; several fail over in order.",
)
@click.option(
    "-o",
    "--output",
    type=OUTPUT_CHOICE,
    default=OutputFormat.TABLE.value,
    show_default=True,
    help="How to print data: a table for people, json or yaml for scripts.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds each request may take, retries included.",
)
@click.option(
    "--ca-file",
    envvar=CA_FILE_ENV,
    show_envvar=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Speak TLS to the control plane, trusting the CA certificates (PEM) in FILE.",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    default="",
    metavar="SECRET",
    help="An ACL token's secret, sent with every call (prefer ECO_TOKEN: "
    "arguments show in the process list).",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
@click.version_option(package_name="ecosystem", prog_name="eco")
@click.pass_context
def cli(
    ctx: click.Context,
    server: str,
    output: str,
    timeout: float,
    ca_file: str | None,
    token: str,
    verbose: int,
) -> None:
    """Ecosystem: a service registry and control plane, and the tools around it.

    \b
    Try it locally:
      eco dev                                   # a control plane on 127.0.0.1:7400
      eco service register web --address 127.0.0.1 --port 8080
      eco service list
      eco service get web
      eco service watch web                     # one JSON event per line
    \b
    Point at other control planes with --server or ECO_SERVER, e.g.
      ECO_SERVER=10.0.0.5:7400,10.0.0.6:7400 eco service list -o json
    """
    settings = ctx.ensure_object(Settings)
    settings.server = server
    settings.output = OutputFormat(output.lower())
    settings.timeout = timeout
    settings.ca_file = ca_file
    settings.token = token.strip()
    settings.verbose = verbose
    configure_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs ``eco`` and exits with its status."""
    try:
        status = cli.main(args=argv, prog_name="eco", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        err.show()
        status = 0
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
        click.echo(f"eco: {err.format_message()}{hint}", err=True)
        status = EXIT_USAGE
    except click.ClickException as err:
        click.echo(f"eco: {err.format_message()}", err=True)
        status = err.exit_code
    except click.Abort:
        status = EXIT_INTERRUPTED
    sys.exit(status if isinstance(status, int) else 0)
