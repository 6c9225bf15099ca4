"""The processes of the bus benchmark: nats-server, ``eco controlplane`` with a bus,
and the sidecar's bus relay alone in a process (see benchmarks/bench_bus.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._servers import (
    Server,
    ServerError,
    _eco_cli,
    free_port,
    with_parent_death_signal,
)

__all__ = ["BusControlPlane", "NatsServer", "RelayProcess", "nats_server_binary", "relay_available"]

_READY_TIMEOUT = 30.0


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or shutil.which(
        "nats-server", path="/usr/sbin:/usr/local/sbin:/sbin"
    )
    if found is None:
        raise ServerError("nats-server not found: run scripts/install-nats.sh")
    return found


class _Child:
    """A process of this benchmark on a free port with its files in ``workdir``:
    ``_start`` spawns it (tied to this process's life) and waits until
    ``_ready()``; leaving the ``with`` stops it (SIGTERM, then SIGKILL)."""

    what = "the process"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def _start(self, argv: list[str], log: Path, *, capture: bool) -> None:
        """Runs ``argv``; its output goes to ``log`` when ``capture`` (else it writes
        ``log`` itself); returns once ``_ready()``, or raises ServerError with the
        log's tail when it exits or is not ready in time."""
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(log, "ab")) if capture else subprocess.DEVNULL
            self._proc = subprocess.Popen(
                with_parent_death_signal(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + _READY_TIMEOUT
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                tail = "(no log)"
                with contextlib.suppress(OSError):
                    tail = log.read_text(errors="replace")[-2000:]
                raise ServerError(f"{self.what} did not start: {tail}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        """Whether its port accepts connections."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1),
        ):
            return True
        return False

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NatsServer(_Child):
    """``nats-server -js`` on a free port with its store in ``workdir``; ready once it
    greets a client with JetStream on."""

    what = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def version(self) -> str:
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, timeout=10, check=False
        )
        return out.stdout.decode(errors="replace").strip().rpartition(" ")[2]

    def __enter__(self) -> NatsServer:
        binary = nats_server_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = self.workdir / "nats.log"
        argv = [
            binary,
            "--addr=127.0.0.1",
            f"--port={self.port}",
            "--server_name=eco-bench",
            "--jetstream",
            f"--store_dir={self.workdir / 'jetstream'}",
            f"--log={log}",
        ]
        self._start(argv, log, capture=False)
        return self

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                line = sock.makefile("rb").readline()
        except OSError:
            return False
        if not line.startswith(b"INFO "):
            return False
        try:
            return bool(json.loads(line[5:]).get("jetstream"))
        except ValueError:
            return False


class BusControlPlane(Server):
    """``eco controlplane --store STORE --bus BUS``."""

    system = "ecosystem"

    def __init__(self, workdir: Path, store_url: str, bus_url: str) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.admin_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.store_url = store_url
        self.bus_url = bus_url

    def command(self) -> list[str]:
        eco = _eco_cli()
        if eco is None:
            raise ServerError("the eco CLI is not installed: pip install -e '.[dev]'")
        self.launcher = "eco controlplane"
        return [
            eco,
            "controlplane",
            "--listen",
            self.target,
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            "--store",
            self.store_url,
            "--bus",
            self.bus_url,
        ]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/healthz"


_ROOT = Path(__file__).resolve().parent.parent
# The relay runs in its temp dir, so it finds this module through argv[1].
_RUN_RELAY = (
    "import sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from benchmarks._bus_processes import relay_main\n"
    "sys.exit(relay_main(sys.argv[2:]))\n"
)


def relay_available() -> bool:
    """Whether the sidecar's bus relay (``sidecar.relay.attach_relay``) is there."""
    try:
        from sidecar import relay
    except ImportError:
        return False
    return hasattr(relay, "RelayBroker") and hasattr(relay, "attach_relay")


class RelayProcess(_Child):
    """The sidecar's bus relay alone in its own process (what ``eco sidecar`` serves
    on its local API): ``MessagingService`` on a free port over a ``RelayBroker``
    to the control plane at ``upstream``, or straight to ``broker_url`` (NATS) as
    a sidecar relays once its control plane names NATS; ready once its port
    accepts connections."""

    what = "the relay"

    def __init__(self, workdir: Path, upstream: str, broker_url: str = "") -> None:
        super().__init__(workdir)
        self.upstream = upstream
        self.broker_url = broker_url

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> RelayProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [
            sys.executable,
            "-c",
            _RUN_RELAY,
            str(_ROOT),
            str(self.port),
            self.upstream,
            str(self.workdir),
            self.broker_url,
        ]
        self._start(argv, self.workdir / "relay.log", capture=True)
        return self


def relay_main(argv: list[str]) -> int:
    """``PORT UPSTREAM DATA_DIR BROKER_URL``: serves the relay until SIGTERM (the
    relay process); an empty BROKER_URL relays through the control plane."""
    import grpc.aio

    from serving.process import tune_gc
    from sidecar.relay import attach_relay

    port, upstream, data_dir, broker_url = int(argv[0]), argv[1], Path(argv[2]), argv[3]

    async def serve() -> None:
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        server = grpc.aio.server()
        relay, _ = await attach_relay(
            server, [upstream], data_dir, lambda: False, broker_url=broker_url
        )
        tune_gc()  # as `eco sidecar` does once started
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await stopping.wait()
        await server.stop(1.0)
        await relay.close()

    try:
        import uvloop  # as the sidecar runs
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0
