"""Load generators and meters of the data-plane benchmark.

:func:`wrk` runs the wrk binary (closed loop, as fast as it goes).
:func:`constant_rate` is an open-loop client: a sender thread sends a
request every ``1/rate`` s on one of its idle keep-alive connections (or
queues it when all are busy) and a receiver thread reads them all; latency
counts from the *scheduled* send time, so a stalled proxy is charged for
the requests that queued behind it. :func:`download` reads one large
response through a raw socket. :class:`CpuUse` sums the CPU of other
processes over the blocks it measures, from ``/proc``.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import httptools

from benchmarks._proxy_peers import LARGE_PATH, tool
from benchmarks._servers import ServerError, cpu_seconds

__all__ = [
    "CpuUse",
    "RateResult",
    "WrkResult",
    "constant_rate",
    "cpu_of",
    "download",
    "parse_wrk",
    "wrk",
]

_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


# -- wrk --------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors plus non-2xx/3xx answers


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(text: str) -> WrkResult:
    """Reads wrk's ``--latency`` report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    if rps is None or total is None:
        raise ServerError(f"unexpected wrk output:\n{text}")
    pct = dict(re.findall(r"^\s+(\d+)%\s+([\d.]+[a-z]+)\s*$", text, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        p50_ms=_ms(pct["50"]) if "50" in pct else float("nan"),
        p99_ms=_ms(pct["99"]) if "99" in pct else float("nan"),
        errors=errors + (int(non_2xx.group(1)) if non_2xx else 0),
    )


def wrk(port: int, seconds: float, connections: int = 50, threads: int = 1) -> WrkResult:
    """``wrk -t{threads} -c{connections} -d{seconds}s --latency`` against ``/``."""
    command = [
        tool("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(command, capture_output=True, timeout=seconds + 60, check=False)
    text = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise ServerError(f"wrk exited with {done.returncode}: {done.stderr.decode()}{text}")
    return parse_wrk(text)


# -- constant rate ------------------------------------------------------------------------


@dataclass
class RateResult:
    """Latencies in ms from each request's scheduled send time to its last byte."""

    latencies_ms: list[float]
    scheduled: int
    errors: int
    seconds: float

    @property
    def achieved_rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0


@dataclass(eq=False)
class _Conn:
    """One keep-alive connection of the constant-rate client, with its response parser."""

    sock: socket.socket
    on_done: _Receiver
    sent_at: float = 0.0
    busy: bool = False
    status: int = 0
    parser: httptools.HttpResponseParser = field(init=False)

    def __post_init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        self.on_done.completed(self)


class _Receiver:
    """The shared state of one constant-rate run: idle connections and the backlog."""

    def __init__(
        self, port: int, connections: int, measure_from: float, request: bytes = _REQUEST
    ) -> None:
        self.port = port
        self.request = request
        self.lock = threading.Lock()
        self.idle: list[_Conn] = []
        self.backlog: deque[float] = deque()
        self.latencies: list[float] = []
        self.errors = 0
        self.in_flight = 0
        self.measure_from = measure_from
        self.stop = False
        self.selector = selectors.DefaultSelector()
        for _ in range(connections):
            self.idle.append(self._connect())

    def _connect(self) -> _Conn:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, self)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def send(self, conn: _Conn, scheduled: float) -> None:
        conn.sent_at = scheduled
        conn.busy = True
        # A failed write shows up as a failed read too, where the receiver handles it.
        with contextlib.suppress(OSError):
            conn.sock.sendall(self.request)

    def schedule(self, scheduled: float) -> None:
        """Called by the sender at ``scheduled``: send now, or queue if all are busy."""
        with self.lock:
            self.in_flight += 1
            if not self.idle:
                self.backlog.append(scheduled)
                return
            conn = self.idle.pop()
        self.send(conn, scheduled)

    def _next(self, conn: _Conn) -> None:
        """``conn`` is free: it takes the oldest queued request, or goes idle."""
        with self.lock:
            if not self.backlog:
                self.idle.append(conn)
                return
            scheduled = self.backlog.popleft()
        self.send(conn, scheduled)

    def completed(self, conn: _Conn) -> None:
        now = time.perf_counter()
        conn.busy = False
        if conn.status != 200:
            self.errors += 1
        elif conn.sent_at >= self.measure_from:
            self.latencies.append((now - conn.sent_at) * 1e3)
        with self.lock:
            self.in_flight -= 1
        self._next(conn)

    def _lost(self, conn: _Conn) -> None:
        """The connection closed or failed (under a request: an error); a new one replaces it."""
        self.selector.unregister(conn.sock)
        conn.sock.close()
        with self.lock:
            if conn in self.idle:
                self.idle.remove(conn)
            if conn.busy:
                self.in_flight -= 1
        if conn.busy:
            self.errors += 1
        try:
            fresh = self._connect()
        except OSError:
            return
        self._next(fresh)

    def run(self) -> None:
        buffer = bytearray(65536)
        view = memoryview(buffer)
        while not self.stop:
            for key, _ in self.selector.select(0.05):
                conn: _Conn = key.data
                try:
                    size = conn.sock.recv_into(buffer)
                except OSError:
                    size = 0
                if not size:
                    self._lost(conn)
                    continue
                try:
                    conn.parser.feed_data(view[:size])
                except httptools.HttpParserError:
                    self._lost(conn)

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def constant_rate(
    port: int,
    rate: float,
    seconds: float,
    *,
    connections: int = 20,
    warmup: float = 0.5,
    request: bytes = _REQUEST,
) -> RateResult:
    """Open-loop ``GET /`` (or ``request``, one whole request head) at ``rate``/s for
    ``warmup + seconds`` over keep-alive connections; the warm-up's answers are not
    counted."""
    interval = 1.0 / rate
    receiver = _Receiver(port, connections, measure_from=0.0, request=request)
    start = time.perf_counter() + 0.05  # the connections are open: the schedule starts
    receiver.measure_from = start + warmup
    reader = threading.Thread(target=receiver.run, name="constant-rate-receiver", daemon=True)
    reader.start()
    total = int((warmup + seconds) * rate)
    sleep, clock = time.sleep, time.perf_counter
    try:
        for i in range(total):
            scheduled = start + i * interval
            delay = scheduled - clock()
            if delay > 0:
                sleep(delay)
            receiver.schedule(scheduled)
        deadline = clock() + 5.0
        while receiver.in_flight > 0 and clock() < deadline:
            sleep(0.01)
    finally:
        receiver.stop = True
        reader.join()
        receiver.close()
    measured = int(seconds * rate)
    missing = max(0, receiver.in_flight)
    return RateResult(receiver.latencies, measured, receiver.errors + missing, seconds)


# -- bulk -----------------------------------------------------------------------------------


def download(port: int, path: str = LARGE_PATH, timeout: float = 120.0) -> tuple[int, float]:
    """Reads one whole response body through a raw socket: (body bytes, seconds)."""
    buffer = bytearray(2**20)
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.perf_counter()
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ServerError(f"port {port}: connection closed before the response head")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if status != b"200" or match is None:
            raise ServerError(f"port {port}: unexpected answer {head[:200]!r}")
        expected, received = int(match.group(1)), len(rest)
        recv_into = sock.recv_into
        while received < expected:
            size = recv_into(buffer)
            if not size:
                raise ServerError(f"port {port}: closed after {received} of {expected} bytes")
            received += size
        return received, time.perf_counter() - started


# -- CPU ----------------------------------------------------------------------------------


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each process has used so far, by role."""
    return {role: cpu_seconds(pid) for role, pid in pids.items()}


@dataclass
class CpuUse:
    """CPU seconds of some processes, by role, summed over the blocks measured."""

    seconds: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0

    @contextlib.contextmanager
    def measure(self, pids: dict[str, int]) -> Iterator[None]:
        before, started = cpu_of(pids), time.perf_counter()
        yield
        self.wall += time.perf_counter() - started
        for role, cpu in cpu_of(pids).items():
            self.seconds[role] = self.seconds.get(role, 0.0) + cpu - before[role]

    def vcpu(self) -> dict[str, float]:
        """Average vCPU (CPU seconds per second) of each process while measured."""
        return {role: used / self.wall for role, used in self.seconds.items()} if self.wall else {}
