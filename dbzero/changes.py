"""What changed between two states: ``db0.select_new``, ``db0.select_deleted``,
``db0.select_modified``, ``db0.SnapshotWindow`` and ``db0.touch``.

A query (``find``, ``Index.select``/``sort``, ``filter``, slices ...) is a recipe bound to
a prefix.  :func:`rebind` re-targets it, sub-queries included, to the read-only view a
snapshot has of the same prefix, so one query built on live data can be evaluated as of
any two states and the results compared member by member.

Modification is exact, per object (not per storage page as in 0.7.0).  Candidates come
from the journal of every state in the window (the keys each commit overwrote): object
records (``objects``), tag memberships (``obj_tags``) and touch marks.  A candidate in both
results counts as modified if, between the two states,

* its fields differ (the stored records compared without their reference count, so a
  new reference *to* the object, or an append to a collection it holds, is no change), or
* its set of tags differs, or
* ``db0.touch`` was called on it (a touch writes the object's record again and the key
  ``pack_oid(0) + b"T" + pack_oid(oid)`` of the ``index`` table, whose write state says
  when it was last touched).

Setting a field to another value and back within the window is therefore not reported;
``touch`` is the way to flag an object explicitly.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import msgpack

from dbzero_ext.postings import IdSet

from . import errors, workspace
from .prefix import F_DEAD, F_GHOST, MemoBase, pack_oid
from .query import Query, Result
from .snapshot import Snapshot, snapshot
from .storage import DUP_DBS, VERSIONED_DBS

__all__ = ["select_new", "select_deleted", "select_modified", "SnapshotWindow", "touch", "rebind"]

TOUCH_PREFIX = pack_oid(0) + b"T"      # index-table keys of touch marks (see module docstring)
_OBJECTS = VERSIONED_DBS["objects"]
_INDEX = VERSIONED_DBS["index"]
_OBJ_TAGS = DUP_DBS["obj_tags"]


# -- re-targeting queries -------------------------------------------------------------------------

def _slots(cls: type) -> List[str]:
    names: List[str] = []
    for klass in cls.__mro__:
        for name in getattr(klass, "__slots__", ()):
            if name not in ("__weakref__", "__dict__") and name not in names:
                names.append(name)
    return names


def _view_px(px: Any, snap: Snapshot) -> Any:
    """The prefix ``px`` (live or a view of any snapshot) as ``snap`` sees it."""
    return snap.view_of(px)


def _rebind_node(node: tuple, snap: Snapshot) -> tuple:
    kind = node[0]
    if kind in ("and", "or"):
        return (kind, [_rebind_node(child, snap) for child in node[1]])
    if kind == "not":
        return ("not", _rebind_node(node[1], snap))
    if kind == "q":
        return ("q", rebind(node[1], snap))
    if kind == "obj":
        # An object is the same object in every view: match it by identity, not by proxy.
        obj = node[1]
        return ("weak", obj._px.uuid, obj._oid)
    return node


def rebind(query: Query, snap: Snapshot) -> Query:
    """A copy of ``query`` that reads as of ``snap`` (the same recipe on the snapshot's
    view of each prefix involved).  Returns ``query`` itself if it already reads ``snap``."""
    if not isinstance(query, Query):
        raise errors.Error("Invalid query object")
    snap._check()
    if getattr(query._px, "snapshot", None) is snap and _bound_to(query, snap):
        return query
    cls = type(query)
    new = cls.__new__(cls)
    for name in _slots(cls):
        try:
            setattr(new, name, getattr(query, name))
        except AttributeError:
            continue
    new._px = _view_px(query._px, snap)
    for name in ("_base", "_query"):
        sub = getattr(query, name, None)
        if isinstance(sub, Query):
            setattr(new, name, rebind(sub, snap))
    root = getattr(query, "_root", None)
    if isinstance(root, tuple):
        new._root = _rebind_node(root, snap)
    ix = getattr(query, "_ix", None)
    if ix is not None:
        view = _view_px(ix._px, snap)
        new._ix = ix if ix._px is view else view.get_object(ix._oid, type(ix)._db0_kind)
        new._px = view
    return new


def _bound_to(query: Query, snap: Snapshot) -> bool:
    for name in ("_base", "_query"):
        sub = getattr(query, name, None)
        if isinstance(sub, Query) and not (getattr(sub._px, "snapshot", None) is snap
                                           and _bound_to(sub, snap)):
            return False
    ix = getattr(query, "_ix", None)
    return ix is None or getattr(ix._px, "snapshot", None) is snap


# -- evaluating as of a snapshot ---------------------------------------------------------------------

class ChangeQuery(Query):
    """The result of ``select_new``/``select_deleted``: fixed members read from a snapshot.

    Iterating yields that snapshot's (read-only) objects; they expire with it.
    """

    __slots__ = ("_members", "_snap")

    def __init__(self, px: Any, members: List[Any], snap: Optional[Snapshot]) -> None:
        super().__init__(px)
        self._members = members
        self._snap = snap

    def _evaluate(self) -> Result:
        members = self._members
        ids = IdSet.from_iterable([m for m in members if type(m) is int])
        if len(ids) == len(members) and all(a < b for a, b in zip(members, members[1:])):
            return Result(ids)          # local ids in ascending order: find's natural order
        return Result(ids, list(members))

    def __repr__(self) -> str:
        return f"<db0.ChangeQuery {len(self._members)} object(s) of {self._px.name!r}>"


def _check_snapshot(snap: Any, what: str) -> None:
    if not isinstance(snap, Snapshot):
        raise TypeError(f"{what} must be a db0 snapshot (or None), not {type(snap).__name__}")
    snap._check()


def _members_at(query: Query, snap: Snapshot) -> Tuple[Query, List[Any]]:
    """(the query re-bound to ``snap``, its members in result order)."""
    bound = rebind(query, snap)
    try:
        result = bound._result()
    except errors.ReferenceError:
        # The query's index did not exist yet at that state: nothing matches.
        return bound, []
    members = result.members()
    return bound, (members.to_list() if isinstance(members, IdSet) else list(members))


def _empty(query: Query) -> ChangeQuery:
    return ChangeQuery(query._px, [], None)


def select_new(query: Query, pre: Optional[Snapshot], post: Snapshot) -> Query:
    """Objects of ``query`` as of ``post`` that it did not return as of ``pre``.

    ``pre=None``: everything ``query`` returns as of ``post``.  The objects come from
    ``post`` (read-only; keep the snapshot open while using them), in query order.
    """
    if not isinstance(query, Query):
        raise errors.Error("Invalid query object")
    _check_snapshot(post, "post")
    bound, after = _members_at(query, post)
    if pre is None:
        return ChangeQuery(bound._px, after, post)
    _check_snapshot(pre, "pre")
    before = set(_members_at(query, pre)[1])
    return ChangeQuery(bound._px, [m for m in after if m not in before], post)


def select_deleted(query: Query, pre: Optional[Snapshot], post: Snapshot) -> Query:
    """Objects ``query`` returned as of ``pre`` but no longer as of ``post`` (deleted, or
    no longer matching, e.g. a tag was removed).  The objects come from ``pre``.
    ``pre=None``: empty."""
    if not isinstance(query, Query):
        raise errors.Error("Invalid query object")
    _check_snapshot(post, "post")
    if pre is None:
        return _empty(query)
    _check_snapshot(pre, "pre")
    bound, before = _members_at(query, pre)
    after = set(_members_at(query, post)[1])
    return ChangeQuery(bound._px, [m for m in before if m not in after], pre)


# -- exact modification ---------------------------------------------------------------------------------

def _fields(raw: Optional[bytes]) -> Any:
    """A stored object record without its reference count (None: no record)."""
    if raw is None:
        return None
    rec = msgpack.unpackb(raw, raw=True, strict_map_key=False)
    return (rec[0], rec[2:])


def _tags(storage: Any, key: bytes) -> List[bytes]:
    return list(storage.dup_list("obj_tags", key))


def _journal_candidates(storage: Any, lo: int, hi: int) -> Set[int]:
    """Ids whose record, tags or touch mark some commit in ``(lo, hi]`` overwrote."""
    out: Set[int] = set()
    tlen = len(TOUCH_PREFIX)
    for state in range(lo + 1, hi + 1):
        for db_id, key in storage.journal(state):
            if db_id == _OBJECTS or db_id == _OBJ_TAGS:
                if len(key) == 8:
                    out.add(int.from_bytes(key, "big"))
            elif db_id == _INDEX and key[:tlen] == TOUCH_PREFIX:
                out.add(int.from_bytes(key[tlen:], "big"))
    return out


class _PrefixDiff:
    """Exact per-object comparison of one prefix between two of its states."""

    def __init__(self, old_px: Any, new_px: Any) -> None:
        self.old = old_px.storage
        self.new = new_px.storage
        self.lo = min(self.old.state, self.new.state)
        self.hi = max(self.old.state, self.new.state)
        self._candidates: Optional[Set[int]] = None

    def candidates(self) -> Set[int]:
        if self._candidates is None:
            self._candidates = _journal_candidates(self.new, self.lo, self.hi)
        return self._candidates

    def modified(self, oid: int) -> bool:
        if self.lo == self.hi or oid not in self.candidates():
            return False
        key = pack_oid(oid)
        old_raw = self.old.get("objects", key)
        new_raw = self.new.get("objects", key)
        if old_raw is None or new_raw is None:
            return old_raw is not new_raw
        if old_raw != new_raw and _fields(old_raw) != _fields(new_raw):
            return True
        if _tags(self.old, key) != _tags(self.new, key):
            return True
        # When was it last touched, as seen at the newer end of the window?
        newer = self.new if self.new.state >= self.old.state else self.old
        mark = newer.get_versioned("index", TOUCH_PREFIX + key)
        return mark is not None and self.lo < mark[0] <= self.hi


def select_modified(query: Query, pre: Optional[Snapshot], post: Snapshot,
                    compare_with: Optional[Callable[[Any, Any], bool]] = None) -> List[Tuple[Any, Any]]:
    """``(old, new)`` pairs for objects that ``query`` returns as of both ``pre`` and
    ``post`` and whose fields or tags changed in between (or that ``db0.touch`` flagged).

    ``old`` is read from ``pre``, ``new`` from ``post``; pairs come in ``post``'s query
    order.  ``compare_with(old, new)`` returning True drops a pair (treat as unchanged).
    ``pre=None``: empty.
    """
    if not isinstance(query, Query):
        raise errors.Error("Invalid query object")
    _check_snapshot(post, "post")
    if pre is None:
        return []
    _check_snapshot(pre, "pre")
    new_q, after = _members_at(query, post)
    old_q, before = _members_at(query, pre)
    if not after or not before:
        return []
    before_set = set(before)
    ws = post._ws
    diffs: Dict[bytes, _PrefixDiff] = {}
    out: List[Tuple[Any, Any]] = []
    with ws.lock:
        for member in after:
            if member not in before_set:
                continue
            if type(member) is int:
                prefix_uuid, oid = new_q._px.uuid, member
            else:
                prefix_uuid, oid = member
            diff = diffs.get(prefix_uuid)
            if diff is None:
                live = ws.prefix_by_uuid(prefix_uuid)
                diff = diffs[prefix_uuid] = _PrefixDiff(pre.view_of(live), post.view_of(live))
            if not diff.modified(oid):
                continue
            old_obj = pre.view_of(ws.prefix_by_uuid(prefix_uuid)).try_get_object(oid)
            new_obj = post.view_of(ws.prefix_by_uuid(prefix_uuid)).try_get_object(oid)
            if old_obj is None or new_obj is None:
                continue
            out.append((old_obj, new_obj))
    if compare_with is not None:
        out = [(a, b) for a, b in out if not compare_with(a, b)]
    return out


# -- windows ------------------------------------------------------------------------------------------------

class SnapshotWindow:
    """``with db0.SnapshotWindow(from_state, to_state=None, prefix=None) as (pre, post):``

    ``pre`` reads the prefix (default: the current one) as of ``from_state`` (None: no
    ``pre``, so ``select_new`` returns everything), ``post`` as of ``to_state`` (None: the
    last committed state).  Other prefixes are seen at their last committed state.  Both
    snapshots close when the block ends.  Invalid states raise StateNotAvailableError on
    entry.
    """

    def __init__(self, from_state: Optional[int], to_state: Optional[int] = None,
                 prefix: Optional[str] = None) -> None:
        self.from_state = from_state
        self.to_state = to_state
        self.prefix = prefix
        self.pre: Optional[Snapshot] = None
        self.post: Optional[Snapshot] = None

    def open(self) -> Tuple[Optional[Snapshot], Snapshot]:
        ws = workspace.current()
        with ws.lock:
            name = ws.prefix_for_read(self.prefix).name
        post = snapshot({name: self.to_state} if self.to_state is not None else None)
        try:
            pre = snapshot({name: self.from_state}) if self.from_state is not None else None
        except BaseException:
            post.close()
            raise
        self.pre, self.post = pre, post
        return pre, post

    def close(self) -> None:
        for snap in (self.pre, self.post):
            if snap is not None:
                snap.close()

    def __enter__(self) -> Tuple[Optional[Snapshot], Snapshot]:
        return self.open()

    def __exit__(self, *exc: Any) -> bool:
        self.close()
        return False

    def __iter__(self) -> Iterator[Optional[Snapshot]]:
        if self.post is None:
            self.open()
        return iter((self.pre, self.post))

    def __repr__(self) -> str:
        return f"<db0.SnapshotWindow {self.from_state}..{self.to_state or 'last'}>"


# -- touch --------------------------------------------------------------------------------------------------

def _touch_hook(px: Any) -> Callable[[Any], None]:
    def flush_touches(batch: Any) -> None:
        touched = px._db0_touched
        if not touched:
            return
        dirty = px.dirty
        for oid in sorted(touched):
            if oid in dirty:            # not rolled back, not deleted since
                batch.put("index", TOUCH_PREFIX + pack_oid(oid), b"")
        touched.clear()
    return flush_touches


def touch(*objs: Any) -> None:
    """Mark memo objects modified without changing them: the next commit writes them, and
    ``select_modified`` reports them for the windows containing that commit.

    Raises TypeError for non-memo arguments, ReferenceError for deleted objects and
    ReadOnlyError for read-only ones (all checked before anything is marked).
    """
    for obj in objs:
        if not isinstance(obj, MemoBase):
            raise TypeError(f"db0.touch expects memo objects, not {type(obj).__name__}")
    for obj in objs:
        if obj._flags & F_DEAD:
            raise errors.ReferenceError("Memo instance expired")
        obj._px._check_obj_writable(obj)
    for obj in objs:
        px = obj._px
        with px.lock:
            if obj._flags & F_GHOST:
                px.load_into(obj)
            px.log_undo(obj)
            if getattr(px, "_db0_touched", None) is None:
                px._db0_touched = set()
                px.index_hooks.append(_touch_hook(px))
            px._db0_touched.add(obj._oid)
            px.mark_dirty(obj)
