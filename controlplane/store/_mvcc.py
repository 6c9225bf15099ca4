"""Multi-version key-value state: current keys, retained history, reads at a revision.

Pure and synchronous: no leases, no I/O, no asyncio. The engine in `_core` owns one
`MVCCState` and serialises every access to it on the event loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from ._protocol import Compacted, Compare, DeleteOp, Event, EventType, KeyValue, Op, PutOp

__all__ = ["MVCCState", "validate_compares", "validate_ops"]

_INT_TARGETS = frozenset({"version", "create_revision", "mod_revision", "lease"})
_OPS = frozenset({"==", "!=", "<", ">"})


def tombstone(key: str, revision: int) -> KeyValue:
    """The ``kv`` of a DELETE event: the key, no value, the deleting revision."""
    return KeyValue(key=key, value=b"", create_revision=0, mod_revision=revision, version=0)


def validate_compares(compares: Sequence[Compare]) -> None:
    """Raises ValueError/TypeError for a malformed compare (misuse, not a failed compare)."""
    for c in compares:
        if c.op not in _OPS:
            raise ValueError(f"unknown compare op {c.op!r}")
        if c.target == "exists":
            if not isinstance(c.value, bool):
                raise TypeError(f"compare on 'exists' needs a bool, got {c.value!r}")
            if c.op not in ("==", "!="):
                raise ValueError("compare on 'exists' supports only '==' and '!='")
        elif c.target == "value":
            if not isinstance(c.value, bytes):
                raise TypeError(f"compare on 'value' needs bytes, got {c.value!r}")
        elif c.target in _INT_TARGETS:
            if isinstance(c.value, bool) or not isinstance(c.value, int):
                raise TypeError(f"compare on {c.target!r} needs an int, got {c.value!r}")
        else:
            raise ValueError(f"unknown compare target {c.target!r}")


def validate_ops(ops: Sequence[Op]) -> None:
    """Raises ValueError/TypeError for a malformed branch. As in etcd, a key may be put
    at most once per branch and may not also fall under a delete of the same branch."""
    puts: set[str] = set()
    deletes: list[DeleteOp] = []
    for op in ops:
        if isinstance(op, PutOp):
            if not op.key:
                raise ValueError("key must not be empty")
            if not isinstance(op.value, bytes):
                raise TypeError(f"value of {op.key!r} must be bytes, got {type(op.value).__name__}")
            if isinstance(op.lease, bool) or not isinstance(op.lease, int) or op.lease < 0:
                raise ValueError(f"invalid lease {op.lease!r}")
            if op.key in puts:
                raise ValueError(f"duplicate key {op.key!r} in one transaction branch")
            puts.add(op.key)
        elif isinstance(op, DeleteOp):
            if not op.key and not op.prefix:
                raise ValueError("key must not be empty")
            deletes.append(op)
        else:
            raise TypeError(f"not an operation: {op!r}")
    for d in deletes:
        if (d.prefix and any(k.startswith(d.key) for k in puts)) or (
            not d.prefix and d.key in puts
        ):
            raise ValueError(f"delete of {d.key!r} overlaps a put in the same branch")


def _holds(c: Compare, kv: KeyValue | None) -> bool:
    actual: int | bytes | bool
    if c.target == "exists":
        actual = kv is not None
        return (actual == c.value) if c.op == "==" else (actual != c.value)
    if c.target == "value":
        actual = kv.value if kv is not None else b""
    elif kv is None:
        actual = 0
    else:
        actual = getattr(kv, c.target)
    expected = c.value
    if c.op == "==":
        return actual == expected
    if c.op == "!=":
        return actual != expected
    if c.op == "<":
        return actual < expected  # type: ignore[operator]
    return actual > expected  # type: ignore[operator]


class MVCCState:
    """Current state plus the events of every retained revision.

    Each event keeps ``prev_kv``, so the state at an older retained revision is the
    current state with the newer events undone: history is at the same time the
    multi-version index and the watch queue. Revisions are contiguous; every one
    after 1 (the empty store) has a batch of at least one event. Batches are kept
    for revisions ``compact_revision`` .. ``revision``.
    """

    def __init__(self) -> None:
        self._kvs: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted, for prefix ranges
        self._history: dict[int, tuple[Event, ...]] = {}
        self.revision = 1
        self.compact_revision = 1

    def load(
        self,
        revision: int,
        compact_revision: int,
        kvs: Iterable[KeyValue],
        history: Iterable[tuple[int, tuple[Event, ...]]],
    ) -> None:
        self._kvs = {kv.key: kv for kv in kvs}
        self._keys = sorted(self._kvs)
        self._history = {rev: events for rev, events in history if rev >= compact_revision}
        self.revision = revision
        self.compact_revision = compact_revision

    def __len__(self) -> int:
        return len(self._kvs)

    def current(self, key: str) -> KeyValue | None:
        return self._kvs.get(key)

    def events_at(self, revision: int) -> tuple[Event, ...]:
        return self._history.get(revision, ())

    def check_readable(self, revision: int, newest: int) -> None:
        if revision > newest:
            raise ValueError(f"revision {revision} is newer than the store ({newest})")
        if revision < self.compact_revision:
            raise Compacted(self.compact_revision)

    # -- reads -------------------------------------------------------------------------

    def get(self, key: str, revision: int) -> KeyValue | None:
        """The key at ``revision`` (retained, ≤ head): the ``prev_kv`` of the first
        later event on it, or its current state when nothing touched it since."""
        for rev in range(revision + 1, self.revision + 1):
            for ev in self._history.get(rev, ()):
                if ev.kv.key == key:
                    return ev.prev_kv
        return self._kvs.get(key)

    def range(self, prefix: str, revision: int, limit: int) -> tuple[KeyValue, ...]:
        """Keys under ``prefix`` at ``revision`` (retained, ≤ head), in key order."""
        undone: dict[str, KeyValue | None] = {}
        for rev in range(revision + 1, self.revision + 1):
            for ev in self._history.get(rev, ()):
                key = ev.kv.key
                if key.startswith(prefix) and key not in undone:
                    undone[key] = ev.prev_kv
        out: list[KeyValue] = []
        if not undone:
            for key in self._prefix_keys(prefix):
                out.append(self._kvs[key])
                if len(out) == limit:
                    break
            return tuple(out)
        keys = set(self._prefix_keys(prefix))
        keys.update(undone)
        for key in sorted(keys):
            kv = undone[key] if key in undone else self._kvs[key]
            if kv is not None:
                out.append(kv)
                if len(out) == limit:
                    break
        return tuple(out)

    def _prefix_keys(self, prefix: str) -> Iterable[str]:
        keys = self._keys
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            yield keys[i]
            i += 1

    # -- writes ------------------------------------------------------------------------

    def evaluate(self, compares: Sequence[Compare]) -> bool:
        """Whether every compare holds against the current (head) state."""
        return all(_holds(c, self._kvs.get(c.key)) for c in compares)

    def plan(
        self, ops: Sequence[Op], revision: int
    ) -> tuple[tuple[Event, ...], tuple[KeyValue | None, ...]]:
        """The events ``ops`` would produce as ``revision``, and the prev_kvs of the
        transaction result, without changing anything. Ops must be validated."""
        events: list[Event] = []
        prevs: list[KeyValue | None] = []
        # Keys already deleted earlier in this branch (deletes may overlap each other).
        gone: set[str] = set()
        for op in ops:
            if isinstance(op, PutOp):
                prev = self._kvs.get(op.key)
                kv = KeyValue(
                    key=op.key,
                    value=op.value,
                    create_revision=prev.create_revision if prev is not None else revision,
                    mod_revision=revision,
                    version=prev.version + 1 if prev is not None else 1,
                    lease=op.lease,
                )
                events.append(Event(EventType.PUT, kv, prev))
                prevs.append(prev)
            elif op.prefix:
                for key in list(self._prefix_keys(op.key)):
                    if key not in gone:
                        gone.add(key)
                        prev = self._kvs[key]
                        events.append(Event(EventType.DELETE, tombstone(key, revision), prev))
                        prevs.append(prev)
            else:
                prev = None if op.key in gone else self._kvs.get(op.key)
                if prev is not None:
                    gone.add(op.key)
                    events.append(Event(EventType.DELETE, tombstone(op.key, revision), prev))
                prevs.append(prev)
        return tuple(events), tuple(prevs)

    def apply(self, revision: int, events: tuple[Event, ...]) -> None:
        """Installs the (non-empty) batch of ``revision`` = head + 1."""
        if revision != self.revision + 1 or not events:
            raise AssertionError(f"cannot apply revision {revision} on top of {self.revision}")
        kvs, keys = self._kvs, self._keys
        for ev in events:
            key = ev.kv.key
            if ev.type is EventType.PUT:
                if key not in kvs:
                    bisect.insort(keys, key)
                kvs[key] = ev.kv
            elif kvs.pop(key, None) is not None:
                del keys[bisect.bisect_left(keys, key)]
        self._history[revision] = events
        self.revision = revision

    def compact(self, revision: int) -> None:
        """Drops the batches older than ``revision`` (≤ head)."""
        if revision <= self.compact_revision:
            return
        if revision - self.compact_revision > len(self._history):
            self._history = {r: b for r, b in self._history.items() if r >= revision}
        else:
            for rev in range(self.compact_revision, revision):
                self._history.pop(rev, None)
        self.compact_revision = revision
