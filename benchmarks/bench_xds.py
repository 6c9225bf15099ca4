"""xDS push: one endpoint change reaching N subscribed clients.

``python -m benchmarks.bench_xds [--quick] [--clients N] [--client-stack
h2|grpcio]`` prints one JSON object per line; ``run(quick)`` returns the
same objects.

The control plane runs as its own process (``eco controlplane``, SQLite
store) with one service of a few instances. Four client processes open N
ADS streams between them (state of the world, as gRPC's xDS clients speak
it, 100 per connection), each subscribed to that service's
ClusterLoadAssignment and ACKing every response with its version and
nonce, like a client would. Each round flips one instance's health with
RegisterInstance and times, per stream, from just before the call to the
arrival of the response carrying the new revision (CLOCK_MONOTONIC, shared
by the processes).

- ``p50_ms``, ``p99_ms``, ``max_ms``: over every stream and every round;
- ``server_cpu_ms_per_change``: the server's CPU time per change, pushing
  it to every stream and taking every ACK (steadier than latency on a busy
  machine);
- ``client_cpu_ms_per_change``: the client processes' CPU time per change,
  reading every response and ACKing it, all four added up;
- ``budget_ms``: ARCHITECTURE §11 (p99 ≤ 100 ms for 1,000 clients).

After the last round, the control plane's CSDS must show every client
ACKed the last version, or the run fails.

The client processes share the machine's cores with the server, and each
reads its streams on one event loop (uvloop, as the control plane runs):
the figure includes that reading, so the server's own share is lower. To
keep their share small, a response is decoded once for what a client
checks before ACKing (version, nonce, type, resource names), an ACK is the
subscription's fields, encoded once, followed by that version and nonce,
and by default (``--client-stack h2``) the clients speak gRPC's wire
format over HTTP/2 with the h2 package rather than through grpcio, whose
per-message machinery (a completion queue, a poller thread and a wake-up
per message) cost the clients more CPU than the server spent; each ACK is
still written on its own, as separate clients would send it.
``--client-stack grpcio`` measures with grpcio's asyncio client instead.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as pb_grpc
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from benchmarks._report import percentile
from benchmarks._servers import ControlPlaneServer, cpu_seconds

__all__ = ["run"]

ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SERVICE = "orders"
_RESOURCE = f"{SERVICE}.default"
_ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#: Streams per channel (one HTTP/2 connection carries this many).
_PER_CHANNEL = 100
BUDGET_MS = 100.0
#: Client processes the streams are spread over (as the watch benchmark's).
_WORKERS = 4
#: What the clients speak HTTP/2 with (``--client-stack``).
_STACKS = ("h2", "grpcio")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field: its tag, its length, its bytes."""
    return _varint(number << 3 | 2) + _varint(len(value)) + value


#: DiscoveryRequest fields (envoy/service/discovery/v3/discovery.proto).
_VERSION_INFO, _NODE, _RESOURCE_NAMES, _TYPE_URL, _RESPONSE_NONCE = 1, 2, 3, 4, 5


class _Client:
    """One subscribed client's side of its ADS stream, whatever carries it:
    notes when each version came and answers each response with its ACK.

    A response is decoded once, here, for what a client checks before
    ACKing (version, nonce, type, resource names); the ACK is the
    subscription's fields (encoded once) with that version and nonce after
    them, as protobuf allows."""

    def __init__(self, node: str, arrivals: _Arrivals) -> None:
        self.node = node
        self.arrived: dict[int, float] = {}
        self.arrivals = arrivals
        self.subscription = _string_field(_TYPE_URL, ENDPOINTS.encode()) + _string_field(
            _RESOURCE_NAMES, _RESOURCE.encode()
        )

    def first_request(self) -> bytes:
        node = base_pb2.Node(id=self.node).SerializeToString()
        return self.subscription + _string_field(_NODE, node)

    def take(self, raw: bytes) -> bytes:
        """Takes one response (its bytes); returns the ACK to send."""
        # CLOCK_MONOTONIC: one clock for every process on the machine.
        at = time.monotonic()
        response = discovery_pb2.DiscoveryResponse.FromString(raw)
        if response.type_url != ENDPOINTS or [
            endpoint_pb2.ClusterLoadAssignment.FromString(r.value).cluster_name
            for r in response.resources
        ] != [_RESOURCE]:
            raise RuntimeError(f"{self.node} was sent something else: {response}")
        version = response.version_info
        revision = int(version)
        if revision not in self.arrived:
            self.arrived[revision] = at
            self.arrivals.add(revision)
        return (
            self.subscription
            + _string_field(_VERSION_INFO, version.encode())
            + _string_field(_RESPONSE_NONCE, response.nonce.encode())
        )


class _GrpcStream:
    """A client's stream through grpcio's asyncio client (``--client-stack
    grpcio``), raw bytes both ways."""

    def __init__(self, channel: grpc.aio.Channel, client: _Client) -> None:
        # No serializers: requests and responses are bytes.
        method = channel.stream_stream(_ADS_METHOD, None, None)
        self.call = method(None)
        self.client = client

    async def run(self) -> None:
        await self.call.write(self.client.first_request())
        read, write, take = self.call.read, self.call.write, self.client.take
        while True:
            raw = await read()
            if raw is grpc.aio.EOF:  # type: ignore[attr-defined]
                raise RuntimeError(f"{self.client.node}: {await self.call.details()}")
            await write(take(cast(bytes, raw)))


class _H2Connection(asyncio.Protocol):
    """One HTTP/2 connection carrying the ADS streams of up to 100 clients,
    spoken with the h2 package (``--client-stack h2``, the default): the gRPC
    wire format (HEADERS, then each message as a 5-byte length prefix and
    its bytes, trailers at the end) without grpcio's per-message machinery
    (a completion queue, a poller thread, a wake-up per message), so that
    the clients' own cost is small beside the server's. Each ACK is written
    on its own, as from a client of its own, and every response's receipt
    is acknowledged to HTTP/2 flow control."""

    def __init__(self, authority: str, clients: list[_Client]) -> None:
        self.authority = authority
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.clients: dict[int, _Client] = {}
        self.pending = clients
        self.buffers: dict[int, bytearray] = {}
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance: uvloop's transports are not asyncio's subclasses.
        self.transport = transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", _ADS_METHOD.encode()),
            (b":authority", self.authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        for client in self.pending:
            stream = self.h2.get_next_available_stream_id()
            self.clients[stream] = client
            self.buffers[stream] = bytearray()
            self.h2.send_headers(stream, headers)
            self.h2.send_data(stream, _grpc_message(client.first_request()))
        transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:
            self._fail(exc)

    def _received(self, data: bytes) -> None:
        assert self.transport is not None
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                stream = event.stream_id
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream)
                buffer = self.buffers[stream]
                buffer += event.data
                while len(buffer) >= 5:
                    size = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < 5 + size:
                        break
                    raw = bytes(buffer[5 : 5 + size])
                    del buffer[: 5 + size]
                    self.h2.send_data(stream, _grpc_message(self.clients[stream].take(raw)))
                    self.transport.write(self.h2.data_to_send())
            elif isinstance(event, h2.events.TrailersReceived | h2.events.StreamReset):
                client = self.clients.get(event.stream_id)
                raise RuntimeError(f"the ADS stream of {client and client.node} ended: {event}")
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise RuntimeError(f"the control plane closed the connection: {event}")
        pending = self.h2.data_to_send()
        if pending:
            self.transport.write(pending)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or RuntimeError("the connection to the control plane closed"))

    def _fail(self, exc: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if not self.failed.done():
            self.failed.set_result(None)
        if self.transport is not None:
            self.transport.close()


def _grpc_message(data: bytes) -> bytes:
    """A gRPC message on the wire: not compressed, its length, its bytes."""
    return b"\x00" + len(data).to_bytes(4, "big") + data


class _Arrivals:
    """How many of a process's streams have each revision; wakes whoever
    waits for all of them (one counter per revision, not a scan per arrival)."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.counts: dict[int, int] = {}
        self._waiting: dict[int, asyncio.Future[None]] = {}

    def add(self, revision: int) -> None:
        count = self.counts[revision] = self.counts.get(revision, 0) + 1
        if count == self.streams:
            waiter = self._waiting.pop(revision, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def every(self, revision: int) -> None:
        """Returns once every stream has ``revision``."""
        if self.counts.get(revision, 0) < self.streams:
            waiter = self._waiting[revision] = asyncio.get_running_loop().create_future()
            await waiter


def _instance(index: int, health: int) -> pb.Instance:
    return pb.Instance(
        id=f"i{index}",
        service=SERVICE,
        address="10.1.0.1",
        port=1000 + index,
        health=health,  # type: ignore[arg-type]
        liveness=pb.LIVENESS_PERSISTENT,
    )


async def _worker(target: str, first: int, count: int, stack: str) -> None:
    """A client process: ``count`` streams; says "ready", then "rev N" once
    every stream has revision N; at end of input, the arrival times and the
    process's CPU time since "ready" (JSON)."""
    loop = asyncio.get_running_loop()
    arrivals = _Arrivals(count)
    clients = [_Client(f"bench-{first + i}", arrivals) for i in range(count)]
    groups = [clients[i : i + _PER_CHANNEL] for i in range(0, count, _PER_CHANNEL)]
    channels: list[grpc.aio.Channel] = []
    connections: list[_H2Connection] = []
    running: list[asyncio.Future[None]] = []
    if stack == "grpcio":
        for group in groups:
            channels.append(grpc.aio.insecure_channel(target))
            for client in group:
                running.append(asyncio.ensure_future(_GrpcStream(channels[-1], client).run()))
    else:
        host, _, port = target.rpartition(":")
        for group in groups:
            _, connection = await loop.create_connection(
                functools.partial(_H2Connection, target, group), host, int(port)
            )
            connections.append(connection)
            running.append(connection.failed)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        await asyncio.wait_for(_first_responses(clients, running), 120)
        print("ready", flush=True)
        cpu_before = time.process_time()
        while True:
            line = await reader.readline()
            if not line:
                break
            revision = int(line)
            await _unless_failed(arrivals.every(revision), running)
            print(f"rev {revision}", flush=True)
        cpu = time.process_time() - cpu_before
        by_revision: dict[int, list[float]] = {}
        for client in clients:
            for revision, at in client.arrived.items():
                by_revision.setdefault(revision, []).append(at)
        print(json.dumps({"arrivals": by_revision, "cpu_seconds": cpu}), flush=True)
    finally:
        for connection in connections:
            connection.close()
        for future in running:
            future.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for channel in channels:
            await channel.close(None)


async def _first_responses(clients: list[_Client], running: list[asyncio.Future[None]]) -> None:
    """Until every client has had its first response (or a stream failed)."""
    while not all(client.arrived for client in clients):
        await _unless_failed(asyncio.sleep(0.05), running)


async def _unless_failed(
    waiting: Coroutine[Any, Any, None], running: list[asyncio.Future[None]]
) -> None:
    """Awaits ``waiting``; a stream or connection that ends first raises its
    error here."""
    waiter = asyncio.ensure_future(waiting)
    try:
        done, _ = await asyncio.wait({waiter, *running}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        waiter.cancel()
        raise
    if waiter not in done:
        waiter.cancel()
        failed = next(future for future in done if future is not waiter)
        raise RuntimeError(f"an ADS stream ended: {failed.exception() or 'by the server'}")


async def _measure(
    target: str, clients: int, rounds: int, pid: int = 0, stack: str = "h2"
) -> dict[str, Any]:
    registry_channel = grpc.aio.insecure_channel(target)
    registry = pb_grpc.RegistryServiceStub(registry_channel)  # type: ignore[no-untyped-call]
    for index in range(4):
        await registry.RegisterInstance(
            pb.RegisterInstanceRequest(instance=_instance(index, pb.HEALTH_STATUS_PASSING))
        )
    per_worker = -(-clients // _WORKERS)
    workers = []
    for first in range(0, clients, per_worker):
        count = min(per_worker, clients - first)
        workers.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.bench_xds",
                "--worker",
                f"{first}:{count}",
                "--target",
                target,
                "--client-stack",
                stack,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                limit=64 * 1024 * 1024,  # the last line holds every arrival
            )
        )

    async def line_of(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not raw:
            raise RuntimeError(f"a client process ended (status {await proc.wait()})")
        return raw.decode().strip()

    starts: dict[int, float] = {}
    latencies: list[float] = []
    try:
        assert all(await asyncio.gather(*(line_of(w) for w in workers)))
        cpu_before = cpu_seconds(pid) if pid else 0.0
        for round_ in range(rounds):
            await asyncio.sleep(0.25)  # every ACK in, the server idle
            health = pb.HEALTH_STATUS_CRITICAL if round_ % 2 == 0 else pb.HEALTH_STATUS_PASSING
            started = time.monotonic()
            reply = await registry.RegisterInstance(
                pb.RegisterInstanceRequest(instance=_instance(0, health))
            )
            revision = reply.instance.mod_revision
            starts[revision] = started
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(f"{revision}\n".encode())
            await asyncio.gather(*(line_of(w) for w in workers))
        await asyncio.sleep(0.25)  # the last ACKs in
        cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
        await _every_client_acked(registry_channel, clients, str(revision))
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
        client_cpu = 0.0
        for worker in workers:
            report = json.loads(await line_of(worker))
            client_cpu += report["cpu_seconds"]
            arrivals = report["arrivals"]
            for revision, started in starts.items():
                latencies.extend((at - started) * 1000 for at in arrivals[str(revision)])
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
            await worker.wait()
        await registry_channel.close(None)
    latencies.sort()
    p99 = percentile(latencies, 99)
    return {
        "bench": "xds_push",
        "system": "ecosystem",
        "clients": clients,
        "client_processes": len(workers),
        "client_stack": stack,
        "rounds": rounds,
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(latencies[-1], 2),
        # The server's CPU per change: the push and taking the ACKs, all clients.
        "server_cpu_ms_per_change": round(cpu * 1000 / rounds, 1) if pid else None,
        # The client processes' CPU per change: reading every response, ACKing it.
        "client_cpu_ms_per_change": round(client_cpu * 1000 / rounds, 1),
        "value": round(p99, 2),
        "unit": "ms",
        "stat": "p99",
        "budget_ms": BUDGET_MS,
        "within_budget": p99 <= BUDGET_MS,
    }


async def _every_client_acked(channel: grpc.aio.Channel, clients: int, version: str) -> None:
    """Checks with the control plane's CSDS that every client ACKed
    ``version`` (the clients' hand-encoded ACKs are taken as a client's),
    waiting up to a few seconds for the last ACKs."""
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
    request = csds_pb2.ClientStatusRequest(exclude_resource_contents=True)
    request.node_matchers.add().node_id.prefix = "bench-"
    deadline = time.monotonic() + 5.0
    while True:
        response = await stub.FetchClientStatus(request, timeout=10)
        acked = sum(
            1
            for config in response.config
            for entry in config.generic_xds_configs
            if entry.version_info == version and entry.client_status == dump_pb2.ACKED
        )
        if acked == clients:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{acked} of {clients} clients ACKed version {version} (CSDS): "
                "the benchmark's clients do not ACK as a client does"
            )
        await asyncio.sleep(0.2)


def run(
    quick: bool = False, clients: int | None = None, target: str = "", stack: str = "h2"
) -> list[dict[str, Any]]:
    """Runs the benchmark; one result line (a dict) per measurement. With
    ``target``, against that control plane instead of one of its own;
    ``stack`` is what the clients speak HTTP/2 with (``h2`` or ``grpcio``)."""
    if stack not in _STACKS:
        raise ValueError(f"stack: {stack!r} is not one of {', '.join(_STACKS)}")
    count = clients or (100 if quick else 1000)
    rounds = 5 if quick else 20
    if target:
        return [asyncio.run(_measure(target, count, rounds, stack=stack))]
    with tempfile.TemporaryDirectory(prefix="bench-xds-") as workdir:
        server = ControlPlaneServer(Path(workdir))
        with server:
            return [asyncio.run(_measure(server.target, count, rounds, server.pid, stack))]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_xds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="100 clients, 5 rounds")
    parser.add_argument("--clients", type=int, default=None, help="subscribed clients")
    parser.add_argument(
        "--target", default="", metavar="HOST:PORT", help="a running control plane to measure"
    )
    parser.add_argument(
        "--client-stack",
        choices=_STACKS,
        default="h2",
        help="what the clients speak HTTP/2 with: the h2 package (default; little "
        "cost of their own) or grpcio's asyncio client (its per-message machinery "
        "costs the clients more CPU than the server spends)",
    )
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        first, count = (int(part) for part in args.worker.split(":"))
        work = _worker(args.target, first, count, args.client_stack)
        try:
            import uvloop  # as the control plane runs
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            asyncio.run(work)
        else:
            uvloop.run(work)
        return
    for line in run(args.quick, args.clients, args.target, args.client_stack):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
