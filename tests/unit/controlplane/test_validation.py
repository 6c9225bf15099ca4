"""Validation rules in isolation: every field named, every problem at once."""

from __future__ import annotations

import pytest
from ecosystem.v1 import registry_pb2 as pb

from controlplane.errors import InvalidArgumentError, to_status
from controlplane.validation import validate_register


def request(**fields: object) -> pb.RegisterInstanceRequest:
    base: dict[str, object] = dict(id="web-1", service="web", address="10.0.0.1", port=80)
    base.update(fields)
    return pb.RegisterInstanceRequest(instance=pb.Instance(**base))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "::1", "fe80::1", "db.internal", "my-host", "a.b-c.example.com"]
)
def test_good_addresses(address: str) -> None:
    validate_register(request(address=address))


@pytest.mark.parametrize("address", ["", "1.2.3.999", "300", "-x.com", "a..b", "x" * 254, "a b"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(address=address))
    assert [v.field for v in err.value.violations] == ["instance.address"]


def test_status_carries_bad_request_details() -> None:
    from google.rpc import error_details_pb2

    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(port=0, service=""))
    status = to_status(err.value)
    assert status.code == 3  # INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert {v.field for v in bad.field_violations} == {"instance.port", "instance.service"}
