"""The RBAC rules a sidecar's Envoy gets from the intentions decide every
caller as the Python data plane does (``IntentionSet.decide``)."""

from __future__ import annotations

import itertools

import pytest
from envoy.config.rbac.v3 import rbac_pb2

from controlplane.xds._envoy import _Security
from sdk import Intention, IntentionName, IntentionSet

TD = "eco.test"
CALLERS = [
    ("default", "web"),
    ("default", "api"),
    ("team-a", "web"),
    ("team-a", "batch"),
    ("team-b", "web"),
    ("", ""),  # a node
]
DESTINATIONS = [("default", "orders"), ("team-a", "orders"), ("team-b", "billing")]
SIDES = ["*", "web", "api", "team-a/*", "team-a/web", "team-b/*", "orders", "team-a/orders"]


def spiffe(namespace: str, service: str) -> str:
    return f"spiffe://{TD}/ns/{namespace}/svc/{service}" if service else f"spiffe://{TD}/node/n1"


def matches(principal: rbac_pb2.Principal, uri: str) -> bool:
    kind = principal.WhichOneof("identifier")
    if kind == "any":
        return True
    if kind == "not_id":
        return not matches(principal.not_id, uri)
    if kind == "and_ids":
        return all(matches(p, uri) for p in principal.and_ids.ids)
    if kind == "or_ids":
        return any(matches(p, uri) for p in principal.or_ids.ids)
    assert kind == "authenticated", kind
    matcher = principal.authenticated.principal_name
    if matcher.WhichOneof("match_pattern") == "exact":
        return bool(uri == matcher.exact)
    return uri.startswith(matcher.prefix)


def intention_sets() -> list[IntentionSet]:
    found = [IntentionSet((), default_allow=True), IntentionSet((), default_allow=False)]
    pairs = list(itertools.product(SIDES, ["*", "orders", "team-a/*", "team-a/orders"]))
    for i, (source, destination) in enumerate(pairs):
        # One to three intentions of mixed actions, over both defaults.
        chosen = [pairs[(i * k) % len(pairs)] for k in (1, 3, 7)][: 1 + i % 3]
        intentions = [
            Intention(src, dst, allow=(j + i) % 2 == 0) for j, (src, dst) in enumerate(chosen)
        ]
        intentions.append(Intention(source, destination, allow=i % 3 != 0))
        unique = {(x.source, x.destination): x for x in intentions}
        found.append(IntentionSet(tuple(unique.values()), default_allow=i % 2 == 0))
    return found


@pytest.mark.parametrize("intentions", intention_sets())
def test_rbac_decides_as_the_python_data_plane(intentions: IntentionSet) -> None:
    security = _Security(TD, intentions, "eco/node")
    for namespace, service in DESTINATIONS:
        principal = security.allowed(namespace, service)
        for caller in CALLERS:
            source = IntentionName.of(*caller) if caller[1] else ""
            want = intentions.decide(source, IntentionName.of(namespace, service)).allowed
            got = matches(principal, spiffe(*caller))
            assert got == want, (caller, (namespace, service), intentions)


def test_the_more_specific_destination_wins_then_the_default() -> None:
    intentions = IntentionSet(
        (Intention("team-a/*", "orders", allow=True), Intention("team-a/*", "*", allow=False)),
        default_allow=False,
    )
    principal = _Security(TD, intentions, "eco/node").allowed("default", "orders")
    assert matches(principal, spiffe("team-a", "web"))
    assert not matches(principal, spiffe("team-b", "web"))
    assert not matches(principal, spiffe("team-a", "web").replace(TD, "other.test"))


def test_a_changed_intention_rebuilds_only_the_listener_it_is_about() -> None:
    from google.protobuf import struct_pb2

    from controlplane.xds._envoy import EnvoyMesh, plan_of

    def inbound(service: str, port: int) -> dict[str, str | int]:
        return {"name": f"inbound/{service}", "direction": "inbound", "protocol": "http",
                "address": "127.0.0.1", "port": port, "to_address": "127.0.0.1",
                "to_port": port + 1, "service": service, "namespace": "default"}  # fmt: skip

    metadata = struct_pb2.Struct()
    metadata.update({"eco.listeners": [inbound("orders", 9000), inbound("billing", 9100)]})
    current = IntentionSet((), default_allow=True)
    mesh = EnvoyMesh(TD, lambda: current)
    first = plan_of(metadata, mesh)
    assert first is not None and not first.problems
    current = IntentionSet((Intention("web", "orders", allow=False),), default_allow=True)
    mesh.changed()
    second = plan_of(metadata, mesh, first)
    assert second is not None
    orders, billing = "sidecar/inbound/orders", "sidecar/inbound/billing"
    assert second.listeners[billing] is first.listeners[billing]  # not sent again
    assert second.listeners[orders] is not first.listeners[orders]
    assert second.listeners[orders].value != first.listeners[orders].value
    assert second.clusters[orders] is first.clusters[orders]
    # Without a mesh (no CA): no TLS and no RBAC on the listener.
    plain = plan_of(metadata)
    assert plain is not None
    assert b"envoy.transport_sockets.tls" not in plain.listeners[orders].value
    assert b"envoy.transport_sockets.tls" in second.listeners[orders].value
