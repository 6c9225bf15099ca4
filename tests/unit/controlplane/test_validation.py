"""Validation rules in isolation: every field named, every problem at once."""

from __future__ import annotations

import pytest
from ecosystem.v1 import registry_pb2 as pb

from controlplane.validation import validate_register
from serving.errors import InvalidArgumentError, to_status


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


# -- hostile input (hardening findings 2 and 3) --------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"service": "web\n"},
        {"namespace": "prod\n"},
        {"id": "web-1\n"},
        {"node": "node-1\n"},
        {"zone": "eu-1a\n"},
        {"address": "db.internal\n"},
        {"address": "10.0.0.1\n"},
        {"tags": ["v1\n"]},
    ],
)
def test_a_trailing_newline_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(**fields))
    [violation] = err.value.violations
    assert violation.field == "instance." + next(iter(fields)) + ("[0]" if "tags" in fields else "")


def test_a_huge_value_is_quoted_as_a_short_excerpt() -> None:
    big = "A" * (1 << 20)
    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(service=big, id=big, metadata={big: big}))
    status = to_status(err.value)
    # The error names every field but never carries the input back.
    assert status.ByteSize() < 4096
    fields = {v.field for v in err.value.violations}
    assert "instance.service" in fields and "instance.id" in fields
    assert any(f.startswith("instance.metadata[") and len(f) < 200 for f in fields)


def test_many_problems_are_counted_not_listed() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(metadata={f"k{i}": "\x00" * 2000 for i in range(60)}))
    violations = err.value.violations
    assert len(violations) == 21
    assert violations[-1].description.startswith("and ")
    assert to_status(err.value).ByteSize() < 8192


def test_too_many_tags_are_reported_once() -> None:
    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(tags=[f"t{i}" for i in range(50_000)]))
    assert [v.field for v in err.value.violations] == ["instance.tags"]


def test_check_outputs_are_bounded_in_all() -> None:
    checks = [
        pb.CheckStatus(name=f"c{i}", status=pb.HEALTH_STATUS_PASSING, output="x" * 4096)
        for i in range(8)
    ]
    validate_register(request(checks=checks))
    many = [
        pb.CheckStatus(name=f"c{i}", status=pb.HEALTH_STATUS_PASSING, output="x" * 4096)
        for i in range(9)
    ]
    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(checks=many))
    assert [v.field for v in err.value.violations] == ["instance.checks"]


def test_a_check_name_with_control_characters_is_refused() -> None:
    checks = [pb.CheckStatus(name="ok\nnot", status=pb.HEALTH_STATUS_PASSING)]
    with pytest.raises(InvalidArgumentError) as err:
        validate_register(request(checks=checks))
    assert [v.field for v in err.value.violations] == ["instance.checks[0].name"]


def test_a_status_fits_in_a_stock_clients_trailers() -> None:
    """A thousand bad items (a batch, say) still give a status that a stock
    client's 8 KiB of trailers can carry: the violations that do not fit are
    counted, every text is cut by bytes (percent- and base64-encoded later)."""
    from serving.errors import FieldViolation

    many = [FieldViolation(f"messages[{i}].subject", "é" * 500) for i in range(1000)]
    status = to_status(InvalidArgumentError(many))
    assert len(status.message.encode()) <= 512
    assert status.ByteSize() < 4096
    from google.rpc import error_details_pb2

    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[-1].description.startswith("and ")
