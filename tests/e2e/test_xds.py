"""xDS across a control-plane restart: `eco controlplane` as a real process
(SQLite store), two grpcio backends in its registry, and a grpcio client
process on ``xds:///orders`` with a bootstrap from ``eco xds bootstrap``.

While the control plane is down the client keeps calling the backends it
knows; once it is back, the client reconnects on its own and follows the
registry again.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.harness.controlplane import ControlPlaneProcess
from tests.integration.test_xds import (
    instance,
    register,
    start_backend,
    write_bootstrap,
    xds_client,
)
from tests.util import assert_eventually

pytestmark = pytest.mark.timeout(120)


async def test_clients_keep_serving_through_a_restart_and_resync(
    sqlite_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    a, b, c = [await start_backend(name) for name in ("a", "b", "c")]
    try:
        await register(sqlite_plane.address, instance(a), instance(b))
        bootstrap = write_bootstrap(tmp_path, sqlite_plane.address, "orders-client-9")
        async with xds_client(bootstrap, "xds:///orders", tmp_path / "client.log") as client:
            await client.replies_from({"a", "b"}, timeout=30)

            sqlite_plane.kill()  # a crash: no goodbye on the stream
            await client.replies_from({"a", "b"})

            sqlite_plane.start()
            await register(sqlite_plane.address, instance(c))
            await client.replies_from({"a", "b", "c"}, timeout=30)

            def resynced() -> None:
                url = f"http://{sqlite_plane.admin_address}/xds"
                with urllib.request.urlopen(url, timeout=5) as response:
                    status = json.load(response)
                [node] = [n for n in status["nodes"] if n["node"] == "orders-client-9"]
                assert node["connected"], node
                eds = node["types"]["ClusterLoadAssignment"]
                assert eds["state"] == "ACKED", eds

            await assert_eventually(resynced, timeout=10)
    finally:
        for backend in (a, b, c):
            await backend.server.stop(0)
