"""The bus conformance suite (tests/unit/bus) against the NATS backend: every test
there that takes a broker, run here with this directory's ``backend`` fixture."""

from __future__ import annotations

from tests.unit.bus import test_acks, test_consumers, test_core, test_request, test_streams
from tests.util import conformance_tests

globals().update(
    conformance_tests(
        {"backend", "broker", "brokers"},
        test_acks,
        test_consumers,
        test_core,
        test_request,
        test_streams,
    )
)
