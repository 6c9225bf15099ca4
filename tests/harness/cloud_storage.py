"""Real object-store emulators for the sync tests, and a fresh bucket per test.

Three emulators, each started once per test session as a subprocess on a
free 127.0.0.1 port (none of them reports a port of its own choosing), in a
directory of its own, waited for until it answers HTTP, stopped at the end:

- moto server (S3), ``moto_server`` from PyPI ``moto[server]`` (dev extra);
- gcp-storage-emulator (GCS), PyPI ``gcp-storage-emulator`` (dev extra), in
  memory. Not fake-gcs-server: its answer to a resumable session's status
  query (``Content-Range: bytes */N``) completes the object with the bytes
  received so far, so a resumed upload there would publish a truncated
  object; gcp-storage-emulator answers 308 with the committed range as GCS
  does. It serves one request at a time (tests/harness/gcs_emulator.py
  gives it a listen queue deep enough for many clients) and lists in one
  page;
- azurite (Azure Blob), npm ``azurite`` in .tools/, which
  ``scripts/install-storage-emulators.sh`` installs (``make test`` runs it),
  with ``--skipApiVersionCheck`` (the SDK is newer than the emulator),
  ``--loose`` and ``--inMemoryPersistence``.

A missing emulator fails the test that needs it, naming the install step.
``s3_target``, ``gcs_target`` and ``azure_target`` give each test a new, empty
bucket or container (and a key prefix in it) as a StoreTarget: the settings a
job profile would hold, and the standard environment variables that
``eco`` would read instead.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from azure.storage.blob import BlobServiceClient
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from tests.harness._process import OwnedProcess
from tests.harness.etcd import with_parent_death_signal
from tests.harness.ports import free_port
from tests.harness.storage import StoreTarget

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "Emulator",
    "azure_target",
    "azurite_server",
    "gcs_server",
    "gcs_target",
    "moto_server",
    "s3_target",
]

_READY_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[2]

# Azurite's well-known development account (public, documented by Azure).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_DEV_INSTALL = "pip install -e '.[dev]' (make install)"
_names = itertools.count(1)


def _fresh_name(kind: str) -> str:
    """A bucket/container name valid on every store: lowercase, digits, hyphens."""
    return f"eco-{kind}-{next(_names)}-{uuid.uuid4().hex[:8]}"


class Emulator(OwnedProcess):
    """One emulator process on ``127.0.0.1:port``; ``endpoint`` is its base URL."""

    name = "emulator"
    LOG_NAME = "emulator.log"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, directory: Path) -> list[str]:
        raise AssertionError("each emulator says how it starts")

    def ready_path(self) -> str:
        return "/"

    def start(self) -> Emulator:
        self._dir = Path(tempfile.mkdtemp(prefix=f"eco-{self.name}-"))
        self.port = free_port()
        try:
            cmd = self.command(self._dir)
            with open(self._dir / self.LOG_NAME, "wb") as log:
                self._proc = subprocess.Popen(
                    with_parent_death_signal(cmd),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._dir,
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.endpoint + self.ready_path(), timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers HTTP (an error status is an answer)
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {_READY_TIMEOUT}s: {self.log()[-2000:]}")


class MotoServer(Emulator):
    name = "moto"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self._env = env or {}

    def command(self, directory: Path) -> list[str]:
        binary = Path(sys.executable).with_name("moto_server")
        if not binary.exists():
            pytest.fail(f"moto_server is not installed: {_DEV_INSTALL}", pytrace=False)
        return [str(binary), "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> Emulator:
        # moto reads its settings (INITIAL_NO_AUTH_ACTION_COUNT, say) from the environment.
        saved = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)
        try:
            return super().start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def ready_path(self) -> str:
        return "/moto-api/"


class GcpStorageEmulator(Emulator):
    name = "gcp-storage-emulator"

    def command(self, directory: Path) -> list[str]:
        if importlib.util.find_spec("gcp_storage_emulator") is None:
            pytest.fail(f"gcp-storage-emulator is not installed: {_DEV_INSTALL}", pytrace=False)
        # Through tests/harness/gcs_emulator.py: the same server, a deeper listen queue.
        launcher = str(Path(__file__).with_name("gcs_emulator.py"))
        port = str(self.port)
        return [sys.executable, launcher, "start", "-H", "127.0.0.1", "--port", port, "-q", "-M"]

    def ready_path(self) -> str:
        return "/storage/v1/b"


class Azurite(Emulator):
    name = "azurite"

    def command(self, directory: Path) -> list[str]:
        # In memory (no --location: azurite refuses both); it runs in ``directory``.
        binary = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            pytest.fail(
                "azurite is not installed: run scripts/install-storage-emulators.sh"
                " (make test does)",
                pytrace=False,
            )
        return [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--skipApiVersionCheck",
            "--loose",
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--silent",
        ]

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.endpoint)


def azurite_connection_string(endpoint: str, key: str = AZURITE_KEY) -> str:
    """The connection string for azurite's development account at ``endpoint``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


def _session_emulator(emulator: Emulator) -> Iterator[Emulator]:
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Emulator]:
    yield from _session_emulator(MotoServer())


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Emulator]:
    yield from _session_emulator(GcpStorageEmulator())


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Emulator]:
    yield from _session_emulator(Azurite())


# -- a fresh root per test ---------------------------------------------------


def s3_settings(endpoint: str) -> dict[str, str]:
    return {
        "endpoint_url": endpoint,
        "access_key_id": "testing",
        "secret_access_key": "testing",
        "region": "us-east-1",
    }


def s3_env(settings: dict[str, str]) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": settings["endpoint_url"],
        "AWS_ACCESS_KEY_ID": settings["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": settings["secret_access_key"],
        "AWS_REGION": settings["region"],
    }


def s3_client(settings: dict[str, str]) -> Any:
    """A boto3 S3 client for a connector's settings (``s3_settings``, a target's),
    to look at what a test wrote; the caller closes it."""
    return boto3.client(
        "s3",
        endpoint_url=settings["endpoint_url"],
        aws_access_key_id=settings["access_key_id"],
        aws_secret_access_key=settings["secret_access_key"],
        region_name=settings["region"],
    )


def make_s3_bucket(endpoint: str) -> str:
    bucket = _fresh_name("s3")
    client = s3_client(s3_settings(endpoint))
    client.create_bucket(Bucket=bucket)
    client.close()
    return bucket


@pytest.fixture
def s3_target(moto_server: Emulator) -> StoreTarget:
    bucket = make_s3_bucket(moto_server.endpoint)
    settings = s3_settings(moto_server.endpoint)
    return StoreTarget("s3", f"s3://{bucket}/root", settings, s3_env(settings))


def gcs_settings(endpoint: str) -> dict[str, str]:
    return {"emulator_host": endpoint, "project": "eco-test"}


def make_gcs_bucket(endpoint: str) -> str:
    bucket = _fresh_name("gcs")
    client = storage.Client(
        project="eco-test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
    )
    client.create_bucket(bucket)
    client.close()
    return bucket


@pytest.fixture
def gcs_target(gcs_server: Emulator) -> StoreTarget:
    bucket = make_gcs_bucket(gcs_server.endpoint)
    settings = gcs_settings(gcs_server.endpoint)
    env = {"STORAGE_EMULATOR_HOST": gcs_server.endpoint, "GOOGLE_CLOUD_PROJECT": "eco-test"}
    return StoreTarget("gcs", f"gs://{bucket}/root", settings, env)


def make_azure_container(connection_string: str) -> str:
    container = _fresh_name("az")
    with BlobServiceClient.from_connection_string(connection_string) as service:
        service.create_container(container)
    return container


@pytest.fixture
def azure_target(azurite_server: Emulator) -> StoreTarget:
    assert isinstance(azurite_server, Azurite)
    conn = azurite_server.connection_string
    container = make_azure_container(conn)
    settings = {"connection_string": conn}
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn}
    return StoreTarget("azure", f"az://{container}/root", settings, env)
