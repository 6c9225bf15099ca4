"""The gateway over HTTP, side by side with HAProxy: requests/s and added latency.

Rows for ``benchmarks.bench_gateway`` (``python -m benchmarks --only gateway``).
Every system is a real process on free 127.0.0.1 ports in a temporary
directory, stopped at the end (also on an error or Ctrl-C):

- nginx, one worker, answering ``200 hello\\n`` on every path (the paths under
  ``/api/catalog/`` with ``Cache-Control: public, max-age=60``, which both
  caches need to store a response);
- ``eco gateway --config gateway.yaml``: one process, one event loop (uvloop),
  no control plane (every route has fixed ``endpoints``), no access log;
- HAProxy 2.6, ``nbthread 1``, ``mode http`` with keep-alive on both sides.

Both serve the same six routes, chosen by host and path prefix (HAProxy:
``hdr(host)`` and ``path``/``path_beg`` ACLs, one backend per route), and
send what matches nothing to a 404. Three of them are measured:

- ``orders`` (``api.example.com``, ``/api/orders``): no plugins;
- ``orders-jwt`` (``/api/secure``): a JWT (RS256, a local public key) and a
  rate limit keyed by the token's ``sub`` at a rate nothing reaches. The
  gateway: ``jwt: {keys: [PEM]}`` (which also checks ``alg`` and ``exp``) and
  ``rate_limit: {rate: 1000000000, per: 1s, scope: local}``; HAProxy: the
  bearer's ``alg`` must be RS256, ``jwt_verify(RS256, pub.pem)`` must be 1,
  ``exp`` must not have passed, then ``track-sc0`` of ``sub`` in a stick
  table with ``http_req_rate(1s)`` and a 429 above the same rate. The same
  token on every request: the gateway remembers a token it verified (a hash
  and a lookup per request), HAProxy verifies the signature every time;
- ``catalog`` (``/api/catalog/``): every request a cache hit. The gateway:
  ``cache: {ttl: 60s}``; HAProxy: a ``cache`` section with ``http-request
  cache-use`` and ``http-response cache-store``.

Rows:

- ``gateway_rps`` (one per system and route): ``wrk -t1 -c50`` with the route's
  ``Host`` (and ``Authorization``), a 1 s warm-up, then rounds that visit
  every (system, route) in turn (quick 3 x 1 s, full 4 x 3 s); requests/s,
  wrk's p50/p99, errors (socket errors and non-2xx/3xx), the CPU of each
  process (gateway or HAProxy, nginx, wrk) during the runs. Ours carry
  ``ratio_to_haproxy`` (same route; budget ≥ 0.5) and ``bound``: what held
  the figure, read from that CPU.
- ``gateway_latency``: the open-loop client of the proxy benchmark at 1,000
  requests/s on 20 connections, ``GET /api/orders`` with the route's host, in
  1 s slices (quick 3, full 10) that cycle through nginx direct, HAProxy and
  the gateway; ``added_*_ms`` = the route's minus direct's (ours: budget
  p50 ≤ 1 ms, p99 ≤ 3 ms).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from benchmarks._proxy_load import CpuUse, WrkResult, constant_rate, parse_wrk
from benchmarks._proxy_peers import tool, tool_version
from benchmarks._servers import Server, ServerError, free_port, rss_bytes
from benchmarks.bench_sidecar import _eco

__all__ = ["gateway_http_rows"]

HOST = "api.example.com"
CONNECTIONS = 50
RATE = 1_000
LATENCY_CONNECTIONS = 20
RPS_BUDGET = 0.5  # times HAProxy's, same route
ADDED_P50_BUDGET_MS = 1.0
ADDED_P99_BUDGET_MS = 3.0
HUGE_RATE = 1_000_000_000  # the rate limit's: nothing is limited
_BUSY = 0.85  # of one core: that process is what holds the figure
_SHARED = 0.75  # of all cores, the processes together: the machine is what holds it


@dataclass(frozen=True)
class _Sizes:
    rounds: int
    seconds: int  # of each wrk run
    slices: int  # 1 s slices at RATE per system


QUICK = _Sizes(rounds=3, seconds=1, slices=3)
FULL = _Sizes(rounds=4, seconds=3, slices=10)


@dataclass(frozen=True)
class _Measured:
    """One measured route: its name, plugins, path and extra request headers."""

    route: str
    plugins: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()


def _progress(text: str) -> None:
    print(f"[gateway] {text}", file=sys.stderr, flush=True)


# -- the routes --------------------------------------------------------------------------

# (name, host, path prefix, plugins); the same on both systems.
_ROUTES = (
    ("accounts", HOST, "/api/accounts", ""),
    ("orders", HOST, "/api/orders", ""),
    ("orders-jwt", HOST, "/api/secure", "jwt"),
    ("catalog", HOST, "/api/catalog", "cache"),
    ("admin", "admin.example.com", "/", ""),
    ("www", "www.example.com", "/", ""),
)
_CACHED_PREFIX = "/api/catalog/"


@dataclass(frozen=True)
class _Keys:
    """The RSA key pair of the JWT rows and a token it signed."""

    public_pem: str
    token: str

    @classmethod
    def make(cls) -> _Keys:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        claims = {"sub": "bench-client", "iat": int(time.time()), "exp": int(time.time()) + 86_400}
        return cls(public_pem, jwt.encode(claims, private, algorithm="RS256"))


# -- the processes -----------------------------------------------------------------------


class _Backend(Server):
    """nginx, one worker: ``200 hello\\n`` everywhere, cacheable under /api/catalog/."""

    system = "nginx"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.launcher = "nginx"
        self.config_path = workdir / "nginx.conf"

    def command(self) -> list[str]:
        temp = self.workdir / "temp"
        temp.mkdir(exist_ok=True)
        # As root the worker would switch to nobody, who cannot read our 0700 temp dir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.config_path.write_text(
            f"daemon off;\nmaster_process on;\nworker_processes 1;\n{user}"
            f"pid {self.workdir}/nginx.pid;\nerror_log {self.workdir}/error.log warn;\n"
            "worker_rlimit_nofile 8192;\nevents { worker_connections 4096; }\n"
            "http {\n  access_log off;\n  tcp_nodelay on;\n"
            "  keepalive_timeout 65s;\n  keepalive_requests 100000000;\n"
            f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  server {{\n    listen 127.0.0.1:{self.port} backlog=4096;\n"
            "    default_type text/plain;\n"
            '    location / { return 200 "hello\\n"; }\n'
            f"    location {_CACHED_PREFIX} {{\n"
            '      add_header Cache-Control "public, max-age=60";\n'
            '      return 200 "hello\\n";\n    }\n  }\n}\n'
        )
        log = self.workdir / "error.log"
        return [tool("nginx"), "-p", str(self.workdir), "-c", str(self.config_path), "-e", str(log)]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def worker_pids(self) -> list[int]:
        """The master's children: the worker that serves."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()]


class _Gateway(Server):
    """``eco gateway --config gateway.yaml`` with fixed endpoints (no control plane)."""

    system = "gateway"

    def __init__(self, workdir: Path, backend_port: int, keys: _Keys) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.admin = f"127.0.0.1:{free_port()}"
        self.launcher = "eco gateway"
        self.config_path = workdir / "gateway.yaml"
        routes: list[dict[str, Any]] = []
        for name, host, prefix, plugins in _ROUTES:
            route: dict[str, Any] = {
                "name": name,
                "match": {"hosts": [host], "path_prefix": prefix},
                "upstream": name,
                "endpoints": [f"127.0.0.1:{backend_port}"],
            }
            if plugins == "jwt":
                route["plugins"] = {
                    "jwt": {"keys": [keys.public_pem], "algorithms": ["RS256"]},
                    "rate_limit": {"rate": HUGE_RATE, "per": "1s", "scope": "local"},
                }
            elif plugins == "cache":
                route["plugins"] = {"cache": {"ttl": "60s"}}
            routes.append(route)
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": self.admin,
            "data_dir": str(workdir / "data"),
            "routes": routes,
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [_eco(), "gateway", "--config", str(self.config_path)]

    def ready_url(self) -> str:
        return f"http://{self.admin}/healthz"


# The jwt plugin's checks (alg, signature, exp) and the rate limit keyed by sub.
_JWT_RULES = """\
  stick-table type string len 128 size 100k expire 30s store http_req_rate(1s)
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless {{ var(txn.bearer) -m found }}
  acl rs256 var(txn.bearer),jwt_header_query('$.alg') -m str RS256
  acl signed var(txn.bearer),jwt_verify("RS256","{pem}") -m int 1
  http-request deny deny_status 401 unless rs256
  http-request deny deny_status 401 unless signed
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request track-sc0 var(txn.bearer),jwt_payload_query('$.sub')
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {rate} }}"""


class _Haproxy(Server):
    """HAProxy, ``nbthread 1``: the same routes as ACLs, one backend per route."""

    system = "haproxy"

    def __init__(self, workdir: Path, backend_port: int, keys: _Keys) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.launcher = "haproxy"
        self.config_path = workdir / "haproxy.cfg"
        pem = workdir / "jwt-public.pem"
        pem.write_text(keys.public_pem)
        server = f"server nginx 127.0.0.1:{backend_port} maxconn 4000"
        front = [f"frontend gateway\n  bind 127.0.0.1:{self.port}\n  monitor-uri /haproxy-ready"]
        backends: list[str] = []
        for name, host, prefix, plugins in _ROUTES:
            acl = name.replace("-", "_")
            front.append(f"  acl host_{acl} hdr(host) -i {host}")
            if prefix == "/":
                front.append(f"  acl path_{acl} path_beg /")
            else:  # a path prefix as the gateway means it: itself, or below it
                front.append(f"  acl path_{acl} path {prefix}")
                front.append(f"  acl path_{acl} path_beg {prefix}/")
            front.append(f"  use_backend {acl} if host_{acl} path_{acl}")
            rules: list[str] = []
            if plugins == "jwt":
                rules = _JWT_RULES.format(pem=pem, rate=HUGE_RATE).splitlines()
            elif plugins == "cache":
                rules = ["  http-request cache-use catalog", "  http-response cache-store catalog"]
            backends.append(
                "\n".join([f"backend {acl}", *rules, "  http-reuse safe", f"  {server}"])
            )
        front.append("  default_backend not_found")
        backends.append(
            "backend not_found\n  http-request return status 404 content-type application/json "
            """string '{"error":"not_found"}'"""
        )
        self.config_path.write_text(
            "global\n  nbthread 1\n  maxconn 4000\n\n"
            "defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n"
            "  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n\n"
            "cache catalog\n  total-max-size 64\n  max-age 60\n\n"
            + "\n".join(front)
            + "\n\n"
            + "\n\n".join(backends)
            + "\n"
        )

    def command(self) -> list[str]:
        return [tool("haproxy"), "-f", str(self.config_path), "-db"]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/haproxy-ready"


# -- load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    result: WrkResult
    wrk_cpu: float  # seconds


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk(port: int, measured: _Measured, seconds: int) -> _Run:
    """``wrk -t1 -c50`` on the route's path with its host and headers."""
    command = [tool("wrk"), "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s"]
    for name, value in (("Host", HOST), *measured.headers):
        command += ["-H", f"{name}: {value}"]
    command += ["--latency", f"http://127.0.0.1:{port}{measured.path}"]
    before = _children_cpu()
    done = subprocess.run(command, capture_output=True, timeout=seconds + 60, check=False)
    text = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise ServerError(f"wrk exited with {done.returncode}: {done.stderr.decode()}{text}")
    return _Run(parse_wrk(text), _children_cpu() - before)


def _check(port: int, measured: _Measured) -> str:
    """One request on the route: the status line and the headers that tell (x-cache, ...)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", measured.path, headers={"Host": HOST, **dict(measured.headers)})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200 or body != b"hello\n":
        raise ServerError(
            f"port {port} {measured.path}: {response.status} {body[:200]!r} instead of 200 hello"
        )
    return response.getheader("x-cache") or ""


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every core, from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _machine(use: CpuUse) -> Iterator[None]:
    """Adds the machine's busy CPU over the block to ``use`` as role ``machine``."""
    before = _machine_busy()
    yield
    use.seconds["machine"] = use.seconds.get("machine", 0.0) + _machine_busy() - before


def _bound(system: str, vcpu: dict[str, float]) -> str:
    """What held a wrk figure, from the CPU each process (and the machine) used during it."""
    proxy = vcpu.get(system, 0.0)
    machine = vcpu.get("machine", 0.0)
    ours = {role: used for role, used in vcpu.items() if role != "machine"}
    shares = ", ".join(f"{role} {used:.2f}" for role, used in ours.items())
    others = max(0.0, machine - sum(ours.values()))
    cores = os.cpu_count() or 1
    name = "the gateway's event loop" if system == "gateway" else "HAProxy's one thread"
    if proxy >= _BUSY:
        return f"{name}: {proxy:.2f} of one core (vCPU: {shares}; other work {others:.2f})"
    if machine >= _SHARED * cores:
        return (
            f"the machine's {cores} cores: {machine:.2f} vCPU busy ({shares}; other work "
            f"{others:.2f}); {name} got {proxy:.2f}"
        )
    return f"not CPU ({shares}; machine {machine:.2f} of {cores}): waiting"


# -- measurements ------------------------------------------------------------------------


@dataclass(frozen=True)
class _System:
    name: str  # ecosystem | haproxy
    role: str  # gateway | haproxy
    port: int
    pid: int


def _rps(
    systems: list[_System], routes: list[_Measured], nginx: list[int], sizes: _Sizes
) -> list[dict[str, Any]]:
    pairs = [(system, route) for route in routes for system in systems]
    for system, route in pairs:
        _progress(f"wrk warm-up {system.name} {route.route}")
        _wrk(system.port, route, 1)
    runs: dict[tuple[str, str], list[_Run]] = {(s.name, r.route): [] for s, r in pairs}
    cpu = {key: CpuUse() for key in runs}
    for round_ in range(sizes.rounds):
        _progress(f"wrk round {round_ + 1}/{sizes.rounds} over {len(pairs)} routes")
        for system, route in pairs:
            pids = {system.role: system.pid} | {
                f"nginx{'' if i == 0 else i}": pid for i, pid in enumerate(nginx)
            }
            key = (system.name, route.route)
            with cpu[key].measure(pids), _machine(cpu[key]):
                runs[key].append(_wrk(system.port, route, sizes.seconds))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for system, route in pairs:
        key = (system.name, route.route)
        done = [run.result for run in runs[key]]
        seconds = sizes.seconds * len(done)
        vcpu = cpu[key].vcpu()
        vcpu["wrk"] = sum(run.wrk_cpu for run in runs[key]) / cpu[key].wall
        rps = sum(r.requests for r in done) / seconds
        rows[key] = {
            "bench": "gateway_rps",
            "system": system.name,
            "route": route.route,
            "plugins": route.plugins,
            "rps": round(rps),
            "rounds_rps": [round(r.rps) for r in done],
            "p50_ms": statistics.median(r.p50_ms for r in done),
            "p99_ms": statistics.median(r.p99_ms for r in done),
            "requests": sum(r.requests for r in done),
            "errors": sum(r.errors for r in done),
            "connections": CONNECTIONS,
            "threads": 1,
            "seconds": seconds,
            "vcpu": vcpu,
            "rps_per_vcpu": rps / vcpu[system.role] if vcpu.get(system.role) else None,
            "bound": _bound(system.role, vcpu),
            "value": round(rps),
            "unit": "requests/s",
        }
    for (name, route_name), row in rows.items():
        peer = rows.get(("haproxy", route_name))
        if name != "ecosystem" or peer is None:
            continue
        ratio = row["rps"] / peer["rps"] if peer["rps"] else math.nan
        row.update(ratio_to_haproxy=ratio, haproxy_rps=peer["rps"])
        if row["rps_per_vcpu"] and peer["rps_per_vcpu"]:
            row["per_vcpu_ratio_to_haproxy"] = row["rps_per_vcpu"] / peer["rps_per_vcpu"]
        within = ratio >= RPS_BUDGET and not row["errors"]
        row.update(budget=RPS_BUDGET, budget_op=">=", within_budget=bool(within))
    return list(rows.values())


def _latency(systems: list[_System], backend_port: int, sizes: _Sizes) -> list[dict[str, Any]]:
    request = f"GET /api/orders HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    targets = [("direct", "", backend_port, 0), *((s.name, s.role, s.port, s.pid) for s in systems)]
    samples: dict[str, list[float]] = {name: [] for name, *_ in targets}
    errors = dict.fromkeys(samples, 0)
    cpu = {name: CpuUse() for name in samples}
    for slice_ in range(sizes.slices):
        _progress(f"{RATE}/s slice {slice_ + 1}/{sizes.slices}")
        for name, role, port, pid in targets:
            with cpu[name].measure({role: pid} if pid else {}):
                result = constant_rate(
                    port, RATE, 1.0, connections=LATENCY_CONNECTIONS, warmup=0.2, request=request
                )
            samples[name] += result.latencies_ms
            errors[name] += result.errors
    rows: list[dict[str, Any]] = []
    direct: dict[str, float] = {}
    for name, role, _, _ in targets:
        ordered = sorted(samples[name])
        figures = {f"p{p}_ms": _percentile(ordered, p) for p in (50, 90, 99)}
        row: dict[str, Any] = {
            "bench": "gateway_latency",
            "system": name,
            "route": "orders",
            "rate": RATE,
            **figures,
            "max_ms": ordered[-1] if ordered else math.nan,
            "samples": len(ordered),
            "scheduled": RATE * sizes.slices,
            "errors": errors[name],
            "connections": LATENCY_CONNECTIONS,
            "seconds": sizes.slices,
        }
        if role:
            used = sum(cpu[name].seconds.values())
            row["cpu_us_per_request"] = used / len(ordered) * 1e6 if ordered else math.nan
        if name == "direct":
            direct = figures
        elif direct:
            for key, value in figures.items():
                row[f"added_{key}"] = value - direct[key]
            if name == "ecosystem":
                row.update(
                    budget_added_p50_ms=ADDED_P50_BUDGET_MS,
                    budget_added_p99_ms=ADDED_P99_BUDGET_MS,
                    within_budget=row["added_p50_ms"] <= ADDED_P50_BUDGET_MS
                    and row["added_p99_ms"] <= ADDED_P99_BUDGET_MS
                    and not errors[name],
                    bound=(
                        "p50: the gateway's own work per request (about "
                        f"{row['cpu_us_per_request']:.0f} µs of CPU); p99: the machine's "
                        f"other work too (direct's p99 is {direct['p99_ms']:.2f} ms)"
                    ),
                )
        row["value"], row["unit"] = row.get("added_p99_ms", figures["p99_ms"]), "ms"
        rows.append(row)
    return rows


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(len(ordered) * pct / 100))
    return ordered[min(rank, len(ordered)) - 1]


@contextlib.contextmanager
def _processes(workdir: Path) -> Iterator[tuple[_Backend, _Gateway, _Haproxy, _Keys]]:
    keys = _Keys.make()
    with contextlib.ExitStack() as stack:
        backend = _Backend(workdir / "nginx")
        stack.enter_context(backend)
        haproxy = _Haproxy(workdir / "haproxy", backend.port, keys)
        stack.enter_context(haproxy)
        gateway = _Gateway(workdir / "gateway", backend.port, keys)
        stack.enter_context(gateway)
        yield backend, gateway, haproxy, keys


def _measure(workdir: Path, sizes: _Sizes) -> list[dict[str, Any]]:
    _progress("nginx, HAProxy and eco gateway")
    with _processes(workdir) as (backend, gateway, haproxy, keys):
        routes = [
            _Measured("orders", "none", "/api/orders"),
            _Measured(
                "orders-jwt",
                "jwt+rate_limit",
                "/api/secure",
                (("Authorization", f"Bearer {keys.token}"),),
            ),
            _Measured("catalog", "cache", _CACHED_PREFIX + "items"),
        ]
        systems = [
            _System("haproxy", "haproxy", haproxy.port, haproxy.pid),
            _System("ecosystem", "gateway", gateway.port, gateway.pid),
        ]
        for system in systems:
            for route in routes:
                _check(system.port, route)
        rss_before = rss_bytes(gateway.pid)
        rows = _rps(systems, routes, backend.worker_pids(), sizes)
        rows += _latency(systems, backend.port, sizes)
        gateway.check_alive()
        haproxy.check_alive()
        for system in systems:  # still answering, and still from the cache
            for route in routes:
                cache = _check(system.port, route)
                if route.plugins == "cache" and system.role == "gateway" and cache != "HIT":
                    raise ServerError(f"the gateway's cached route answered x-cache: {cache!r}")
        rows.append(
            {
                "bench": "gateway_rss",
                "system": "ecosystem",
                "rss_mb_before": rss_before / 1e6,
                "rss_mb_after": rss_bytes(gateway.pid) / 1e6,
                "haproxy_rss_mb": rss_bytes(haproxy.pid) / 1e6,
                "value": rss_bytes(gateway.pid) / 1e6,
                "unit": "MB",
            }
        )
        return rows


def gateway_http_rows(quick: bool) -> list[dict[str, Any]]:
    """Every row of this module; a row with ``error`` when a system cannot run."""
    try:
        for name in ("wrk", "haproxy", "nginx"):
            tool(name)
        setup = {
            "bench": "gateway_setup",
            "quick": quick,
            "cores": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            **{name: tool_version(name) for name in ("wrk", "haproxy", "nginx")},
        }
        with tempfile.TemporaryDirectory(prefix="eco-bench-gateway-") as workdir:
            return [setup, *_measure(Path(workdir), QUICK if quick else FULL)]
    except ServerError as exc:
        _progress(f"failed: {exc}")
        return [
            {"bench": bench, "system": "ecosystem", "error": str(exc)}
            for bench in ("gateway_rps", "gateway_latency")
        ]
