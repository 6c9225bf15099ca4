"""`eco controlplane` as a real subprocess that tests can kill and restart."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ECO = Path(sys.executable).with_name("eco")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControlPlaneProcess:
    """One `eco controlplane` on fixed ports, so a restart comes back at the
    same address with the same store."""

    def __init__(self, store_url: str, log_path: Path) -> None:
        assert ECO.exists(), f"{ECO} is missing: run 'make install'"
        self.store_url = store_url
        self.port = free_port()
        self.admin_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(ECO),
                "controlplane",
                "--listen",
                self.address,
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                "--store",
                self.store_url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_serving(timeout)

    def wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"control plane exited with {self.proc.returncode}:\n{self.log()}"
                    )
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"control plane not serving after {timeout}s:\n{self.log()}"
                    )
                time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sqlite_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    plane = ControlPlaneProcess(f"sqlite://{tmp_path / 'cp.db'}", tmp_path / "controlplane.log")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()
