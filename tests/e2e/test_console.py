"""The web console in a real browser: Debian's chromium driven by Playwright.

Each test runs a control plane in this event loop (its admin listener serves
``/ui/``), changes the registry over the gRPC API as a user would, and
watches the page change without a reload. ``ECO_CONSOLE_SCREENSHOTS=DIR``
writes a screenshot of each page into DIR (``docs/images`` for the docs:
docs/console.md says how).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from ecosystem.v1 import agent_pb2 as apb
from ecosystem.v1 import (
    agent_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    intention_pb2,
    intention_pb2_grpc,
    messaging_pb2,
    messaging_pb2_grpc,
    platform_pb2,
    platform_pb2_grpc,
    sync_pb2,
    sync_pb2_grpc,
)
from ecosystem.v1 import registry_pb2 as pb
from ecosystem.v1 import registry_pb2_grpc as registry_grpc
from google.protobuf import struct_pb2

from controlplane import ControlPlane
from controlplane.testing import test_config
from tests.harness.acl import acl_plane, bearer
from tests.harness.ports import free_port
from tests.harness.sidecar import SidecarProcess
from tests.util import assert_eventually

pytestmark = pytest.mark.e2e

#: Pages in the navigation: (path, heading).
PAGES = (
    ("services", "Services"),
    ("nodes", "Nodes"),
    ("platforms", "Platforms"),
    ("bus", "Bus streams"),
    ("routes", "Gateway routes"),
    ("sync", "Sync jobs"),
    ("intentions", "Intentions"),
    ("datasets", "Datasets"),
)
#: The rgb() of a critical row's background (console.css: --critical-bg).
CRITICAL_BG = "rgb(252, 232, 230)"
#: How soon a change must show (docs/console.md: "within one second").
LIVE = 1.0


def _chromium() -> str:
    found = os.environ.get("ECO_CHROMIUM") or shutil.which("chromium")
    found = found or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium on PATH: run scripts/install-chromium.sh (make test does)")
    return found


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[tuple[Any, list[str]]]:
    """A new page of the system chromium, and the console errors it logs."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]' (make tools)")
    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            page.on(
                "console",
                lambda message: (
                    errors.append(f"console: {message.text}") if message.type == "error" else None
                ),
            )
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            yield page, errors
        finally:
            await browser.close()


async def _live(page: Any) -> None:
    """Waits until the page follows the event stream (its footer says "live")."""
    await page.locator("#live-state", has_text=re.compile("^live$")).wait_for(timeout=5_000)


def _instance(service: str, id: str, **fields: Any) -> pb.Instance:
    return pb.Instance(service=service, id=id, address="127.0.0.1", **fields)


async def register(channel: grpc.aio.Channel, inst: pb.Instance, token: str = "") -> int:
    stub = registry_grpc.RegistryServiceStub(channel)
    response = await stub.RegisterInstance(
        pb.RegisterInstanceRequest(instance=inst), metadata=bearer(token)
    )
    return int(response.revision)


def _screenshot_path(name: str) -> str | None:
    """Where a page's screenshot goes (``ECO_CONSOLE_SCREENSHOTS``), if anywhere."""
    target = os.environ.get("ECO_CONSOLE_SCREENSHOTS")
    if not target:
        return None
    Path(target).mkdir(parents=True, exist_ok=True)
    return str(Path(target) / f"console-{name}.png")


async def _screenshot(page: Any, name: str) -> None:
    path = _screenshot_path(name)
    if path is not None:
        await page.screenshot(path=path, full_page=True)


async def _populate(channel: grpc.aio.Channel) -> None:
    """A registry worth looking at: services of each health on two platforms,
    a platform, a bus stream with messages, an intention."""
    await register(channel, _instance("web", "web-1", port=8080, platform="core", tags=["v2"]))
    await register(channel, _instance("web", "web-2", port=8081, platform="cloud", tags=["v2"]))
    await register(
        channel,
        _instance(
            "orders",
            "orders-1",
            port=9000,
            platform="core",
            health=pb.HEALTH_STATUS_WARNING,
            checks=[
                pb.CheckStatus(
                    name="http /healthz",
                    status=pb.HEALTH_STATUS_WARNING,
                    output="HTTP 429 after 212 ms",
                )
            ],
        ),
    )
    await register(
        channel,
        _instance(
            "billing",
            "billing-1",
            port=9100,
            platform="cloud",
            namespace="finance",
            health=pb.HEALTH_STATUS_CRITICAL,
            checks=[
                pb.CheckStatus(
                    name="tcp",
                    status=pb.HEALTH_STATUS_CRITICAL,
                    output="dial tcp 127.0.0.1:9100: connection refused",
                )
            ],
        ),
    )
    platforms = platform_pb2_grpc.PlatformServiceStub(channel)
    for platform in (
        platform_pb2.Platform(
            name="core", kind=platform_pb2.PLATFORM_KIND_CORE, description="the main site"
        ),
        platform_pb2.Platform(
            name="cloud",
            kind=platform_pb2.PLATFORM_KIND_CLOUD,
            provider="aws",
            regions=["eu-west-1"],
        ),
    ):
        await platforms.RegisterPlatform(platform_pb2.RegisterPlatformRequest(platform=platform))
    bus = messaging_pb2_grpc.MessagingServiceStub(channel)
    await bus.AddStream(
        messaging_pb2.AddStreamRequest(
            config=messaging_pb2.StreamConfig(name="orders", subjects=["orders.>"])
        )
    )
    for n in range(3):
        await bus.Publish(messaging_pb2.PublishRequest(subject="orders.created", data=b"%d" % n))
    # Durable consumers: "billing" takes the three and acknowledges none (pending);
    # "audit" gives up on each after one delivery (dead letters).
    for durable, settings in (
        ("billing", {}),
        ("audit", {"max_deliver": 1, "ack_wait_ms": 100}),
    ):
        call = bus.Subscribe(
            messaging_pb2.SubscribeRequest(subject="orders.>", durable=durable, **settings)
        )
        received = 0
        async for response in call:
            received += len(response.batch.messages) or response.HasField("message")
            if received == 3:
                break
        if durable == "audit":

            async def dead_lettered() -> None:
                listed = await bus.ListStreams(messaging_pb2.ListStreamsRequest())
                (audit,) = (c for c in listed.streams[0].consumers if c.name == "audit")
                assert audit.dead_lettered == 3

            await assert_eventually(dead_lettered)
        call.cancel()
    spec = struct_pb2.Struct()
    spec.update(
        {
            "name": "shop",
            "match": {"path_prefix": "/shop"},
            "upstream": "web",
        }
    )
    routes = gateway_pb2_grpc.RouteServiceStub(channel)
    await routes.ApplyRoutes(
        gateway_pb2.ApplyRoutesRequest(routes=[gateway_pb2.Route(name="shop", spec=spec)])
    )
    sync = sync_pb2_grpc.SyncServiceStub(channel)
    await sync.CreateSyncJob(
        sync_pb2.CreateSyncJobRequest(
            job=sync_pb2.SyncJob(
                name="photos",
                source="file:///data/photos",
                destination="s3://backup/photos",
                every_seconds=3600.0,
                on_node="nas-1",
            )
        )
    )
    catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
    await catalog.AddDataset(
        catalog_pb2.AddDatasetRequest(
            dataset=catalog_pb2.Dataset(
                name="orders-eu",
                location="s3://orders-eu/data",
                platform="cloud",
                owner="team-orders",
                tags=["orders"],
            )
        )
    )
    intentions = intention_pb2_grpc.IntentionServiceStub(channel)
    await intentions.CreateIntention(
        intention_pb2.CreateIntentionRequest(
            intention=intention_pb2.Intention(
                source="web", destination="orders", action=intention_pb2.INTENTION_ACTION_ALLOW
            )
        )
    )


async def test_every_page_loads_without_console_errors(tmp_path: Path) -> None:
    async with (
        ControlPlane(test_config()) as plane,
        grpc.aio.insecure_channel(plane.address) as channel,
    ):
        await _populate(channel)
        sidecar = SidecarProcess(
            tmp_path,
            "node-a",
            "services:\n  - {name: cart, address: 127.0.0.1, port: 8300}\n"
            'upstreams:\n  - {service: web, protocol: http, listen: "127.0.0.1:0"}\n',
            plane.address,
            platform="core",
        )
        await sidecar.start()
        try:
            async with browser_page() as (page, errors):
                base = f"http://{plane.admin_address}/ui/"
                await page.goto(base)
                assert page.url.endswith("/ui/services")
                for slug, heading in PAGES:
                    await page.click(f"nav a[href='/ui/{slug}']")
                    await page.wait_for_url(f"**/ui/{slug}")
                    h1 = page.locator("main h1")
                    assert (await h1.inner_text()).startswith(heading)
                    if slug == "nodes":
                        # The sidecar's session: connected and in step.
                        row = page.locator("[data-testid=node-row][data-node=node-a]")
                        await row.locator(".badge", has_text="in step").wait_for(timeout=10_000)
                        assert await page.get_by_test_id("in-step-count").inner_text() == "1"
                    for testid, count in {
                        "platforms": 2,
                        "routes": 1,
                        "intentions": 1,
                        "datasets": 1,
                    }.items():
                        if slug == testid:
                            rows = page.locator(f"[data-testid={testid}] tbody tr")
                            assert await rows.count() == count
                    if slug == "sync":
                        assert await page.locator("[data-testid=sync-job]").count() == 1
                    if slug == "bus":
                        depth = page.locator("[data-stream=orders] [data-testid=stream-depth]")
                        assert (await depth.inner_text()).startswith("3 messages")
                        billing = page.locator("[data-consumer=billing] td")
                        assert await billing.nth(1).inner_text() == "3"  # pending acks
                        audit = page.locator("[data-consumer=audit].health-critical td")
                        assert await audit.nth(3).inner_text() == "3"  # dead letters
                    await _live(page)
                    await _screenshot(page, slug)
                await page.click("nav a[href='/ui/services']")
                await page.click("a[href='/ui/services/finance/billing']")
                output = page.locator("[data-testid=check-row] pre")
                assert "connection refused" in await output.inner_text()
                await _screenshot(page, "service")
                assert errors == []
        finally:
            await sidecar.stop()


async def test_a_registration_shows_up_live_and_a_health_change_recolours_its_row() -> None:
    async with (
        ControlPlane(test_config()) as plane,
        grpc.aio.insecure_channel(plane.address) as channel,
    ):
        await register(channel, _instance("web", "web-1", port=8080))
        async with browser_page() as (page, errors):
            await page.goto(f"http://{plane.admin_address}/ui/services")
            await _live(page)
            await page.evaluate("window.notReloaded = true")
            rows = page.locator("[data-testid=service-row]")
            assert await rows.count() == 1

            await register(channel, _instance("payments", "payments-1", port=9000))
            started = time.monotonic()
            row = page.locator("[data-testid=service-row][data-service=payments]")
            await row.wait_for(timeout=LIVE * 1000)
            assert time.monotonic() - started < LIVE
            assert await row.get_attribute("data-health") == "passing"
            assert await row.evaluate("e => getComputedStyle(e).backgroundColor") != CRITICAL_BG

            await register(
                channel,
                _instance("payments", "payments-1", port=9000, health=pb.HEALTH_STATUS_CRITICAL),
            )
            started = time.monotonic()
            critical = page.locator("[data-service=payments][data-health=critical]")
            await critical.wait_for(timeout=LIVE * 1000)
            assert time.monotonic() - started < LIVE
            assert (
                await critical.evaluate("e => getComputedStyle(e).backgroundColor") == CRITICAL_BG
            )
            assert await page.get_by_test_id("total-critical").inner_text() == "1 critical"
            assert await page.evaluate("window.notReloaded") is True
            assert errors == []


async def test_a_filter_narrows_the_list() -> None:
    async with (
        ControlPlane(test_config()) as plane,
        grpc.aio.insecure_channel(plane.address) as channel,
    ):
        await register(channel, _instance("web", "web-1", port=8080, platform="core"))
        await register(channel, _instance("db", "db-1", port=5432, platform="cloud"))
        await register(
            channel,
            _instance(
                "cache",
                "cache-1",
                port=6379,
                platform="cloud",
                health=pb.HEALTH_STATUS_CRITICAL,
                checks=[
                    pb.CheckStatus(
                        name="exec",
                        status=pb.HEALTH_STATUS_CRITICAL,
                        output="<img src=x onerror=boom()> exit 1",
                    )
                ],
            ),
        )
        async with browser_page() as (page, errors):
            await page.goto(f"http://{plane.admin_address}/ui/services")
            rows = page.locator("[data-testid=service-row]")
            assert await rows.count() == 3
            await page.get_by_test_id("filter-platform").select_option("cloud")
            await page.wait_for_url("**/ui/services?platform=cloud")
            assert sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.service)")) == [
                "cache",
                "db",
            ]
            await page.get_by_test_id("filter-health").select_option("critical")
            await page.wait_for_url("**health=critical**")
            assert await rows.evaluate_all("rs => rs.map(r => r.dataset.service)") == ["cache"]
            # A live change outside the filter leaves the narrowed list as it is.
            await register(channel, _instance("queue", "queue-1", port=5672, platform="core"))
            await register(
                channel,
                _instance(
                    "db", "db-1", port=5432, platform="cloud", health=pb.HEALTH_STATUS_CRITICAL
                ),
            )
            await page.locator("[data-service=db]").wait_for(timeout=LIVE * 1000)
            assert sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.service)")) == [
                "cache",
                "db",
            ]
            # A check's output is shown as text: it never becomes markup on the page.
            await page.click("a[href='/ui/services/default/cache']")
            output = page.locator("[data-testid=check-row] pre")
            assert await output.inner_text() == "<img src=x onerror=boom()> exit 1"
            assert await page.locator("main img").count() == 0
            assert errors == []
            bad = await page.goto(f"http://{plane.admin_address}/ui/services?health=sick")
            assert bad is not None and bad.status == 400
            assert "health must be one of" in await page.get_by_test_id("page-error").inner_text()


async def test_the_nodes_page_counts_the_sidecars_in_step_live() -> None:
    async with (
        ControlPlane(test_config()) as plane,
        grpc.aio.insecure_channel(plane.address) as channel,
    ):
        # A sidecar's session, spoken by hand: it acknowledges when the test says.
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect()
        await call.write(apb.ConnectRequest(hello=apb.Hello(node=apb.Node(id="edge-1"))))
        assert (await call.read()).WhichOneof("message") == "welcome"
        await call.write(
            apb.ConnectRequest(subscribe=apb.Subscribe(services=[apb.ServiceRef(name="orders")]))
        )
        first = (await call.read()).update
        await call.write(apb.ConnectRequest(ack=apb.Ack(version=first.version, nonce=first.nonce)))
        async with browser_page() as (page, errors):
            await page.goto(f"http://{plane.admin_address}/ui/nodes")
            await _live(page)
            in_step = page.get_by_test_id("in-step-count")
            row = page.locator("[data-testid=node-row][data-node=edge-1]")
            await row.locator(".badge", has_text="in step").wait_for(timeout=5_000)
            assert await in_step.inner_text() == "1"

            revision = await register(channel, _instance("orders", "orders-1", port=80))
            update = (await call.read()).update
            assert update.version >= revision
            # Sent, not yet applied: behind, and the count drops, without a reload.
            await row.locator(".badge", has_text="behind").wait_for(timeout=LIVE * 1000)
            assert await in_step.inner_text() == "0"

            await call.write(
                apb.ConnectRequest(ack=apb.Ack(version=update.version, nonce=update.nonce))
            )
            await row.locator(".badge", has_text="in step").wait_for(timeout=LIVE * 1000)
            assert await in_step.inner_text() == "1"
            applied = await row.locator("td").nth(2).inner_text()
            assert int(applied) >= revision
            assert errors == []
        call.cancel()


async def test_the_nodes_page_shows_xds_clients_and_a_nack_live() -> None:
    from controlplane.xds import ENDPOINTS
    from tests.integration.test_xds import Ads

    async with (
        ControlPlane(test_config()) as plane,
        grpc.aio.insecure_channel(plane.address) as channel,
    ):
        await register(channel, _instance("orders", "orders-1", port=80))
        # A proxyless gRPC client's stream, spoken by hand.
        ads = Ads(channel, node="web-1", agent="gRPC Go")
        await ads.ask(ENDPOINTS, ("orders.default",))
        await ads.ask(ENDPOINTS, ("orders.default",), answering=await ads.next())
        async with browser_page() as (page, errors):
            await page.goto(f"http://{plane.admin_address}/ui/nodes")
            await _live(page)
            row = page.locator("[data-testid=xds-row][data-node=web-1]")
            await row.locator(".badge", has_text="ACKED").wait_for(timeout=5_000)
            assert "proxyless" in await row.inner_text()

            await register(channel, _instance("orders", "orders-2", port=81))
            update = await ads.next()
            await ads.ask(
                ENDPOINTS, ("orders.default",), answering=update, error="priority 0 is empty"
            )
            # Rejected: the row turns NACKED and says what and why, without a reload.
            await row.locator(".badge", has_text="NACKED").wait_for(timeout=LIVE * 1000)
            text = await row.inner_text()
            assert "orders.default" in text and "priority 0 is empty" in text, text
            assert errors == []
        await ads.close()


async def test_with_acls_the_console_asks_for_a_token_and_shows_what_it_may_read(
    tmp_path: Path,
) -> None:
    async with acl_plane(tmp_path) as acl:
        plane = acl.plane
        await register(acl.channel, _instance("web", "web-1", port=8080), acl.management)
        await register(acl.channel, _instance("db", "db-1", port=5432), acl.management)
        reader = await acl.token("service:web:read")
        base = f"http://{plane.admin_address}/ui/"
        # Without a browser: the token as a header; the event stream needs one too.
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "events") as refused:
                assert refused.status == 401
            async with http.get(
                base + "services", headers={"Authorization": f"Bearer {reader}"}
            ) as listed:
                assert listed.status == 200
                text = await listed.text()
                assert 'data-service="web"' in text and 'data-service="db"' not in text
        async with browser_page() as (page, errors):
            await page.goto(base + "services")
            await page.wait_for_url("**/ui/login")
            await _screenshot(page, "login")

            await page.get_by_test_id("token-input").fill("not-a-token")
            await page.get_by_test_id("login-submit").click()
            assert "not a valid token" in await page.get_by_test_id("login-error").inner_text()

            await page.get_by_test_id("token-input").fill(reader)
            await page.get_by_test_id("login-submit").click()
            await page.wait_for_url("**/ui/services")
            rows = page.locator("[data-testid=service-row]")
            assert await rows.evaluate_all("rs => rs.map(r => r.dataset.service)") == ["web"]
            direct = await page.goto(base + "services/default/db")
            assert direct is not None and direct.status == 404
            await page.goto(base + "bus")
            assert "may not read the bus" in await page.locator("main").inner_text()

            # Deleting the token logs the page out at its next refresh.
            await page.goto(base + "services")
            await _live(page)
            await acl.delete_token(reader)
            await register(acl.channel, _instance("web", "web-2", port=8081), acl.management)
            await page.wait_for_url("**/ui/login?expired=1", timeout=5_000)
            assert "no longer valid" in await page.get_by_test_id("login-error").inner_text()
            # Only the refusals asked for: the bad token, the page of db, the deleted token.
            refusals = ("status of 401", "status of 404")
            assert [e for e in errors if not any(r in e for r in refusals)] == []


async def test_the_page_says_when_it_has_lost_the_control_plane_and_recovers(
    tmp_path: Path,
) -> None:
    store = f"sqlite://{tmp_path / 'cp.db'}"
    config = test_config(store_url=store, admin_listen=f"127.0.0.1:{free_port()}")
    plane = ControlPlane(config)
    await plane.start()
    try:
        async with grpc.aio.insecure_channel(plane.address) as channel:
            await register(channel, _instance("web", "web-1", port=8080))
        async with browser_page() as (page, _errors):
            await page.goto(f"http://{plane.admin_address}/ui/services")
            await _live(page)
            banner = page.get_by_test_id("stale-banner")
            assert await banner.is_hidden()
            await plane.stop(grace=0)
            await banner.wait_for(state="visible", timeout=5_000)
            assert "may be stale" in await banner.inner_text()
            assert await page.get_by_test_id("live-state").inner_text() == "lost"
            # What it showed stays on the page, marked stale.
            assert await page.locator("[data-service=web]").count() == 1
            await _screenshot(page, "stale")

            # Back on the same ports: the page reconnects by itself and catches up.
            plane = ControlPlane(test_config(store_url=store, admin_listen=config.admin_listen))
            await plane.start()
            async with grpc.aio.insecure_channel(plane.address) as channel:
                await register(channel, _instance("db", "db-1", port=5432))
            await banner.wait_for(state="hidden", timeout=10_000)
            await page.locator("[data-service=db]").wait_for(timeout=5_000)
    finally:
        await plane.stop(grace=0)
