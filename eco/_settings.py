"""The options every data command shares, and where commands find them."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from eco._output import OutputFormat

if TYPE_CHECKING:
    import sdk

__all__ = [
    "CA_FILE_ENV",
    "DEFAULT_SERVER",
    "OUTPUT_CHOICE",
    "SERVER_ENV",
    "TOKEN_ENV",
    "Settings",
    "call",
    "check_server",
    "configure_logging",
    "data_options",
    "pass_settings",
]

F = TypeVar("F", bound=Callable[..., Any])

# The SDK's names (sdk._transport), kept here so that the global options need
# no SDK import: a command that never calls the control plane (``eco sync
# run``, ``eco validate``) does without gRPC. A unit test keeps them equal.
DEFAULT_SERVER = "127.0.0.1:7400"
SERVER_ENV = "ECO_SERVER"
CA_FILE_ENV = "ECO_CA_FILE"
TOKEN_ENV = "ECO_TOKEN"


def call(settings: Settings, method: str, request: Any, *, idempotent: bool = False) -> Any:
    """One unary call to the control plane with the global options' server, CA
    file and token; SDK errors propagate to ``eco``'s handler. ``idempotent``
    calls are retried on UNAVAILABLE (on the next address, with backoff)."""
    import sdk
    from sdk.lowlevel import Transport, client_channels

    async def main() -> Any:
        transport = Transport(
            sdk.resolve_servers(settings.server),
            timeout=settings.timeout,
            channel_factory=client_channels(settings.ca_file or "", None),
            token=settings.token,
        )
        try:
            return await transport.unary(method, request, idempotent=idempotent)
        finally:
            await transport.close()

    return asyncio.run(main())


@dataclass
class Settings:
    """What the global options say; commands read it from the click context."""

    server: str = DEFAULT_SERVER
    output: OutputFormat = OutputFormat.TABLE
    timeout: float = 5.0
    verbose: int = 0
    #: CA certificates (PEM) to trust: the control plane is then spoken to over TLS.
    ca_file: str | None = None
    #: An ACL token's secret, sent with every call ("" for none).
    token: str = ""

    def client(self) -> sdk.Client:
        import sdk

        return sdk.Client(
            self.server, timeout=self.timeout, ca_file=self.ca_file or "", token=self.token
        )

    def async_client(self) -> sdk.AsyncClient:
        """The asyncio client, for commands that wait on several things at once."""
        import sdk

        return sdk.AsyncClient(
            self.server, timeout=self.timeout, ca_file=self.ca_file or "", token=self.token
        )


#: Hands a command the shared :class:`Settings`.
pass_settings = click.make_pass_decorator(Settings, ensure=True)

OUTPUT_CHOICE = click.Choice([f.value for f in OutputFormat], case_sensitive=False)


def check_server(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: ``value`` must be HOST:PORT[,HOST:PORT…]."""
    if value is None or value == DEFAULT_SERVER:
        return value  # the default is valid: no SDK import to say so
    import sdk

    try:
        sdk.resolve_servers(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None
    return value


def _set_server(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    value = check_server(ctx, param, value)
    if value is not None:
        ctx.ensure_object(Settings).server = value


def _set_output(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Settings).output = OutputFormat(value.lower())


def data_options(f: F) -> F:
    """``--server`` and ``-o`` on a subcommand too, overriding the global ones."""
    f = click.option(
        "-o",
        "--output",
        type=OUTPUT_CHOICE,
        callback=_set_output,
        expose_value=False,
        help="Output format: table, json or yaml (as the global option).",
    )(f)
    return click.option(
        "--server",
        metavar="HOST:PORT[,…]",
        callback=_set_server,
        expose_value=False,
        help="Control plane(s) to talk to (as the global option).",
    )(f)


def configure_logging(verbose: int, *, base: int = logging.WARNING) -> None:
    """Logs to stderr; each -v lowers the threshold one step below ``base``."""
    level = max(logging.DEBUG, base - 10 * verbose)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
