"""Between the store's types and etcd's messages: keys under a prefix, compares,
operations and their answers. Pure: no I/O.

Store keys, and range and watch prefixes other than ``""``, must start with ``/``:
the etcd key is the store's prefix followed by the store key, so ``/ecosystem``
followed by ``/...`` can never reach into a sibling such as ``/ecosystem2``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ecosystem.etcd import rpc_pb2 as pb

from controlplane.store._protocol import Compare, DeleteOp, Event, EventType, KeyValue, Op, PutOp

__all__ = ["EtcdCodec", "differs_on_missing_key", "holds_on_missing_key", "prefix_end"]

_TARGETS = {
    "version": pb.Compare.VERSION,
    "create_revision": pb.Compare.CREATE,
    "mod_revision": pb.Compare.MOD,
    "value": pb.Compare.VALUE,
    "lease": pb.Compare.LEASE,
}
_RESULTS = {
    "==": pb.Compare.EQUAL,
    "!=": pb.Compare.NOT_EQUAL,
    "<": pb.Compare.LESS,
    ">": pb.Compare.GREATER,
}


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"  # etcd: no upper bound


def holds_on_missing_key(c: Compare) -> bool:
    """Whether a ``value`` compare holds, per the protocol, on a missing key (b"")."""
    assert isinstance(c.value, bytes)
    if c.op == "==":
        return c.value == b""
    if c.op == "!=":
        return c.value != b""
    if c.op == "<":
        return c.value > b""
    return False


def differs_on_missing_key(c: Compare) -> bool:
    """Whether etcd, which fails every value compare on a missing key, would judge
    ``c`` differently from the protocol there."""
    return c.target == "value" and holds_on_missing_key(c)


class EtcdCodec:
    """Encodes and decodes for one key prefix (``""`` or ``/name...``)."""

    def __init__(self, prefix: str) -> None:
        self._ns = prefix.encode()

    # -- keys --------------------------------------------------------------------------

    def key(self, key: str) -> bytes:
        if not isinstance(key, str) or not key.startswith("/"):
            raise ValueError(f"etcd store keys start with '/', got {key!r}")
        return self._ns + key.encode()

    def span(self, prefix: str) -> tuple[bytes, bytes]:
        """The etcd range [key, range_end) of the store keys under ``prefix``."""
        if prefix and not prefix.startswith("/"):
            raise ValueError(f"etcd store prefixes start with '/', got {prefix!r}")
        start = self._ns + (prefix or "/").encode()
        return start, prefix_end(start)

    @property
    def probe_key(self) -> bytes:
        """A key to read when only the answer's revision matters (inside the prefix,
        so that a user allowed only there may read it)."""
        return self._ns + b"/"

    def decode_key(self, raw: bytes) -> str:
        return raw[len(self._ns) :].decode("utf-8", "surrogateescape")

    def decode(self, kv: pb.KeyValue) -> KeyValue:
        return KeyValue(
            self.decode_key(kv.key),
            kv.value,
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease,
        )

    def decode_event(self, event: pb.Event) -> Event:
        if event.type == pb.Event.DELETE:
            kv = KeyValue(self.decode_key(event.kv.key), b"", 0, event.kv.mod_revision, 0)
            kind = EventType.DELETE
        else:
            kv = self.decode(event.kv)
            kind = EventType.PUT
        prev = self.decode(event.prev_kv) if event.HasField("prev_kv") else None
        return Event(kind, kv, prev)

    # -- transactions ------------------------------------------------------------------

    def request_op(self, op: Op) -> pb.RequestOp:
        if isinstance(op, PutOp):
            put = pb.PutRequest(key=self.key(op.key), value=op.value, lease=op.lease, prev_kv=True)
            return pb.RequestOp(request_put=put)
        assert isinstance(op, DeleteOp)
        start, end = self.span(op.key) if op.prefix else (self.key(op.key), b"")
        delete = pb.DeleteRangeRequest(key=start, range_end=end, prev_kv=True)
        return pb.RequestOp(request_delete_range=delete)

    def compare(self, c: Compare) -> pb.Compare:
        key = self.key(c.key)
        if c.target == "exists":
            # etcd has no such target: exists <=> create_revision > 0.
            wanted = (c.op == "==") == bool(c.value)
            result = pb.Compare.GREATER if wanted else pb.Compare.EQUAL
            return pb.Compare(key=key, target=pb.Compare.CREATE, result=result, create_revision=0)
        out = pb.Compare(key=key, target=_TARGETS[c.target], result=_RESULTS[c.op])
        if c.target == "value":
            assert isinstance(c.value, bytes)
            out.value = c.value
        else:
            setattr(out, c.target, int(c.value))
        return out

    def never(self, key: str) -> pb.Compare:
        """A compare that never holds (version < 0)."""
        return pb.Compare(
            key=self.key(key), target=pb.Compare.VERSION, result=pb.Compare.LESS, version=0
        )

    def prev_kvs(
        self, ops: Sequence[Op], responses: Sequence[pb.ResponseOp]
    ) -> tuple[KeyValue | None, ...]:
        """The protocol's ``TxnResult.prev_kvs`` from the answers to ``ops``."""
        out: list[KeyValue | None] = []
        for op, response in zip(ops, responses, strict=True):
            if isinstance(op, PutOp):
                put = response.response_put
                out.append(self.decode(put.prev_kv) if put.HasField("prev_kv") else None)
            elif op.prefix:
                out.extend(self.decode(kv) for kv in response.response_delete_range.prev_kvs)
            else:
                prevs = response.response_delete_range.prev_kvs
                out.append(self.decode(prevs[0]) if prevs else None)
        return tuple(out)
