"""The typed layer: conversions to and from the wire, and the dict form."""

from __future__ import annotations

import json

import pytest
from ecosystem.v1 import registry_pb2 as pb

import sdk
from tests.unit.sdk.fakes import event, instance_pb


def full_instance() -> sdk.Instance:
    return sdk.Instance(
        id="web-1",
        service="web",
        address="10.0.0.1",
        port=8080,
        namespace="prod",
        node="node-a",
        platform="aws",
        region="eu-west-1",
        zone="eu-west-1a",
        tags=("v2", "canary"),
        metadata={"version": "2.3.1"},
        weight=5,
        health=sdk.HealthStatus.WARNING,
        checks=(sdk.CheckStatus("http", sdk.HealthStatus.WARNING, "slow", 1700000000000),),
        liveness=sdk.Liveness.EPHEMERAL,
        lease_id=42,
        create_revision=3,
        mod_revision=9,
    )


def test_instance_round_trips_through_the_wire() -> None:
    instance = full_instance()
    message = instance.to_proto()
    assert isinstance(message, pb.Instance)
    assert message.health == pb.HEALTH_STATUS_WARNING
    assert message.liveness == pb.LIVENESS_EPHEMERAL
    assert sdk.Instance.from_proto(pb.Instance.FromString(message.SerializeToString())) == instance


def test_instance_fields_are_immutable() -> None:
    instance = full_instance()
    assert instance.tags == ("v2", "canary")
    with pytest.raises(TypeError):
        instance.metadata["version"] = "3"  # type: ignore[index]
    with pytest.raises(AttributeError):
        instance.port = 1  # type: ignore[misc]
    assert hash(instance) == hash(full_instance())


def test_unset_enums_read_as_their_safe_defaults() -> None:
    instance = sdk.Instance.from_proto(instance_pb())
    assert instance.health is sdk.HealthStatus.UNKNOWN
    assert instance.liveness is sdk.Liveness.PERSISTENT
    assert sdk.HealthStatus.from_proto(99) is sdk.HealthStatus.UNKNOWN


@pytest.mark.parametrize("health", list(sdk.HealthStatus))
def test_every_health_status_round_trips(health: sdk.HealthStatus) -> None:
    assert sdk.HealthStatus.from_proto(health.to_proto()) is health


@pytest.mark.parametrize("kind", list(sdk.WatchEventType))
def test_every_watch_event_type_round_trips(kind: sdk.WatchEventType) -> None:
    assert sdk.WatchEventType.from_proto(kind.to_proto()) is kind


def test_unknown_watch_event_type_is_refused() -> None:
    with pytest.raises(ValueError):
        sdk.WatchEventType.from_proto(0)


def test_health_parse_accepts_names_in_any_case() -> None:
    assert sdk.HealthStatus.parse("critical") is sdk.HealthStatus.CRITICAL
    assert sdk.HealthStatus.parse(sdk.HealthStatus.PASSING) is sdk.HealthStatus.PASSING
    with pytest.raises(ValueError, match="PASSING"):
        sdk.HealthStatus.parse("dead")


def test_watch_events_carry_an_instance_only_for_put_and_delete() -> None:
    put = sdk.WatchEvent.from_proto(event("PUT", 7, instance_pb()))
    assert put.type is sdk.WatchEventType.PUT
    assert put.revision == 7
    assert put.instance is not None and put.instance.id == "web-1"
    resync = sdk.WatchEvent.from_proto(event("RESYNC", 7, instance_pb()))
    assert resync.instance is None
    assert sdk.WatchEvent.from_proto(put.to_proto()) == put


def test_dict_form_has_stable_lowercase_keys_and_enum_names() -> None:
    data = full_instance().to_dict()
    assert list(data) == [
        "id",
        "service",
        "namespace",
        "node",
        "platform",
        "region",
        "zone",
        "address",
        "port",
        "tags",
        "metadata",
        "weight",
        "health",
        "checks",
        "liveness",
        "lease_id",
        "create_revision",
        "mod_revision",
    ]
    assert data["health"] == "WARNING"
    assert data["liveness"] == "EPHEMERAL"
    assert data["checks"][0]["status"] == "WARNING"
    json.dumps(data)  # plain JSON types only


def test_watch_event_dict_omits_instance_for_markers() -> None:
    assert sdk.WatchEvent(sdk.WatchEventType.PROGRESS, 12).to_dict() == {
        "type": "PROGRESS",
        "revision": 12,
    }
    put = sdk.WatchEvent(sdk.WatchEventType.PUT, 3, full_instance()).to_dict()
    assert put["instance"]["id"] == "web-1"


def test_service_and_lists() -> None:
    service = sdk.Service("web", "prod", 3, 2, 0, 1, 0)
    assert sdk.Service.from_proto(service.to_proto()) == service
    services = sdk.ServiceList((service,), revision=5)
    assert list(services) == [service] and len(services) == 1
    assert services.to_dict() == {"revision": 5, "services": [service.to_dict()]}
    detail = sdk.ServiceDetail(service, (full_instance(),), 5)
    assert detail.to_dict()["instances"][0]["id"] == "web-1"
    assert detail.to_dict()["name"] == "web"


def test_out_of_range_numbers_are_refused_before_the_wire() -> None:
    with pytest.raises(ValueError, match="port"):
        sdk.Instance(id="a", service="b", address="c", port=-1).to_proto()
