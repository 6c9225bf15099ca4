"""The store conformance suite (tests/unit/store) against etcd: every test there
that takes a store, run here with this directory's ``backend`` fixture."""

from __future__ import annotations

from tests.unit.store import test_kv, test_leases, test_package, test_watch
from tests.util import conformance_tests

globals().update(
    conformance_tests(
        {"backend", "store", "open_store"}, test_kv, test_leases, test_package, test_watch
    )
)
