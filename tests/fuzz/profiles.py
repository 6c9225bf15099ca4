"""Hypothesis settings for the fuzz tests: a short reproducible run, or a long random one.

``ci`` (the default, what ``make test`` runs): few examples per test,
``derandomize`` so that every run draws the same examples (a failure in CI
fails again on a laptop), no example database, no deadline (the servers
share two cores with the rest of the suite). ``fuzz`` (``make fuzz``, that is
``ECO_FUZZ_PROFILE=fuzz``): many times more examples from random seeds,
failing examples saved in ``.hypothesis/`` (ignored by git) and replayed
first on the next run.

The profiles are applied per test (:func:`fuzz_settings`), never loaded as
the default, so that the suite's other property tests keep their own
settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE = os.environ.get("ECO_FUZZ_PROFILE", "ci")
# How many times more examples the long profile draws than the short one.
LONG_SCALE = int(os.environ.get("ECO_FUZZ_SCALE", "50"))

_SLOW = [
    HealthCheck.too_slow,  # real servers answer each example
    HealthCheck.data_too_large,  # a few examples carry 1 MiB strings
    HealthCheck.filter_too_much,
    HealthCheck.function_scoped_fixture,  # tests take no per-example fixtures
]

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW,
)
settings.register_profile(
    "fuzz",
    deadline=None,
    derandomize=False,
    database=DirectoryBasedExampleDatabase(".hypothesis/fuzz"),
    print_blob=True,
    suppress_health_check=_SLOW,
)

if PROFILE not in ("ci", "fuzz"):
    raise ValueError(f"ECO_FUZZ_PROFILE must be ci or fuzz, not {PROFILE!r}")

LONG = PROFILE == "fuzz"


def fuzz_settings(examples: int) -> settings:
    """The current profile with ``examples`` examples (times LONG_SCALE in ``fuzz``)."""
    return settings(
        settings.get_profile(PROFILE), max_examples=examples * (LONG_SCALE if LONG else 1)
    )


def time_limit(seconds: float) -> float:
    """A per-test timeout for ``pytest.mark.timeout``: ``seconds`` in ``ci``, none
    (0) in ``fuzz``, whose length depends on LONG_SCALE."""
    return 0 if LONG else seconds


def run(test: Callable[[], None], request: pytest.FixtureRequest) -> None:
    """Runs ``test``, a ``@given`` function defined inside the pytest test of
    ``request``, with that test's own seed (``ci``) and example database key
    (``fuzz``): the id of the test, parameters included, as Hypothesis's pytest
    plugin gives a parametrized ``@given`` test."""
    inner: Any = getattr(test, "hypothesis").inner_test  # noqa: B009 - set by @given
    inner._hypothesis_internal_add_digest = request.node.nodeid.encode()
    test()
