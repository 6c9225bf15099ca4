"""``eco gateway --config gateway.yaml``: the API gateway (docs/gateway.md).

``--check`` validates the file, listing every problem with its line and
field (exit status 2), or prints the routes as a request would see them
(``-o json``/``yaml`` for scripts). The gateway is imported inside the
command, so that the registry commands start fast and need only the SDK.

``eco gateway purge ROUTE [PATH] --admin HOST:PORT`` asks a running
gateway's admin port to drop cached responses (``POST /cache/purge``). It
is a subcommand of the same group, which runs the gateway itself when no
subcommand is given, so ``eco gateway --config FILE`` is unchanged; it
needs only the standard library (no server extra).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eco._extras import require_server
from eco._output import OutputFormat, emit, render_table
from eco._process import raise_open_files_limit, serve_until_signal
from eco._settings import OUTPUT_CHOICE, Settings, configure_logging, pass_settings

if TYPE_CHECKING:
    from sidecar.gateway.config import GatewayConfig, RouteConfig

__all__ = ["gateway_command", "purge_command"]

EXIT_FAILURE = 1
EXIT_USAGE = 2

#: The most of an admin answer read (it is a small JSON object).
_ADMIN_ANSWER_BYTES = 64 * 1024


@click.group("gateway", invoke_without_command=True)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="gateway.yaml",
    show_default=True,
    help="The gateway's configuration file (YAML).",
)
@click.option(
    "--check",
    is_flag=True,
    help="Only validate the configuration file (listing every problem), print the routes and exit.",
)
@pass_settings
@click.pass_context
def gateway_command(ctx: click.Context, settings: Settings, config_path: Path, check: bool) -> None:
    """The API gateway: traffic from outside the mesh, routed to services in the registry.

    It serves the routes of the configuration file on its listen address
    (authentication, rate limits, transformations, a response cache),
    resolving registry services through the control plane like a sidecar,
    until SIGTERM or Ctrl-C (twice: at once). A bad configuration file is
    every problem, one a line naming the line and the field, and exit status
    2; nothing is started. See docs/gateway.md.

    \b
    Examples:
      eco gateway --config gateway.yaml
      eco gateway --config gateway.yaml --check
      eco gateway --config gateway.yaml --check -o json
      eco gateway purge orders /api/orders/42 --admin 127.0.0.1:8081
    """
    if ctx.invoked_subcommand is not None:
        given = [
            option
            for option, name in (("--config", "config_path"), ("--check", "check"))
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(
                f"{' and '.join(given)}: for running or checking a gateway, "
                f"not for 'eco gateway {ctx.invoked_subcommand}'"
            )
        return
    require_server("gateway")
    from sidecar.gateway.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as err:
        if settings.output is not OutputFormat.TABLE:
            problems = [
                {"line": p.line, "field": p.field, "message": p.message} for p in err.problems
            ]
            emit({"file": err.source, "ok": False, "problems": problems}, settings.output, str)
        for line in err.lines() if check else [str(err)]:
            click.echo(f"eco: {line}", err=True)
        ctx.exit(EXIT_USAGE)
    if check:
        _print_check(config_path, config, settings.output)
        ctx.exit(0)
    configure_logging(settings.verbose, base=logging.INFO)
    raise_open_files_limit()
    from sidecar.errors import StartupError
    from sidecar.gateway.app import Gateway

    ctx.exit(serve_until_signal(lambda: Gateway(config), (StartupError,)))


def _set_output(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(Settings).output = OutputFormat(value.lower())


def _admin_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", ctx=ctx, param=param)
    return value


@gateway_command.command("purge")
@click.argument("route")
@click.argument("path", required=False)
@click.option(
    "--admin",
    metavar="HOST:PORT",
    default="127.0.0.1:8081",
    show_default=True,
    callback=_admin_address,
    help="The gateway's admin address (its config file's `admin`).",
)
@click.option(
    "-o",
    "--output",
    type=OUTPUT_CHOICE,
    callback=_set_output,
    expose_value=False,
    help="Output format: table, json or yaml (as the global option).",
)
@pass_settings
@click.pass_context
def purge_command(
    ctx: click.Context, settings: Settings, route: str, path: str | None, admin: str
) -> None:
    """Drops a route's cached responses from a running gateway.

    Every entry of ROUTE goes, or with PATH only those of that path (with
    every query, host, consumer and variant). One gateway is asked, through
    its admin port: purge each replica. Exit status 1 when the route is
    unknown or the admin port cannot be reached.

    \b
    Examples:
      eco gateway purge catalog --admin 127.0.0.1:8081
      eco gateway purge catalog /items/42 --admin 127.0.0.1:8081 -o json
    """
    query = {"route": route, **({"path": path} if path else {})}
    host, _, port = admin.rpartition(":")
    url = f"http://{host}:{port}/cache/purge?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        # Straight to the admin port: an HTTP(S)_PROXY of the environment is not used.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=settings.timeout) as response:
            document = json.loads(response.read(_ADMIN_ANSWER_BYTES))
    except urllib.error.HTTPError as err:
        raw = err.read(_ADMIN_ANSWER_BYTES) if err.fp is not None else b""
        err.close()
        click.echo(f"eco: {_refusal(err.code, raw, route, admin)}", err=True)
        ctx.exit(EXIT_FAILURE)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        click.echo(f"eco: cannot reach the gateway's admin at {admin}: {reason}", err=True)
        ctx.exit(EXIT_FAILURE)
    except ValueError:
        click.echo(f"eco: the gateway's admin at {admin} did not answer JSON", err=True)
        ctx.exit(EXIT_FAILURE)

    def summary() -> str:
        purged = int(document.get("purged", 0))
        where = f" path {document['path']}" if document.get("path") else ""
        return f"purged {purged} cached response(s) of route {document.get('route')}{where}"

    emit(document, settings.output, summary)


def _refusal(status: int, raw: bytes, route: str, admin: str) -> str:
    """The line saying why the admin refused a purge."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if status == 404 and isinstance(body, dict) and body.get("error") == "unknown_route":
        return f"unknown route {route!r}: the gateway at {admin} has no route of that name"
    if isinstance(body, dict) and "message" in body:
        return f"the gateway at {admin} refused the purge ({status}): {body['message']}"
    return f"the gateway at {admin} refused the purge: HTTP {status}"


def _print_check(path: Path, config: GatewayConfig, fmt: OutputFormat) -> None:
    routes = [describe_route(route) for route in config.routes]
    addresses = list(config.controlplane.addresses) if config.controlplane else []
    data = {
        "file": str(path),
        "ok": True,
        "listen": config.listen,
        "tls": config.tls is not None,
        "admin": config.admin,
        "controlplane": addresses,
        "routes": routes,
    }

    def table() -> str:
        scheme = "https" if config.tls is not None else "http"
        plane = ", ".join(addresses) or "none (fixed endpoints)"
        head = (
            f"{path}: ok — {scheme} on {config.listen}, {len(routes)} route(s), "
            f"control plane {plane}"
        )
        if not routes:
            return head
        rows = [
            (
                r["name"],
                ",".join(r["hosts"]) or "*",
                r["path"],
                ",".join(r["methods"]) or "*",
                ",".join(f"{k}={v}" for k, v in {**r["headers"], **r["query"]}.items()),
                r["target"],
                r["rewrite"],
                ",".join(r["plugins"]),
            )
            for r in routes
        ]
        headers = ("NAME", "HOSTS", "PATH", "METHODS", "IF", "TARGET", "REWRITE", "PLUGINS")
        return head + "\n" + render_table(headers, rows)

    emit(data, fmt, table)


def describe_route(route: RouteConfig) -> dict[str, Any]:
    """A route as ``--check`` prints it: what it matches, where it goes, what runs."""
    match = route.match
    if match.path is not None:
        path = match.path
    elif match.path_regex is not None:
        path = f"~{match.path_regex.pattern}"
    elif match.path_prefix is not None and match.path_prefix != "/":
        path = f"{match.path_prefix}/*"
    else:
        path = "/*"
    redirect = route.redirect
    if redirect is not None:
        to = redirect.location or "".join(
            (
                f"{redirect.scheme}://" if redirect.scheme else "",
                redirect.host or "",
                f":{redirect.port}" if redirect.port else "",
                redirect.path or "",
            )
        )
        target = f"redirect {redirect.status} {to}"
    else:
        parts = []
        for backend in route.backends:
            name = (
                f"{backend.namespace}/{backend.service}" if backend.namespace else backend.service
            )
            where = f" [{', '.join(backend.endpoints)}]" if backend.endpoints else ""
            weight = f" {backend.weight}" if route.split else ""
            parts.append(f"{name}{weight}{where}")
        target = ", ".join(parts)
    rewrite = route.rewrite
    if rewrite is None:
        rewritten = ""
    elif rewrite.strip_prefix is not None:
        rewritten = f"strip {rewrite.strip_prefix}"
    else:
        pattern = rewrite.path_regex.pattern if rewrite.path_regex is not None else ""
        rewritten = f"{pattern} -> {rewrite.replacement}"
    return {
        "name": route.name,
        "hosts": list(match.hosts),
        "path": path,
        "methods": list(match.methods),
        "headers": dict(match.headers),
        "query": dict(match.query),
        "target": target,
        "rewrite": rewritten,
        "timeout": route.policy.timeout if redirect is None else None,
        "plugins": list(route.plugins.names),
    }
