"""Platform and Dataset against the control plane (see ``eco._kinds`` for
units, bodies and ownership). Both are revisioned: a create is refused when
the name exists, an update and a removal when the revision moved on."""

from __future__ import annotations

import json
from typing import Any

from ecosystem.v1 import catalog_pb2 as cpb
from ecosystem.v1 import platform_pb2 as ppb
from pydantic import BaseModel

from eco._documents import DatasetDocument, PlatformDocument
from eco._kinds import Unit, conditional, head, marks, owner_of, user_labels
from eco._settings import Settings, call

__all__ = ["DatasetHandler", "PlatformHandler"]

_PLATFORM_KINDS = {
    "core": ppb.PLATFORM_KIND_CORE,
    "cloud": ppb.PLATFORM_KIND_CLOUD,
    "onprem": ppb.PLATFORM_KIND_ONPREM,
}
_KIND_NAMES = {value: name for name, value in _PLATFORM_KINDS.items()}


def _metadata(name: str, labels: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(sorted(labels.items()))
    return metadata


def _single(units: list[Unit]) -> dict[str, Any]:
    (unit,) = units
    return unit.body


class PlatformHandler:
    kind = "Platform"

    def doc_key(self, document: BaseModel) -> str:
        assert isinstance(document, PlatformDocument)
        return document.metadata.name

    @staticmethod
    def _body(
        name: str, labels: dict[str, str], kind: str, provider: str, regions: list[str], text: str
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": kind}
        if provider:
            spec["provider"] = provider
        if regions:
            spec["regions"] = list(regions)
        if text:
            spec["description"] = text
        return {"metadata": _metadata(name, labels), "spec": spec}

    def units(self, document: BaseModel) -> list[Unit]:
        assert isinstance(document, PlatformDocument)
        meta, spec = document.metadata, document.spec
        body = self._body(
            meta.name, dict(meta.labels), spec.kind, spec.provider, spec.regions, spec.description
        )
        return [Unit(self.kind, meta.name, meta.name, body)]

    def read(self, settings: Settings) -> list[Unit]:
        response = call(settings, "ListPlatforms", ppb.ListPlatformsRequest(), idempotent=True)
        units = []
        for item in response.platforms:
            body = self._body(
                item.name,
                user_labels(item.labels),
                _KIND_NAMES.get(item.kind, "core"),
                item.provider,
                list(item.regions),
                item.description,
            )
            owner = owner_of(item.labels)
            name = item.name
            units.append(Unit(self.kind, name, name, body, item.mod_revision, owner, item))
        return units

    def assemble(self, doc: str, units: list[Unit]) -> dict[str, Any]:
        body = _single(units)
        return head(self.kind, body["metadata"], body["spec"])

    def write(self, settings: Settings, unit: Unit, live: Unit | None, owner: str) -> None:
        metadata, spec = unit.body["metadata"], unit.body["spec"]
        platform = ppb.Platform(
            name=unit.key,
            kind=_PLATFORM_KINDS[spec["kind"]],
            provider=spec.get("provider", ""),
            regions=spec.get("regions", []),
            description=spec.get("description", ""),
            labels={**metadata.get("labels", {}), **marks(owner)},
        )
        request = ppb.RegisterPlatformRequest(
            platform=platform, expected_revision=live.revision if live else 0
        )
        conditional(settings, "RegisterPlatform", request)

    def delete(self, settings: Settings, live: Unit) -> None:
        request = ppb.DeregisterPlatformRequest(name=live.key, expected_revision=live.revision)
        conditional(settings, "DeregisterPlatform", request)


class DatasetHandler:
    kind = "Dataset"

    def doc_key(self, document: BaseModel) -> str:
        assert isinstance(document, DatasetDocument)
        return document.metadata.name

    @staticmethod
    def _body(name: str, labels: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"location": spec["location"]}
        for key in ("platform", "owner"):
            if spec.get(key):
                body[key] = spec[key]
        if spec.get("schema"):
            body["schema"] = spec["schema"]
        if spec.get("tags"):
            body["tags"] = list(spec["tags"])
        if spec.get("description"):
            body["description"] = spec["description"]
        return {"metadata": _metadata(name, labels), "spec": body}

    def units(self, document: BaseModel) -> list[Unit]:
        assert isinstance(document, DatasetDocument)
        name = document.metadata.name
        spec = document.spec.model_dump(by_alias=True)
        return [Unit(self.kind, name, name, self._body(name, dict(document.metadata.labels), spec))]

    def read(self, settings: Settings) -> list[Unit]:
        response = call(settings, "ListDatasets", cpb.ListDatasetsRequest(), idempotent=True)
        units = []
        for item in response.datasets:
            spec = {
                "location": item.location,
                "platform": item.platform,
                "owner": item.owner,
                "schema": json.loads(item.schema) if item.schema else None,
                "tags": list(item.tags),
                "description": item.description,
            }
            body = self._body(item.name, user_labels(item.labels), spec)
            owner = owner_of(item.labels)
            name = item.name
            units.append(Unit(self.kind, name, name, body, item.mod_revision, owner, item))
        return units

    def assemble(self, doc: str, units: list[Unit]) -> dict[str, Any]:
        body = _single(units)
        return head(self.kind, body["metadata"], body["spec"])

    def write(self, settings: Settings, unit: Unit, live: Unit | None, owner: str) -> None:
        metadata, spec = unit.body["metadata"], unit.body["spec"]
        dataset = cpb.Dataset(
            name=unit.key,
            location=spec["location"],
            platform=spec.get("platform", ""),
            owner=spec.get("owner", ""),
            schema=json.dumps(spec["schema"], sort_keys=True) if "schema" in spec else "",
            tags=spec.get("tags", []),
            description=spec.get("description", ""),
            labels={**metadata.get("labels", {}), **marks(owner)},
        )
        if live is None:
            conditional(settings, "AddDataset", cpb.AddDatasetRequest(dataset=dataset))
        else:
            request = cpb.UpdateDatasetRequest(dataset=dataset, expected_revision=live.revision)
            conditional(settings, "UpdateDataset", request)

    def delete(self, settings: Settings, live: Unit) -> None:
        request = cpb.RemoveDatasetRequest(name=live.key, expected_revision=live.revision)
        conditional(settings, "RemoveDataset", request)
