"""`EtcdStore`: the `Store` protocol on etcd v3, for several control-plane replicas.

A thin adapter: revisions are etcd's revisions, leases are etcd's leases, a
transaction is one etcd Txn, a watch is one etcd watch (see `_watch`). Nothing
is cached but the newest revision and compaction point seen, which back the
``revision`` and ``compact_revision`` properties. Docs: docs/store-etcd.md.

Keys. Every key lives under the URL's prefix (``etcd://h/ecosystem``: the store
key ``/a`` is the etcd key ``/ecosystem/a``). Store keys, and range and watch
prefixes other than ``""``, must start with ``/``, so that no range of one prefix
can reach into another (``/ecosystem`` next to ``/ecosystem2``).

Where etcd and the protocol differ, the adapter bridges:

- etcd has no ``exists`` compare: it becomes ``create_revision > 0`` (or ``== 0``);
- etcd fails any ``value`` compare on a missing key, while the protocol compares
  ``b""``: when that matters (``== b""``, ``!= x``, ``< x``), the transaction pins
  whether those keys exist and nests the real one inside (etcd runs it as one
  revision), retrying if a pinned key was created or deleted in between;
- lease TTLs are whole seconds in etcd: ``grant(0.3)`` asks for 1 s, and etcd
  raises any TTL to its minimum (about 1.5 election timeouts);
- etcd does not tell the compaction point; it is found once at start (and again
  after a `Compacted` read) by a binary search over cheap reads.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import AsyncGenerator, Sequence
from typing import Self, TypeVar

import grpc.aio
from ecosystem.etcd import rpc_pb2 as pb
from google.protobuf.message import Message

from controlplane.store._mvcc import validate_compares, validate_ops
from controlplane.store._protocol import (
    Compacted,
    Compare,
    DeleteOp,
    Event,
    KeyValue,
    LeaseNotFound,
    Op,
    PutOp,
    RangeResult,
    StoreClosed,
    StoreError,
    TxnResult,
    WatchBatch,
)

from ._client import (
    COMPACT,
    LEASE_GRANT,
    LEASE_KEEPALIVE,
    LEASE_REVOKE,
    LEASE_TTL,
    RANGE,
    TXN,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Method,
    translate,
)
from ._codec import EtcdCodec, differs_on_missing_key, holds_on_missing_key
from ._config import EtcdConfig, parse_etcd_url
from ._watch import EtcdWatch

__all__ = ["EtcdConfig", "EtcdStore", "parse_etcd_url"]

logger = logging.getLogger(__name__)

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

_COMPACTED = "required revision has been compacted"
_FUTURE = "required revision is a future revision"
_LEASE_NOT_FOUND = "requested lease not found"
# How often a transaction whose pinned keys moved is tried again before giving up.
_PIN_ATTEMPTS = 20


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class EtcdStore:
    """A `Store` on an etcd v3 cluster (see the module docstring)."""

    def __init__(self, config: EtcdConfig | str) -> None:
        self._config = parse_etcd_url(config) if isinstance(config, str) else config
        self._codec = EtcdCodec(self._config.prefix)
        self._client = EtcdClient(self._config)
        self._state = _State.NEW
        self._lifecycle = asyncio.Lock()
        self._revision = 1
        self._compact_revision = 1
        self._watches: set[EtcdWatch] = set()

    @property
    def config(self) -> EtcdConfig:
        return self._config

    def __repr__(self) -> str:
        return f"EtcdStore({self._config.url()!r}, revision={self._revision})"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connects to a member that answers within ``connect_timeout`` and reads the
        current revision and compaction point; raises StoreError if it cannot."""
        async with self._lifecycle:
            if self._state is _State.RUNNING:
                return
            if self._state is not _State.NEW:
                raise RuntimeError("a closed store cannot be started again")
            try:
                await self._client.connect()
                self._state = _State.RUNNING
                await self._refresh_compaction()
            except BaseException:
                self._state = _State.CLOSED
                await self._client.close()
                raise
        logger.info(
            "etcd store started endpoint=%s prefix=%r etcd=%s revision=%d compact_revision=%d",
            self._client.endpoint,
            self._config.prefix,
            self._client.server_version,
            self._revision,
            self._compact_revision,
        )

    async def close(self) -> None:
        """Ends every watch with StoreClosed and closes the channels. Idempotent."""
        async with self._lifecycle:
            if self._state is _State.CLOSED:
                return
            was_running = self._state is _State.RUNNING
            self._state = _State.CLOSED
            for watch in list(self._watches):
                await watch.shutdown()
            await self._client.close()
        if was_running:
            logger.info("etcd store closed revision=%d", self._revision)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_running(self) -> None:
        if self._state is _State.RUNNING:
            return
        if self._state is _State.NEW:
            raise RuntimeError("store not started; call start() or use 'async with'")
        raise StoreClosed("store is closed")

    async def _call(self, method: Method[Req, Resp], request: Req, *, idempotent: bool) -> Resp:
        self._check_running()
        try:
            response = await self._client.call(method, request, idempotent=idempotent)
        except StoreError as exc:
            if self._state is not _State.RUNNING:
                raise StoreClosed("store is closed") from exc
            raise
        header = getattr(response, "header", None)
        if header is not None:
            self.observe_revision(header.revision)
        return response

    # -- what watches need (WatchHost) -------------------------------------------------

    @property
    def client(self) -> EtcdClient:
        return self._client

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    def observe_revision(self, revision: int) -> None:
        if revision > self._revision:
            self._revision = revision

    def observe_compaction(self, revision: int) -> None:
        if revision > self._compact_revision:
            self._compact_revision = revision

    def decode_event(self, event: pb.Event) -> Event:
        return self._codec.decode_event(event)

    # -- reads -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The newest etcd revision this store has seen (in any answer or watch)."""
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    @property
    def watch_count(self) -> int:
        """Number of watches currently open (for diagnostics and tests)."""
        return len(self._watches)

    async def get(self, key: str, *, revision: int = 0) -> KeyValue | None:
        raw = self._codec.key(key)
        response = await self._read(pb.RangeRequest(key=raw, revision=revision), revision)
        return self._codec.decode(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str, *, revision: int = 0, limit: int = 0) -> RangeResult:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        start, end = self._codec.span(prefix)
        request = pb.RangeRequest(key=start, range_end=end, revision=revision, limit=limit)
        response = await self._read(request, revision)
        kvs = tuple(self._codec.decode(kv) for kv in response.kvs)
        return RangeResult(kvs, revision or response.header.revision)

    async def _read(self, request: pb.RangeRequest, revision: int) -> pb.RangeResponse:
        self._check_running()
        if revision < 0:
            raise ValueError(f"revision must be >= 0, got {revision}")
        try:
            return await self._call(RANGE, request, idempotent=True)
        except EtcdError as exc:
            if _COMPACTED in exc.detail:
                raise Compacted(await self._refresh_compaction(revision)) from None
            if _FUTURE in exc.detail:
                raise ValueError(f"revision {revision} is newer than the store") from None
            raise

    async def _readable(self, revision: int) -> bool:
        try:
            await self._call(
                RANGE,
                pb.RangeRequest(key=self._codec.probe_key, revision=revision, count_only=True),
                idempotent=True,
            )
        except EtcdError as exc:
            if _COMPACTED in exc.detail:
                return False
            raise
        return True

    async def _refresh_compaction(self, compacted: int = 0) -> int:
        """Finds etcd's compaction point (the oldest readable revision), given that
        ``compacted`` is known to be gone; also refreshes ``revision``."""
        await self._call(
            RANGE, pb.RangeRequest(key=self._codec.probe_key, count_only=True), idempotent=True
        )
        low = max(self._compact_revision, compacted + 1)
        high = self._revision  # the current revision is always readable
        if low >= high or await self._readable(low):
            self.observe_compaction(min(low, high))
            return self._compact_revision
        # low is gone, high is readable: the oldest readable revision is in (low, high].
        while high - low > 1:
            middle = (low + high) // 2
            if await self._readable(middle):
                high = middle
            else:
                low = middle
        self.observe_compaction(high)
        return self._compact_revision

    # -- writes ------------------------------------------------------------------------

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        return (await self.txn((), (PutOp(key, value, lease),))).revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        result = await self.txn((), (DeleteOp(key, prefix),))
        return sum(1 for kv in result.prev_kvs if kv is not None)

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        self._check_running()
        validate_compares(compares)
        validate_ops(success)
        validate_ops(failure)
        then_ops = [self._codec.request_op(op) for op in success]
        else_ops = [self._codec.request_op(op) for op in failure]
        try:
            if any(differs_on_missing_key(c) for c in compares):
                response = await self._pinned_txn(compares, then_ops, else_ops)
            else:
                request = pb.TxnRequest(
                    compare=[self._codec.compare(c) for c in compares],
                    success=then_ops,
                    failure=else_ops,
                )
                response = await self._call(TXN, request, idempotent=False)
        except EtcdError as exc:
            if _LEASE_NOT_FOUND in exc.detail:
                raise LeaseNotFound(await self._missing_lease([*success, *failure])) from None
            if "duplicate key" in exc.detail:
                raise ValueError(exc.detail) from None
            raise
        ops = success if response.succeeded else failure
        return TxnResult(
            response.succeeded,
            response.header.revision,
            self._codec.prev_kvs(ops, response.responses),
        )

    async def _pinned_txn(
        self,
        compares: Sequence[Compare],
        then_ops: list[pb.RequestOp],
        else_ops: list[pb.RequestOp],
    ) -> pb.TxnResponse:
        """A transaction with value compares that etcd would judge differently on a
        missing key: pins the existence of those keys (outer compares), evaluates the
        compares on missing keys here, and nests the rest (one revision)."""
        keys = sorted({c.key for c in compares if c.target == "value"})
        for _ in range(_PIN_ATTEMPTS):
            missing = {key for key in keys if await self.get(key) is None}
            pins = [
                self._codec.compare(Compare(key, "exists", "==", key not in missing))
                for key in keys
            ]
            inner: list[pb.Compare] = []
            for c in compares:
                if c.target == "value" and c.key in missing:
                    if not holds_on_missing_key(c):
                        inner.append(self._codec.never(c.key))
                else:
                    inner.append(self._codec.compare(c))
            nested = pb.TxnRequest(compare=inner, success=then_ops, failure=else_ops)
            outer = pb.TxnRequest(compare=pins, success=[pb.RequestOp(request_txn=nested)])
            response = await self._call(TXN, outer, idempotent=False)
            if response.succeeded:
                result: pb.TxnResponse = response.responses[0].response_txn
                result.header.CopyFrom(response.header)
                return result
        raise StoreError(f"transaction on {keys} kept racing with writers; gave up")

    async def _missing_lease(self, ops: Sequence[Op]) -> int:
        """Which lease of ``ops`` etcd did not find (it does not say)."""
        leases = list(dict.fromkeys(op.lease for op in ops if isinstance(op, PutOp) and op.lease))
        for lease in leases[:-1]:
            if not await self._lease_exists(lease):
                return lease
        return leases[-1] if leases else 0

    async def compact(self, revision: int) -> None:
        self._check_running()
        if revision <= self._compact_revision:
            return
        try:
            response = await self._call(
                COMPACT, pb.CompactionRequest(revision=revision), idempotent=True
            )
        except EtcdError as exc:
            if _FUTURE in exc.detail:
                raise ValueError(f"cannot compact at {revision}: newer than the store") from None
            if _COMPACTED in exc.detail:
                await self._refresh_compaction(revision - 1)
                return
            raise
        self.observe_revision(response.header.revision)
        self.observe_compaction(revision)

    # -- leases ------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        self._check_running()
        if not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"lease ttl must be > 0, got {ttl}")
        request = pb.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        # A grant repeated after a lost answer leaves at most an unused lease to expire.
        response = await self._call(LEASE_GRANT, request, idempotent=True)
        if response.error:
            raise StoreError(f"etcd LeaseGrant: {response.error}")
        return response.ID

    async def keepalive(self, lease_id: int) -> float:
        self._check_running()
        attempts = len(self._config.endpoints)
        while True:
            try:
                response = await self._keepalive_once(lease_id)
                break
            except EtcdUnavailable:
                attempts -= 1
                if attempts <= 0 or self._state is not _State.RUNNING:
                    raise
                self._client.failover("lease keepalive")
        self.observe_revision(response.header.revision)
        if response.TTL <= 0:
            raise LeaseNotFound(lease_id)
        return float(response.TTL)

    async def _keepalive_once(self, lease_id: int) -> pb.LeaseKeepAliveResponse:
        # One renewal on its own short stream, like etcd's KeepAliveOnce.
        call = self._client.open_stream(LEASE_KEEPALIVE)
        try:
            async with asyncio.timeout(self._config.timeout):
                await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
                await call.done_writing()
                response = await call.read()
        except TimeoutError:
            raise EtcdUnavailable(
                f"etcd LeaseKeepAlive: no answer within {self._config.timeout:g}s"
            ) from None
        except grpc.aio.AioRpcError as exc:
            if self._state is not _State.RUNNING:
                raise StoreClosed("store is closed") from exc
            if await self._client.refresh_token(exc):
                return await self._keepalive_once(lease_id)
            raise translate(LEASE_KEEPALIVE.path, exc) from exc
        finally:
            call.cancel()
        if not isinstance(response, pb.LeaseKeepAliveResponse):
            raise EtcdUnavailable("etcd LeaseKeepAlive: stream ended without an answer")
        return response

    async def revoke(self, lease_id: int) -> None:
        self._check_running()
        try:
            await self._call(LEASE_REVOKE, pb.LeaseRevokeRequest(ID=lease_id), idempotent=True)
        except EtcdError as exc:
            if _LEASE_NOT_FOUND in exc.detail:
                raise LeaseNotFound(lease_id) from None
            raise

    async def lease_ttl(self, lease_id: int) -> tuple[float, float]:
        self._check_running()
        response = await self._call(
            LEASE_TTL, pb.LeaseTimeToLiveRequest(ID=lease_id), idempotent=True
        )
        # -1: etcd no longer has the lease. An expired lease that etcd has not yet
        # revoked still counts as there (puts with it still succeed), with 0 left.
        if response.TTL == -1:
            raise LeaseNotFound(lease_id)
        return float(response.grantedTTL), float(max(response.TTL, 0))

    async def _lease_exists(self, lease_id: int) -> bool:
        response = await self._call(
            LEASE_TTL, pb.LeaseTimeToLiveRequest(ID=lease_id), idempotent=True
        )
        return response.TTL != -1

    # -- watches -----------------------------------------------------------------------

    def watch(
        self, prefix: str, *, start_revision: int = 0, progress_interval: float = 5.0
    ) -> AsyncGenerator[WatchBatch, None]:
        if start_revision < 0:
            raise ValueError(f"start_revision must be >= 0, got {start_revision}")
        if not progress_interval > 0:
            raise ValueError(f"progress_interval must be > 0, got {progress_interval}")
        key, end = self._codec.span(prefix)
        # Resolved now, not at the first iteration, as the protocol asks.
        start = start_revision or self._revision + 1
        session = EtcdWatch(self, key, end, start, progress_interval, self._watches.discard)
        return self._watch(session)

    async def _watch(self, session: EtcdWatch) -> AsyncGenerator[WatchBatch, None]:
        self._check_running()
        self._watches.add(session)
        stream = session.run()
        try:
            async for batch in stream:
                yield batch
        finally:
            await stream.aclose()
