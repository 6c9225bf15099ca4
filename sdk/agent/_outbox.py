"""What the agent session has to send: bounded, coalescing, in priority order.

Not a FIFO of everything. A pending Sync or Subscribe is a flag, and the
message is built when it is written, from the latest state; acks keep only
the newest few (each names its own version); health reports are bounded, and
when they pile up past the bound they are all replaced by one full Sync,
which carries every instance's current health anyway. So a slow or stalled
stream never makes the outbox grow, and what finally goes out is current.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from ecosystem.v1 import agent_pb2

__all__ = ["AgentOutbox"]

logger = logging.getLogger(__name__)

#: Acks kept while unsent; older ones are superseded by newer versions.
MAX_ACKS = 16


class AgentOutbox:
    """The agent session's pending messages; one writer drains it with :meth:`next`."""

    def __init__(self, max_reports: int) -> None:
        if max_reports < 1:
            raise ValueError("max_reports must be at least 1")
        self._max_reports = max_reports
        self._wakeup = asyncio.Event()
        self._sync = False
        self._subscribe = False
        self._acks: deque[agent_pb2.Ack] = deque(maxlen=MAX_ACKS)
        self._reports: deque[agent_pb2.HealthReport] = deque()
        self._overflowed = False
        self._ping: int | None = None
        self._certificates: deque[agent_pb2.CertificateRequest] = deque()
        #: Health reports dropped in favour of a full Sync, for metrics.
        self.reports_dropped = 0

    def reset(self) -> None:
        """A new stream: what the last one queued is moot; state is sent whole."""
        self._acks.clear()
        self._reports.clear()
        self._overflowed = False
        self._ping = None
        self._certificates.clear()
        self._sync = self._subscribe = True
        self._wakeup.set()

    def sync(self) -> None:
        self._sync = True
        self._wakeup.set()

    def ping(self, nonce: int) -> None:
        """Asks the control plane for a Pong (a newer ping replaces an unsent one)."""
        self._ping = nonce
        self._wakeup.set()

    def subscribe(self) -> None:
        self._subscribe = True
        self._wakeup.set()

    def certificate(self, request: agent_pb2.CertificateRequest) -> None:
        """Queues a certificate request (dropped with the stream: the caller
        waits for its answer and asks again)."""
        self._certificates.append(request)
        self._wakeup.set()

    def ack(self, ack: agent_pb2.Ack) -> None:
        self._acks.append(ack)
        self._wakeup.set()

    def report(self, report: agent_pb2.HealthReport) -> None:
        if len(self._reports) >= self._max_reports:
            self.reports_dropped += len(self._reports) + 1
            self._reports.clear()
            if not self._overflowed:
                logger.warning(
                    "more than %d health reports pending; sending one full sync instead",
                    self._max_reports,
                )
                self._overflowed = True
            self.sync()
            return
        self._reports.append(report)
        self._wakeup.set()

    async def wait(self) -> None:
        """Returns once something may be pending."""
        await self._wakeup.wait()
        self._wakeup.clear()

    def next(
        self,
        build_sync: Callable[[], agent_pb2.SyncInstances],
        build_subscribe: Callable[[], agent_pb2.Subscribe],
    ) -> agent_pb2.ConnectRequest | None:
        """The next message to write, or None when nothing is pending.

        Order: a Ping (tiny, and it measures the path), Sync (which makes
        pending reports moot), Subscribe, certificate requests, acks, then
        health reports.
        """
        if self._ping is not None:
            nonce, self._ping = self._ping, None
            return agent_pb2.ConnectRequest(ping=agent_pb2.Ping(nonce=nonce))
        if self._sync:
            self._sync = False
            self._reports.clear()
            return agent_pb2.ConnectRequest(sync=build_sync())
        if self._subscribe:
            self._subscribe = False
            return agent_pb2.ConnectRequest(subscribe=build_subscribe())
        if self._certificates:
            return agent_pb2.ConnectRequest(certificate_request=self._certificates.popleft())
        if self._acks:
            return agent_pb2.ConnectRequest(ack=self._acks.popleft())
        if self._reports:
            return agent_pb2.ConnectRequest(health=self._reports.popleft())
        return None
