"""The kinds that are one named, revisioned object per document: Route and
SyncJob (see ``eco._kinds`` for units, bodies and ownership)."""

from __future__ import annotations

import json
from typing import Any

from ecosystem.v1 import gateway_pb2 as gpb
from ecosystem.v1 import sync_pb2 as spb
from google.protobuf import struct_pb2
from pydantic import BaseModel

import sdk
from eco._documents import RouteDocument, SyncJobDocument, parse_duration
from eco._kinds import (
    ROUTE_GROUP_PREFIX,
    StaleError,
    Unit,
    conditional,
    format_duration,
    head,
    marks,
    owner_of,
    user_labels,
)
from eco._settings import Settings, call
from sdk.lowlevel import struct_to_dict

__all__ = ["RouteHandler", "SyncJobHandler"]


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _single(units: list[Unit]) -> dict[str, Any]:
    (unit,) = units
    return unit.body


# -- Route -----------------------------------------------------------------------------


class RouteHandler:
    """Routes have revisions but ApplyRoutes takes no precondition: apply
    reads the route's revision again just before it writes, and reports a
    change made meanwhile (a write in the instant between is not caught)."""

    kind = "Route"

    def doc_key(self, document: BaseModel) -> str:
        assert isinstance(document, RouteDocument)
        return document.metadata.name

    @staticmethod
    def _body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        spec = {k: v for k, v in spec.items() if k != "name"}
        # Through a Struct and back, as the control plane keeps it (90 stays 90).
        struct = struct_pb2.Struct()
        struct.update(json.loads(json.dumps(spec)))
        return {"metadata": {"name": name}, "spec": _sorted(struct_to_dict(struct))}

    def units(self, document: BaseModel) -> list[Unit]:
        assert isinstance(document, RouteDocument)
        name = document.metadata.name
        return [Unit(self.kind, name, name, self._body(name, dict(document.spec)))]

    def read(self, settings: Settings) -> list[Unit]:
        response = call(settings, "ListRoutes", gpb.ListRoutesRequest(), idempotent=True)
        units = []
        for item in response.routes:
            owner = ""
            if item.group.startswith(ROUTE_GROUP_PREFIX):
                owner = item.group.removeprefix(ROUTE_GROUP_PREFIX)
            body = self._body(item.name, struct_to_dict(item.spec))
            units.append(Unit(self.kind, item.name, item.name, body, item.revision, owner, item))
        return units

    def assemble(self, doc: str, units: list[Unit]) -> dict[str, Any]:
        body = _single(units)
        return head(self.kind, body["metadata"], body["spec"])

    def _unchanged_since(self, settings: Settings, name: str, live: Unit | None) -> None:
        try:
            now = call(settings, "GetRoute", gpb.GetRouteRequest(name=name), idempotent=True)
            revision = now.route.revision
        except sdk.NotFoundError:
            revision = 0
        if revision != (live.revision if live else 0):
            raise StaleError(f"route {name!r} changed since it was read (revision {revision})")

    def write(self, settings: Settings, unit: Unit, live: Unit | None, owner: str) -> None:
        self._unchanged_since(settings, unit.key, live)
        spec = struct_pb2.Struct()
        spec.update({"name": unit.key, **unit.body["spec"]})
        request = gpb.ApplyRoutesRequest(group=ROUTE_GROUP_PREFIX + owner)
        request.routes.add(name=unit.key, spec=spec)
        call(settings, "ApplyRoutes", request, idempotent=True)

    def delete(self, settings: Settings, live: Unit) -> None:
        self._unchanged_since(settings, live.key, live)
        try:
            call(settings, "DeleteRoute", gpb.DeleteRouteRequest(name=live.key))
        except sdk.NotFoundError:
            raise StaleError(f"route {live.key!r} was deleted since it was read") from None


# -- SyncJob ---------------------------------------------------------------------------

_JOB_DEFAULTS: dict[str, Any] = {
    "mode": "copy",
    "checksum": False,
    "conflict": "newer",
    "max_delete": 50.0,
    "transfers": 8,
    "bandwidth": 0,
    "source_profile": "",
    "destination_profile": "",
}


class SyncJobHandler:
    kind = "SyncJob"

    def doc_key(self, document: BaseModel) -> str:
        assert isinstance(document, SyncJobDocument)
        return document.metadata.name

    @staticmethod
    def _body(name: str, labels: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name}
        if labels:
            metadata["labels"] = dict(sorted(labels.items()))
        body: dict[str, Any] = {"source": spec["source"], "destination": spec["destination"]}
        if spec.get("on_platform"):
            body["on_platform"] = spec["on_platform"]
        else:
            body["on_node"] = spec["on_node"]
        if spec.get("every") is not None:
            body["every"] = format_duration(parse_duration(spec["every"]))
        else:
            body["cron"] = spec["cron"]
        for key, default in _JOB_DEFAULTS.items():
            value = spec.get(key)
            if value not in (None, "", default) and not (key == "transfers" and value == 0):
                body[key] = value
        return {"metadata": metadata, "spec": body}

    def units(self, document: BaseModel) -> list[Unit]:
        assert isinstance(document, SyncJobDocument)
        name = document.metadata.name
        body = self._body(name, dict(document.metadata.labels), document.spec.model_dump())
        return [Unit(self.kind, name, name, body)]

    def read(self, settings: Settings) -> list[Unit]:
        response = call(settings, "ListSyncJobs", spb.ListSyncJobsRequest(), idempotent=True)
        units = []
        for item in response.jobs:
            which = item.WhichOneof("schedule")
            spec = {
                "source": item.source,
                "destination": item.destination,
                "on_node": item.on_node,
                "on_platform": item.on_platform,
                "every": item.every_seconds if which == "every_seconds" else None,
                "cron": item.cron if which == "cron" else None,
                "mode": item.mode,
                "checksum": item.checksum,
                "conflict": item.conflict,
                "max_delete": item.max_delete if item.HasField("max_delete") else None,
                "transfers": item.transfers,
                "bandwidth": item.bandwidth,
                "source_profile": item.source_profile,
                "destination_profile": item.destination_profile,
            }
            body = self._body(item.name, user_labels(item.labels), spec)
            units.append(
                Unit(
                    self.kind,
                    item.name,
                    item.name,
                    body,
                    item.revision,
                    owner_of(item.labels),
                    item,
                )
            )
        return units

    def assemble(self, doc: str, units: list[Unit]) -> dict[str, Any]:
        body = _single(units)
        return head(self.kind, body["metadata"], body["spec"])

    def write(self, settings: Settings, unit: Unit, live: Unit | None, owner: str) -> None:
        metadata, spec = unit.body["metadata"], unit.body["spec"]
        job = spb.SyncJob(
            name=unit.key,
            source=spec["source"],
            destination=spec["destination"],
            on_node=spec.get("on_node", ""),
            on_platform=spec.get("on_platform", ""),
            mode=spec.get("mode", "copy"),
            checksum=spec.get("checksum", False),
            conflict=spec.get("conflict", "newer"),
            max_delete=spec.get("max_delete", 50.0),
            transfers=spec.get("transfers", 8),
            bandwidth=spec.get("bandwidth", 0),
            source_profile=spec.get("source_profile", ""),
            destination_profile=spec.get("destination_profile", ""),
            labels={**metadata.get("labels", {}), **marks(owner)},
        )
        if "every" in spec:
            job.every_seconds = parse_duration(spec["every"])
        else:
            job.cron = spec["cron"]
        if live is None:
            conditional(settings, "CreateSyncJob", spb.CreateSyncJobRequest(job=job))
        else:
            request = spb.UpdateSyncJobRequest(job=job, expected_revision=live.revision)
            conditional(settings, "UpdateSyncJob", request)

    def delete(self, settings: Settings, live: Unit) -> None:
        try:
            now = call(settings, "GetSyncJob", spb.GetSyncJobRequest(name=live.key))
        except sdk.NotFoundError:
            raise StaleError(f"sync job {live.key!r} was deleted since it was read") from None
        if now.job.revision != live.revision:
            raise StaleError(
                f"sync job {live.key!r} changed since it was read (revision {now.job.revision})"
            )
        call(settings, "DeleteSyncJob", spb.DeleteSyncJobRequest(name=live.key))
