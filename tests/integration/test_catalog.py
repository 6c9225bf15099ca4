"""The data catalog in a real control plane: CatalogService (add, update with
an expected revision, get, list with filters, remove), every field's
validation (an invalid JSON Schema refused where it is wrong), the platform
a dataset names, sync jobs that name datasets (dataset:NAME: refused when
unknown, resolved to the location in each scheduled run), the copies
``GetDataset`` shows, and the rights each call needs under ``--acl deny``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ecosystem.v1 import catalog_pb2 as cpb
from ecosystem.v1 import catalog_pb2_grpc, platform_pb2_grpc, sync_pb2_grpc
from ecosystem.v1 import platform_pb2 as ppb
from ecosystem.v1 import sync_pb2 as spb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from controlplane import ControlPlane
from controlplane.testing import test_config
from tests.harness.acl import acl_plane, bearer
from tests.util import assert_eventually

SCHEMA = json.dumps(
    {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"id": {"type": "string"}},
    }
)


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.BadRequest details: {err.details()}"
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


@pytest.fixture
async def plane() -> AsyncIterator[ControlPlane]:
    async with ControlPlane(test_config()) as cp:
        yield cp


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(plane.address) as channel:
        yield channel


@pytest.fixture
async def stub(channel: grpc.aio.Channel) -> catalog_pb2_grpc.CatalogServiceStub:
    platforms = platform_pb2_grpc.PlatformServiceStub(channel)
    for name, kind in (("aws-eu", ppb.PLATFORM_KIND_CLOUD), ("core", ppb.PLATFORM_KIND_CORE)):
        await platforms.RegisterPlatform(
            ppb.RegisterPlatformRequest(
                platform=ppb.Platform(
                    name=name, kind=kind, provider="aws" if name != "core" else ""
                )
            )
        )
    return catalog_pb2_grpc.CatalogServiceStub(channel)


def dataset(name: str = "orders-eu", **fields: Any) -> cpb.Dataset:
    base: dict[str, Any] = {
        "location": "s3://orders-eu/data",
        "platform": "aws-eu",
        "owner": "team-orders",
        "schema": SCHEMA,
        "tags": ["pii", "orders"],
        "description": "EU orders",
    }
    base.update(fields)
    return cpb.Dataset(name=name, **base)


async def test_add_get_update_remove_with_revisions(
    stub: catalog_pb2_grpc.CatalogServiceStub,
) -> None:
    added = (await stub.AddDataset(cpb.AddDatasetRequest(dataset=dataset()))).dataset
    assert added.create_revision == added.mod_revision > 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AddDataset(cpb.AddDatasetRequest(dataset=dataset()))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS

    got = (await stub.GetDataset(cpb.GetDatasetRequest(name="orders-eu"))).dataset
    assert json.loads(got.schema)["properties"] == {"id": {"type": "string"}}
    assert list(got.tags) == ["pii", "orders"] and not got.copies

    same = await stub.UpdateDataset(
        cpb.UpdateDatasetRequest(dataset=dataset(), expected_revision=added.mod_revision)
    )
    assert not same.changed and same.dataset.mod_revision == added.mod_revision
    moved = await stub.UpdateDataset(
        cpb.UpdateDatasetRequest(
            dataset=dataset(location="s3://orders-eu/v2"), expected_revision=added.mod_revision
        )
    )
    assert moved.changed and moved.dataset.mod_revision > added.mod_revision
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateDataset(
            cpb.UpdateDatasetRequest(dataset=dataset(), expected_revision=added.mod_revision)
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateDataset(cpb.UpdateDatasetRequest(dataset=dataset("nope")))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RemoveDataset(
            cpb.RemoveDatasetRequest(name="orders-eu", expected_revision=added.mod_revision)
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    await stub.RemoveDataset(cpb.RemoveDatasetRequest(name="orders-eu"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetDataset(cpb.GetDatasetRequest(name="orders-eu"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_filters(stub: catalog_pb2_grpc.CatalogServiceStub) -> None:
    await stub.AddDataset(cpb.AddDatasetRequest(dataset=dataset()))
    await stub.AddDataset(
        cpb.AddDatasetRequest(
            dataset=dataset("orders-us", platform="core", tags=["orders"], schema="")
        )
    )
    await stub.AddDataset(
        cpb.AddDatasetRequest(dataset=dataset("clicks", platform="", owner="web", tags=[]))
    )

    async def names(**kw: Any) -> list[str]:
        answer = await stub.ListDatasets(cpb.ListDatasetsRequest(**kw))
        return [d.name for d in answer.datasets]

    assert await names() == ["clicks", "orders-eu", "orders-us"]
    assert await names(platform="aws-eu") == ["orders-eu"]
    assert await names(platform="core") == ["orders-us"]
    assert await names(owner="team-orders") == ["orders-eu", "orders-us"]
    assert await names(tags=["orders"]) == ["orders-eu", "orders-us"]
    assert await names(tags=["orders", "pii"]) == ["orders-eu"]
    assert await names(owner="web", tags=["pii"]) == []


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"name": ""}, "dataset.name", "required"),
        ({"name": "-x"}, "dataset.name", "not a valid dataset name"),
        ({"location": ""}, "dataset.location", "required"),
        ({"location": "ftp://host/x"}, "dataset.location", "known: file://"),
        ({"location": "file://host/x"}, "dataset.location", "file:///absolute/path"),
        ({"location": "s3:///x"}, "dataset.location", "s3://BUCKET"),
        ({"location": "sftp://h:99999/x"}, "dataset.location", "port"),
        ({"platform": "nowhere"}, "dataset.platform", "not a registered platform"),
        ({"platform": "Bad_P"}, "dataset.platform", "DNS label"),
        ({"owner": "o" * 257}, "dataset.owner", "at most 256"),
        ({"schema": "{"}, "dataset.schema", "not JSON"),
        ({"schema": "[1]"}, "dataset.schema", "not a schema"),
        ({"schema": '{"type": "nope"}'}, "dataset.schema", "not a valid JSON Schema at type"),
        (
            {"schema": '{"properties": {"id": {"minLength": -1}}}'},
            "dataset.schema",
            "at properties/id/minLength",
        ),
        ({"tags": ["a b"]}, "dataset.tags[0]", "not a tag"),
        ({"tags": ["a", "a"]}, "dataset.tags[1]", "twice"),
        ({"description": "d" * 1025}, "dataset.description", "at most 1024"),
    ],
)
async def test_invalid_datasets_are_refused_by_field(
    stub: catalog_pb2_grpc.CatalogServiceStub, fields: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AddDataset(cpb.AddDatasetRequest(dataset=dataset(**fields)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    assert field in found and words in found[field], found
    assert not (await stub.ListDatasets(cpb.ListDatasetsRequest())).datasets


async def test_sync_jobs_naming_datasets(
    plane: ControlPlane, channel: grpc.aio.Channel, stub: catalog_pb2_grpc.CatalogServiceStub
) -> None:
    await stub.AddDataset(cpb.AddDatasetRequest(dataset=dataset()))
    await stub.AddDataset(
        cpb.AddDatasetRequest(dataset=dataset("orders-us", location="file:///data/us"))
    )
    sync = sync_pb2_grpc.SyncServiceStub(channel)

    def job(**fields: Any) -> spb.SyncJob:
        base: dict[str, Any] = {
            "name": "nightly",
            "source": "dataset:orders-eu",
            "destination": "dataset:orders-us",
            "every_seconds": 1.0,
            "on_node": "nas-1",
        }
        base.update(fields)
        return spb.SyncJob(**base)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sync.CreateSyncJob(spb.CreateSyncJobRequest(job=job(destination="dataset:nope")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(err.value)
    assert (
        "dataset 'nope'" in found["job.destination"]
        and "not in the catalog" in (found["job.destination"])
    ), found
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sync.CreateSyncJob(spb.CreateSyncJobRequest(job=job(source="dataset:-bad")))
    assert "job.source" in violations(err.value)

    await sync.CreateSyncJob(spb.CreateSyncJobRequest(job=job()))
    stored = (await sync.GetSyncJob(spb.GetSyncJobRequest(name="nightly"))).job
    assert stored.source == "dataset:orders-eu"  # the job keeps the names

    async def first_run() -> spb.SyncRun:
        listed = (await sync.ListSyncRuns(spb.ListSyncRunsRequest(job="nightly"))).runs
        assert listed, "no run scheduled yet"
        return listed[-1]

    run = await assert_eventually(first_run, timeout=10)
    # The run carries the datasets' locations: what the sidecar syncs.
    assert (run.spec.source, run.spec.destination) == ("s3://orders-eu/data", "file:///data/us")
    await sync.ClaimSyncRun(spb.ClaimSyncRunRequest(job="nightly", number=run.number, node="nas-1"))
    await sync.ReportSyncRun(
        spb.ReportSyncRunRequest(
            job="nightly", number=run.number, node="nas-1", status=spb.SYNC_RUN_STATUS_COMPLETED
        )
    )
    eu = (await stub.GetDataset(cpb.GetDatasetRequest(name="orders-eu"))).dataset
    assert [(c.job, c.direction, c.location, c.dataset) for c in eu.copies] == [
        ("nightly", "to", "file:///data/us", "orders-us")
    ]
    assert eu.copies[0].last_synced_run == run.number and eu.copies[0].last_synced_at_ms > 0
    us = (await stub.GetDataset(cpb.GetDatasetRequest(name="orders-us"))).dataset
    assert [(c.direction, c.location) for c in us.copies] == [("from", "s3://orders-eu/data")]

    # A dataset a job names is not removed unless forced; then the next run fails, saying why.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RemoveDataset(cpb.RemoveDatasetRequest(name="orders-us"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "nightly" in (err.value.details() or "")
    await stub.RemoveDataset(cpb.RemoveDatasetRequest(name="orders-us", force=True))

    async def failed_run() -> None:
        listed = (await sync.ListSyncRuns(spb.ListSyncRunsRequest(job="nightly"))).runs
        assert listed[0].number > run.number, "no later run yet"
        assert listed[0].status == spb.SYNC_RUN_STATUS_FAILED
        assert "dataset 'orders-us'" in listed[0].error

    await assert_eventually(failed_run, timeout=10)


async def test_acl_rights(tmp_path: Path) -> None:
    async with acl_plane(tmp_path) as acl:
        stub = catalog_pb2_grpc.CatalogServiceStub(acl.channel)
        admin = bearer(acl.management)
        for name in ("sales-a", "hr-b"):
            await stub.AddDataset(
                cpb.AddDatasetRequest(dataset=cpb.Dataset(name=name, location="file:///d")),
                metadata=admin,
            )
        sales = bearer(await acl.token("dataset:sales-*:write"))
        listed = await stub.ListDatasets(cpb.ListDatasetsRequest(), metadata=sales)
        assert [d.name for d in listed.datasets] == ["sales-a"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetDataset(cpb.GetDatasetRequest(name="hr-b"), metadata=sales)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "dataset:hr-b:read" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RemoveDataset(cpb.RemoveDatasetRequest(name="hr-b"), metadata=sales)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        await stub.RemoveDataset(cpb.RemoveDatasetRequest(name="sales-a"), metadata=sales)
