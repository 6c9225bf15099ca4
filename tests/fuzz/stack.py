"""The servers the fuzz tests run against: real `eco` processes on 127.0.0.1 port 0.

A :class:`Plane` is one `eco controlplane --store memory://`; a
:class:`Stack` is a control plane, the :class:`RecordingUpstream` and one
`eco sidecar` in front of them, with:

- an upstream listener ``protocol: http`` for ``fz-web``, whose one instance
  (registered persistent in the control plane) is the recording upstream;
- ``fz-api`` as a plain upstream with two instances, for the local API;
- a local service ``fz-ttl`` with a TTL check named ``ttl``, for UpdateTTL;
- a bus bridge ``protocol: http`` (HTTP, SSE and WebSocket).

Both are the harness's process runners (tests/harness); this module only
configures and seeds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecosystem.v1 import registry_pb2, registry_pb2_grpc

from tests.fuzz.rpc import Served
from tests.fuzz.upstream import RecordingUpstream
from tests.harness.controlplane import ControlPlaneProcess
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

PASSING = registry_pb2.HEALTH_STATUS_PASSING


class Plane:
    """One control plane process and a channel to it."""

    def __init__(self, tmp_path: Path, name: str = "controlplane") -> None:
        self.process = ControlPlaneProcess("memory://", tmp_path / f"{name}.log")
        self.process.start()
        assert self.process.proc is not None
        self.served = Served(name, self.address, self.process.proc.pid, self.process.log)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.served.channel)

    @property
    def address(self) -> str:
        return self.process.address

    def register(self, service: str, id: str, port: int, **fields: Any) -> int:
        """Registers a persistent, passing instance on 127.0.0.1; returns the revision."""
        instance = registry_pb2.Instance(
            id=id, service=service, address="127.0.0.1", port=port, health=PASSING, **fields
        )
        request = registry_pb2.RegisterInstanceRequest(instance=instance)
        return int(self.registry.RegisterInstance(request, timeout=10).revision)

    def revision(self) -> int:
        """The store revision now (every write acknowledged before is in it)."""
        answer = self.registry.ListServices(
            registry_pb2.ListServicesRequest(page_size=1), timeout=10
        )
        return int(answer.revision)

    def still_works(self) -> None:
        """A normal register and get."""
        self.register("fz-check", "fz-check-1", 8080)
        answer = self.registry.GetService(
            registry_pb2.GetServiceRequest(name="fz-check"), timeout=10
        )
        assert [i.id for i in answer.instances] == ["fz-check-1"], answer

    def stop(self) -> None:
        self.served.close()
        self.process.stop()


SIDECAR_BODY = """\
services:
  - name: fz-ttl
    address: 127.0.0.1
    port: 9
    checks: [{{ttl: 1h, name: ttl}}]
upstreams:
  - {{service: fz-web, protocol: http, listen: "{proxy}", timeout: 5s}}
  - {{service: fz-api}}
bridges:
  - protocol: http
    listen: "{bridge}"
    max_body: 65536
    allowed_origins: ["http://fz.example"]
"""

# Quiet timing: one anti-entropy sync every few seconds, nothing else.
TIMING = "sync_interval: 5s\ngrace: 5s\nderegister_critical_after: 10s\n"


class Stack:
    """The session's control plane, recording upstream and sidecar."""

    def __init__(self, tmp_path: Path, plane: Plane, upstream: RecordingUpstream) -> None:
        self.plane = plane
        self.upstream = upstream
        #: where the ``fz-web`` proxy listener and the bus bridge listen, once started
        self.proxy = ""
        self.bridge = ""
        body = SIDECAR_BODY.format(proxy="127.0.0.1:0", bridge="127.0.0.1:0")
        self.sidecar = SidecarProcess(tmp_path, "fz-node", body, plane.address, timing=TIMING)
        self.local: Served | None = None

    async def start(self) -> None:
        self.plane.register("fz-web", "fz-up", self.upstream.port)
        self.plane.register("fz-api", "fz-api-1", 8081)
        self.plane.register("fz-api", "fz-api-2", 8082)
        await self.sidecar.start()
        self.proxy = (await self.sidecar.proxy_addresses())["fz-web"]
        (self.bridge,) = await self.sidecar.bridge_addresses()
        assert self.sidecar.proc is not None
        self.local = Served(
            "sidecar", self.sidecar.local_api, self.sidecar.proc.pid, self.sidecar.log
        )

        async def routable() -> None:
            status = await self.sidecar.status()
            assert {p["name"]: p["endpoints"] for p in status["proxy"]} == {"fz-web": 1}, status

        await assert_eventually(routable, timeout=20)

    @property
    def served(self) -> Served:
        assert self.local is not None
        return self.local

    async def stop(self) -> None:
        if self.local is not None:
            self.local.close()
        await self.sidecar.stop()
