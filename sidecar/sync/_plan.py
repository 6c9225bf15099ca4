"""Deciding what a run does: each path's two listings against the last run's base.

For every path the planner has the entry each side lists now (``S``, ``D``)
and the entry each side held when the two last agreed (``bS``, ``bD``, from
the state database). A side *changed* when its entry differs from its own
base (its own store's size, hashes, version/etag or mtime: never compared
across stores, so precision differences between stores do not matter). Only
when a side changed, or there is no base, are the two sides compared with
each other (size, then a common content hash, then mtime; or hashes with
``--checksum``).

``copy`` and ``mirror`` are one-way: the source wins. ``bisync`` is the
three-way comparison: a change on one side is carried to the other, a change
beats a deletion, and a change on both sides (to different content) is a
conflict settled by the policy. Nothing here touches a store; ``hasher``
(content hashes on demand) is the only I/O.
"""

from __future__ import annotations

import datetime
import posixpath
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from sidecar.sync._spec import ConflictPolicy, Decision, Mode, SyncOptions
from sidecar.sync.connectors._base import MD5, SHA256, Entry

__all__ = [
    "Action",
    "Plan",
    "Planner",
    "conflict_name",
    "make_plan",
    "same_content",
    "unchanged",
]

#: Asks one side for a content hash: (side, path, kind) → hex/base64 or None.
Hasher = Callable[[str, str, str], Awaitable[str | None]]

SOURCE = "source"
DESTINATION = "destination"


def other(side: str) -> str:
    return DESTINATION if side == SOURCE else SOURCE


@dataclass(frozen=True, slots=True)
class Action:
    """One change to make. ``side`` is the side written or deleted on.

    kinds: ``copy`` (from ``other(side)`` onto ``side``), ``mkdir``, ``delete``,
    ``record`` (both sides equal: remember it), ``forget`` (gone from both),
    ``keep-both`` (the loser, ``other(side)`` of the winner ``side``, is kept
    as ``rename`` on both sides, then the winner copied over it), ``queue``
    (a manual conflict).
    """

    kind: str
    path: str
    side: str = DESTINATION
    source: Entry | None = None
    destination: Entry | None = None
    rename: str = ""

    def entry(self, side: str) -> Entry | None:
        return self.source if side == SOURCE else self.destination


#: Decisions kept in a plan (and so in the run report); past it they are counted.
MAX_DECISIONS = 10_000

#: Where a plan's actions go as they are decided (a list, or the run's scratch table).
ActionSink = Callable[[Action], None]


@dataclass(slots=True)
class Plan:
    """What a run will do, in counts, the first ``max_decisions`` decisions,
    and each action handed to ``sink`` as it is decided (nothing here grows
    with the number of paths past that cap)."""

    sink: ActionSink
    decisions: list[Decision] = field(default_factory=list)
    decisions_truncated: int = 0
    max_decisions: int = MAX_DECISIONS
    skipped: int = 0
    conflicts: int = 0
    listed: dict[str, int] = field(default_factory=lambda: {SOURCE: 0, DESTINATION: 0})
    deleted: dict[str, int] = field(default_factory=lambda: {SOURCE: 0, DESTINATION: 0})
    writes: int = 0  # copies, directories and keep-both pairs to make
    copies: int = 0  # of which copies and directories (a dry run's "would copy")
    bytes: int = 0  # bytes the decisions move
    bytes_copied: int = 0  # of which by copies and directories

    def deletes(self, side: str) -> int:
        return self.deleted[side]

    def act(self, action: Action) -> None:
        """An action with no decision of its own (bookkeeping)."""
        self.sink(action)

    def add(self, action: Action, decision: str, reason: str, size: int = 0) -> None:
        self.sink(action)
        if action.kind == "delete":
            self.deleted[action.side] += 1
        elif action.kind in ("copy", "mkdir", "keep-both"):
            self.writes += 1
            if action.kind != "keep-both":
                self.copies += 1
                self.bytes_copied += size
        self.bytes += size
        if len(self.decisions) < self.max_decisions:
            self.decisions.append(Decision(action.path, decision, reason, size))
        else:
            self.decisions_truncated += 1


def unchanged(current: Entry, base: Entry) -> bool:
    """Whether a side still holds what it held at the last agreement."""
    if current.is_dir or base.is_dir:
        return current.is_dir == base.is_dir
    if current.size != base.size:
        return False
    common = set(current.hashes) & set(base.hashes)
    if common:
        return all(current.hashes[k] == base.hashes[k] for k in common)
    if current.version and base.version:
        return current.version == base.version
    if current.etag and base.etag:
        return current.etag == base.etag
    return abs(current.mtime - base.mtime) < 1e-3


def _mtime_window(a: float, b: float) -> float:
    # A store that keeps whole seconds (SFTP, some object metadata) rounds
    # what another keeps to the nanosecond.
    return 1.0 if a == int(a) or b == int(b) else 1e-3


async def same_content(
    src: Entry, dst: Entry, *, checksum: bool, hasher: Hasher, kinds: tuple[str, ...]
) -> bool:
    """Whether the two sides hold the same thing at a path. ``checksum``: by
    content hash (from the listings when both list a common kind, else asked
    of each store), never by mtime; otherwise size, a common listed hash, then
    mtime. ``kinds`` are the hash kinds to ask for, best first."""
    if src.is_dir or dst.is_dir:
        return src.is_dir == dst.is_dir
    if src.size != dst.size:
        return False
    common = [k for k in src.hashes if k in dst.hashes]
    if common:
        return src.hashes[common[0]] == dst.hashes[common[0]]
    if checksum:
        for kind in (*kinds, MD5, SHA256):
            a = await hasher(SOURCE, src.path, kind)
            b = await hasher(DESTINATION, dst.path, kind) if a is not None else None
            if a is not None and b is not None:
                return a == b
        return False  # no hash both sides can give: copy rather than guess
    return abs(src.mtime - dst.mtime) <= _mtime_window(src.mtime, dst.mtime)


def conflict_name(path: str, side: str, now: datetime.datetime) -> str:
    """``dir/name.conflict-<UTC time>-<side>.ext`` for the loser of a conflict."""
    head, name = posixpath.split(path)
    stem, ext = posixpath.splitext(name)
    if not stem:  # ".bashrc": all name, no extension
        stem, ext = name, ""
    stamp = now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return posixpath.join(head, f"{stem}.conflict-{stamp}-{side}{ext}")


def _parents(paths: Iterable[Entry]) -> set[str]:
    found: set[str] = set()
    for entry in paths:
        if entry.is_dir:
            continue
        head = posixpath.dirname(entry.path)
        while head and head not in found:
            found.add(head)
            head = posixpath.dirname(head)
    return found


@dataclass(slots=True)
class Planner:
    """Decides one path at a time, in path order (:meth:`step`), into ``plan``.

    ``occupied(dir)`` says whether a file is listed under a directory on
    either side (such a directory is not deleted, only forgotten)."""

    options: SyncOptions
    plan: Plan
    occupied: Callable[[str], bool]
    hasher: Hasher
    resolutions: Mapping[str, str | None] = field(default_factory=dict)
    inflight: Collection[tuple[str, str]] = ()
    kinds: tuple[str, ...] = ()
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def as_base(self) -> None:
        """A path both sides list exactly as their base (the caller found so
        without building the entries): nothing to decide, in any mode."""
        self.plan.listed[SOURCE] += 1
        self.plan.listed[DESTINATION] += 1
        self.plan.skipped += 1

    async def step(
        self, path: str, s: Entry | None, d: Entry | None, bs: Entry | None, bd: Entry | None
    ) -> None:
        """Plans ``path``: ``s``/``d`` as listed now, ``bs``/``bd`` the base."""
        if s is not None:
            self.plan.listed[SOURCE] += 1
        if d is not None:
            self.plan.listed[DESTINATION] += 1
        if self.options.mode is Mode.BISYNC:
            await self.bisync(path, s, d, bs, bd)
        else:
            await self.one_way(path, s, d, bs, bd)

    async def same(self, s: Entry, d: Entry, *, strict: bool = False) -> bool:
        return await same_content(
            s, d, checksum=self.options.checksum or strict, hasher=self.hasher, kinds=self.kinds
        )

    def copy(self, side: str, s: Entry | None, d: Entry | None, reason: str) -> None:
        entry = d if side == SOURCE else s
        assert entry is not None
        kind = "mkdir" if entry.is_dir else "copy"
        self.plan.add(Action(kind, entry.path, side, s, d), f"{kind}-to-{side}", reason, entry.size)

    def delete(self, side: str, s: Entry | None, d: Entry | None, reason: str) -> None:
        entry = s if side == SOURCE else d
        assert entry is not None
        if entry.is_dir and self.occupied(entry.path):
            # Not empty any more: files are (or will be) under it.
            self.plan.act(Action("forget", entry.path))
            return
        self.plan.add(Action("delete", entry.path, side, s, d), f"delete-{side}", reason)

    async def one_way(
        self, path: str, s: Entry | None, d: Entry | None, bs: Entry | None, bd: Entry | None
    ) -> None:
        if s is None:
            if d is not None and self.options.mode is Mode.MIRROR:
                self.delete(DESTINATION, s, d, "not on the source")
            elif d is None:
                self.plan.act(Action("forget", path))
            else:
                self.plan.skipped += 1  # only on the destination: copy keeps it
            return
        if d is None:
            self.copy(
                DESTINATION, s, d, "new on the source" if bs is None else "not on the destination"
            )
            return
        if bs is not None and bd is not None and unchanged(s, bs) and unchanged(d, bd):
            self.plan.skipped += 1
        elif await self.same(s, d):
            self.plan.skipped += 1
            self.plan.act(Action("record", path, DESTINATION, s, d))
        else:
            changed = bs is None or not unchanged(s, bs)
            self.copy(
                DESTINATION,
                s,
                d,
                "changed on the source" if changed else "changed on the destination",
            )

    async def bisync(
        self, path: str, s: Entry | None, d: Entry | None, bs: Entry | None, bd: Entry | None
    ) -> None:
        if await self.unfinished(path, s, d, bs, bd):
            return
        if bs is None or bd is None:
            if s is not None and d is None:
                self.copy(DESTINATION, s, d, "new on the source")
            elif d is not None and s is None:
                self.copy(SOURCE, s, d, "new on the destination")
            elif s is not None and d is not None:
                if await self.same(s, d, strict=True):
                    self.plan.skipped += 1
                    self.plan.act(Action("record", path, DESTINATION, s, d))
                else:
                    await self.conflict(s, d, "new on both sides, different")
            return
        s_changed = s is None or not unchanged(s, bs)
        d_changed = d is None or not unchanged(d, bd)
        if not s_changed and not d_changed:
            self.plan.skipped += 1
        elif s is None and d is None:
            self.plan.act(Action("forget", path))
        elif s_changed and not d_changed:
            if s is None:
                self.delete(DESTINATION, s, d, "deleted on the source")
            else:
                self.copy(DESTINATION, s, d, "changed on the source")
        elif d_changed and not s_changed:
            if d is None:
                self.delete(SOURCE, s, d, "deleted on the destination")
            else:
                self.copy(SOURCE, s, d, "changed on the destination")
        elif s is None:
            self.copy(
                SOURCE,
                s,
                d,
                "changed on the destination, deleted on the source: a change beats a deletion",
            )
        elif d is None:
            self.copy(
                DESTINATION,
                s,
                d,
                "changed on the source, deleted on the destination: a change beats a deletion",
            )
        elif await self.same(s, d, strict=True):
            self.plan.skipped += 1
            self.plan.act(Action("record", path, DESTINATION, s, d))
        else:
            await self.conflict(s, d, "changed on both sides")

    async def unfinished(
        self, path: str, s: Entry | None, d: Entry | None, bs: Entry | None, bd: Entry | None
    ) -> bool:
        """A side this job was writing when a run died or gave up (the journal
        says so) changed because of *us*, not its user: whatever is there (a
        file renamed into place but not recorded, an upload that failed its
        check) must not travel back to the other side as an edit. The write
        is done again (or found done). True when the path is settled so."""
        for target in (DESTINATION, SOURCE):
            if (path, target) not in self.inflight:
                continue
            ours, theirs = (d, s) if target == DESTINATION else (s, d)
            base = bd if target == DESTINATION else bs
            if ours is None or (base is not None and unchanged(ours, base)):
                continue  # nothing of ours reached it: plan as usual
            if theirs is None:
                self.delete(
                    target, s, d, f"written by an unfinished run; gone from the {other(target)}"
                )
            elif s is not None and d is not None and await self.same(s, d, strict=True):
                self.plan.skipped += 1
                self.plan.act(Action("record", path, DESTINATION, s, d))
            else:
                self.copy(
                    target, s, d, f"a transfer to the {target} that did not finish, done again"
                )
            return True
        return False

    async def conflict(self, s: Entry, d: Entry, why: str) -> None:
        self.plan.conflicts += 1
        policy = self.options.conflict
        resolution = self.resolutions.get(s.path)
        if resolution is not None:
            why = f"{why}; resolved by hand: keep {resolution}"
            policy = {
                "source": ConflictPolicy.SOURCE,
                "destination": ConflictPolicy.DESTINATION,
                "both": ConflictPolicy.KEEP_BOTH,
            }[resolution]
        newer = SOURCE if s.mtime >= d.mtime else DESTINATION
        if policy is ConflictPolicy.MANUAL:
            self.plan.add(
                Action("queue", s.path, DESTINATION, s, d),
                "conflict",
                f"{why}; queued: eco sync resolve JOB {s.path} --keep source|destination|both",
            )
        elif policy is ConflictPolicy.KEEP_BOTH or s.is_dir != d.is_dir:
            loser = other(newer)
            name = conflict_name(s.path, loser, self.now)
            self.plan.add(
                Action("keep-both", s.path, newer, s, d, rename=name),
                "keep-both",
                f"{why}; {newer} kept at the path, {loser}'s version kept as {name}",
                (d if newer == SOURCE else s).size,
            )
        else:
            winner = {
                ConflictPolicy.SOURCE: SOURCE,
                ConflictPolicy.DESTINATION: DESTINATION,
                ConflictPolicy.NEWER: newer,
            }[policy]
            target = other(winner)
            entry = s if winner == SOURCE else d
            self.plan.add(
                Action("copy", s.path, target, s, d),
                f"copy-to-{target}",
                f"{why}; conflict policy {policy.value}: {winner} wins",
                entry.size,
            )


async def make_plan(
    options: SyncOptions,
    source: Mapping[str, Entry],
    destination: Mapping[str, Entry],
    bases: Mapping[str, tuple[Entry | None, Entry | None]],
    *,
    resolutions: Mapping[str, str | None] | None = None,
    inflight: Collection[tuple[str, str]] = (),
    hasher: Hasher,
    kinds: tuple[str, ...] = (),
    now: datetime.datetime | None = None,
) -> tuple[Plan, list[Action]]:
    """The plan of listings held in memory (small sets; the engine streams
    through :class:`Planner` instead), with its actions in path order.
    ``inflight``: (path, side written) of the journal's unfinished transfers."""
    actions: list[Action] = []
    plan = Plan(actions.append)
    occupied = _parents(source.values()) | _parents(destination.values())
    planner = Planner(
        options,
        plan,
        occupied.__contains__,
        hasher,
        resolutions or {},
        inflight,
        kinds,
        now or datetime.datetime.now(datetime.UTC),
    )
    for path in sorted(set(source) | set(destination) | set(bases)):
        await planner.step(
            path, source.get(path), destination.get(path), *bases.get(path, (None, None))
        )
    return plan, actions
