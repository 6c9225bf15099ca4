"""Failures the fuzz tests found that are not fixed yet, so that the fuzz tests step over them.

Each :class:`Finding` says which requests trigger it (``matches``) and where
its regression test is (``tests/fuzz/test_findings.py``, marked strict
xfail). While a finding is open, the fuzz tests reject the examples it
matches instead of failing on them again; once it is fixed, its regression
test passes, strict xfail turns that into a failure, and whoever fixed it
removes the mark there and the entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message
from hypothesis import note, reject

from tests.fuzz.rpc import Rpc


@dataclass(frozen=True)
class Finding:
    name: str
    # Where the fix belongs.
    area: str
    matches: Callable[[str, Message], bool]


OPEN: list[Finding] = []


def step_over(rpc: Rpc, request: Message | bytes | list[Message | bytes]) -> None:
    """Rejects the example when it would trigger an open finding again."""
    finding = open_finding(rpc, request)
    if finding is not None:
        note(f"steps over the open finding: {finding.name}")
        reject()


def open_finding(rpc: Rpc, request: Message | bytes | list[Message | bytes]) -> Finding | None:
    """The open finding ``request`` would trigger again, if any."""
    requests = request if isinstance(request, list) else [request]
    for one in requests:
        message = one
        if isinstance(one, bytes):
            try:
                message = rpc.request.FromString(one)
            except DecodeError:
                continue
        assert isinstance(message, Message)
        for finding in OPEN:
            if finding.matches(rpc.name, message):
                return finding
    return None
