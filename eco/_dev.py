"""What ``eco dev`` runs, read and checked before anything starts.

The command (eco/_controlplane.py) runs a control plane and a sidecar named
"dev", or, with ``--from DIR`` (a directory ``eco init`` wrote), the sidecar
and gateway of each configuration file in ``DIR/config/`` and then ``eco
apply -f DIR/apply/``. This module reads those files as ``eco validate``
does, applies the port flags, and tries every port the stack would open, so
that a bad file or a port in use ends the command before anything starts,
naming the flag (or the file's key) that changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from eco._settings import DEFAULT_SERVER, Settings

if TYPE_CHECKING:
    from controlplane import ControlPlaneConfig
    from eco._documents import LoadedDocument
    from sidecar.config import SidecarConfig
    from sidecar.gateway.config import GatewayConfig

__all__ = [
    "DEV_SIDECAR_ADMIN",
    "DEV_SIDECAR_LISTEN",
    "Port",
    "Stack",
    "apply_documents",
    "builtin_sidecar",
    "claim_ports",
    "is_off",
    "next_steps",
    "override_ports",
    "port_of",
    "read_template",
    "run_stack",
]

EXIT_FAILURE = 1
DEV_SIDECAR_LISTEN = "127.0.0.1:7410"
DEV_SIDECAR_ADMIN = "127.0.0.1:7411"


@dataclass(frozen=True)
class Port:
    """An address the stack will listen on, and what changes it (for the error)."""

    address: str
    what: str  # "--listen", or "local_api in DIR/config/sidecar.yaml"
    change: str  # "choose another port with --listen", "change local_api in FILE (or …)"


@dataclass
class Stack:
    """What ``eco dev`` runs, read and checked before anything starts."""

    sidecars: list[tuple[str, SidecarConfig]] = field(default_factory=list)
    gateways: list[tuple[str, GatewayConfig]] = field(default_factory=list)
    documents: list[LoadedDocument] = field(default_factory=list)
    apply_dir: Path | None = None
    ports: list[Port] = field(default_factory=list)


def is_off(value: str | None) -> bool:
    """``value`` is 'off' (a listener turned off)."""
    return value is not None and value.strip().lower() == "off"


def builtin_sidecar(path: Path | None) -> SidecarConfig:
    """The sidecar `eco dev` runs: the user's file, or a node named "dev"."""
    from sidecar.config import ConfigError, SidecarConfig, load_config

    if path is None:
        return SidecarConfig.model_validate(
            {"node": {"id": "dev"}, "local_api": DEV_SIDECAR_LISTEN, "admin": DEV_SIDECAR_ADMIN}
        )
    try:
        return load_config(path)
    except ConfigError as err:
        raise click.UsageError("\n".join(err.lines())) from None
    except OSError as err:
        raise click.UsageError(f"{path}: {err.strerror}") from None


def read_template(stack: Stack, directory: Path, *, with_servers: bool) -> None:
    """The template's configuration files and documents, each checked as
    ``eco validate`` checks it: a problem is a usage error, before anything runs."""
    from eco._apply import _documents
    from eco._validate import GATEWAY, SIDECAR, detect_kind
    from sidecar._config_file import ConfigError
    from sidecar.config import load_config as load_sidecar
    from sidecar.gateway.config import load_config as load_gateway

    configs = sorted(
        p for p in (directory / "config").glob("*.y*ml") if p.suffix in (".yaml", ".yml")
    )
    apply_dir = directory / "apply"
    if not configs and not apply_dir.is_dir():
        raise click.UsageError(
            f"{directory} has neither config/ nor apply/: give a directory 'eco init' wrote"
        )
    for path in configs if with_servers else []:
        try:
            kind, why = detect_kind(path.read_text(encoding="utf-8", errors="replace"), path.name)
            if kind == SIDECAR:
                stack.sidecars.append((str(path), load_sidecar(path)))
            elif kind == GATEWAY:
                stack.gateways.append((str(path), load_gateway(path)))
            else:
                raise click.UsageError(f"{path}: not a sidecar or gateway configuration ({why})")
        except ConfigError as err:
            raise click.UsageError(str(err)) from None
        except OSError as err:
            raise click.UsageError(f"{path}: {err.strerror}") from None
    if apply_dir.is_dir():
        stack.documents = _documents([str(apply_dir)])  # DocumentsInvalid: exit 2, every problem
        stack.apply_dir = apply_dir


def override_ports(
    stack: Stack,
    sidecar_listen: str | None,
    sidecar_admin: str | None,
    gateway_listen: str | None,
    gateway_admin: str | None,
) -> None:
    """The port flags applied to the one sidecar (gateway) they can mean, and every
    port the stack opens listed with what changes it."""
    if (sidecar_listen or sidecar_admin) and len(stack.sidecars) != 1:
        raise click.UsageError(
            f"--sidecar-listen and --sidecar-admin need one sidecar; {len(stack.sidecars)} "
            "run: change local_api and admin in their files"
        )
    if (gateway_listen or gateway_admin) and len(stack.gateways) != 1:
        raise click.UsageError(
            f"--gateway-listen and --gateway-admin need one gateway; {len(stack.gateways)} "
            "run: change listen and admin in their files"
        )
    for i, (source, sidecar) in enumerate(stack.sidecars):
        update: dict[str, Any] = {}
        if sidecar_listen:
            update["local_api"] = sidecar_listen
        if sidecar_admin:
            update["admin"] = None if is_off(sidecar_admin) else sidecar_admin
        sidecar = sidecar.model_copy(update=update)
        stack.sidecars[i] = (source, sidecar)
        ports = [(sidecar.local_api, "local_api", "--sidecar-listen", bool(sidecar_listen))]
        if sidecar.admin:
            ports.append((sidecar.admin, "admin", "--sidecar-admin", bool(sidecar_admin)))
        ports += [
            (u.listen, f"upstreams[{j}].listen", "", False)
            for j, u in enumerate(sidecar.upstreams)
            if u.listen
        ]
        ports += [
            (b.listen, f"inbound[{j}].listen", "", False) for j, b in enumerate(sidecar.inbound)
        ]
        ports += [
            (listen, f"bridges[{j}].listen", "", False)
            for j, bridge in enumerate(sidecar.bridges)
            if (listen := getattr(bridge, "listen", None))
        ]
        stack.ports += [port_of(a, key, source, flag, given) for a, key, flag, given in ports]
    for i, (source, gateway) in enumerate(stack.gateways):
        update = {}
        if gateway_listen:
            update["listen"] = gateway_listen
        if gateway_admin:
            update["admin"] = None if is_off(gateway_admin) else gateway_admin
        gateway = gateway.model_copy(update=update)
        stack.gateways[i] = (source, gateway)
        stack.ports.append(
            port_of(gateway.listen, "listen", source, "--gateway-listen", bool(gateway_listen))
        )
        if gateway.admin:
            stack.ports.append(
                port_of(gateway.admin, "admin", source, "--gateway-admin", bool(gateway_admin))
            )


def port_of(address: str, key: str, source: str, flag: str, given: bool) -> Port:
    """A listener of a sidecar or gateway, with what changes it: its flag when the
    flag set it (or there is no file), else its key in the file (or the flag)."""
    if given or not source:
        return Port(address, flag, f"choose another port with {flag}")
    what = f"{key} in {source}"
    return Port(address, what, f"change {what}" + (f" (or give {flag})" if flag else ""))


def claim_ports(stack: Stack) -> None:
    """Tries each port (not 0: any free one) as the servers will bind it; the first
    in use ends the command (exit 1) naming what changes it."""
    from sidecar.config import split_hostport

    for port in stack.ports:
        host, number = split_hostport(port.address, allow_zero=True)
        if number == 0:
            continue
        problem = _bind_problem(host, number)
        if problem is None:
            continue
        if problem == errno.EADDRINUSE:
            click.echo(
                f"eco: {port.address} ({port.what}): address already in use; stop what "
                f"listens there, or {port.change}",
                err=True,
            )
        else:
            click.echo(
                f"eco: {port.address} ({port.what}): cannot listen there "
                f"({os.strerror(problem)}); {port.change}",
                err=True,
            )
        raise SystemExit(EXIT_FAILURE)


def _bind_problem(host: str, port: int) -> int | None:
    """The errno binding ``host:port`` fails with (None: it can be bound)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return errno.EADDRNOTAVAIL
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the servers bind: a port in TIME_WAIT is free, one listened on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            return err.errno
    return None


def apply_documents(address: str, stack: Stack) -> list[str]:
    """``eco apply -f DIR/apply`` against the new control plane: one line per object
    written (or refused), and a summary line."""
    from eco._apply import DEFAULT_SET, execute, make_plan

    settings = Settings(server=address, timeout=10.0)
    plan = make_plan(settings, stack.documents, owner=DEFAULT_SET, prune=False)
    results = execute(settings, plan, owner=DEFAULT_SET)
    counts: dict[str, int] = {}
    lines = []
    for result in results:
        counts[result.verb] = counts.get(result.verb, 0) + 1
        if result.verb != "unchanged":
            lines.append(
                f"  {result.verb} {result.kind} {result.key}"
                + (f": {result.detail}" if result.detail else "")
            )
    summary = ", ".join(f"{n} {verb}" for verb, n in counts.items()) or "nothing"
    return [f"Applied {stack.apply_dir}: {summary}.", *lines]


async def run_stack(config: ControlPlaneConfig, stack: Stack) -> int:
    """Runs the control plane, then the stack's sidecars and gateways (so they stop
    first), then applies its documents; prints the tour and runs until a signal."""
    import sdk
    from controlplane import ControlPlane, StartupError
    from serving.process import tune_gc
    from sidecar.app import Sidecar
    from sidecar.config import ControlPlaneLinkConfig
    from sidecar.errors import StartupError as SidecarStartupError
    from sidecar.gateway.app import Gateway

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            os._exit(128 + signum)  # the second signal: leave at once
        stop.set()

    try:
        async with contextlib.AsyncExitStack() as running:
            plane = await running.enter_async_context(ControlPlane(config))
            ready: list[str] = []
            # Entered after the control plane, so they stop first.
            for source, sidecar_config in stack.sidecars:
                link = ControlPlaneLinkConfig(
                    addresses=(plane.address,), token=sidecar_config.controlplane.token
                )
                sidecar = await running.enter_async_context(
                    Sidecar(sidecar_config.model_copy(update={"controlplane": link}))
                )
                ready.append(
                    f"Sidecar '{sidecar_config.node.id}' ready: local API on "
                    f"{sidecar.local_api_address} (admin {sidecar.admin_address or 'off'})"
                    + (f", from {source}." if source else ".")
                )
            for source, gateway_config in stack.gateways:
                if gateway_config.controlplane is not None:
                    link = gateway_config.controlplane.model_copy(
                        update={"addresses": (plane.address,)}
                    )
                    gateway_config = gateway_config.model_copy(update={"controlplane": link})
                gateway = await running.enter_async_context(Gateway(gateway_config))
                admin = f" (admin {gateway.admin_address})" if gateway.admin_address else ""
                ready.append(f"Gateway ready on http://{gateway.address}{admin}, from {source}.")
            if stack.documents:
                try:
                    ready += await asyncio.to_thread(apply_documents, plane.address, stack)
                except sdk.EcoError as err:
                    ready.append(f"Applying {stack.apply_dir} failed: {err.message or err.code}")
            tune_gc()
            # Before the tour is printed: a script that waits for it and then
            # stops the stack must get a clean stop, not the default SIGTERM.
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal, signum)
            click.echo(
                next_steps(
                    plane.address,
                    plane.admin_address,
                    config.store_url,
                    ready,
                    template=stack.apply_dir.parent if stack.apply_dir else None,
                )
            )
            await stop.wait()
            click.echo("stopping (Ctrl-C again to exit at once)…", err=True)
    except (StartupError, SidecarStartupError) as err:
        click.echo(f"eco: {err}", err=True)
        return EXIT_FAILURE
    finally:
        # Installed until the drain above is over, so a second signal cuts it short.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


def next_steps(
    address: str,
    admin_address: str,
    store_url: str,
    ready: list[str] | None = None,
    *,
    template: Path | None = None,
) -> str:
    """The short tour printed by ``eco dev`` once everything is up."""
    ready = ready or []
    server = "" if address == DEFAULT_SERVER else f" --server {address}"
    admin = (
        f"console on http://{admin_address}/ui/, metrics on http://{admin_address}/metrics"
        if admin_address
        else "admin HTTP off"
    )
    if template is not None:
        tries = [
            (f"eco{server} platform list", ""),
            (f"eco{server} service list", ""),
            (f"eco{server} export", "everything, as apply documents"),
            (f"eco{server} diff -f {template}/apply", "after an edit: what apply would change"),
            (f"eco{server} apply -f {template}/apply", ""),
        ]
    else:
        tries = [
            (f"eco{server} service register web --address 127.0.0.1 --port 8080 --tag v1", ""),
            (f"eco{server} service list", ""),
            (f"eco{server} service get web", ""),
            (f"eco{server} service watch web", "one JSON event per line; Ctrl-C to stop"),
            (f"eco{server} service deregister web --id <id printed by register>", ""),
        ]
    if any(line.startswith("Sidecar") for line in ready):
        tries.append((f"eco{server} node list", "the sidecars and their sync state"))
    width = max(len(command) for command, why in tries if why) + 2
    lines = [f"  {c.ljust(width)}# {why}" if why else f"  {c}" for c, why in tries]
    return "\n".join(
        [
            f"Control plane ready on {address} (store {store_url}; {admin}).",
            *ready,
            "",
            "Try, in another terminal:",
            *lines,
            "",
            "Stop with Ctrl-C.",
        ]
    )
