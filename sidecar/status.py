"""The ``/status`` document: what an operator wants to know about one sidecar.

::

    {"node": {...}, "connected": true, "stale": false, "message": "connected to …",
     "controlplane": {"address", "replica", "session_id", "state", "last_error", …},
     "applied_version": 42, "cache": {"source": "controlplane", "path", "version", …},
     "bus": {"route": "nats", "broker", "connected", "buffered", "last_error", …},
     "instances": [{"id", "service", "health", "checks": [...]}, …],
     "upstreams": [{"service", "balancer", "version", "endpoints": [...]}, …],
     "proxy": [{"name", "protocol", "listen", "endpoints", "ejected", "panicking",
                "circuit": {"open", "connections", "max_connections", …},
                "stats": {"requests", "active", "responses", "errors", "retries",
                          "ejections", "latency_ms": {"p50_le", "p99_le", "mean"}, …}}, …],
     "envoy": {"binary", "pid", "admin", "restarts", "last_exit", "listeners"}}

``proxy`` lists the listeners the Python data plane serves; with ``dataplane:
envoy`` those are Envoy's, described under ``envoy`` (absent otherwise).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from sidecar.cache import CacheSource

if TYPE_CHECKING:
    from sidecar.app import Sidecar

__all__ = ["status_document", "status_message"]


def _iso(ts: float | None) -> str | None:
    if ts is None or ts <= 0:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


def status_message(sidecar: Sidecar) -> str:
    """One sentence on where the endpoints come from."""
    source = sidecar.cache.source
    if sidecar.connected:
        address = sidecar.session.status().address if sidecar.session is not None else "?"
        if sidecar.stale:
            return f"connected to {address}; waiting for the first endpoint update"
        return f"connected to {address}"
    if source is CacheSource.DISK:
        return "serving from disk cache: the control plane is unreachable"
    if source is CacheSource.CONTROL_PLANE:
        return "disconnected from the control plane: serving the last endpoints received"
    return "not connected to the control plane; no endpoints cached yet"


def status_document(sidecar: Sidecar) -> dict[str, Any]:
    config = sidecar.config
    node = config.node
    session = sidecar.session.status() if sidecar.session is not None else None
    cache = sidecar.cache
    doc: dict[str, Any] = {
        "node": {
            "id": node.id,
            "platform": node.platform,
            "region": node.region,
            "zone": node.zone,
        },
        "local_api": sidecar.local_api_address,
        "admin": sidecar.admin_address or None,
        "connected": sidecar.connected,
        "stale": sidecar.stale,
        "message": status_message(sidecar),
        "applied_version": session.applied_version if session else cache.version,
    }
    doc["controlplane"] = {
        "addresses": list(config.controlplane.addresses),
        "state": session.state.value if session else "new",
        "address": session.address if session else "",
        "replica": session.replica if session else "",
        "session_id": session.session_id if session else "",
        "resumed": session.resumed if session else False,
        "connected_since": _iso(session.connected_since) if session else None,
        "last_error": session.last_error if session else "",
        "last_sync": session.last_sync.to_dict() if session and session.last_sync else None,
        "grace_seconds": session.grace if session else None,
        "sync_interval_seconds": session.sync_interval if session else config.sync_interval,
        "connects": session.connects if session else 0,
        "updates_applied": session.updates_applied if session else 0,
        "updates_rejected": session.updates_rejected if session else 0,
    }
    doc["bus"] = sidecar.relay.status()
    doc["sync_runs"] = sidecar.sync_runs.status() if sidecar.sync_runs is not None else None
    doc["cache"] = {
        "source": cache.source.value,
        "version": cache.version,
        "path": str(cache.path) if cache.path else None,
        "loaded_file_saved_at": _iso(cache.saved_at),
        "write_errors": cache.write_errors,
    }
    doc["instances"] = [
        {
            "id": i.id,
            "service": i.service,
            "namespace": i.namespace or "default",
            "address": i.address,
            "port": i.port,
            "health": i.health.value,
            "checks": [c.to_dict() for c in i.checks],
        }
        for i in sidecar.local_instances()
    ]
    upstreams = []
    for key in cache.keys:
        state = cache.get(key)
        upstream = sidecar.router.config(key)
        balancer = sidecar.router.balancer(key)
        upstreams.append(
            {
                "service": key[1],
                "namespace": key[0],
                "balancer": upstream.balancer,
                "version": state.version if state else 0,
                "updated_at": _iso(state.updated_at) if state else None,
                "panicking": balancer.panicking,
                "endpoints": [
                    {
                        "id": i.id,
                        "address": i.address,
                        "port": i.port,
                        "health": i.health.value,
                        "node": i.node,
                        "zone": i.zone,
                        "weight": i.weight or 1,
                    }
                    for i in (state.instances if state else ())
                ],
            }
        )
    doc["upstreams"] = upstreams
    doc["proxy"] = sidecar.dataplane.status()
    if sidecar.envoy is not None:
        doc["envoy"] = sidecar.envoy.status()
    doc["bridges"] = [bridge.status() for bridge in sidecar.bridges]
    doc["identity"] = sidecar.identity.status()
    doc["intentions"] = sidecar.intentions.status()
    return doc
