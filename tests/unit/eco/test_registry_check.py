"""The checks of ``eco validate --registry`` on given registry contents (the
end-to-end test runs them against a real control plane)."""

from __future__ import annotations

from types import SimpleNamespace

import sdk
from eco._registry_check import Severity, _intentions, _orphans, _services


def test_a_service_with_no_passing_instance_is_an_error_or_with_warnings_a_warning() -> None:
    findings = _services(
        [
            sdk.Service("web", "", instance_count=2, passing_count=1, critical_count=1),
            sdk.Service("db", "shop", instance_count=1, critical_count=1),
            sdk.Service("cache", "", instance_count=2, warning_count=1, unknown_count=1),
        ]
    )
    assert [(f.severity, f.subject, f.message) for f in findings] == [
        (Severity.ERROR, "service shop/db", "no passing instance: 1 instance (1 critical)"),
        (
            Severity.WARNING,
            "service default/cache",
            "no passing instance: 2 instances (1 warning, 1 unknown)",
        ),
    ]


def instance(id: str, node: str, ephemeral: bool = False) -> sdk.Instance:
    liveness = sdk.Liveness.EPHEMERAL if ephemeral else sdk.Liveness.PERSISTENT
    return sdk.Instance(id=id, service="web", address="10.0.0.1", port=80, node=node,
                        liveness=liveness)  # fmt: skip


def test_only_persistent_instances_naming_an_unknown_node_are_orphans() -> None:
    findings = _orphans(
        [
            instance("a", "n1"),
            instance("b", "gone"),
            instance("c", ""),
            instance("d", "gone", ephemeral=True),
        ],
        {"n1"},
    )
    assert [f.subject for f in findings] == ["instance default/web/b"]
    assert findings[0].severity is Severity.WARNING


def test_intentions_name_services_in_every_form() -> None:
    intentions = [
        SimpleNamespace(source="web", destination="shop/db"),
        SimpleNamespace(source="default/web", destination="db"),
        SimpleNamespace(source="*", destination="shop/*"),
        SimpleNamespace(source="team-x/*", destination="*"),
    ]
    findings = _intentions(intentions, {("default", "web"), ("shop", "db")}, {"default", "shop"})
    assert [(f.subject, f.message) for f in findings] == [
        (
            "intention default/web -> db",
            "its destination default/db is not a registered service",
        ),
        ("intention team-x/* -> *", "its source namespace 'team-x' has no services"),
    ]
