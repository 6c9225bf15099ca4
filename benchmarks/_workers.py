"""Load generators, each run in a process of its own (multiprocessing, spawn).

A worker talks to the orchestrating process over a pipe with ``(kind,
payload)`` tuples: it connects and warms up, says ``ready``, waits for ``go``
where the start must be synchronised, does its work and reports. Any failure
is reported as ``("error", text)`` so the orchestrator never waits blindly.

``Child`` is the orchestrator's handle on one such process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from benchmarks._clients import Client, make_client, make_instance

__all__ = [
    "Child",
    "RegisterJob",
    "SnapshotJob",
    "WatchJob",
    "WorkerError",
    "WriteJob",
    "register_worker",
    "snapshot_worker",
    "watch_worker",
    "write_worker",
]

Conn = multiprocessing.connection.Connection


class WorkerError(RuntimeError):
    """A load generator failed or did not answer in time."""


def _run(conn: Conn, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs one worker's coroutine on the fastest loop at hand; reports failures."""
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - a dependency on Linux
            asyncio.run(main())
        else:
            uvloop.run(main())
    except KeyboardInterrupt:
        pass  # the orchestrator was interrupted too and stops everything
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


async def _recv(conn: Conn) -> Any:
    """Waits for the orchestrator's next message without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


# -- registrations -------------------------------------------------------------


@dataclass(frozen=True)
class RegisterJob:
    system: str
    target: str
    namespace: str
    first: int  # instance numbers first .. first+count-1
    count: int
    concurrency: int
    services: int
    leased: bool
    lease_ttl: int
    token: str = ""  # an ACL secret sent with every call (--acl deny)


def register_worker(conn: Conn, job: RegisterJob) -> None:
    _run(conn, lambda: _register(conn, job))


async def _register(conn: Conn, job: RegisterJob) -> None:
    client = make_client(job.system, job.target, token=job.token)
    try:
        async with asyncio.timeout(60):
            await client.ready()
            await client.warm_up(job.namespace, leased=job.leased, lease_ttl=job.lease_ttl)
        conn.send(("ready", None))
        await _recv(conn)  # go
        numbers = iter(range(job.first, job.first + job.count))
        latencies: list[float] = []

        async def caller() -> None:
            for n in numbers:  # shared: each number is taken by exactly one caller
                inst = make_instance(job.namespace, f"svc-{n % job.services}", f"i-{n}", n)
                started = time.perf_counter()
                await client.register(inst, leased=job.leased)
                latencies.append(time.perf_counter() - started)

        started = time.time()
        await asyncio.gather(*(caller() for _ in range(job.concurrency)))
        ended = time.time()
        conn.send(
            (
                "done",
                {"start": started, "end": ended, "count": len(latencies), "latencies": latencies},
            )
        )
    finally:
        await client.close()


# -- watchers ------------------------------------------------------------------


@dataclass(frozen=True)
class WatchJob:
    system: str
    target: str
    namespace: str
    streams: int
    channels: int
    changes: int  # measured changes each stream should see


def watch_worker(conn: Conn, job: WatchJob) -> None:
    _run(conn, lambda: _watch(conn, job))


async def _watch(conn: Conn, job: WatchJob) -> None:
    clients = [make_client(job.system, job.target, i) for i in range(job.channels)]
    latencies_ms: list[float] = []
    change_of: list[int] = []  # the change (seq) each latency belongs to
    seen = [0] * job.streams
    ready_streams = 0
    complete_streams = 0
    errors: list[str] = []
    all_ready = asyncio.Event()
    all_complete = asyncio.Event()

    def on_ready() -> None:
        nonlocal ready_streams
        ready_streams += 1
        if ready_streams == job.streams:
            all_ready.set()

    def sink_for(i: int) -> Callable[[int, Any], None]:
        def sink(received_ns: int, inst: Any) -> None:
            nonlocal complete_streams
            seq = int(inst.metadata.get("seq", "-1"))
            if seq < 0:
                return  # a warm-up change
            latencies_ms.append((received_ns - int(inst.metadata["sent_ns"])) / 1e6)
            change_of.append(seq)
            seen[i] += 1
            if seen[i] == job.changes:
                complete_streams += 1
                if complete_streams == job.streams:
                    all_complete.set()

        return sink

    async def follow(client: Client, i: int) -> None:
        try:
            await client.watch(job.namespace, on_ready, sink_for(i))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            errors.append(f"stream {i}: {exc!r}")
            raise

    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(client.ready() for client in clients))
        tasks = [
            asyncio.create_task(follow(clients[i % job.channels], i)) for i in range(job.streams)
        ]
        waiter = asyncio.create_task(all_ready.wait())
        tasks.append(waiter)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            raise WorkerError("a watch stream failed while attaching: " + "; ".join(errors))
        conn.send(("ready", {"streams": job.streams}))
        while True:
            command, arg = await _recv(conn)
            if command == "report":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(float(arg)):
                        await all_complete.wait()
                conn.send(
                    (
                        "report",
                        {
                            "latencies_ms": latencies_ms,
                            "changes": change_of,
                            "complete_streams": complete_streams,
                            "streams": job.streams,
                            "errors": errors[:5],
                        },
                    )
                )
            elif command == "stop":
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.close()


# -- the writer of watched changes ---------------------------------------------


@dataclass(frozen=True)
class WriteJob:
    system: str
    target: str
    namespace: str
    warmup: int
    changes: int
    interval: float
    lease_ttl: int


def write_worker(conn: Conn, job: WriteJob) -> None:
    _run(conn, lambda: _write(conn, job))


async def _write(conn: Conn, job: WriteJob) -> None:
    client = make_client(job.system, job.target)
    try:
        async with asyncio.timeout(60):
            await client.ready()
            await client.warm_up(job.namespace, leased=True, lease_ttl=job.lease_ttl)
        conn.send(("ready", None))
        await _recv(conn)  # go
        acks_ms: list[float] = []
        for k in range(job.warmup + job.changes):
            inst = make_instance(job.namespace, "latency", f"change-{k}", k)
            inst.metadata["seq"] = str(k - job.warmup)
            sent = time.time_ns()
            inst.metadata["sent_ns"] = str(sent)
            await client.register(inst, leased=True)
            acks_ms.append((time.time_ns() - sent) / 1e6)
            await asyncio.sleep(job.interval)
        conn.send(("done", {"acks_ms": acks_ms[job.warmup :]}))
    finally:
        await client.close()


# -- the snapshot reader -------------------------------------------------------


@dataclass(frozen=True)
class SnapshotJob:
    system: str
    target: str
    namespace: str
    repeats: int


def snapshot_worker(conn: Conn, job: SnapshotJob) -> None:
    _run(conn, lambda: _snapshot(conn, job))


async def _snapshot(conn: Conn, job: SnapshotJob) -> None:
    client = make_client(job.system, job.target)
    try:
        async with asyncio.timeout(60):
            await client.ready()
        seconds: list[float] = []
        counts: list[int] = []
        for _ in range(job.repeats):
            started = time.perf_counter()
            counts.append(await client.snapshot(job.namespace))
            seconds.append(time.perf_counter() - started)
        conn.send(("done", {"seconds": seconds, "counts": counts}))
    finally:
        await client.close()


# -- the orchestrator's handle --------------------------------------------------


class Child:
    """One worker process and its pipe."""

    def __init__(self, name: str, target: Callable[..., None], job: object) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=target, args=(child_conn, job), name=name, daemon=True)
        self._proc.start()
        child_conn.close()

    def send(self, message: object) -> None:
        self._conn.send(message)

    def expect(self, kind: str, timeout: float) -> Any:
        """The next message, which must be ``kind``, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._conn.poll(0.2):
            if not self._proc.is_alive() and not self._conn.poll(0):
                raise WorkerError(f"{self.name} died (exit {self._proc.exitcode})")
            if time.monotonic() > deadline:
                raise WorkerError(f"{self.name}: no {kind!r} within {timeout:.0f}s")
        try:
            got, payload = self._conn.recv()
        except EOFError as exc:
            raise WorkerError(f"{self.name} closed its pipe (exit {self._proc.exitcode})") from exc
        if got == "error":
            raise WorkerError(f"{self.name} failed:\n{payload}")
        if got != kind:
            raise WorkerError(f"{self.name}: expected {kind!r}, got {got!r}")
        return payload

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop", None))
            self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
