"""Fuzzing every RPC of ``ecosystem.v1.MessagingService``: on the control plane, and
through the sidecar's local API, which relays it.

Subscribe is read until its ``subscribed`` (or an error) and then cancelled,
within a second; Request waits at most half a second for a reply that never
comes (nothing answers here). A stream operation that failed (AddStream,
DeleteStream) must leave the streams as they were. The other properties are
those of every fuzz test (:mod:`tests.fuzz.rpc`); afterwards a normal
subscribe and publish still work on the server under test, and a normal
register and get on the control plane.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from ecosystem.v1 import messaging_pb2, messaging_pb2_grpc
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.findings import step_over
from tests.fuzz.profiles import fuzz_settings, run, time_limit
from tests.fuzz.protos import requests
from tests.fuzz.rpc import Outcome, Rpc, Served, call, check_outcome, rpcs
from tests.fuzz.stack import Stack

pytestmark = pytest.mark.fuzz

pb = messaging_pb2
RPCS = rpcs(pb.DESCRIPTOR.services_by_name["MessagingService"])
STREAM_WRITES = {"AddStream", "DeleteStream"}
EXAMPLES = {"Subscribe": 20, "Request": 15}
DEFAULT_EXAMPLES = 25

Seeds = dict[str, list[Message]]


def _stream_config() -> messaging_pb2.StreamConfig:
    return pb.StreamConfig(name="FZ", subjects=["fz.s.>"], max_msgs=1000, max_bytes=1 << 24)


@pytest.fixture(scope="module")
def seeds(stack: Stack) -> Iterator[Seeds]:
    """Valid requests of each RPC, with a stream and a real ack id to name."""
    bus = messaging_pb2_grpc.MessagingServiceStub(stack.plane.served.channel)
    bus.AddStream(pb.AddStreamRequest(config=_stream_config()), timeout=10)
    bus.Publish(pb.PublishRequest(subject="fz.s.seed", data=b"seed"), timeout=10)
    durable = pb.SubscribeRequest(subject="fz.s.>", durable="fz-seed", ack_wait_ms=60_000)
    deliveries = bus.Subscribe(durable, timeout=10)
    ack_id = ""
    for response in deliveries:
        if response.HasField("message"):
            ack_id = response.message.ack_id
            break
    deliveries.cancel()
    assert ack_id, "the seed delivery did not come"
    publish = pb.PublishRequest(
        subject="fz.s.a", data=b"{}", headers={"content-type": "json"}, id="m-1", reply_to="fz.r"
    )
    yield {
        "Publish": [publish, pb.PublishRequest(subject="fz.core", data=b"x")],
        "PublishBatch": [
            pb.PublishBatchRequest(messages=[publish, pb.PublishRequest(subject="fz.b")])
        ],
        "Subscribe": [
            pb.SubscribeRequest(subject="fz.>", queue_group="fz-q"),
            pb.SubscribeRequest(
                subject="fz.s.>",
                durable="fz-d",
                stream="FZ",
                deliver=pb.DELIVER_POLICY_BY_SEQUENCE,
                start_sequence=1,
                ack_wait_ms=1000,
                max_deliver=3,
                max_ack_pending=10,
                backoff_ms=[100, 200],
                batched=True,
            ),
        ],
        "Ack": [
            pb.AckRequest(items=[pb.AckItem(ack_id=ack_id, kind=pb.ACK_KIND_NAK, delay_ms=10)]),
            pb.AckRequest(items=[pb.AckItem(ack_id="fz-unknown", kind=pb.ACK_KIND_ACK)]),
        ],
        "Request": [pb.RequestRequest(subject="fz.req", data=b"?", timeout_ms=50)],
        "AddStream": [
            pb.AddStreamRequest(config=_stream_config()),
            pb.AddStreamRequest(
                config=pb.StreamConfig(
                    name="FZ2",
                    subjects=["fz.t.*", "fz.u"],
                    max_age_ms=60_000,
                    duplicate_window_ms=1000,
                    dead_letter_subject="fz.dlq",
                )
            ),
        ],
        "ListStreams": [pb.ListStreamsRequest()],
        "DeleteStream": [pb.DeleteStreamRequest(name="FZ2")],
    }


def _streams(bus: messaging_pb2_grpc.MessagingServiceStub) -> list[bytes]:
    answer = bus.ListStreams(pb.ListStreamsRequest(), timeout=10)
    return sorted(s.config.SerializeToString(deterministic=True) for s in answer.streams)


def _clean_up(bus: messaging_pb2_grpc.MessagingServiceStub, outcome: Outcome) -> None:
    """Deletes a stream a generated AddStream created (FZ, the seeds' own, stays):
    a stream keeps what is published to it, and neither the streams nor the
    memory bound should grow with the number of examples."""
    for response in outcome.responses:
        if isinstance(response, pb.AddStreamResponse) and response.created:
            name = response.stream.config.name
            if name != "FZ":
                bus.DeleteStream(pb.DeleteStreamRequest(name=name), timeout=10)


_round_trips = itertools.count(1)


def _bus_works(served: Served) -> None:
    """A normal subscribe and publish: the message arrives."""
    bus = messaging_pb2_grpc.MessagingServiceStub(served.channel)
    subject = f"fz.check.{next(_round_trips)}"
    stream = bus.Subscribe(pb.SubscribeRequest(subject=subject), timeout=10)
    try:
        first = next(stream)
        assert first.HasField("subscribed"), first
        bus.Publish(pb.PublishRequest(subject=subject, data=b"ok"), timeout=10)
        second = next(stream)
        assert second.message.data == b"ok", second
    finally:
        stream.cancel()


def _subscribed(response: Message) -> bool:
    return isinstance(response, pb.SubscribeResponse) and response.HasField("subscribed")


@pytest.mark.timeout(time_limit(90))
@pytest.mark.parametrize("via", ["controlplane", "sidecar"])
@pytest.mark.parametrize("rpc", RPCS, ids=str)
def test_messaging_rpc(
    stack: Stack, seeds: Seeds, rpc: Rpc, via: str, request: pytest.FixtureRequest
) -> None:
    served = stack.plane.served if via == "controlplane" else stack.served
    control = messaging_pb2_grpc.MessagingServiceStub(stack.plane.served.channel)

    def still_works() -> None:
        _bus_works(served)
        stack.plane.still_works()

    with served.bounded(still_works):

        @fuzz_settings(EXAMPLES.get(rpc.name, DEFAULT_EXAMPLES))
        @given(st.data())
        def one(data: st.DataObject) -> None:
            request = data.draw(requests(rpc.request, seeds[rpc.name]), label="request")
            step_over(rpc, request)
            before = _streams(control) if rpc.name in STREAM_WRITES else None
            timeout = {"Subscribe": 1.0, "Request": 0.5}.get(rpc.name, 5.0)
            outcome = call(served.channel, rpc, request, timeout=timeout, stop=_subscribed)
            check_outcome(
                outcome,
                exhausted_ok=rpc.name == "Subscribe",
                may_wait=rpc.name == "Request",
                server=served,
            )
            if before is not None and not outcome.ok:
                assert _streams(control) == before, f"{outcome.code.name} yet streams changed"
            _clean_up(control, outcome)
            served.assert_serving()
            if served is not stack.plane.served:
                stack.plane.served.assert_serving()

        run(one, request)
