"""How a token's rules decide: most specific wins, deny beats rules as specific,
namespaces back services, and the defaults of --acl."""

from __future__ import annotations

import pytest

from controlplane.acl import Rule, decide, parse_rule
from controlplane.config import ControlPlaneConfig


def rules(*texts: str) -> list[Rule]:
    return [parse_rule(text) for text in texts]


@pytest.mark.parametrize(
    ("policy", "question", "verdict"),
    [
        (["service:web:write"], ("service", "web", "write"), True),
        (["service:web:write"], ("service", "web", "read"), True),  # write grants read
        (["service:web:read"], ("service", "web", "write"), False),
        (["service:web:write"], ("service", "db", "write"), None),  # no rule: the default
        (["service:web-*:write"], ("service", "web-api", "write"), True),
        (["service:*:read", "service:web:write"], ("service", "web", "write"), True),
        (["service:*:write", "service:web:deny"], ("service", "web", "read"), False),
        (["service:*:deny", "service:web:read"], ("service", "web", "read"), True),  # exact wins
        (["service:web-*:deny", "service:w*:write"], ("service", "web-1", "write"), False),
        (["service:web-*:write", "service:w*:deny"], ("service", "web-1", "write"), True),
        (["service:web:write", "service:web:deny"], ("service", "web", "write"), False),  # tie
        (["bus:orders.*:publish"], ("bus", "orders.eu.created", "publish"), True),
        (["bus:orders.*:publish"], ("bus", "orders.eu.created", "subscribe"), False),
        (["bus:orders.*:write"], ("bus", "orders.x", "subscribe"), True),
        (["bus:orders.*:read"], ("bus", "orders.x", "subscribe"), True),
        (["node:edge-1:write"], ("node", "edge-2", "write"), None),
        (["service:*:write"], ("node", "n1", "write"), None),  # other resources do not count
    ],
)
def test_decisions(policy: list[str], question: tuple[str, str, str], verdict: bool | None) -> None:
    assert decide(rules(*policy), *question) is verdict


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("service:web", "is not RESOURCE:PATTERN:ACCESS"),
        ("thing:web:read", "resource must be one of"),
        ("service:web:publish", "applies to bus rules only"),
        ("service:web:admin", "access must be one of"),
        ("service:we b:read", "pattern must be"),
    ],
)
def test_bad_rules_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_rule(text)


def test_the_default_is_allow_on_loopback_and_deny_off_it() -> None:
    assert ControlPlaneConfig().acl_mode == "allow"
    assert ControlPlaneConfig(listen="0.0.0.0:7400", insecure=True).acl_mode == "deny"
    assert ControlPlaneConfig(admin_listen="10.0.0.5:7401", insecure=True).acl_mode == "deny"
    assert ControlPlaneConfig(acl="deny").acl_mode == "deny"
    assert ControlPlaneConfig(listen="0.0.0.0:7400", insecure=True, acl="allow").acl_mode == "allow"
