"""``eco controlplane`` and ``eco dev``: run the control plane in this process
(``eco dev`` beside a sidecar, or a template's sidecars and gateway: eco/_dev.py
reads and checks what it runs).

The control plane is imported inside the commands, so that the registry
commands (``eco service …``) start fast and need nothing but the SDK; the
commands check first that the server dependencies are installed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eco._dev import (
    DEV_SIDECAR_ADMIN,
    DEV_SIDECAR_LISTEN,
    Stack,
    builtin_sidecar,
    claim_ports,
    override_ports,
    port_of,
    read_template,
    run_stack,
)
from eco._extras import require_server
from eco._process import raise_open_files_limit
from eco._settings import Settings, configure_logging, pass_settings

if TYPE_CHECKING:
    from controlplane import ControlPlaneConfig

__all__ = ["DEFAULT_STORE", "controlplane_command", "dev_command"]

DEFAULT_LISTEN = "127.0.0.1:7400"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:7401"
DEFAULT_STORE = "sqlite://.eco/controlplane.db"

_OPTION_OF_FIELD = {
    "listen": "--listen",
    "admin_listen": "--admin-listen",
    "store_url": "--store",
    "bus_url": "--bus",
    "sidecar_bus_url": "--sidecar-bus",
    "grace": "--grace",
    "replica": "--replica-id",
    "advertise": "--advertise",
    "leader_ttl": "--leader-ttl",
    "store_timeout": "--store-timeout",
    "rebalance_interval": "--rebalance-interval",
    "rebalance_batch": "--rebalance-batch",
    "max_watch_streams": "--max-watch-streams",
    "max_agent_streams": "--max-agent-streams",
    "max_agent_streams_per_peer": "--max-agent-streams-per-peer",
    "node_retention": "--node-retention",
    "sync_claim_timeout": "--sync-claim-timeout",
    "sync_run_timeout": "--sync-run-timeout",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "tls_ca": "--tls-ca",
    "tls_ca_key": "--tls-ca-key",
    "tls_names": "--tls-name",
    "tls_cert_ttl": "--tls-cert-ttl",
    "acl": "--acl",
    "audit_log": "--audit-log",
    "trust_domain": "--trust-domain",
    "workload_cert_ttl": "--workload-cert-ttl",
}


def _config(**fields: Any) -> ControlPlaneConfig:
    """The validated config, or a usage error naming the offending option."""
    import pydantic

    from controlplane import ControlPlaneConfig

    if str(fields.get("admin_listen", "")).lower() in ("", "off", "none"):
        fields["admin_listen"] = None
    try:
        return ControlPlaneConfig(**fields)
    except pydantic.ValidationError as err:
        problems = []
        for error in err.errors():
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            loc = error.get("loc")
            if not loc:  # a rule across options: its message names them
                problems.append(message)
                continue
            option = _OPTION_OF_FIELD.get(str(loc[0]), str(loc[0]))
            problems.append(f"{option}: {message}")
        raise click.UsageError("; ".join(problems)) from None


def _listen_options(f: Any) -> Any:
    f = click.option(
        "--admin-listen",
        default=DEFAULT_ADMIN_LISTEN,
        show_default=True,
        metavar="HOST:PORT",
        help="Admin HTTP address serving /healthz, /metrics, /xds and the web "
        "console at /ui/ ('off' to disable).",
    )(f)
    return click.option(
        "--listen",
        default=DEFAULT_LISTEN,
        show_default=True,
        metavar="HOST:PORT",
        help="gRPC address to serve the API on (port 0: any free port).",
    )(f)


@click.command("controlplane")
@_listen_options
@click.option(
    "--store",
    "store_url",
    default=DEFAULT_STORE,
    show_default=True,
    metavar="URL",
    help=(
        "Where state lives: sqlite://PATH (durable, one machine), memory:// (lost on "
        "exit) or etcd://HOST:PORT[,HOST:PORT...]/PREFIX (several replicas; docs/store-etcd.md)."
    ),
)
@click.option(
    "--bus",
    "bus_url",
    default="embedded://",
    show_default=True,
    metavar="URL",
    help=(
        "The message bus: embedded:// (durable streams next to a SQLite store) or "
        "nats://HOST:PORT[,HOST:PORT...] (JetStream; docs/bus.md)."
    ),
)
@click.option(
    "--sidecar-bus",
    "sidecar_bus_url",
    default="",
    metavar="URL",
    help=(
        "The broker sidecars relay their applications' messages to, told to each in its "
        "session (default: the --bus URL when it is NATS; with the embedded bus, this control "
        "plane). A NATS URL of the same servers as sidecars reach them, or 'controlplane' to "
        "keep messages going through this control plane (docs/bus.md)."
    ),
)
@click.option(
    "--grace",
    type=click.FloatRange(0, 300),
    default=5.0,
    show_default=True,
    help="Seconds in-flight calls get to finish on shutdown.",
)
@click.option(
    "--replica-id",
    default="",
    metavar="NAME",
    help="Name of this replica, unique among those sharing the store (default: HOST:PORT).",
)
@click.option(
    "--advertise",
    default="",
    metavar="HOST:PORT",
    help="Address the other replicas reach this one at (default: --listen, with a "
    "wildcard host replaced by the host name).",
)
@click.option(
    "--leader-ttl",
    type=click.FloatRange(min=0, min_open=True, max=300),
    default=10.0,
    show_default=True,
    help="Seconds of the elected leader's lease: a crashed leader is replaced within it.",
)
@click.option(
    "--store-timeout",
    type=click.FloatRange(1, 300),
    default=5.0,
    show_default=True,
    help="Seconds without word from the store before health turns NOT_SERVING.",
)
@click.option(
    "--rebalance-interval",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=5.0,
    show_default=True,
    help="Seconds between checks of this replica's share of sidecar streams.",
)
@click.option(
    "--rebalance-batch",
    type=click.IntRange(0, 10_000),
    default=10,
    show_default=True,
    help="Most sidecar streams shed per check when holding more than 1.5x the fair "
    "share + 1 (they resume on another replica); 0: never shed.",
)
@click.option(
    "--max-watch-streams",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    show_default=True,
    help="Registry watch streams served at once; more are refused with RESOURCE_EXHAUSTED "
    "(docs/limits.md).",
)
@click.option(
    "--max-agent-streams",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    show_default=True,
    help="Sidecar streams this replica holds at once; more are refused with "
    "RESOURCE_EXHAUSTED (and go to another replica).",
)
@click.option(
    "--max-agent-streams-per-peer",
    type=click.IntRange(1, 1_000_000),
    default=1_000,
    show_default=True,
    help="Of those, from one peer address.",
)
@click.option(
    "--node-retention",
    type=click.FloatRange(0, 30 * 24 * 3600),
    default=3600.0,
    show_default=True,
    help="Seconds a sidecar's node record is kept after its session was lost and its "
    "instances are gone.",
)
@click.option(
    "--sync-claim-timeout",
    type=click.FloatRange(min=0, min_open=True, max=7 * 24 * 3600),
    default=300.0,
    show_default=True,
    help="Seconds a scheduled sync run waits for a sidecar on its node before it fails.",
)
@click.option(
    "--sync-run-timeout",
    type=click.FloatRange(5, 24 * 3600),
    default=60.0,
    show_default=True,
    help="Seconds of silence from the sidecar running a sync run before the run fails.",
)
@click.option(
    "--tls-cert",
    default="",
    metavar="FILE",
    help="Serve TLS (gRPC and admin HTTP) with this PEM certificate (chain); with --tls-key.",
)
@click.option("--tls-key", default="", metavar="FILE", help="The PEM private key of --tls-cert.")
@click.option(
    "--tls-ca",
    default="",
    metavar="FILE",
    help="A CA certificate (PEM): with --tls-ca-key, the control plane issues its own "
    "server certificate and the sidecars' workload certificates from it; with --tls-cert, "
    "the CA replicas trust when they call each other. 'auto': a CA kept in the store, "
    "created on first start and shared by every replica.",
)
@click.option("--tls-ca-key", default="", metavar="FILE", help="The PEM private key of --tls-ca.")
@click.option(
    "--tls-name",
    "tls_names",
    multiple=True,
    metavar="NAME",
    help="A DNS name or IP the issued server certificate is valid for, besides the "
    "--listen host, localhost and the loopback addresses (repeatable).",
)
@click.option(
    "--tls-cert-ttl",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Lifetime of the server certificate issued from the CA (issued again at 2/3, "
    "and when a new root starts signing)  [default: 31536000, a year]",
)
@click.option(
    "--trust-domain",
    default="ecosystem.local",
    show_default=True,
    help="With --tls-ca auto: the trust domain of the CA created on first start.",
)
@click.option(
    "--workload-cert-ttl",
    type=float,
    default=24 * 3600.0,
    show_default=True,
    metavar="SECONDS",
    help="Lifetime of the workload certificates signed for sidecars (renewed at 2/3).",
)
@click.option(
    "--acl",
    type=click.Choice(["allow", "deny"]),
    default=None,
    help="Calls without a token: 'deny' refuses them (run this in production), 'allow' lets "
    "them do anything. Default: allow when every listener is on loopback, else deny. "
    "'eco acl bootstrap' creates the first token (docs/security.md, ACLs).",
)
@click.option(
    "--audit-log",
    default="",
    metavar="FILE",
    help="Append one JSON line per write and per refused call to FILE (rotate by renaming it).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve plaintext on an address other hosts can reach (refused without it).",
)
@pass_settings
@click.pass_context
def controlplane_command(
    ctx: click.Context,
    settings: Settings,
    listen: str,
    admin_listen: str,
    store_url: str,
    bus_url: str,
    sidecar_bus_url: str,
    grace: float,
    replica_id: str,
    advertise: str,
    leader_ttl: float,
    store_timeout: float,
    rebalance_interval: float,
    rebalance_batch: int,
    max_watch_streams: int,
    max_agent_streams: int,
    max_agent_streams_per_peer: int,
    node_retention: float,
    sync_claim_timeout: float,
    sync_run_timeout: float,
    tls_cert: str,
    tls_key: str,
    tls_ca: str,
    tls_ca_key: str,
    tls_names: tuple[str, ...],
    tls_cert_ttl: float | None,
    trust_domain: str,
    workload_cert_ttl: float,
    insecure: bool,
    acl: str | None,
    audit_log: str,
) -> None:
    """Run the control plane until SIGTERM or Ctrl-C (twice: at once).

    It serves the registry API and the message bus over gRPC on --listen, with the standard gRPC
    health service and server reflection, and /healthz and /metrics over
    HTTP on --admin-listen. On shutdown it drains for up to --grace seconds.

    Off loopback it serves TLS (--tls-cert/--tls-key, or --tls-ca/--tls-ca-key to
    issue its own certificate; docs/security.md), or plaintext with --insecure.
    Every call needs an ACL token under --acl deny (the default off loopback).

    Several replicas may share one etcd store (docs/controlplane.md, "Several
    replicas"): one of them, elected, runs the work that must run once, and a
    replica holding far more than its share of sidecar streams sheds some.

    \b
    Examples:
      eco controlplane
      eco controlplane --listen 0.0.0.0:7400 --store sqlite:///var/lib/eco/cp.db \\
          --tls-ca /etc/eco/ca.pem --tls-ca-key /etc/eco/ca-key.pem --tls-name cp.example.com
      eco controlplane --listen 0.0.0.0:7400 --tls-cert cp.pem --tls-key cp-key.pem
      eco controlplane --listen 0.0.0.0:7400 --store etcd://10.0.0.9:2379/eco --tls-ca auto
      eco controlplane --store memory:// --admin-listen off
      eco controlplane --store etcd://127.0.0.1:2379/ecosystem --replica-id cp-1
      eco controlplane --bus nats://127.0.0.1:4222
      eco controlplane --bus nats://127.0.0.1:4222 --sidecar-bus nats://10.0.0.5:4222
    """
    require_server("controlplane")
    config = _config(
        listen=listen,
        admin_listen=admin_listen,
        store_url=store_url,
        bus_url=bus_url,
        sidecar_bus_url=sidecar_bus_url,
        grace=grace,
        replica=replica_id,
        advertise=advertise,
        leader_ttl=leader_ttl,
        store_timeout=store_timeout,
        rebalance_interval=rebalance_interval,
        rebalance_batch=rebalance_batch,
        max_watch_streams=max_watch_streams,
        max_agent_streams=max_agent_streams,
        max_agent_streams_per_peer=max_agent_streams_per_peer,
        node_retention=node_retention,
        sync_claim_timeout=sync_claim_timeout,
        sync_run_timeout=sync_run_timeout,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        tls_ca_key=tls_ca_key,
        tls_names=tls_names,
        **({"tls_cert_ttl": tls_cert_ttl} if tls_cert_ttl is not None else {}),
        trust_domain=trust_domain,
        workload_cert_ttl=workload_cert_ttl,
        insecure=insecure,
        acl=acl,
        audit_log=audit_log,
    )
    configure_logging(settings.verbose, base=logging.INFO)
    raise_open_files_limit()
    from controlplane import run

    ctx.exit(run(config))


def _check_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or value.strip().lower() == "off":
        return value
    from sidecar.config import split_hostport

    try:
        split_hostport(value, allow_zero=True)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None
    return value.strip()


@click.command("dev")
@_listen_options
@click.option(
    "--store",
    "store_url",
    default=DEFAULT_STORE,
    show_default=True,
    metavar="URL",
    help="sqlite://PATH to keep state between runs, memory:// for a throwaway.",
)
@click.option(
    "--from",
    "from_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="Run a template 'eco init' wrote: the sidecar and gateway of each file in "
    "DIR/config/, then 'eco apply -f DIR/apply/'.",
)
@click.option(
    "--sidecar-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run the local sidecar with this config file instead of the built-in one "
    "(its control-plane addresses are replaced by this control plane's).",
)
@click.option(
    "--sidecar-listen",
    metavar="HOST:PORT",
    callback=_check_address,
    help=f"The sidecar's local API (SDK) address  [default: {DEV_SIDECAR_LISTEN}, or the "
    "config file's local_api]",
)
@click.option(
    "--sidecar-admin",
    metavar="HOST:PORT",
    callback=_check_address,
    help=f"The sidecar's admin HTTP (/status, /metrics) address, or 'off'  [default: "
    f"{DEV_SIDECAR_ADMIN}, or the config file's admin]",
)
@click.option(
    "--gateway-listen",
    metavar="HOST:PORT",
    callback=_check_address,
    help="With --from: the gateway's listener  [default: its config file's listen]",
)
@click.option(
    "--gateway-admin",
    metavar="HOST:PORT",
    callback=_check_address,
    help="With --from: the gateway's admin HTTP, or 'off'  [default: its config file's admin]",
)
@click.option("--no-sidecar", is_flag=True, help="Run only the control plane (and apply).")
@pass_settings
@click.pass_context
def dev_command(
    ctx: click.Context,
    settings: Settings,
    listen: str,
    admin_listen: str,
    store_url: str,
    from_dir: Path | None,
    sidecar_config: Path | None,
    sidecar_listen: str | None,
    sidecar_admin: str | None,
    gateway_listen: str | None,
    gateway_admin: str | None,
    no_sidecar: bool,
) -> None:
    """Run a local development stack and show what to try next.

    Starts a control plane on 127.0.0.1:7400 with its state in
    .eco/controlplane.db (use --store memory:// to forget it on exit), and a
    sidecar beside it: its local API on 127.0.0.1:7410, its admin HTTP
    (/status, /metrics) on 127.0.0.1:7411. Stop both with Ctrl-C.

    With --from DIR, runs a template written by 'eco init' instead: the
    sidecar and the gateway of each file in DIR/config/ (their addresses
    of the control plane replaced by this one's), then applies DIR/apply/.

    Every port it opens has a flag (the other listeners of a config file, its
    upstreams' and bridges', are changed in that file). A port in use is
    named, with the flag that changes it, and nothing starts (exit 1).

    \b
    Examples:
      eco dev --store memory://
      eco dev --listen 127.0.0.1:7500 --admin-listen off --sidecar-listen 127.0.0.1:7510
      eco dev --sidecar-config sidecar.yaml
      eco init --template cloud shop && eco dev --from shop
    """
    require_server("dev")
    if from_dir is not None and sidecar_config is not None:
        raise click.UsageError("give --from or --sidecar-config, not both")
    if from_dir is None and (gateway_listen or gateway_admin):
        raise click.UsageError("--gateway-listen and --gateway-admin go with --from")
    config = _config(listen=listen, admin_listen=admin_listen, store_url=store_url, grace=2.0)
    stack = Stack(
        ports=[
            port_of(config.listen, "", "", "--listen", True),
            *(
                [port_of(config.admin_listen, "", "", "--admin-listen", True)]
                if config.admin_listen
                else []
            ),
        ]
    )
    if from_dir is not None:
        read_template(stack, from_dir, with_servers=not no_sidecar)
    elif not no_sidecar:
        source = str(sidecar_config) if sidecar_config is not None else ""
        stack.sidecars.append((source, builtin_sidecar(sidecar_config)))
    override_ports(stack, sidecar_listen, sidecar_admin, gateway_listen, gateway_admin)
    claim_ports(stack)
    configure_logging(settings.verbose, base=logging.INFO)
    raise_open_files_limit()
    ctx.exit(asyncio.run(run_stack(config, stack)))
