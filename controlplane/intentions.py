"""Intentions: which service may call which, kept in the store and followed
by every replica, which sends them to its sidecars over the agent session.

Keys (values are serialized ``Intention`` messages)::

    /ecosystem/v1/intentions/<source>/<destination>

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
from sdk import Intention, IntentionSet
from serving.errors import FieldViolation, InvalidArgumentError, NotFoundError, end_call, to_status

__all__ = ["INTENTIONS_PREFIX", "POLL_SECONDS", "IntentionBook", "IntentionServicer"]

log = logging.getLogger(__name__)

INTENTIONS_PREFIX = ROOT_PREFIX + "intentions/"
POLL_SECONDS = 0.25
WILDCARD = "*"
_MAX_DESCRIPTION = 512
_ACTIONS = (intention_pb2.INTENTION_ACTION_ALLOW, intention_pb2.INTENTION_ACTION_DENY)


def _key(source: str, destination: str) -> str:
    return f"{INTENTIONS_PREFIX}{source}/{destination}"


def _side_violations(field_name: str, value: str) -> list[FieldViolation]:
    if value == WILDCARD:
        return []
    return name_violations(field_name, value, required=True)


def _sort_key(intention: intention_pb2.Intention) -> tuple[int, str, str]:
    # Most specific first: the order in which they are considered.
    rank = (intention.destination != WILDCARD) * 2 + (intention.source != WILDCARD)
    return (-rank, intention.destination, intention.source)


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
        intentions = []
        for kv in result.kvs:
            intention = intention_pb2.Intention()
            intention.ParseFromString(kv.value)
            intentions.append(intention)
        intentions.sort(key=_sort_key)
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
        violations = _side_violations("intention.source", intention.source)
        violations += _side_violations("intention.destination", intention.destination)
        if intention.action not in _ACTIONS:
            violations.append(FieldViolation("intention.action", "must be allow or deny"))
        if len(intention.description) > _MAX_DESCRIPTION:
            violations.append(
                FieldViolation("intention.description", f"at most {_MAX_DESCRIPTION} characters")
            )
        if violations:
            raise InvalidArgumentError(violations)
        stored = intention_pb2.Intention()
        stored.CopyFrom(intention)
        stored.create_time = int(time.time())
        await self.store.txn(
            [], [PutOp(_key(stored.source, stored.destination), stored.SerializeToString())]
        )
        await self.load()
        return stored

    async def delete(self, source: str, destination: str) -> None:
        violations = _side_violations("source", source) + _side_violations(
            "destination", destination
        )
        if violations:
            raise InvalidArgumentError(violations)
        result = await self.store.txn([], [DeleteOp(_key(source, destination))])
        if not result.prev_kvs or result.prev_kvs[0] is None:
            raise NotFoundError(f"no intention {source} -> {destination}")
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
                "intention %s -> %s: %s",
                intention.source,
                intention.destination,
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
            violations = _side_violations("source", request.source) + _side_violations(
                "destination", request.destination
            )
            if violations:
                raise InvalidArgumentError(violations)
            await self.book.load()
            intentions = {(i.source, i.destination): i for i in self.book.intentions}
            decision = IntentionSet.of(
                (Intention.from_proto(i) for i in self.book.intentions),
                default_allow=self.book.default_allow,
            ).decide(request.source, request.destination)
            matched = decision.matched
            return intention_pb2.CheckIntentionResponse(
                allowed=decision.allowed,
                matched=intentions[matched.source, matched.destination] if matched else None,
                reason=decision.reason,
            )

        return await self._run("CheckIntention", context, work())
