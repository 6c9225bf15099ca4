"""``eco validate --registry``: what an operator should know about the live registry.

Four checks, each finding with a severity (``error``: something is broken for
its callers now; ``warning``: something names what is not there; ``info``: a
check that could not run, which does not fail the command):

* ``no-passing-instance`` — a service none of whose instances passes its
  checks (an error; a warning when some are WARNING, which balancers still use);
* ``node-gone`` — a persistent instance naming a node that no sidecar session
  holds and the control plane no longer remembers (nothing will ever update
  its health or remove it);
* ``dataset-unreachable`` — a dataset whose location cannot be listed from
  this host within the probe timeout, with the sync connectors' own reasons;
* ``unknown-service`` — an intention naming a service that has no instance
  (a typo, or a service that went away), or a namespace with none.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import click

import sdk
from eco._output import emit, render_table
from eco._settings import Settings

__all__ = ["Finding", "Severity", "check_registry", "run_registry_check"]

EXIT_PROBLEMS = 2
#: Dataset locations probed at once.
_PROBES = 8


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the registry holds that an operator should look at."""

    severity: Severity
    check: str
    #: what it is about: ``service shop/web``, ``instance shop/web/web-1``, ``dataset orders``
    subject: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "severity": self.severity.value}

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.subject}: {self.message}"


def _service_name(namespace: str, name: str) -> str:
    return f"{namespace or 'default'}/{name}"


def _services(services: Sequence[sdk.Service]) -> list[Finding]:
    findings = []
    for service in services:
        if service.passing_count > 0:
            continue
        counts = [
            f"{n} {what}"
            for n, what in (
                (service.warning_count, "warning"),
                (service.critical_count, "critical"),
                (service.unknown_count, "unknown"),
            )
            if n
        ]
        total = service.instance_count
        detail = f"{total} instance{'s' if total != 1 else ''}"
        detail += f" ({', '.join(counts)})" if counts else ""
        findings.append(
            Finding(
                Severity.WARNING if service.warning_count else Severity.ERROR,
                "no-passing-instance",
                f"service {_service_name(service.namespace, service.name)}",
                f"no passing instance: {detail}",
            )
        )
    return findings


def _orphans(instances: Sequence[sdk.Instance], nodes: set[str]) -> list[Finding]:
    return [
        Finding(
            Severity.WARNING,
            "node-gone",
            f"instance {_service_name(i.namespace, i.service)}/{i.id}",
            f"its node {i.node!r} has no sidecar session and is not known to the control "
            "plane; deregister it, or start that node's sidecar",
        )
        for i in instances
        if i.liveness is sdk.Liveness.PERSISTENT and i.node and i.node not in nodes
    ]


def _intentions(
    intentions: Sequence[Any], services: set[tuple[str, str]], namespaces: set[str]
) -> list[Finding]:
    findings = []
    for intention in intentions:
        pair = f"intention {intention.source} -> {intention.destination}"
        for side, name in (("source", intention.source), ("destination", intention.destination)):
            if name == "*":
                continue
            namespace, _, service = name.rpartition("/")
            namespace = namespace or "default"
            if service == "*":
                if namespace not in namespaces:
                    findings.append(
                        Finding(
                            Severity.WARNING,
                            "unknown-service",
                            pair,
                            f"its {side} namespace {namespace!r} has no services",
                        )
                    )
            elif (namespace, service) not in services:
                findings.append(
                    Finding(
                        Severity.WARNING,
                        "unknown-service",
                        pair,
                        f"its {side} {namespace}/{service} is not a registered service",
                    )
                )
    return findings


async def _probe(location: str, timeout: float) -> str:
    """Why ``location`` cannot be listed from here ("" when it can)."""
    from sidecar.sync.connectors import (
        StoreAuthError,
        StoreNotFoundError,
        SyncStoreError,
        open_connector,
    )

    try:
        async with asyncio.timeout(timeout):
            async with open_connector(location) as connector:
                # One entry (or none: an empty location is reachable) is enough.
                entries = connector.list()
                try:
                    await anext(aiter(entries), None)
                finally:
                    close = getattr(entries, "aclose", None)
                    if close is not None:
                        await close()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except StoreNotFoundError as exc:
        return f"does not exist ({exc})"
    except StoreAuthError as exc:
        return f"credentials missing or refused from this host ({exc})"
    except SyncStoreError as exc:
        return str(exc) or type(exc).__name__
    except (ValueError, ModuleNotFoundError) as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot reach it: {exc.strerror or exc}"
    except Exception as exc:
        # Whatever else a store's SDK raises still means "not reachable from here",
        # and is one finding, not the end of every other check.
        return f"{type(exc).__name__}: {exc}"
    return ""


async def _datasets(transport: Any, timeout: float) -> list[Finding]:
    from ecosystem.v1 import catalog_pb2

    try:
        response = await transport.unary(
            "ListDatasets", catalog_pb2.ListDatasetsRequest(), idempotent=True
        )
    except (sdk.UnimplementedError, AttributeError):
        return [
            Finding(
                Severity.INFO,
                "dataset-unreachable",
                "datasets",
                "not checked: this control plane (or SDK) has no data catalog",
            )
        ]
    limit = asyncio.Semaphore(_PROBES)

    async def probe(dataset: Any) -> Finding | None:
        async with limit:
            why = await _probe(dataset.location, timeout)
        if not why:
            return None
        return Finding(
            Severity.ERROR,
            "dataset-unreachable",
            f"dataset {dataset.name}",
            f"its location {dataset.location} cannot be listed: {why}",
        )

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(probe(d)) for d in response.datasets]
    return [f for t in tasks if (f := t.result()) is not None]


async def check_registry(settings: Settings, probe_timeout: float = 5.0) -> list[Finding]:
    """Every finding, errors first, then by check and subject."""
    from ecosystem.v1 import intention_pb2

    from sdk.lowlevel import Transport, client_channels

    transport = Transport(
        sdk.resolve_servers(settings.server),
        timeout=settings.timeout,
        channel_factory=client_channels(settings.ca_file or "", None),
        token=settings.token,
    )
    client = sdk.AsyncClient(
        settings.server,
        timeout=settings.timeout,
        ca_file=settings.ca_file or "",
        token=settings.token,
    )
    try:
        services = (await client.list_services()).services
        instances = (await client.list_instances()).instances
        nodes = {n.id for n in await client.list_nodes()}
        intentions = await transport.unary(
            "ListIntentions", intention_pb2.ListIntentionsRequest(), idempotent=True
        )
        findings = _services(services)
        findings += _orphans(instances, nodes)
        findings += _intentions(
            intentions.intentions,
            {(s.namespace or "default", s.name) for s in services},
            {s.namespace or "default" for s in services},
        )
        findings += await _datasets(transport, probe_timeout)
    finally:
        await client.close()
        await transport.close()
    order = list(Severity)
    return sorted(findings, key=lambda f: (order.index(f.severity), f.check, f.subject))


def run_registry_check(settings: Settings, probe_timeout: float) -> int:
    """Prints the findings; the exit status: 0 when nothing but info, else 2."""
    findings = asyncio.run(check_registry(settings, probe_timeout))
    emit(
        {"findings": [f.to_dict() for f in findings]},
        settings.output,
        lambda: (
            render_table(
                ["SEVERITY", "CHECK", "OBJECT", "PROBLEM"],
                [[f.severity.value, f.check, f.subject, f.message] for f in findings],
            )
            if findings
            else "the registry looks fine: no findings"
        ),
    )
    problems = [f for f in findings if f.severity is not Severity.INFO]
    if problems:
        click.echo(
            f"{len(problems)} finding{'s' if len(problems) != 1 else ''} "
            f"({sum(f.severity is Severity.ERROR for f in problems)} errors)",
            err=True,
        )
        return EXIT_PROBLEMS
    return 0
