"""/metrics off loopback under --acl deny needs a token with operator:metrics:read
(the handler, called with requests built in memory: no sockets)."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from controlplane import ControlPlane, ControlPlaneConfig
from controlplane.acl import AclStore, Authorizer, Policy, parse_rule
from controlplane.store import open_store


async def test_metrics_off_loopback_needs_operator_read() -> None:
    store = open_store("memory://")
    await store.start()
    try:
        acl = AclStore(store)
        _, management = await acl.bootstrap()
        await acl.create_policy(Policy("svc", "", (parse_rule("service:*:read"),)))
        _, narrow = await acl.create_token(["svc"], "")
        config = ControlPlaneConfig(
            admin_listen="10.0.0.5:7401", insecure=True, store_url="memory://"
        )
        plane = ControlPlane(config, store=store)
        plane.authorizer = Authorizer(acl, default_allow=config.acl_mode == "allow", audit=None)

        async def status(headers: dict[str, str]) -> tuple[int, str]:
            response = await plane._metrics(make_mocked_request("GET", "/metrics", headers=headers))
            return response.status, response.text or ""

        assert (await status({}))[0] == 401
        assert (await status({"Authorization": "Bearer nope"}))[0] == 401
        code, text = await status({"Authorization": f"Bearer {narrow}"})
        assert (code, text) == (403, "the token lacks operator:metrics:read\n")
        code, text = await status({"Authorization": f"Bearer {management}"})
        assert code == 200 and management not in text
    finally:
        await store.close()
