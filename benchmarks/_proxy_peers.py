"""The systems of the data-plane benchmark, each its own process on 127.0.0.1.

``NginxServer``: the backend, one worker, no access log, ``/`` answering
``200 hello\\n`` and ``/large.bin`` a file of the given size (sendfile).
``HaproxyServer``: the peer proxy, ``nbthread 1``, a ``mode tcp`` and a
``mode http`` (keep-alive on both sides) listener, both to nginx.
``SidecarMesh``: ``eco controlplane --store memory://``, a server sidecar
that registers the backends, with and without inbound listeners, and a
client sidecar with an upstream listener for each of those services.

Each is a :class:`~benchmarks._servers.Server` subprocess (or three) with its
config, logs and files in its own directory, stopped with SIGTERM (also when
this process dies). :func:`tool` finds wrk, haproxy and nginx, or says how
to install them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from ecosystem.v1 import sidecar_pb2, sidecar_pb2_grpc

from benchmarks._servers import ControlPlaneServer, Server, ServerError, free_port
from benchmarks.bench_sidecar import SidecarServer
from sidecar.config import INBOUND_PORT_KEY

__all__ = [
    "LARGE_PATH",
    "HaproxyServer",
    "NginxServer",
    "SidecarMesh",
    "tool",
    "tool_version",
]

INSTALL_HINT = "run scripts/install-bench-tools.sh"
LARGE_PATH = "/large.bin"
_READY_TIMEOUT = 30.0
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def tool(name: str) -> str:
    """The path of a bench tool (``/usr/sbin`` included); a clear error when missing."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    found = shutil.which(name, path=path)
    if found is None:
        raise ServerError(f"{name} not found: {INSTALL_HINT}")
    return found


def tool_version(name: str) -> str:
    """The first line a tool prints about its version (nginx says it on stderr)."""
    flag = {"wrk": "-v", "nginx": "-v", "haproxy": "-v"}[name]
    done = subprocess.run([tool(name), flag], capture_output=True, timeout=10, check=False)
    text = (done.stdout or done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""


# -- peers ------------------------------------------------------------------------------


class NginxServer(Server):
    """nginx with one worker: ``/`` is a 6-byte answer, ``/large.bin`` ``large_bytes``."""

    system = "nginx"

    def __init__(self, workdir: Path, large_bytes: int) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.launcher = "nginx"
        self.large_bytes = large_bytes
        self.config_path = workdir / "nginx.conf"

    def _write_files(self) -> None:
        www = self.workdir / "www"
        www.mkdir(exist_ok=True)
        block = os.urandom(2**20)
        with open(www / LARGE_PATH.lstrip("/"), "wb") as out:
            for _ in range(self.large_bytes // len(block)):
                out.write(block)
            out.write(block[: self.large_bytes % len(block)])
        version = subprocess.run(
            [tool("nginx"), "-V"], capture_output=True, timeout=10, check=False
        ).stderr.decode(errors="replace")
        temp = self.workdir / "temp"
        temp.mkdir(exist_ok=True)
        temp_paths = [f"client_body_temp_path {temp}/body;", f"proxy_temp_path {temp}/proxy;"]
        for module in ("fastcgi", "uwsgi", "scgi"):  # only those built in: else unknown directive
            if f"--without-http_{module}_module" not in version:
                temp_paths.append(f"{module}_temp_path {temp}/{module};")
        # As root the worker would switch to nobody, who cannot read our 0700 temp dir.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.config_path.write_text(
            "daemon off;\nmaster_process on;\nworker_processes 1;\n"
            f"{user}pid {self.workdir}/nginx.pid;\nerror_log {self.workdir}/error.log warn;\n"
            "worker_rlimit_nofile 8192;\nevents { worker_connections 4096; }\n"
            "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n"
            "  keepalive_timeout 65s;\n  keepalive_requests 100000000;\n"
            "  default_type application/octet-stream;\n  " + "\n  ".join(temp_paths) + "\n"
            f"  server {{\n    listen 127.0.0.1:{self.port} backlog=4096;\n"
            '    location = / { default_type text/plain; return 200 "hello\\n"; }\n'
            f"    location = {LARGE_PATH} {{ root {www}; }}\n  }}\n}}\n"
        )

    def command(self) -> list[str]:
        self._write_files()
        log = self.workdir / "error.log"
        return [tool("nginx"), "-p", str(self.workdir), "-c", str(self.config_path), "-e", str(log)]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def log_tail(self, lines: int = 30) -> str:
        return super().log_tail(lines) + "\n" + _tail(self.workdir / "error.log", lines)


class HaproxyServer(Server):
    """HAProxy, one thread: ``tcp_port`` in tcp mode and ``http_port`` in http mode."""

    system = "haproxy"

    def __init__(self, workdir: Path, backend_port: int, maxconn: int = 4000) -> None:
        super().__init__(workdir)
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.launcher = "haproxy"
        self.config_path = workdir / "haproxy.cfg"
        server = f"server nginx 127.0.0.1:{backend_port} maxconn {maxconn}"
        self.config_path.write_text(
            f"global\n  nbthread 1\n  maxconn {maxconn}\n\n"
            "defaults\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
            "  timeout http-keep-alive 60s\n\n"
            f"frontend tcp_in\n  mode tcp\n  bind 127.0.0.1:{self.tcp_port}\n"
            "  default_backend tcp_nginx\n\n"
            f"backend tcp_nginx\n  mode tcp\n  {server}\n\n"
            f"frontend http_in\n  mode http\n  option http-keep-alive\n"
            f"  bind 127.0.0.1:{self.http_port}\n  default_backend http_nginx\n\n"
            "backend http_nginx\n  mode http\n  option http-keep-alive\n  http-reuse safe\n"
            f"  {server}\n"
        )

    def command(self) -> list[str]:
        return [tool("haproxy"), "-f", str(self.config_path), "-db"]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the sidecars -----------------------------------------------------------------------


class SidecarMesh:
    """Control plane, server sidecar and client sidecar; ``ports`` maps an upstream
    service to the client sidecar's listener for it."""

    SERVICES = ("tcp", "http", "grpc")

    def __init__(
        self, workdir: Path, nginx_port: int, grpc_port: int, dataplane: str = "python"
    ) -> None:
        # dataplane "envoy": both sidecars run `dataplane: envoy` (docs/xds.md), whose
        # listeners need their ports up front; Envoy from scripts/install-envoy.sh.
        self.dataplane = dataplane
        self.controlplane = ControlPlaneServer(workdir / "controlplane")
        self.controlplane.store_url = "memory://"
        self.ports: dict[str, int] = {}
        services, inbound, upstreams = [], [], []
        for mode in self.SERVICES:
            backend = grpc_port if mode == "grpc" else nginx_port
            for name in (f"bench-{mode}", f"bench-direct-{mode}"):
                services.append(f"  - {{name: {name}, address: 127.0.0.1, port: {backend}}}\n")
                self.ports[name] = free_port()
                upstreams.append(
                    f"  - {{service: {name}, protocol: {mode}, "
                    f'listen: "127.0.0.1:{self.ports[name]}"}}\n'
                )
            inbound_port = free_port() if dataplane == "envoy" else 0
            inbound.append(
                f'  - {{listen: "127.0.0.1:{inbound_port}", to: "127.0.0.1:{backend}", '
                f"protocol: {mode}, "
                f"service: bench-{mode}}}\n"
            )
        cp = self.controlplane.target
        head = ""
        if dataplane == "envoy":
            head = f"dataplane: envoy\nenvoy: {{binary: {json.dumps(str(_envoy()))}}}\n"
        self.server = SidecarServer(
            workdir / "server",
            "bench-server",
            cp,
            head + "services:\n" + "".join(services) + "inbound:\n" + "".join(inbound),
        )
        self.client = SidecarServer(
            workdir / "client", "bench-client", cp, head + "upstreams:\n" + "".join(upstreams)
        )

    def __enter__(self) -> SidecarMesh:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.controlplane)
            stack.enter_context(self.server)
            stack.enter_context(self.client)
            self._wait_routed()
            stack.pop_all()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self.client, self.server, self.controlplane):
            server.stop()

    def _wait_routed(self) -> None:
        """Until the client sidecar sees every service, the two-hop ones with the
        server sidecar's inbound port, and its tcp/http listeners answer 200."""
        deadline = time.monotonic() + _READY_TIMEOUT
        with grpc.insecure_channel(self.client.local_api) as channel:
            stub = sidecar_pb2_grpc.SidecarServiceStub(channel)  # type: ignore[no-untyped-call]
            for name in self.ports:
                while not self._resolved(stub, name):
                    if time.monotonic() > deadline:
                        raise ServerError(f"the client sidecar never resolved {name}")
                    self.client.check_alive()
                    time.sleep(0.1)
        for name, port in self.ports.items():
            if "grpc" in name:
                continue  # checked by the first calls of the gRPC measurement
            while not _answers(port):
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"the client sidecar's {name} listener on port {port} never "
                        f"answered 200:\n{self.client.log_tail()}"
                    )
                self.client.check_alive()
                self.server.check_alive()
                time.sleep(0.1)

    @staticmethod
    def _resolved(stub: Any, name: str) -> bool:
        try:
            answer = stub.ResolveEndpoints(
                sidecar_pb2.ResolveEndpointsRequest(service=name), timeout=2
            )
        except grpc.RpcError:
            return False
        inbound = [INBOUND_PORT_KEY in e.metadata for e in answer.endpoints]
        return bool(inbound == [not name.startswith("bench-direct-")])

    def route_ports(self, *modes: str) -> list[tuple[str, int, int, dict[str, int]]]:
        """``(mode, hops, port, role → pid)``: one hop (``bench-direct-*``), then two
        hops (``bench-*``) for each mode."""
        if self.dataplane == "envoy":  # the processes that carry the traffic
            one = {"client_envoy": _envoy_pid(self.client.workdir / "data")}
            both = one | {"server_envoy": _envoy_pid(self.server.workdir / "data")}
        else:
            one = {"client_sidecar": self.client.pid}
            both = one | {"server_sidecar": self.server.pid}
        return [
            (mode, hops, self.ports[prefix + mode], both if hops == 2 else one)
            for hops, prefix in ((1, "bench-direct-"), (2, "bench-"))
            for mode in modes
        ]


def _envoy() -> Path:
    """The Envoy scripts/install-envoy.sh installs (or ``envoy`` on PATH)."""
    installed = Path(__file__).resolve().parents[1] / ".tools" / "envoy-venv" / "bin" / "envoy"
    if installed.is_file():
        return installed
    found = shutil.which("envoy")
    if found is None:
        raise ServerError("no Envoy: run scripts/install-envoy.sh (make bench runs it)")
    return Path(found)


def _envoy_pid(data_dir: Path) -> int:
    """The Envoy a sidecar with this data dir runs (found by its bootstrap path)."""
    bootstrap = str(data_dir / "envoy" / "bootstrap.json").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if bootstrap in (entry / "cmdline").read_bytes().split(b"\0"):
                    return int(entry.name)
    raise ServerError(f"no Envoy runs {bootstrap.decode()}")


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            status: int = response.status
            return status == 200 and response.read() == b"hello\n"
    except (urllib.error.URLError, OSError):
        return False
