"""Which broker the control plane tells its sidecars to relay to (``--sidecar-bus``)."""

from __future__ import annotations

import pydantic
import pytest

from controlplane import ControlPlaneConfig


@pytest.mark.parametrize(
    ("bus_url", "sidecar_bus_url", "announced"),
    [
        ("embedded://", "", ""),
        ("nats://10.0.0.5:4222", "", "nats://10.0.0.5:4222"),
        ("nats://a:4222,b:4222", "", "nats://a:4222,b:4222"),
        ("nats://127.0.0.1:4222", "nats://10.0.0.5:4222", "nats://10.0.0.5:4222"),
        ("nats://127.0.0.1:4222", "controlplane", ""),
        ("embedded://", "controlplane", ""),
    ],
)
def test_the_broker_announced_to_sidecars(
    bus_url: str, sidecar_bus_url: str, announced: str
) -> None:
    config = ControlPlaneConfig(bus_url=bus_url, sidecar_bus_url=sidecar_bus_url)
    assert config.announced_bus_url == announced


@pytest.mark.parametrize(
    ("bus_url", "sidecar_bus_url", "problem"),
    [
        ("embedded://", "nats://10.0.0.5:4222", "only when the bus is NATS"),
        ("nats://127.0.0.1:4222", "embedded://", "give a NATS URL"),
        ("nats://127.0.0.1:4222", "10.0.0.5:4222", "give a NATS URL"),
    ],
)
def test_a_sidecar_bus_that_cannot_work_is_refused(
    bus_url: str, sidecar_bus_url: str, problem: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=problem):
        ControlPlaneConfig(bus_url=bus_url, sidecar_bus_url=sidecar_bus_url)
