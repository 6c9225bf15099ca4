"""The content of each console page, from ``ConsoleData``."""

from __future__ import annotations

import json

from ecosystem.v1 import agent_pb2, intention_pb2, platform_pb2, sync_pb2
from google.protobuf import json_format

from controlplane.ui._data import ConsoleData, ServiceFilter, health_name
from controlplane.ui._html import esc, path, table, when

__all__ = [
    "bus",
    "datasets",
    "intentions",
    "nodes",
    "platforms",
    "routes",
    "service",
    "services",
    "sync",
]

#: Rows of the services and nodes lists; the counts above them cover every one.
MAX_ROWS = 500
_HEALTH_CHOICES = ("", "passing", "warning", "critical", "unknown")
_NODE_STATES = {
    agent_pb2.NODE_SYNC_STATUS_SYNCED: "in step",
    agent_pb2.NODE_SYNC_STATUS_STALE: "behind",
    agent_pb2.NODE_SYNC_STATUS_DISCONNECTED: "disconnected",
}


def _badge(health: str) -> str:
    return f'<span class="badge health-{esc(health)}">{esc(health)}</span>'


def _select(name: str, label: str, values: list[str], chosen: str) -> str:
    options = [f'<option value="">any {esc(label)}</option>']
    if chosen and chosen not in values:
        values = [*values, chosen]
    for value in values:
        if not value:
            continue
        mark = " selected" if value == chosen else ""
        options.append(f'<option value="{esc(value)}"{mark}>{esc(value)}</option>')
    return (
        f'<label>{esc(label)} <select name="{name}" data-testid="filter-{name}" '
        f"data-autosubmit>{''.join(options)}</select></label>"
    )


def _more(count: int, what: str, hint: str) -> str:
    """The note under a list cut at ``MAX_ROWS``; "" when nothing was cut."""
    if count <= MAX_ROWS:
        return ""
    return (
        f'<p class="note" data-testid="more">The first {MAX_ROWS} of {count} {esc(what)}: '
        f"{esc(hint)}.</p>"
    )


def _totals(counts: dict[str, int]) -> str:
    """Instance counts by health, as coloured badges."""
    badges = " ".join(
        f'<span class="badge health-{name}" data-testid="total-{name}">{count} {name}</span>'
        for name, count in counts.items()
    )
    return f'<p class="totals">{badges}</p>'


def _h1(title: str, count: int | None = None) -> str:
    extra = f' <span class="count">({count})</span>' if count is not None else ""
    return f"<h1>{esc(title)}{extra}</h1>"


# -- services ------------------------------------------------------------------------


def services(data: ConsoleData, wanted: ServiceFilter) -> str:
    rows = data.services(wanted)
    shown = rows[:MAX_ROWS]
    options = data.options()
    form = (
        '<form class="filters" method="get" action="/ui/services" data-testid="filters">'
        + _select("namespace", "namespace", options.namespaces, wanted.namespace)
        + _select("platform", "platform", options.platforms, wanted.platform)
        + _select("tag", "tag", options.tags, wanted.tag)
        + _select("health", "health", list(_HEALTH_CHOICES), wanted.health)
        + '<button type="submit">Filter</button> <a href="/ui/services">clear</a></form>'
    )
    body = table(
        [
            "Service",
            "Namespace",
            "Instances",
            "Passing",
            "Warning",
            "Critical",
            "Unknown",
            "Platforms",
            "Tags",
        ],
        (
            (
                f'class="row health-{row.health}" data-testid="service-row" '
                f'data-service="{esc(row.summary.name)}" data-health="{row.health}"',
                [
                    f'<a href="{esc(path("services", row.summary.namespace, row.summary.name))}">'
                    f"{esc(row.summary.name)}</a>",
                    esc(row.summary.namespace),
                    str(row.summary.instance_count),
                    str(row.summary.passing_count),
                    str(row.summary.warning_count),
                    str(row.summary.critical_count),
                    str(row.summary.unknown_count),
                    esc(", ".join(row.platforms)),
                    esc(", ".join(row.tags)),
                ],
            )
            for row in shown
        ),
        empty="No services match."
        if any((wanted.namespace, wanted.platform, wanted.tag, wanted.health))
        else "No services registered yet (eco service register, or a sidecar's services).",
        test_id="services",
    )
    totals = {"passing": 0, "warning": 0, "critical": 0, "unknown": 0}
    for row in rows:
        totals["passing"] += row.summary.passing_count
        totals["warning"] += row.summary.warning_count
        totals["critical"] += row.summary.critical_count
        totals["unknown"] += row.summary.unknown_count
    more = _more(len(rows), "services", "filter to narrow the list")
    return f"{_h1('Services', len(rows))}{_totals(totals)}{form}{body}{more}"


def service(data: ConsoleData, namespace: str, name: str) -> str | None:
    found = data.service(namespace, name)
    if found is None:
        return None
    summary, instances = found
    blocks = []
    for inst in instances:
        health = health_name(inst.health)
        checks = table(
            ["Check", "Status", "Output", "Changed"],
            (
                (
                    f'class="health-{health_name(c.status)}" data-testid="check-row"',
                    [
                        esc(c.name),
                        _badge(health_name(c.status)),
                        f"<pre>{esc(c.output)}</pre>" if c.output else "",
                        esc(when(c.changed_at_ms)),
                    ],
                )
                for c in inst.checks
            ),
            empty="No checks reported (its health is as registered).",
            test_id="checks",
        )
        meta = ", ".join(f"{k}={v}" for k, v in sorted(inst.metadata.items()))
        blocks.append(
            f'<section class="instance health-{health}" data-testid="instance" '
            f'data-instance="{esc(inst.id)}" data-health="{health}">'
            f"<h2>{esc(inst.id)} {_badge(health)}</h2>"
            '<dl class="facts">'
            f"<dt>address</dt><dd>{esc(inst.address)}:{inst.port}</dd>"
            f"<dt>node</dt><dd>{esc(inst.node or '—')}</dd>"
            f"<dt>platform</dt><dd>{esc(inst.platform or '—')}</dd>"
            f"<dt>region / zone</dt><dd>{esc(inst.region or '—')} / {esc(inst.zone or '—')}</dd>"
            f"<dt>weight</dt><dd>{inst.weight}</dd>"
            f"<dt>tags</dt><dd>{esc(', '.join(inst.tags) or '—')}</dd>"
            f"<dt>metadata</dt><dd>{esc(meta or '—')}</dd>"
            f"<dt>liveness</dt><dd>{'ephemeral' if inst.lease_id else 'persistent'}</dd>"
            f"<dt>revision</dt><dd>{inst.mod_revision}</dd>"
            f"</dl>{checks}</section>"
        )
    head = (
        f'<p><a href="/ui/services">← services</a></p>'
        f"{_h1(f'{summary.namespace}/{summary.name}', summary.instance_count)}"
        + _totals(
            {
                "passing": summary.passing_count,
                "warning": summary.warning_count,
                "critical": summary.critical_count,
                "unknown": summary.unknown_count,
            }
        )
    )
    return head + "".join(blocks)


# -- nodes ---------------------------------------------------------------------------


async def nodes(data: ConsoleData) -> str:
    found = await data.nodes()
    revision = data.revision
    connected = [n for n in found if n.connected]
    in_step = [n for n in connected if n.status == agent_pb2.NODE_SYNC_STATUS_SYNCED]
    rows = []
    for n in found[:MAX_ROWS]:
        state = _NODE_STATES.get(n.status, "unknown")
        rows.append(
            (
                f'class="node state-{state.replace(" ", "-")}" data-testid="node-row" '
                f'data-node="{esc(n.node.id)}"',
                [
                    esc(n.node.id),
                    f'<span class="badge state-{state.replace(" ", "-")}">{esc(state)}</span>',
                    str(n.applied_version),
                    str(n.sent_version),
                    esc(n.node.platform or "—"),
                    str(n.instance_count),
                    esc(n.replica or "—"),
                    esc(when(n.last_seen_ms)),
                    esc(n.last_error),
                ],
            )
        )
    body = table(
        [
            "Node",
            "State",
            "Applied",
            "Sent",
            "Platform",
            "Instances",
            "Replica",
            "Last seen",
            "Last error",
        ],
        rows,
        empty="No sidecar has connected yet (eco sidecar --config FILE).",
        test_id="nodes",
    )
    convergence = (
        f'<p class="convergence" data-testid="convergence">'
        f'<strong data-testid="in-step-count">{len(in_step)}</strong> of '
        f'<strong data-testid="connected-count">{len(connected)}</strong> connected sidecars '
        f"have applied everything sent to them; the registry is at revision "
        f'<strong data-testid="view-revision">{revision}</strong>. '
        "<code>eco wait --revision R</code> waits for a change to reach them.</p>"
    )
    more = _more(len(found), "nodes", "eco node list -o json lists them all")
    return _h1("Nodes", len(found)) + convergence + body + more + _xds_clients(data)


#: Worst first: a node's state is the worst of its resource types'.
_XDS_STATES = ("NACKED", "SENT", "REQUESTED", "ACKED")


def _xds_clients(data: ConsoleData) -> str:
    """The xDS clients (gRPC proxyless and Envoy) this replica serves: the
    state of what each was sent, and its last NACK (the resource and why)."""
    found = data.xds_nodes()
    rows = []
    for n in found[:MAX_ROWS]:
        states = {status.state for status in n.types.values()}
        state = next((s for s in _XDS_STATES if s in states), "REQUESTED")
        nacks = [(name, t.nack) for name, t in n.types.items() if t.nack is not None]
        last = max(nacks, key=lambda item: item[1].at, default=None)
        nack = ""
        if last is not None:
            name, rejection = last
            nack = (
                f"{name} {', '.join(rejection.resources)} v{rejection.version}: {rejection.error}"
            )
        acked = ", ".join(
            f"{name} v{t.acked_version}" for name, t in sorted(n.types.items()) if t.acked_version
        )
        rows.append(
            (
                f'class="xds-node state-{state.lower()}" data-testid="xds-row" '
                f'data-node="{esc(n.node_id)}"',
                [
                    esc(n.node_id),
                    esc(n.kind),
                    f'<span class="badge xds-{state.lower()}">{esc(state)}</span>',
                    esc(acked or "—"),
                    esc(nack or "—"),
                    "connected" if n.streams else esc(when(int(n.disconnected_at * 1000))),
                ],
            )
        )
    body = table(
        ["xDS client", "Kind", "State", "Applied", "Last NACK", "Connected"],
        rows,
        empty="No xDS client has connected to this replica (docs/xds.md).",
        test_id="xds-nodes",
    )
    more = _more(len(found), "xDS clients", "eco xds status -o json lists them all")
    return (
        f'<h2 data-testid="xds-heading">xDS clients <span class="count">({len(found)})</span></h2>'
        + body
        + more
    )


# -- platforms -----------------------------------------------------------------------


async def platforms(data: ConsoleData) -> str:
    found = await data.platforms()
    kind = platform_pb2.PlatformKind
    body = table(
        ["Platform", "Kind", "Provider", "Regions", "Instances", "Labels", "Description"],
        (
            (
                f'data-testid="platform-row" data-platform="{esc(p.name)}"',
                [
                    f'<a href="{esc(path("services", query={"platform": p.name}))}">'
                    f"{esc(p.name)}</a>",
                    esc(kind.Name(p.kind).removeprefix("PLATFORM_KIND_").lower()),
                    esc(p.provider or "—"),
                    esc(", ".join(p.regions) or "—"),
                    str(count),
                    esc(", ".join(f"{k}={v}" for k, v in sorted(p.labels.items())) or "—"),
                    esc(p.description),
                ],
            )
            for p, count in found
        ),
        empty="No platforms registered (eco platform register, or eco apply).",
        test_id="platforms",
    )
    return _h1("Platforms", len(found)) + body


# -- bus -----------------------------------------------------------------------------


async def bus(data: ConsoleData) -> str:
    if not data.may_read_bus:
        return _h1("Bus") + '<p class="empty">This token may not read the bus (bus:*:read).</p>'
    streams = await data.streams()
    blocks = []
    for s in streams:
        consumers = table(
            [
                "Consumer",
                "Pending acks",
                "Redelivered",
                "Dead letters",
                "Next sequence",
                "Subscribers",
            ],
            (
                (
                    f'data-testid="consumer-row" data-consumer="{esc(c.name)}"'
                    + (' class="health-critical"' if c.dead_lettered else ""),
                    [
                        esc(c.name),
                        str(c.pending),
                        str(c.redelivered),
                        str(c.dead_lettered),
                        str(c.next_sequence),
                        str(c.subscribers),
                    ],
                )
                for c in s.consumers
            ),
            empty="No durable consumers.",
            test_id="consumers",
        )
        blocks.append(
            f'<section data-testid="stream" data-stream="{esc(s.name)}">'
            f"<h2>{esc(s.name)}</h2>"
            '<dl class="facts">'
            f"<dt>subjects</dt><dd>{esc(', '.join(s.config.subjects))}</dd>"
            f'<dt>depth</dt><dd data-testid="stream-depth">{s.messages} messages, '
            f"{s.bytes} bytes (sequences {s.first_sequence} to {s.last_sequence})</dd>"
            f"<dt>dead letters go to</dt><dd>{esc(s.config.dlq_subject)}</dd>"
            f"</dl>{consumers}</section>"
        )
    if not blocks:
        blocks.append(
            '<p class="empty" data-testid="streams-empty">No durable streams '
            "(eco bus stream add). Core subjects keep nothing to show.</p>"
        )
    note = (
        '<p class="note">Durable streams of the bus this control plane serves '
        f"({esc(data.plane.config.bus_url)}): depth, acknowledgements pending and "
        "messages sent to the dead-letter subject after their last delivery.</p>"
    )
    return _h1("Bus streams", len(streams)) + note + "".join(blocks)


# -- gateway routes ------------------------------------------------------------------


async def routes(data: ConsoleData) -> str:
    found = await data.routes()
    body = table(
        ["Route", "Group", "Revision", "Spec"],
        (
            (
                f'data-testid="route-row" data-route="{esc(r.name)}"',
                [
                    esc(r.name),
                    esc(r.group or "—"),
                    str(r.revision),
                    "<pre>"
                    + esc(json.dumps(json_format.MessageToDict(r.spec), indent=1, sort_keys=True))
                    + "</pre>",
                ],
            )
            for r in found
        ),
        empty="No gateway routes (eco route apply FILE).",
        test_id="routes",
    )
    return _h1("Gateway routes", len(found)) + body


# -- sync ----------------------------------------------------------------------------


def _run_status(status: int) -> str:
    return str(sync_pb2.SyncRunStatus.Name(status)).removeprefix("SYNC_RUN_STATUS_").lower()


async def sync(data: ConsoleData) -> str:
    found = await data.sync_jobs()
    blocks = []
    for job, runs in found:
        schedule = (
            f"every {job.every_seconds:g}s"
            if job.WhichOneof("schedule") == "every_seconds"
            else (f"cron {job.cron}" if job.WhichOneof("schedule") == "cron" else "—")
        )
        run_rows = table(
            ["Run", "Status", "Node", "Scheduled", "Finished", "Error"],
            (
                (
                    f'data-testid="run-row" class="run-{_run_status(r.status)}"',
                    [
                        str(r.number),
                        esc(_run_status(r.status)),
                        esc(r.node or "—"),
                        esc(when(r.scheduled_at_ms)),
                        esc(when(r.finished_at_ms)),
                        esc(r.error),
                    ],
                )
                for r in runs
            ),
            empty="No runs yet.",
            test_id="runs",
        )
        blocks.append(
            f'<section data-testid="sync-job" data-job="{esc(job.name)}">'
            f"<h2>{esc(job.name)}{' (paused)' if job.paused else ''}</h2>"
            '<dl class="facts">'
            f"<dt>from</dt><dd>{esc(job.source)}</dd><dt>to</dt><dd>{esc(job.destination)}</dd>"
            f"<dt>mode</dt><dd>{esc(job.mode or 'copy')}</dd>"
            f"<dt>schedule</dt><dd>{esc(schedule)}</dd>"
            f"<dt>next run</dt><dd>{esc(when(job.next_run_at_ms))}</dd>"
            f"</dl><h3>Last runs</h3>{run_rows}</section>"
        )
    if not blocks:
        blocks.append(
            '<p class="empty" data-testid="sync-empty">No sync jobs (eco sync job add).</p>'
        )
    return _h1("Sync jobs", len(found)) + "".join(blocks)


# -- intentions, datasets ------------------------------------------------------------


def intentions(data: ConsoleData) -> str:
    found, default_allow = data.intentions()
    action = intention_pb2.IntentionAction
    body = table(
        ["Source", "Destination", "Action", "Description"],
        (
            (
                f'data-testid="intention-row" class="action-'
                f'{esc(action.Name(i.action).removeprefix("INTENTION_ACTION_").lower())}"',
                [
                    esc(i.source),
                    esc(i.destination),
                    esc(action.Name(i.action).removeprefix("INTENTION_ACTION_").lower()),
                    esc(i.description),
                ],
            )
            for i in found
        ),
        empty="No intentions (eco intention create SOURCE DESTINATION --allow|--deny).",
        test_id="intentions",
    )
    default = "allowed" if default_allow else "denied"
    note = f'<p class="note">A call that no intention names is <strong>{default}</strong>.</p>'
    return _h1("Intentions", len(found)) + note + body


async def datasets(data: ConsoleData) -> str:
    found = await data.datasets()
    body = table(
        ["Dataset", "Location", "Platform", "Owner", "Tags", "Copies"],
        (
            (
                f'data-testid="dataset-row" data-dataset="{esc(d.name)}"',
                [
                    esc(d.name),
                    esc(d.location),
                    esc(d.platform or "—"),
                    esc(d.owner or "—"),
                    esc(", ".join(d.tags) or "—"),
                    esc(
                        "; ".join(f"{c.direction} {c.location} ({c.job})" for c in d.copies) or "—"
                    ),
                ],
            )
            for d in found
        ),
        empty="No datasets in the catalog (eco catalog add).",
        test_id="datasets",
    )
    return _h1("Datasets", len(found)) + body
