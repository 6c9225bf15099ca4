"""Spreading sidecar streams over the replicas.

Sidecars pick a replica from their address list and stay on it, so a replica
that restarts (or joins) would stay idle while another holds every stream.
Each replica therefore publishes how many streams it holds, and sheds some when
it holds far more than its share:

- ``/ecosystem/v1/replicas/<replica>`` holds ``{"streams": N, "address": ...}``,
  attached to a lease of a few periods: written when N changes (at most once a
  period), renewed otherwise, revoked on shutdown and gone after a crash, so
  the replicas listed are the live ones.
- Every period (± 20 %) a replica reads the others' counts. Holding more than
  ``fair * 1.5 + 1`` streams (fair = total / replicas), it ends up to ``batch``
  of them, one at a time over half a period, with UNAVAILABLE and a message
  starting with ``shedding load``; the sidecar reconnects at once to another
  address and resumes its session there (nothing is re-registered, no instance
  turns critical). Streams younger than a period are left alone, so a stream
  is not moved twice in a row, and a replica that just shed waits for the
  others' counts to catch up before shedding again. A sidecar that comes back
  soon after being shed knows no other address: it is not shed again for a
  while (see `AgentServicer.shed`).

The entries also tell each replica where the others are (``peers``), for the
calls that ask them about their sidecars (`_peers`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from controlplane.registry import ROOT_PREFIX
from controlplane.store import LeaseNotFound, Store, StoreError

__all__ = ["REPLICAS_PREFIX", "SHED_REASON", "LoadSpreader", "StreamHolder", "streams_to_shed"]

log = logging.getLogger(__name__)

REPLICAS_PREFIX = ROOT_PREFIX + "replicas/"
#: How the status message of a shed stream starts (the SDK looks for it).
SHED_REASON = "shedding load: reconnect to another control-plane replica"


class StreamHolder(Protocol):
    """What the spreader needs of the agent servicer."""

    @property
    def stream_count(self) -> int: ...

    def shed(self, count: int, reason: str, *, min_age: float, rng: random.Random) -> list[str]: ...


def streams_to_shed(mine: int, others: Sequence[int], *, batch: int) -> int:
    """How many of its ``mine`` streams a replica should end, given the counts of
    the ``others``: none unless it holds more than 1.5 * its fair share + 1, then
    enough to come back to its share, at most ``batch``."""
    total = mine + sum(others)
    fair = total / (len(others) + 1)
    if mine <= fair * 1.5 + 1:
        return 0
    return max(0, min(batch, math.ceil(mine - fair)))


class LoadSpreader:
    """Publishes this replica's stream count and sheds streams above its share.

    Lifecycle: ``start()`` runs it in an owned task; ``close()`` stops it and
    (with ``revoke``) removes this replica's entry at once. ``active`` says
    whether shedding is allowed now (e.g. only while serving); ``on_shed`` is
    told how many streams were just ended (for metrics).
    """

    def __init__(
        self,
        store: Store,
        agent: StreamHolder,
        replica: str,
        *,
        address: str = "",
        interval: float = 5.0,
        batch: int = 10,
        active: Callable[[], bool] = lambda: True,
        on_shed: Callable[[int], None] = lambda _count: None,
        rng: random.Random | None = None,
    ) -> None:
        if not interval > 0 or batch < 0:
            raise ValueError("interval must be > 0 and batch >= 0")
        self._store = store
        self._agent = agent
        self._replica = replica
        self._address = address
        self._interval = interval
        self._batch = batch
        self._active = active
        self._on_shed = on_shed
        self._rng = rng or random.Random()
        self._key = REPLICAS_PREFIX + replica
        self._lease = 0
        self._published = -1
        self._rest = False  # skip one round after shedding
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.shed_total = 0
        #: Stream counts of the other live replicas, as last read.
        self.others: dict[str, int] = {}
        #: Addresses of the other live replicas, as last read.
        self.peers: dict[str, str] = {}

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("a closed load spreader cannot be started again")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"load-spreader-{self._replica}")

    async def close(self, *, revoke: bool = True) -> None:
        """Stops; with ``revoke``, removes this replica's entry now. Idempotent."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        lease, self._lease = self._lease, 0
        if lease and revoke:
            try:
                async with asyncio.timeout(1.0):
                    await self._store.revoke(lease)
            except (StoreError, TimeoutError) as exc:
                log.debug("could not revoke the replica entry of %s: %s", self._replica, exc)

    async def _run(self) -> None:
        while True:
            try:
                await self._publish()
                await self._read_others()
                if self._batch and self._active():
                    await self._balance()
            except StoreError as exc:
                log.info("load spreading of %s skipped a round: %s", self._replica, exc)
            await asyncio.sleep(self._interval * self._rng.uniform(0.8, 1.2))

    async def _publish(self) -> None:
        count = self._agent.stream_count
        if self._lease:
            try:
                if count == self._published:
                    await self._store.keepalive(self._lease)
                    return
            except LeaseNotFound:
                self._lease = 0
        if not self._lease:
            self._lease = await self._store.grant(max(3 * self._interval, 2.0))
        value = json.dumps({"streams": count, "address": self._address}).encode()
        try:
            await self._store.put(self._key, value, lease=self._lease)
        except LeaseNotFound:
            self._lease = 0
            raise
        self._published = count

    async def _read_others(self) -> None:
        others: dict[str, int] = {}
        peers: dict[str, str] = {}
        for kv in (await self._store.range(REPLICAS_PREFIX)).kvs:
            name = kv.key[len(REPLICAS_PREFIX) :]
            if name == self._replica:
                continue
            try:
                entry = json.loads(kv.value)
                others[name] = int(entry["streams"])
                if entry.get("address"):
                    peers[name] = str(entry["address"])
            except (ValueError, KeyError, TypeError, AttributeError):
                log.debug("unreadable replica entry %s", kv.key)
        self.others, self.peers = others, peers

    async def _balance(self) -> None:
        if self._rest:
            # The others' entries may not count the streams just shed yet.
            self._rest = False
            return
        others = self.others
        mine = self._agent.stream_count
        count = streams_to_shed(mine, list(others.values()), batch=self._batch)
        if not count:
            return
        spacing = self._interval / 2 / count
        done = 0
        for _ in range(count):
            if not self._active():
                break
            shed = self._agent.shed(1, SHED_REASON, min_age=self._interval, rng=self._rng)
            if not shed:
                break  # none left that may be moved
            done += len(shed)
            self.shed_total += len(shed)
            self._on_shed(len(shed))
            await asyncio.sleep(spacing * self._rng.uniform(0.5, 1.5))
        if not done:
            return
        log.info(
            "replica %s held %d of %d sidecar streams over %d replicas; shed %d",
            self._replica,
            mine,
            mine + sum(others.values()),
            len(others) + 1,
            done,
        )
        self._rest = True
        await self._publish()
