"""Registry changes as bus messages: the event publisher.

`EventPublisher` follows the store's instance keys and publishes each change
on ``eco.events.<namespace>.<service>`` (see docs/bus.md, "Registry events")::

    {"type": "PUT" | "DELETE" | "HEALTH", "revision": R,
     "instance": {... as sdk.Instance.to_dict() ...},
     "previous_health": "PASSING" | ... | null}

with headers ``eco-revision`` and ``eco-event-type`` and the message id
``<revision>:<instance id>:<type>``. A change confined to the health fields
(``health``, ``checks``) is HEALTH; any other change, and a registration, is
PUT; a put that changes nothing is not published.

Why the store and not the `InstanceView`: the store's watch resumes from any
retained revision and carries each key's previous value, so the publisher can
continue exactly where it stopped after a restart or on another replica; the
view's ring only serves recent revisions and then falls back to a snapshot.

Delivery: changes are published one at a time, in revision order; a publish
that fails for now (the broker is unavailable) is retried with backoff before
the next one. A message the broker refuses for good (a subject it cannot
carry, a payload over its limit: data stored before such input was refused
at the edge) is never retried: a short report of it goes to
``EVENTS_DEAD_LETTER_SUBJECT`` (``eco.dlq.events``), it is logged and
counted (``dead_lettered``), and the events after it flow on. The last published
revision is written to ``EVENTS_REVISION_KEY`` every ``persist_every`` events
or ``persist_interval`` seconds, and when the publisher stops; a new run (after
a restart or a leader failover) resumes after it. Events between the persisted
revision and the crash are published again with the same message ids, which a
durable stream capturing ``eco.events.>`` drops as duplicates within its
``duplicate_window``. Only one replica should run it: register ``run`` with the
leader election. If the persisted revision was compacted away, the events in
between are lost: that is logged and counted (``gaps``) and the publisher goes
on from the current revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ecosystem.v1 import registry_pb2 as pb

from bus import (
    Broker,
    BusError,
    InvalidSubjectError,
    OutgoingMessage,
    PayloadTooLargeError,
)
from controlplane.registry import INSTANCES_PREFIX, ROOT_PREFIX, decode_instance
from controlplane.store import (
    Compacted,
    Compare,
    Event,
    EventType,
    PutOp,
    Store,
    StoreClosed,
    StoreError,
)

__all__ = [
    "EVENTS_DEAD_LETTER_SUBJECT",
    "EVENTS_REVISION_KEY",
    "EVENTS_SUBJECT_PREFIX",
    "EventPublisher",
    "EventPublisherConfig",
    "build_message",
    "classify",
    "event_subject",
    "instance_dict",
]

log = logging.getLogger(__name__)

#: Where the publisher keeps the last revision it published.
EVENTS_REVISION_KEY = ROOT_PREFIX + "meta/events-revision"
EVENTS_SUBJECT_PREFIX = "eco.events"
#: Where an event the broker refuses for good is reported instead.
EVENTS_DEAD_LETTER_SUBJECT = "eco.dlq.events"
# Broker errors that no retry can cure: the message itself is refused.
_REFUSED = (InvalidSubjectError, PayloadTooLargeError)
# Characters of a refused subject or id quoted in its report.
_EXCERPT = 64

_HEALTH_FIELDS = ("health", "checks")


def event_subject(namespace: str, service: str) -> str:
    """The subject a service's events are published on."""
    return f"{EVENTS_SUBJECT_PREFIX}.{namespace}.{service}"


@dataclass(frozen=True, slots=True)
class EventPublisherConfig:
    """When the publisher writes its position, and how it retries."""

    #: write the revision after this many published events …
    persist_every: int = 100
    #: … or this many seconds after the first unwritten one
    persist_interval: float = 1.0
    #: first retry delay of a failed publish or store watch (doubles, up to ``retry_max``)
    retry_initial: float = 0.1
    retry_max: float = 5.0
    progress_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.persist_every < 1:
            raise ValueError("persist_every must be at least 1")
        if not self.persist_interval > 0 or not self.retry_initial > 0:
            raise ValueError("persist_interval and retry_initial must be > 0")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must not be below retry_initial")


def _health(value: int) -> str:
    if value in (pb.HEALTH_STATUS_UNSPECIFIED, pb.HEALTH_STATUS_UNKNOWN):
        return "UNKNOWN"
    return pb.HealthStatus.Name(value).removeprefix("HEALTH_STATUS_")


def _liveness(value: int) -> str:
    if value == pb.LIVENESS_EPHEMERAL:
        return "EPHEMERAL"
    return "PERSISTENT"


def instance_dict(inst: pb.Instance) -> dict[str, Any]:
    """``inst`` as ``sdk.Instance.from_proto(inst).to_dict()`` has it (a test pins
    the equality); written out here so the control plane does not import the SDK."""
    return {
        "id": inst.id,
        "service": inst.service,
        "namespace": inst.namespace,
        "node": inst.node,
        "platform": inst.platform,
        "region": inst.region,
        "zone": inst.zone,
        "address": inst.address,
        "port": inst.port,
        "tags": list(inst.tags),
        "metadata": dict(sorted(inst.metadata.items())),
        "weight": inst.weight,
        "health": _health(inst.health),
        "checks": [
            {
                "name": c.name,
                "status": _health(c.status),
                "output": c.output,
                "changed_at_ms": c.changed_at_ms,
            }
            for c in inst.checks
        ],
        "liveness": _liveness(inst.liveness),
        "lease_id": inst.lease_id,
        "create_revision": inst.create_revision,
        "mod_revision": inst.mod_revision,
    }


def _without_health(inst: pb.Instance) -> pb.Instance:
    copy = pb.Instance()
    copy.CopyFrom(inst)
    for name in _HEALTH_FIELDS:
        copy.ClearField(name)
    copy.ClearField("create_revision")
    copy.ClearField("mod_revision")
    return copy


def classify(event: Event) -> str | None:
    """PUT, DELETE or HEALTH for one store event of an instance key; None when a
    put changed nothing (e.g. the same registration written again)."""
    if event.type is EventType.DELETE:
        return "DELETE"
    if event.prev_kv is None:
        return "PUT"
    if event.prev_kv.value == event.kv.value and event.prev_kv.lease == event.kv.lease:
        return None
    new = pb.Instance.FromString(event.kv.value)
    old = pb.Instance.FromString(event.prev_kv.value)
    if _without_health(new) == _without_health(old) and event.prev_kv.lease == event.kv.lease:
        return "HEALTH"
    return "PUT"


def build_message(revision: int, event: Event) -> OutgoingMessage | None:
    """The bus message for one store event of an instance key (None: not published)."""
    kind = classify(event)
    if kind is None:
        return None
    previous: str | None = None
    if kind == "DELETE":
        assert event.prev_kv is not None, "a DELETE event carries the last state"
        inst = decode_instance(event.prev_kv)
    else:
        inst = decode_instance(event.kv)
        if event.prev_kv is not None:
            previous = _health(pb.Instance.FromString(event.prev_kv.value).health)
    payload = {
        "type": kind,
        "revision": revision,
        "instance": instance_dict(inst),
        "previous_health": previous,
    }
    return OutgoingMessage(
        subject=event_subject(inst.namespace, inst.service),
        data=json.dumps(payload, separators=(",", ":")).encode(),
        headers={"eco-revision": str(revision), "eco-event-type": kind},
        id=f"{revision}:{inst.id}:{kind}",
    )


class EventPublisher:
    """Publishes registry changes to ``broker`` (see the module docstring).

    ``run()`` follows the store until cancelled (the leader election cancels it
    when this replica stops leading); it writes its position before returning.
    No I/O happens before ``run``.
    """

    def __init__(
        self,
        store: Store,
        broker: Broker,
        config: EventPublisherConfig | None = None,
        *,
        prefix: str = INSTANCES_PREFIX,
        revision_key: str = EVENTS_REVISION_KEY,
        build: Callable[[int, Event], OutgoingMessage | None] = build_message,
    ) -> None:
        """``prefix``, ``revision_key`` and ``build`` publish another kind of
        key's changes the same way (the sync runs' events: ``controlplane.sync``)."""
        self._store = store
        self._broker = broker
        self._config = config or EventPublisherConfig()
        self._prefix = prefix
        self._revision_key = revision_key
        self._build = build
        #: the last revision whose events were all published
        self.revision = 0
        self._persisted = 0
        self.published = 0
        self.skipped = 0
        self.failures = 0
        self.dead_lettered = 0
        self.gaps = 0

    @property
    def persisted_revision(self) -> int:
        """The revision last written to the store by this publisher."""
        return self._persisted

    async def run(self) -> None:
        """Publishes changes from the persisted revision on, until cancelled."""
        cfg = self._config
        await self._resume()
        unsaved = 0
        save_due: float | None = None
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    async for batch in self._store.watch(
                        self._prefix,
                        start_revision=self.revision + 1,
                        progress_interval=cfg.progress_interval,
                    ):
                        failures = 0
                        for event in batch.events:
                            if await self._publish(batch.revision, event):
                                unsaved += 1
                        self.revision = batch.revision
                        if batch.events and save_due is None:
                            save_due = loop.time() + cfg.persist_interval
                        if save_due is not None and (
                            unsaved >= cfg.persist_every or loop.time() >= save_due
                        ):
                            await self._persist()
                            unsaved, save_due = 0, None
                except Compacted as exc:
                    self.gaps += 1
                    log.error(
                        "registry events after revision %d were compacted away before they "
                        "were published; resuming at %d",
                        self.revision,
                        exc.compact_revision,
                    )
                    self.revision = max(self.revision, exc.compact_revision - 1)
                except StoreClosed:
                    raise
                except StoreError as exc:
                    failures += 1
                    delay = min(cfg.retry_max, cfg.retry_initial * 2**failures)
                    log.warning(
                        "event publisher's store watch failed (%s); again in %.1fs", exc, delay
                    )
                    await asyncio.sleep(delay)
        finally:
            # Saved even when cancelled: the next leader resumes here, not earlier.
            with contextlib.suppress(StoreError):
                await self._persist()

    async def _resume(self) -> None:
        kv = await self._store.get(self._revision_key)
        if kv is not None:
            try:
                self.revision = int(kv.value.decode())
                self._persisted = self.revision
                log.info("events of %s resume after revision %d", self._prefix, self.revision)
                return
            except ValueError:
                log.error("ignoring a malformed %s: %r", self._revision_key, kv.value[:40])
        # First run: from now on, and say so at once, so a crash before the first
        # persist does not skip what happened in between.
        self.revision = self._store.revision
        await self._persist()

    async def _persist(self) -> None:
        if self.revision == self._persisted:
            return
        revision = self.revision
        # Zero-padded, so that byte order is numeric order and the position only
        # moves forward: a deposed leader's late write cannot undo its successor's.
        value = b"%020d" % revision
        key = self._revision_key
        result = await self._store.txn([Compare(key, "value", "<", value)], [PutOp(key, value)])
        if not result.succeeded:
            log.info("registry events position is already past %d (another publisher)", revision)
        self._persisted = revision

    async def _publish(self, revision: int, event: Event) -> bool:
        try:
            message = self._build(revision, event)
        except Exception:
            # A value that does not decode is the registry's bug; one bad key
            # must not stop every later event.
            log.exception("cannot build the event for %s at revision %d", event.kv.key, revision)
            self.skipped += 1
            return False
        if message is None:
            self.skipped += 1
            return False
        refused = await self._publish_retrying(message)
        if refused is None:
            self.published += 1
            return True
        await self._dead_letter(revision, message, refused)
        return False

    async def _publish_retrying(self, message: OutgoingMessage) -> BusError | None:
        """Publishes ``message``, retrying with backoff while the bus is
        unavailable; returns the error of a bus that refuses it for good."""
        delay = self._config.retry_initial
        while True:
            try:
                await self._broker.publish(message)
                return None
            except _REFUSED as exc:
                return exc
            except BusError as exc:
                self.failures += 1
                log.warning(
                    "cannot publish %s (%s: %s); again in %.1fs",
                    message.id[:_EXCERPT],
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(self._config.retry_max, delay * 2)

    async def _dead_letter(self, revision: int, message: OutgoingMessage, exc: BusError) -> None:
        """Reports an event the broker refused for good, instead of retrying it
        forever (which would hold back every later event)."""
        self.dead_lettered += 1
        reason = type(exc).__name__
        log.error(
            "registry event %s refused by the bus (%s: %s); reported on %s, later events go on",
            message.id[:_EXCERPT],
            reason,
            str(exc)[:200],
            EVENTS_DEAD_LETTER_SUBJECT,
        )
        report = {
            "revision": revision,
            "id": message.id[:_EXCERPT],
            "subject": message.subject[:_EXCERPT],
            "type": message.headers.get("eco-event-type", ""),
            "size": len(message.data),
            "reason": reason,
            "error": str(exc)[:200],
        }
        dead = OutgoingMessage(
            subject=EVENTS_DEAD_LETTER_SUBJECT,
            data=json.dumps(report, separators=(",", ":")).encode(),
            headers={"eco-revision": str(revision), "eco-dlq-reason": reason},
            id=f"dlq:{revision}:{message.id[:_EXCERPT]}",
        )
        again = await self._publish_retrying(dead)
        if again is not None:  # pragma: no cover - the report is small and valid
            log.error("the report of %s was refused too (%s)", dead.id, again)
