"""Stores for the sync tests: each ``<name>_target`` fixture gives a fresh,
empty root on a real store (a directory, an SFTP server, an S3/GCS/Azure
emulator) as a :class:`StoreTarget`.

File and SFTP targets are defined here; the cloud emulators' targets in
tests/harness/cloud_storage.py. tests/integration/sync/conftest.py imports
both, and the ``target`` fixture there is parametrised over every store.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness._process import OwnedProcess
from tests.harness.etcd import with_parent_death_signal

STORE_NAMES = ("file", "sftp", "s3", "gcs", "azure")


@dataclass(frozen=True)
class StoreTarget:
    """A fresh root on a real store: its connector URL and the settings a
    connector needs to reach it (a job's named profile; the same keys as
    ``open_connector(url, settings)`` takes), plus the environment variables
    an ``eco`` subprocess would read instead."""

    name: str
    url: str
    settings: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


# -- file ---------------------------------------------------------------------


@pytest.fixture
def file_target(tmp_path: Path) -> StoreTarget:
    """A fresh, empty directory."""
    root = tmp_path / "file-root"
    root.mkdir()
    return StoreTarget("file", root.as_uri())


# -- SFTP ---------------------------------------------------------------------


class SftpServer(OwnedProcess):
    """tests/harness/sftp_server.py (asyncssh's SFTP server) as a subprocess on
    127.0.0.1, port 0, chrooted at ``root``; a host key and a client key made
    for it, and a known_hosts file naming its host key at its port.
    ``subdir()`` makes a fresh directory under the root and returns its URL
    path."""

    LOG_NAME = "sftp.log"
    USER = "eco"
    PASSWORD = "sftp-test-password"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self.host_public_key = ""
        self._count = 0

    @property
    def root(self) -> Path:
        assert self._dir is not None, "not started"
        return self._dir / "root"

    @property
    def client_key(self) -> Path:
        assert self._dir is not None, "not started"
        return self._dir / "client_key"

    @property
    def known_hosts(self) -> Path:
        assert self._dir is not None, "not started"
        return self._dir / "known_hosts"

    def start(self) -> SftpServer:
        self._dir = Path(tempfile.mkdtemp(prefix="eco-sftp-"))
        try:
            self._make_keys()
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def halt(self) -> None:
        """Kills the server (SIGKILL: a crash, connections dropped), keeping its
        port, keys and files for `resume`."""
        self._terminate(signal.SIGKILL)

    def resume(self) -> None:
        """Starts a halted server again on the same port with the same keys."""
        deadline = time.monotonic() + _SFTP_READY_TIMEOUT
        while True:
            try:
                self._launch()
                return
            except RuntimeError:
                self._terminate(signal.SIGKILL)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _make_keys(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*DSA.*")
                import asyncssh
        except ImportError:
            pytest.fail(_SFTP_MISSING, pytrace=False)
        assert self._dir is not None
        self.root.mkdir()
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        host_key.write_private_key(str(self._dir / "host_key"))
        self.host_public_key = host_key.export_public_key("openssh").decode().strip()
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.client_key))
        client_key.write_public_key(str(self._dir / "authorized_keys"))

    def _launch(self) -> None:
        assert self._dir is not None
        port_file = self._dir / "port"
        port_file.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            str(Path(__file__).with_name("sftp_server.py")),
            "--root",
            str(self.root),
            "--host-key",
            str(self._dir / "host_key"),
            "--authorized-keys",
            str(self._dir / "authorized_keys"),
            "--port-file",
            str(port_file),
            "--password",
            self.PASSWORD,
            "--port",
            str(self.port),
        ]
        with open(self._dir / self.LOG_NAME, "ab") as log_file:
            self._proc = subprocess.Popen(
                with_parent_death_signal(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _SFTP_READY_TIMEOUT
        while not port_file.exists():
            if self._proc.poll() is not None:
                raise RuntimeError(f"the SFTP server exited at start: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SFTP server did not start: {self.log()[-2000:]}")
            time.sleep(0.01)
        self.port = int(port_file.read_text())
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_public_key}\n")

    def subdir(self) -> str:
        """A fresh, empty directory under the root; its path as the server shows it."""
        self._count += 1
        name = f"t{self._count:04d}"
        (self.root / name).mkdir()
        return f"/{name}"

    def target(self) -> StoreTarget:
        url = f"sftp://{self.USER}@127.0.0.1:{self.port}{self.subdir()}"
        settings = {"key_file": str(self.client_key), "known_hosts": str(self.known_hosts)}
        env = {
            "ECO_SFTP_KEY_FILE": str(self.client_key),
            "ECO_SFTP_KNOWN_HOSTS": str(self.known_hosts),
        }
        return StoreTarget("sftp", url, settings, env)


_SFTP_READY_TIMEOUT = 15.0
_SFTP_MISSING = (
    "asyncssh is not installed (the SFTP test server and connector use it): "
    "pip install -e '.[server]' (make test does)"
)


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[SftpServer]:
    """One SFTP server for the session (about 0.3 s to start); each test gets
    a directory of its own on it through ``sftp_target``."""
    server = SftpServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sftp_target(sftp_server: SftpServer) -> StoreTarget:
    """A fresh, empty directory on the session's SFTP server."""
    return sftp_server.target()
