"""kill -9 of a whole `eco controlplane` (the default embedded bus, durable
streams in ``bus/bus.db`` next to its SQLite store) while publishers and a
durable consumer are mid-stream, then a restart on the same port and data
dir: what the bus promises across the crash (docs/bus.md).

- every publish that was acknowledged is stored at the sequence it was told,
  and a publish retried with the same message id is stored once;
- nothing is lost: every message reaches the durable consumer at least once;
- a message the consumer had seen without a successful ack comes again
  marked redelivered (each delivery of it has a higher ``delivery_count``);
- a message whose ack succeeded never comes again;
- per subject, first deliveries are in publish order.

The publishers are the test's own loops (a publish is retried until it is
acknowledged). The durable subscription resubscribes by itself — the SDK's
when the application talks to the control plane, the sidecar relay's when it
talks to a sidecar — and the test only keeps iterating it. The consumer holds
one delivery unacknowledged at each kill, so that there certainly is one it
saw without a successful ack; the last test instead kills the control plane
from inside a client task as a publish, then an ack, is answered, with many
more in flight in the store's group commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import sdk
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

STREAM = "faults"
PUBLISHERS = 4
#: the consumer acknowledges this many, then holds the next one unacknowledged
ACKS_BEFORE_HOLD = 200
#: fail fast while the control plane is down: the test's loops do the retrying
RETRY = sdk.RetryPolicy(max_attempts=2, initial=0.05, maximum=0.5)
#: what a call that did not get through raises
CUT_OFF = (sdk.UnavailableError, sdk.DeadlineExceededError)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(f"sqlite://{tmp_path}/cp.db", tmp_path / "controlplane.log")
    plane.start()
    yield plane
    plane.stop()


@dataclass(frozen=True, slots=True)
class Seen:
    """One delivery, as the consumer read it."""

    id: str
    subject: str
    sequence: int
    delivery_count: int
    redelivered: bool


@dataclass
class Ledger:
    per_publisher: int
    #: message id -> the sequence its acknowledged publish returned (0: queued by a sidecar)
    published: dict[str, int] = field(default_factory=dict)
    publish_failures: int = 0
    queued: int = 0
    #: every delivery, in the order the consumer read them
    seen: list[Seen] = field(default_factory=list)
    #: message id -> index in ``seen`` of the delivery whose ack returned True
    acked: dict[str, int] = field(default_factory=dict)
    ack_failures: int = 0
    #: the delivery the consumer held unacknowledged at each kill (index in ``seen``)
    held: list[int] = field(default_factory=list)
    #: the consumer holds the first delivery this accepts (then it is cleared) ...
    hold_when: Callable[[Seen], bool] | None = None
    #: ... sets this, and waits for ``resume`` before trying to ack it
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def total(self) -> int:
        return PUBLISHERS * self.per_publisher

    @property
    def before_hold(self) -> int:
        """Each publisher publishes this many, then waits until the consumer holds one."""
        return self.per_publisher * 3 // 10

    @property
    def kill_at(self) -> int:
        """The control plane is killed once this many publishes were acknowledged."""
        return self.total * 3 // 5


async def publish_all(
    bus: sdk.BusClient, publisher: int, ledger: Ledger, first_hold: asyncio.Event
) -> None:
    subject = f"faults.p{publisher}"
    for i in range(ledger.per_publisher):
        if i == ledger.before_hold:
            await first_hold.wait()
        mid = f"p{publisher}-{i:04d}"
        while True:
            try:
                result = await bus.publish(subject, str(i), id=mid)
                break
            except CUT_OFF:
                # Not acknowledged: maybe stored, maybe not; the same id again.
                ledger.publish_failures += 1
                await asyncio.sleep(0.05)
        # A sidecar that cannot reach the control plane queues the publish
        # (on its disk, the subject being durable) and answers with no stream.
        assert result.stream == STREAM or (result.stream, result.sequence) == ("", 0), result
        ledger.queued += not result.stream
        ledger.published[mid] = result.sequence


async def consume(bus: sdk.BusClient, ledger: Ledger) -> None:
    async with bus.subscribe("faults.>", durable="worker") as sub:
        async for message in sub:
            seen = Seen(
                message.id,
                message.subject,
                message.sequence,
                message.delivery_count,
                message.redelivered,
            )
            ledger.seen.append(seen)
            if ledger.hold_when is not None and ledger.hold_when(seen):
                # Mid-stream: this one and whatever was delivered behind it are
                # unacknowledged when the control plane dies.
                ledger.hold_when = None
                ledger.held.append(len(ledger.seen) - 1)
                ledger.holding.set()
                await ledger.resume.wait()
            try:
                done = await message.ack()
            except CUT_OFF:
                ledger.ack_failures += 1
                continue
            if done:  # False: delivered again since, and that delivery is acked instead
                ledger.acked[message.id] = len(ledger.seen) - 1


async def kill_and_restart(plane: ControlPlaneProcess, ledger: Ledger) -> None:
    """kill -9 while the consumer holds a delivery; restart once its ack failed
    (so that one was certainly seen and not acknowledged)."""
    await assert_eventually(lambda: _holding(ledger), timeout=15)
    failures = ledger.ack_failures
    assert plane.kill(signal.SIGKILL) == -signal.SIGKILL
    ledger.holding = asyncio.Event()
    ledger.resume.set()
    await assert_eventually(lambda: _ack_failed(ledger, failures), timeout=15)
    ledger.resume = asyncio.Event()
    await asyncio.to_thread(plane.start)


async def crash_mid_stream(
    plane: ControlPlaneProcess, address: str, *, per_publisher: int, kills: int
) -> Ledger:
    """Publishers and a durable consumer through ``address`` (the control plane
    or a sidecar). The control plane is killed mid-stream and restarted; with
    ``kills`` 2, killed again once redeliveries flow, while the consumer holds
    one. Returns once every message was delivered and nothing is pending."""
    ledger = Ledger(per_publisher)
    first_hold = ledger.holding
    ledger.hold_when = lambda _: len(ledger.acked) == ACKS_BEFORE_HOLD
    async with (
        sdk.BusClient(address, retry=RETRY) as pub_bus,
        sdk.BusClient(address, retry=RETRY) as sub_bus,
    ):
        await pub_bus.add_stream(STREAM, ["faults.>"])
        async with asyncio.TaskGroup() as tasks:
            consumer = tasks.create_task(consume(sub_bus, ledger))
            publishers = [
                tasks.create_task(publish_all(pub_bus, p, ledger, first_hold))
                for p in range(PUBLISHERS)
            ]
            # Publishers go on while the consumer holds, and are cut off mid-publish.
            await assert_eventually(lambda: _published(ledger), timeout=30)
            await kill_and_restart(plane, ledger)
            if kills > 1:
                ledger.hold_when = lambda seen: seen.redelivered
                await kill_and_restart(plane, ledger)
            await assert_eventually(lambda: _all_published(ledger), timeout=30, interval=0.05)
            await asyncio.gather(*publishers)
            await assert_eventually(lambda: _all_seen(ledger), timeout=30, interval=0.1)
            nothing_pending = functools.partial(_nothing_pending, pub_bus, ledger.total)
            info = await assert_eventually(nothing_pending, timeout=30, interval=0.1)
            consumer.cancel()
    # Each message stored once, retried publishes included.
    assert info.messages == ledger.total and info.last_sequence == ledger.total, info
    check_deliveries(ledger)
    return ledger


def check_deliveries(ledger: Ledger) -> None:
    assert len(ledger.published) == ledger.total
    by_id: dict[str, list[tuple[int, Seen]]] = defaultdict(list)
    for index, seen in enumerate(ledger.seen):
        by_id[seen.id].append((index, seen))
    # Nothing lost.
    assert set(by_id) == set(ledger.published)
    sequences: dict[int, str] = {}
    for mid, deliveries in by_id.items():
        (sequence,) = {s.sequence for _, s in deliveries}
        assert sequences.setdefault(sequence, mid) == mid, f"{mid} stored twice"
        if ledger.published[mid]:  # its acknowledged publish said where it is
            assert sequence == ledger.published[mid], (mid, deliveries)
        # Each delivery after the first is a redelivery, marked as such.
        counts = [s.delivery_count for _, s in deliveries]
        assert counts == sorted(set(counts)), f"{mid}: delivery counts {counts}"
        assert all(s.redelivered == (s.delivery_count > 1) for _, s in deliveries)
        # Nothing acknowledged comes again.
        if mid in ledger.acked:
            assert deliveries[-1][0] == ledger.acked[mid], f"{mid} came again after its ack"
    # What the consumer held at each kill, seen without a successful ack, came
    # back with a higher delivery count (after the second kill: above 2, so
    # the count of a redelivery survives a crash too).
    for index in ledger.held:
        held = ledger.seen[index]
        later = [s for i, s in by_id[held.id] if i > index]
        assert later and later[0].delivery_count > held.delivery_count, (held, later)

    # Per subject, first deliveries in publish order.
    firsts: dict[str, list[str]] = defaultdict(list)
    for seen in ledger.seen:
        if seen.delivery_count == 1:
            firsts[seen.subject].append(seen.id)
    for subject, ids in firsts.items():
        assert ids == sorted(ids), f"{subject}: first deliveries out of order"


def _published(ledger: Ledger) -> None:
    assert len(ledger.published) >= ledger.kill_at


def _at_least(done: dict[str, int], n: int) -> None:
    assert len(done) >= n, f"{len(done)} of {n}"


async def _consumer_done(
    bus: sdk.BusClient, name: str, deliveries: list[tuple[str, int]], total: int
) -> None:
    assert len({mid for mid, _ in deliveries}) == total
    (info,) = await _streams(bus)
    (consumer,) = (c for c in info.consumers if c.name == name)
    assert consumer.pending == 0 and consumer.next_sequence == total + 1, consumer


def _all_published(ledger: Ledger) -> None:
    assert len(ledger.published) == ledger.total, f"{len(ledger.published)} published"


def _holding(ledger: Ledger) -> None:
    assert ledger.holding.is_set(), f"the consumer holds nothing; {len(ledger.seen)} seen"


def _ack_failed(ledger: Ledger, before: int) -> None:
    assert ledger.ack_failures > before


def _all_seen(ledger: Ledger) -> None:
    missing = set(ledger.published) - {s.id for s in ledger.seen}
    assert not missing, f"{len(missing)} not delivered yet, e.g. {sorted(missing)[:5]}"


async def _streams(bus: sdk.BusClient) -> list[sdk.StreamInfo]:
    """The streams, for a check polled by ``assert_eventually``: a control plane
    just restarted may not be reachable yet on a client whose channel is still
    backing off from the outage (a few attempts only, see RETRY): not yet."""
    try:
        return await bus.streams()
    except CUT_OFF as err:
        raise AssertionError(f"the control plane is not reachable yet: {err}") from err


async def _nothing_pending(bus: sdk.BusClient, total: int) -> sdk.StreamInfo:
    (info,) = await _streams(bus)
    (worker,) = info.consumers
    assert worker.pending == 0 and worker.next_sequence == total + 1, worker
    return info


async def test_kill_9_mid_stream_loses_nothing_and_marks_redeliveries(
    plane: ControlPlaneProcess,
) -> None:
    ledger = await crash_mid_stream(plane, plane.address, per_publisher=500, kills=2)
    assert len(ledger.held) == 2
    assert ledger.publish_failures > 0, "no publish was cut off by the kill"
    assert ledger.queued == 0


async def test_kill_9_mid_stream_through_a_sidecar(
    tmp_path: Path, plane: ControlPlaneProcess
) -> None:
    sidecar = SidecarProcess(tmp_path, "relay", "", plane.address)
    await sidecar.start()
    try:
        # Fewer messages: each ack makes two hops here.
        ledger = await crash_mid_stream(plane, sidecar.local_api, per_publisher=250, kills=1)
    finally:
        await sidecar.stop()
    # The relay queued what the control plane could not take, and the sidecar
    # kept answering the application.
    assert ledger.queued > 0
    assert ledger.publish_failures == 0


@dataclass
class Killer:
    """Kills the control plane from inside a client task, right as one of its
    calls was answered — as close as a test gets to "between the commit and
    the answer" — following ``plan``: (which call, after how many publishes
    were acknowledged) for each kill."""

    plane: ControlPlaneProcess
    plan: list[tuple[str, int]]
    kills: int = 0
    restarts: int = 0
    #: how many publishes were acknowledged at each kill
    marks: list[int] = field(default_factory=list)
    #: set while the control plane is up (and not just restarted): callers that
    #: must not run while it is down or starting wait for it
    up: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.up.set()

    def answered(self, call: str, published: int) -> None:
        if self.kills == self.restarts < len(self.plan):
            kind, after = self.plan[self.kills]
            if kind == call and published >= after:
                assert self.plane.kill(signal.SIGKILL) == -signal.SIGKILL
                self.up.clear()
                self.kills += 1
                self.marks.append(published)

    async def restart(self) -> None:
        await assert_eventually(self._killed, timeout=30)
        await asyncio.to_thread(self.plane.start)
        self.restarts += 1
        self.up.set()

    def _killed(self) -> None:
        assert self.kills > self.restarts, f"kill {self.kills + 1} of {self.plan} not yet"


async def test_kill_9_during_group_commits_keeps_every_acknowledged_publish_and_ack(
    plane: ControlPlaneProcess,
) -> None:
    """Many publishes and acks in flight at once share the store's commits;
    the control plane is killed as a publish is answered, then again as an ack
    is. Each acknowledged publish is there afterwards, at its sequence, with
    its payload; one retried by id is stored once; no delivery whose ack
    succeeded comes again."""
    writers, each = 48, 40
    total = writers * each
    killer = Killer(plane, [("publish", total // 4), ("ack", total // 2)])
    #: message id -> sequence, in the order the publishes were acknowledged
    published: dict[str, int] = {}
    #: the live consumer's deliveries (id, delivery count), and the count of each successful ack
    deliveries: list[tuple[str, int]] = []
    settled: dict[str, int] = {}

    async def write(bus: sdk.BusClient, w: int) -> None:
        for i in range(each):
            mid = f"w{w:02d}-{i:02d}"
            while True:
                try:
                    result = await bus.publish(f"commits.w{w:02d}", mid, id=mid)
                    break
                except CUT_OFF:
                    await asyncio.sleep(0.05)  # maybe stored, maybe not: the same id again
            published[mid] = result.sequence
            killer.answered("publish", len(published))

    async def ack(message: sdk.BusMessage) -> None:
        # Acks wait out each restart, then go out together: the ack-triggered
        # kill comes as the first of them is answered, the rest in flight.
        await killer.up.wait()
        with contextlib.suppress(*CUT_OFF):
            if await message.ack():
                settled[message.id] = message.delivery_count
                killer.answered("ack", len(published))

    async def consume(bus: sdk.BusClient) -> None:
        # Acks go out as messages come, many in flight at once.
        async with (
            asyncio.TaskGroup() as acks,
            bus.subscribe("commits.>", durable="live", max_ack_pending=10_000) as sub,
        ):
            async for message in sub:
                deliveries.append((message.id, message.delivery_count))
                acks.create_task(ack(message))

    async with (
        sdk.BusClient(plane.address, retry=RETRY) as bus,
        sdk.BusClient(plane.address, retry=RETRY) as consumer_bus,
    ):
        await bus.add_stream("commits", ["commits.>"])
        async with asyncio.TaskGroup() as tasks:
            consumer = tasks.create_task(consume(consumer_bus))
            for w in range(writers):
                tasks.create_task(write(bus, w))
            for _ in killer.plan:
                await killer.restart()
            await assert_eventually(lambda: _at_least(published, total), timeout=30)
            # Everything delivered, and settled (an ack cut off by a kill may
            # have been stored without its answer: then it is not redelivered).
            live_done = functools.partial(_consumer_done, bus, "live", deliveries, total)
            await assert_eventually(live_done, timeout=30, interval=0.1)
            consumer.cancel()
        # A publisher that never heard an answer sends the same id again: the
        # stream's duplicate window survived the crash, nothing is stored twice.
        mark = killer.marks[0]
        for mid in list(published)[mark - writers : mark]:
            again = await bus.publish(f"commits.{mid[:3]}", mid, id=mid)
            assert again.duplicate and again.sequence == published[mid], (mid, again)
        stored: dict[str, int] = {}
        async with (
            asyncio.timeout(30),
            bus.subscribe("commits.>", durable="audit", max_ack_pending=10_000) as sub,
        ):
            async for message in sub:
                assert message.text == message.id and message.id not in stored, message
                stored[message.id] = message.sequence
                await message.ack()
                if len(stored) == total:
                    break
        (info,) = await bus.streams()
    assert info.messages == total, info
    lost = {mid: (seq, stored.get(mid)) for mid, seq in published.items() if stored.get(mid) != seq}
    assert not lost, f"acknowledged publishes not at their sequence: {list(lost.items())[:5]}"
    again = [(mid, n) for mid, n in deliveries if n > settled.get(mid, n)]
    assert not again, f"delivered again after a successful ack: {again[:5]}"
