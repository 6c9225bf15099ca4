"""Each document kind against the control plane: how its documents become
messages and back, how its live objects are read, and how one is written or
deleted only if nobody changed it since it was read.

apply works on *units*, the objects the control plane revisions one by one:
a Service document is a unit per instance, every other document one unit.
Each unit carries a canonical ``body`` (what a document says of it, defaults
filled in the way the control plane fills them) so that comparing desired
and live bodies says exactly what a write would change.

Ownership: what apply writes carries its marks, ``eco.apply/managed: "true"``
and ``eco.apply/set: SET`` (instance metadata, intention and sync job labels;
a route's group ``eco.apply.SET``), and ``--prune`` deletes only units
marked with its set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from ecosystem.v1 import intention_pb2 as ipb
from ecosystem.v1 import registry_pb2 as rpb
from pydantic import BaseModel

import sdk
from eco._documents import (
    API_VERSION,
    MANAGED_PREFIX,
    IntentionDocument,
    ServiceDocument,
)
from eco._settings import Settings, call

__all__ = [
    "MANAGED_KEY",
    "ROUTE_GROUP_PREFIX",
    "SET_KEY",
    "Handler",
    "IntentionHandler",
    "ServiceHandler",
    "StaleError",
    "Unit",
    "conditional",
    "format_duration",
    "head",
    "marks",
    "owner_of",
    "user_labels",
]

MANAGED_KEY = MANAGED_PREFIX + "managed"
SET_KEY = MANAGED_PREFIX + "set"
NAME_KEY = MANAGED_PREFIX + "name"
ROUTE_GROUP_PREFIX = "eco.apply."
_PAGE = 500


class StaleError(Exception):
    """The object changed (or appeared, or went) since apply read it."""


@dataclass
class Unit:
    """One object the control plane revisions: its document (``doc``: which
    document it belongs to), key, canonical body, and for a live one its
    revision, owning set ("" when apply does not own it) and message."""

    kind: str
    doc: str
    key: str
    body: dict[str, Any]
    revision: int = 0
    owner: str = ""
    message: Any = field(default=None, repr=False)


class Handler(Protocol):
    kind: str

    def units(self, document: BaseModel) -> list[Unit]: ...

    def doc_key(self, document: BaseModel) -> str: ...

    def read(self, settings: Settings) -> list[Unit]: ...

    def assemble(self, doc: str, units: list[Unit]) -> dict[str, Any]: ...

    def write(self, settings: Settings, unit: Unit, live: Unit | None, owner: str) -> None: ...

    def delete(self, settings: Settings, live: Unit) -> None: ...


def format_duration(seconds: float) -> str:
    """900 → ``15m``; the largest unit that divides it, else seconds."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


def marks(owner: str) -> dict[str, str]:
    return {MANAGED_KEY: "true", SET_KEY: owner}


def owner_of(values: Any) -> str:
    return str(values.get(SET_KEY, "")) if values.get(MANAGED_KEY) == "true" else ""


def user_labels(values: Any) -> dict[str, str]:
    return {k: v for k, v in sorted(values.items()) if not k.startswith(MANAGED_PREFIX)}


def head(kind: str, metadata: dict[str, Any], spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def conditional(settings: Settings, method: str, request: Any) -> Any:
    """A write guarded by a revision: a refused precondition, or an object
    gone since it was read, is :class:`StaleError`."""
    try:
        return call(settings, method, request)
    except (sdk.ConflictError, sdk.NotFoundError) as err:
        raise StaleError(err.message) from None


# -- Service ---------------------------------------------------------------------------


def _ns(namespace: str) -> str:
    return "" if namespace in ("", "default") else namespace


class ServiceHandler:
    kind = "Service"

    def doc_key(self, document: BaseModel) -> str:
        assert isinstance(document, ServiceDocument)
        return f"{_ns(document.metadata.namespace) or 'default'}/{document.metadata.name}"

    def units(self, document: BaseModel) -> list[Unit]:
        assert isinstance(document, ServiceDocument)
        doc = self.doc_key(document)
        return [
            Unit(self.kind, doc, f"{doc}/{item.id}", self._body(item.model_dump()))
            for item in document.spec.instances
        ]

    @staticmethod
    def _body(item: dict[str, Any]) -> dict[str, Any]:
        body = {
            "id": item["id"],
            "address": item["address"],
            "port": item["port"],
            **{k: item[k] for k in ("node", "platform", "region", "zone") if item.get(k)},
        }
        if item.get("tags"):
            body["tags"] = list(item["tags"])
        if item.get("metadata"):
            body["metadata"] = dict(sorted(item["metadata"].items()))
        if item.get("weight", 0) not in (0, 1):
            body["weight"] = item["weight"]
        return body

    def read(self, settings: Settings) -> list[Unit]:
        units: list[Unit] = []
        token = ""
        while True:
            request = rpb.ListInstancesRequest(page_size=_PAGE, page_token=token)
            response = call(settings, "ListInstances", request, idempotent=True)
            for item in response.instances:
                if item.lease_id or item.liveness == rpb.LIVENESS_EPHEMERAL:
                    continue  # held by a sidecar or an SDK, not a declared object
                doc = f"{_ns(item.namespace) or 'default'}/{item.service}"
                body = self._body(
                    {
                        "id": item.id,
                        "address": item.address,
                        "port": item.port,
                        "node": item.node,
                        "platform": item.platform,
                        "region": item.region,
                        "zone": item.zone,
                        "tags": list(item.tags),
                        "metadata": user_labels(item.metadata),
                        "weight": item.weight,
                    }
                )
                units.append(
                    Unit(
                        self.kind,
                        doc,
                        f"{doc}/{item.id}",
                        body,
                        item.mod_revision,
                        owner_of(item.metadata),
                        item,
                    )
                )
            token = response.next_page_token
            if not token:
                return units

    def assemble(self, doc: str, units: list[Unit]) -> dict[str, Any]:
        namespace, _, name = doc.partition("/")
        metadata: dict[str, Any] = {"name": name}
        if _ns(namespace):
            metadata["namespace"] = namespace
        instances = [u.body for u in sorted(units, key=lambda u: u.body["id"])]
        return head(self.kind, metadata, {"instances": instances})

    def write(self, settings: Settings, unit: Unit, live: Unit | None, owner: str) -> None:
        namespace, _, service = unit.doc.partition("/")
        body = unit.body
        instance = rpb.Instance(
            id=body["id"],
            service=service,
            namespace=_ns(namespace),
            address=body["address"],
            port=body["port"],
            node=body.get("node", ""),
            platform=body.get("platform", ""),
            region=body.get("region", ""),
            zone=body.get("zone", ""),
            tags=body.get("tags", []),
            metadata={**body.get("metadata", {}), **marks(owner)},
            weight=body.get("weight", 0),
            liveness=rpb.LIVENESS_PERSISTENT,
        )
        request = rpb.RegisterInstanceRequest(
            instance=instance, expected_revision=live.revision if live else 0
        )
        conditional(settings, "RegisterInstance", request)

    def delete(self, settings: Settings, live: Unit) -> None:
        item = live.message
        request = rpb.DeregisterInstanceRequest(
            service=item.service,
            namespace=item.namespace,
            id=item.id,
            expected_revision=live.revision,
        )
        conditional(settings, "DeregisterInstance", request)


# -- Intention -------------------------------------------------------------------------


def _side(text: str) -> str:
    try:
        return str(sdk.IntentionName.parse(text))
    except ValueError:
        return text  # the control plane names the problem when it is written


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class IntentionHandler:
    """Intentions have no revision: apply compares the whole stored message
    (its create_time changes with every write) just before it writes."""

    kind = "Intention"

    def doc_key(self, document: BaseModel) -> str:
        assert isinstance(document, IntentionDocument)
        return f"{_side(document.spec.source)} -> {_side(document.spec.destination)}"

    def units(self, document: BaseModel) -> list[Unit]:
        assert isinstance(document, IntentionDocument)
        spec = document.spec
        body = self._body(
            document.metadata.name,
            dict(document.metadata.labels),
            spec.source,
            spec.destination,
            spec.action,
            spec.description,
        )
        key = self.doc_key(document)
        return [Unit(self.kind, key, key, body)]

    @staticmethod
    def _body(
        name: str, labels: dict[str, str], src: str, dst: str, action: str, description: str
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name}
        if labels:
            metadata["labels"] = dict(sorted(labels.items()))
        spec: dict[str, Any] = {"source": _side(src), "destination": _side(dst), "action": action}
        if description:
            spec["description"] = description
        return {"metadata": metadata, "spec": spec}

    def _list(self, settings: Settings) -> list[ipb.Intention]:
        response = call(settings, "ListIntentions", ipb.ListIntentionsRequest(), idempotent=True)
        return list(response.intentions)

    def read(self, settings: Settings) -> list[Unit]:
        units = []
        for item in self._list(settings):
            src, dst = _side(item.source), _side(item.destination)
            name = item.labels.get(NAME_KEY) or _NAME_CHARS.sub("-", f"{src}-to-{dst}").strip("-")
            action = "allow" if item.action == ipb.INTENTION_ACTION_ALLOW else "deny"
            body = self._body(name, user_labels(item.labels), src, dst, action, item.description)
            key = f"{src} -> {dst}"
            units.append(Unit(self.kind, key, key, body, 0, owner_of(item.labels), item))
        return units

    def assemble(self, doc: str, units: list[Unit]) -> dict[str, Any]:
        (unit,) = units
        return head(self.kind, unit.body["metadata"], unit.body["spec"])

    def _unchanged_since(self, settings: Settings, unit: Unit, live: Unit | None) -> None:
        now = {f"{_side(i.source)} -> {_side(i.destination)}": i for i in self._list(settings)}.get(
            unit.key
        )
        then = live.message if live else None
        if now != then:
            raise StaleError(f"intention {unit.key} changed since it was read")

    def write(self, settings: Settings, unit: Unit, live: Unit | None, owner: str) -> None:
        self._unchanged_since(settings, unit, live)
        metadata, spec = unit.body["metadata"], unit.body["spec"]
        action = (
            ipb.INTENTION_ACTION_ALLOW if spec["action"] == "allow" else ipb.INTENTION_ACTION_DENY
        )
        item = ipb.Intention(
            source=spec["source"],
            destination=spec["destination"],
            action=action,
            description=spec.get("description", ""),
            labels={**metadata.get("labels", {}), **marks(owner), NAME_KEY: metadata["name"]},
        )
        call(settings, "CreateIntention", ipb.CreateIntentionRequest(intention=item))

    def delete(self, settings: Settings, live: Unit) -> None:
        self._unchanged_since(settings, live, live)
        item = live.message
        request = ipb.DeleteIntentionRequest(source=item.source, destination=item.destination)
        try:
            call(settings, "DeleteIntention", request)
        except sdk.NotFoundError:
            raise StaleError(f"intention {live.key} was deleted since it was read") from None
