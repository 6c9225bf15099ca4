"""Intentions: which service may call which, kept in the store and followed
by every replica, which sends them to its sidecars over the agent session.

Keys (values are serialized ``Intention`` messages)::

    /ecosystem/v1/intentions/<src ns>/<src service>/<dst ns>/<dst service>

each part a name or ``*`` (``*`` is ``*/*``). Each side of an intention is
``SERVICE`` (namespace ``default``), ``NAMESPACE/SERVICE``, ``NAMESPACE/*``
or ``*`` (``sdk.IntentionName``); the messages carry the shortest form, so
``web`` is ``default/web``. Intentions written before namespaces were
stored at ``/ecosystem/v1/intentions/<source>/<destination>`` with plain
names: they are read as they are (a plain name is the ``default``
namespace's, ``*`` is every service, which is what they meant), and the
next create or delete of that pair moves or removes the old key in the same
transaction. Should both keys hold the pair (an older replica wrote it
since), the later write counts.

One intention per (source, destination) pair: creating one for a pair that
has one replaces it. ``sdk.IntentionSet.decide`` says how a decision is
made (the sidecars use the same one). An :class:`IntentionBook` holds
the current set of one replica, re-read every ``POLL_SECONDS`` (another
replica may have written), and calls ``on_change`` when it changed, so a
changed intention reaches every connected sidecar within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from ecosystem.v1 import intention_pb2, intention_pb2_grpc

from controlplane.registry import ROOT_PREFIX
from controlplane.store import DeleteOp, PutOp, Store, StoreError
from controlplane.validation import name_violations
from sdk import Intention, IntentionName, IntentionSet
from serving.errors import FieldViolation, InvalidArgumentError, NotFoundError, end_call, to_status

__all__ = ["INTENTIONS_PREFIX", "POLL_SECONDS", "IntentionBook", "IntentionServicer"]

log = logging.getLogger(__name__)

INTENTIONS_PREFIX = ROOT_PREFIX + "intentions/"
POLL_SECONDS = 0.25
WILDCARD = "*"
_MAX_DESCRIPTION = 512
_ACTIONS = (intention_pb2.INTENTION_ACTION_ALLOW, intention_pb2.INTENTION_ACTION_DENY)


def _keys(source: IntentionName, destination: IntentionName) -> tuple[str, str | None]:
    """The pair's key, and the key it had before namespaces (None: it could have none)."""
    key = (
        f"{INTENTIONS_PREFIX}{source.namespace}/{source.service}/"
        f"{destination.namespace}/{destination.service}"
    )
    short_source, short_destination = str(source), str(destination)
    if "/" in short_source or "/" in short_destination:
        return key, None
    return key, f"{INTENTIONS_PREFIX}{short_source}/{short_destination}"


def _side(field_name: str, value: str) -> tuple[IntentionName | None, list[FieldViolation]]:
    """``value`` as one side of an intention, or the problems with it."""
    if not value:
        return None, [FieldViolation(field_name, "is required")]
    try:
        name = IntentionName.parse(value)
    except ValueError as exc:
        return None, [FieldViolation(field_name, str(exc))]
    violations = []
    for part in (name.namespace, name.service):
        if part != WILDCARD:
            violations += name_violations(field_name, part, required=True)
    return (None if violations else name), violations


def _pair(
    source_field: str, source: str, destination_field: str, destination: str
) -> tuple[IntentionName, IntentionName]:
    """Both sides parsed; InvalidArgumentError naming every problem."""
    src, violations = _side(source_field, source)
    dst, more = _side(destination_field, destination)
    violations += more
    if src is None or dst is None:
        raise InvalidArgumentError(violations)
    return src, dst


def _sort_key(intention: Intention) -> tuple[int, str, str]:
    # Most specific first: the order in which they are considered.
    src, dst = intention.source_name, intention.destination_name
    return (-(dst.specificity * 3 + src.specificity), dst.qualified, src.qualified)


def _arrow(source: IntentionName, destination: IntentionName) -> str:
    return f"{source.qualified} -> {destination.qualified}"


@dataclass(eq=False)
class IntentionBook:
    """The intentions of one replica, with the default of ``--acl``."""

    store: Store
    default_allow: bool
    on_change: list[Callable[[], None]] = field(default_factory=list)
    intentions: tuple[intention_pb2.Intention, ...] = ()
    version: int = 0
    _task: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Reads the current set from the store (and notices a change)."""
        result = await self.store.range(INTENTIONS_PREFIX)
        # (source, destination) in the shortest form -> (mod revision, parsed, message)
        pairs: dict[tuple[str, str], tuple[int, Intention, intention_pb2.Intention]] = {}
        for kv in result.kvs:
            intention = intention_pb2.Intention()
            intention.ParseFromString(kv.value)
            try:
                parsed = Intention.from_proto(intention)
            except ValueError as exc:
                log.warning("stored intention %s ignored: %s", kv.key, exc)
                continue
            # Stored before namespaces, or by hand: carry the shortest form.
            intention.source, intention.destination = parsed.source, parsed.destination
            pair = (parsed.source, parsed.destination)
            if pair not in pairs or pairs[pair][0] < kv.mod_revision:
                pairs[pair] = (kv.mod_revision, parsed, intention)
        ordered = sorted(pairs.values(), key=lambda entry: _sort_key(entry[1]))
        intentions = [message for _revision, _parsed, message in ordered]
        digest = hashlib.sha256(b"allow" if self.default_allow else b"deny")
        for intention in intentions:
            digest.update(intention.SerializeToString(deterministic=True))
            digest.update(b"\0")
        version = int.from_bytes(digest.digest()[:7], "big")
        if version == self.version:
            return
        self.intentions, self.version = tuple(intentions), version
        log.info("intentions changed: %d (version %d)", len(intentions), version)
        for callback in list(self.on_change):
            try:
                callback()
            except Exception:
                log.exception("intention callback failed")

    def snapshot(self) -> intention_pb2.IntentionSet:
        return intention_pb2.IntentionSet(
            intentions=list(self.intentions),
            default_allow=self.default_allow,
            version=self.version,
        )

    async def start(self) -> None:
        await self.load()
        self._task = asyncio.create_task(self._follow(), name="intentions")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.load()
            except StoreError as exc:
                log.debug("could not read the intentions: %s", exc)

    # -- writes (the servicer's) ----------------------------------------------------

    async def create(self, intention: intention_pb2.Intention) -> intention_pb2.Intention:
        src, violations = _side("intention.source", intention.source)
        dst, more = _side("intention.destination", intention.destination)
        violations += more
        if intention.action not in _ACTIONS:
            violations.append(FieldViolation("intention.action", "must be allow or deny"))
        if len(intention.description) > _MAX_DESCRIPTION:
            violations.append(
                FieldViolation("intention.description", f"at most {_MAX_DESCRIPTION} characters")
            )
        if violations or src is None or dst is None:
            raise InvalidArgumentError(violations)
        stored = intention_pb2.Intention()
        stored.CopyFrom(intention)
        stored.source, stored.destination = str(src), str(dst)
        stored.create_time = int(time.time())
        key, legacy = _keys(src, dst)
        ops: list[PutOp | DeleteOp] = [PutOp(key, stored.SerializeToString())]
        if legacy is not None:
            ops.append(DeleteOp(legacy))
        await self.store.txn([], ops)
        await self.load()
        return stored

    async def delete(self, source: str, destination: str) -> None:
        src, dst = _pair("source", source, "destination", destination)
        key, legacy = _keys(src, dst)
        ops = [DeleteOp(key)] + ([DeleteOp(legacy)] if legacy is not None else [])
        result = await self.store.txn([], ops)
        if all(prev is None for prev in result.prev_kvs):
            raise NotFoundError(f"no intention {_arrow(src, dst)}")
        await self.load()


class IntentionServicer(intention_pb2_grpc.IntentionServiceServicer):
    """Serves intentions; who may call what is the ACL interceptor's business."""

    def __init__(self, book: IntentionBook) -> None:
        self.book = book

    async def _run(self, name: str, context: Any, work: Any) -> Any:
        try:
            return await work
        except Exception as exc:
            status = to_status(exc)
            if status.code == grpc.StatusCode.INTERNAL.value[0]:
                log.exception("IntentionService/%s failed", name)
            end_call(context, status)
            return None

    async def CreateIntention(
        self, request: intention_pb2.CreateIntentionRequest, context: Any
    ) -> Any:
        async def work() -> intention_pb2.CreateIntentionResponse:
            intention = await self.book.create(request.intention)
            log.info(
                "intention %s: %s",
                _arrow(
                    IntentionName.parse(intention.source),
                    IntentionName.parse(intention.destination),
                ),
                intention_pb2.IntentionAction.Name(intention.action),
            )
            return intention_pb2.CreateIntentionResponse(intention=intention)

        return await self._run("CreateIntention", context, work())

    async def ListIntentions(
        self, request: intention_pb2.ListIntentionsRequest, context: Any
    ) -> Any:
        async def work() -> intention_pb2.ListIntentionsResponse:
            await self.book.load()
            return intention_pb2.ListIntentionsResponse(
                intentions=list(self.book.intentions), default_allow=self.book.default_allow
            )

        return await self._run("ListIntentions", context, work())

    async def DeleteIntention(
        self, request: intention_pb2.DeleteIntentionRequest, context: Any
    ) -> Any:
        async def work() -> intention_pb2.DeleteIntentionResponse:
            await self.book.delete(request.source, request.destination)
            log.info("intention %s -> %s deleted", request.source, request.destination)
            return intention_pb2.DeleteIntentionResponse()

        return await self._run("DeleteIntention", context, work())

    async def CheckIntention(
        self, request: intention_pb2.CheckIntentionRequest, context: Any
    ) -> Any:
        async def work() -> intention_pb2.CheckIntentionResponse:
            src, dst = _pair("source", request.source, "destination", request.destination)
            await self.book.load()
            intentions = {(i.source, i.destination): i for i in self.book.intentions}
            decision = IntentionSet.of(
                (Intention.from_proto(i) for i in self.book.intentions),
                default_allow=self.book.default_allow,
            ).decide(src, dst)
            matched = decision.matched
            return intention_pb2.CheckIntentionResponse(
                allowed=decision.allowed,
                matched=intentions[matched.source, matched.destination] if matched else None,
                reason=decision.reason,
            )

        return await self._run("CheckIntention", context, work())
