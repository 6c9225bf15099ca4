"""The embedded broker killed with SIGKILL mid-stream, in a process of its own: nothing
whose publish returned is lost, nothing acknowledged comes back."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bus import Delivery, SubscriptionSpec
from bus.embedded import EmbeddedBroker
from tests.unit.bus.conftest import assert_quiet, take


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "bus"


CRASH_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from bus import OutgoingMessage, SubscriptionSpec
from bus.embedded._journal import _SqliteFile
from bus.embedded import EmbeddedBroker
from sdk import AckKind, StreamConfig

# Slow commits widen the windows a crash can land in (between a change and its commit).
flush = _SqliteFile.flush
def slow_flush(self, ops):
    time.sleep(0.003)
    flush(self, ops)
_SqliteFile.flush = slow_flush

async def main() -> None:
    broker = EmbeddedBroker(Path(sys.argv[1]))
    await broker.start()
    await broker.add_stream(StreamConfig("CRASH", ("crash.>",)))
    sub = await broker.subscribe(
        SubscriptionSpec("crash.>", durable="worker", ack_wait=60.0, max_ack_pending=100_000)
    )

    async def ack(d) -> None:
        await broker.ack(d.ack_id, AckKind.ACK)
        print("A", d.sequence, flush=True)

    async def consume() -> None:
        acks = set()  # acknowledged concurrently, so the reader keeps up with publishers
        async for d in sub:
            print("D", d.sequence, d.delivery_count, flush=True)
            if d.sequence % 3:  # two of three acknowledged, the rest left pending
                task = asyncio.create_task(ack(d))
                acks.add(task)
                task.add_done_callback(acks.discard)

    async def produce(w: int) -> None:
        i = 0
        while True:
            ack = await broker.publish(OutgoingMessage(f"crash.{w}", f"{w}-{i}".encode()))
            print("P", ack.sequence, w, i, flush=True)
            i += 1

    await asyncio.gather(consume(), *(produce(w) for w in range(8)))

asyncio.run(main())
"""


async def test_kill_9_loses_nothing_published_and_redelivers_nothing_acknowledged(
    data_dir: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASH_SCRIPT,
        str(data_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[bytes] = []
    acks = 0
    try:
        async with asyncio.timeout(30):
            while len(lines) < 3000 or acks < 300:
                line = await proc.stdout.readline()
                if not line:
                    err = await proc.stderr.read()
                    pytest.fail(f"the broker process exited early: {err.decode(errors='replace')}")
                lines.append(line)
                acks += line.startswith(b"A ")
    finally:
        proc.kill()  # SIGKILL mid-stream: no close(), no flush
        await proc.wait()
    assert proc.returncode == -9
    rest = await proc.stdout.read()
    lines += [line for line in rest.splitlines(keepends=True) if line.endswith(b"\n")]

    published: dict[int, bytes] = {}
    delivered: set[int] = set()
    acknowledged: set[int] = set()
    for line in lines:
        kind, *fields = line.split()
        if kind == b"P":
            published[int(fields[0])] = fields[1] + b"-" + fields[2]
        elif kind == b"D":
            delivered.add(int(fields[0]))
        elif kind == b"A":
            acknowledged.add(int(fields[0]))
    assert acknowledged and delivered - acknowledged and published

    async with EmbeddedBroker(data_dir) as broker:
        (info,) = await broker.streams()
        assert info.last_sequence >= max(published)
        # Every message whose publish returned is there, as published.
        audit = await broker.subscribe(
            SubscriptionSpec("crash.>", durable="audit", max_ack_pending=100_000)
        )
        stored = {d.sequence: d.data for d in await take(audit, info.messages, 30.0)}
        for seq, data in published.items():
            assert stored.get(seq) == data, f"published sequence {seq} was lost"
        # The worker resumes: nothing acknowledged again, everything else exactly once,
        # and what it had seen before marked redelivered. (An ack may have become
        # durable without its "A" line making it out before the kill: those the
        # worker may or may not see again.)
        worker = await broker.subscribe(
            SubscriptionSpec("crash.>", durable="worker", ack_wait=60.0, max_ack_pending=100_000)
        )
        maybe_acked = {seq for seq in delivered if seq % 3} - acknowledged
        must = set(range(1, info.last_sequence + 1)) - acknowledged - maybe_acked
        got: dict[int, Delivery] = {}
        async with asyncio.timeout(30):
            while not must <= set(got):
                d = await anext(aiter(worker))
                assert d.sequence not in acknowledged, f"acknowledged {d.sequence} came back"
                assert d.sequence not in got, f"{d.sequence} delivered twice"
                got[d.sequence] = d
        await assert_quiet(worker, 0.3)
        assert set(got) - must <= maybe_acked
        for seq in (delivered - acknowledged) & set(got):
            assert got[seq].redelivered, f"{seq} was delivered before the crash"
