"""The NATS backend's record of durable deliveries (``bus.nats._subscriptions.AckTable``):
what a delivery that comes again means. No server: ack subjects as JetStream
writes them."""

from __future__ import annotations

from bus.nats._jetstream import AckRef, parse_ack_id
from bus.nats._subscriptions import AckTable


def ref(delivered: int, stamp: int, pending: int = 0, sequence: int = 7) -> AckRef:
    found = parse_ack_id(
        f"$JS.ACK.ORDERS.worker.{delivered}.{sequence}.{sequence}.{stamp}.{pending}"
    )
    assert found is not None
    return found


def test_a_redelivery_counts_up_even_when_the_server_forgot_the_first() -> None:
    table = AckTable()
    assert table.delivered(ref(1, 1_000)) == 1
    # After a kill -9 the server may deliver it again as a first delivery.
    assert table.delivered(ref(1, 2_000)) == 2
    assert table.superseded(ref(1, 1_000))


def test_the_same_delivery_twice_is_one_delivery() -> None:
    """Around a server restart the very same delivery (same ack subject) may
    arrive twice: the second copy is dropped (0), not counted as a redelivery,
    so the reader's ack of the first settles the message for good."""
    table = AckTable()
    first = ref(1, 1_000, pending=3)
    assert table.delivered(first) == 1
    assert table.delivered(ref(1, 1_000, pending=3)) == 0
    table.check(first)  # still the pending delivery
    table.settled(first)
    assert table.delivered(ref(1, 1_000, pending=3)) is None  # settled: acknowledged again


def test_a_settled_message_delivered_again_is_settled_again() -> None:
    table = AckTable()
    first = ref(1, 1_000)
    table.delivered(first)
    table.settled(first)
    assert table.delivered(ref(2, 5_000)) is None
