"""Lazy query objects: the results of ``db0.find``, ``Index.select``/``sort``, ``db0.filter``,
``db0.split_by`` and slices of those.

A query is a recipe, not a result.  Nothing is read until the query is used (``iter``,
``len``, ``bool``, ``q[i]``, or as a criterion of another query), and every use evaluates
it again, so a query sees the writes made since it was built (read-your-writes).  An
iterator works on the result computed when it was created: changing tags or indexes while
iterating is safe and does not affect that iteration.

Evaluation produces a :class:`Result`:

* ``ids`` - an :class:`~dbzero_ext.postings.IdSet` of the matching objects of the query's
  prefix (sorted object ids), which is what set algebra (AND/OR/NOT) works on;
* ``order`` - ``None`` when the result is in ascending object-id order (``find`` results:
  creation order), otherwise a list of *members* in result order (index order for
  ``select``/``sort``).  A member is an ``int`` object id of the query's prefix, or a
  ``(prefix_uuid, oid)`` tuple for an object of another prefix (cross-prefix index entries).

Turning ids into objects ("materialising") never reads a record for objects already in
memory.  For the others the class is found from the class postings (every object carries
its class and base classes as default tags ``b"C" + class id``): the deepest class whose
posting contains the id is the object's class, so ghosts are created without reading
records.  Objects whose class tags were edited by hand carry the marker tag ``b"X"`` and
are resolved by reading their record, as are objects of ``no_default_tags`` classes.
"""

from __future__ import annotations

import weakref
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from dbzero_ext.postings import IdSet, difference, intersect, union, union_many

from dbzero_ext.query import (all_ints, compact, live_objects, place_live,
                              place_made)

from . import errors
from .prefix import F_DEAD, FIRST_USER_CLASS_ID, MemoBase, Prefix

EMPTY = IdSet.empty()
CHUNK = 2048
MARKER_KEY = b"X"          # objects whose class tags were changed explicitly
CLASS_TAG = 0x43           # b"C"

Member = Union[int, Tuple[bytes, int]]


class Result:
    """An evaluated query: ``ids`` (IdSet of local ids) and ``order`` (None or members)."""

    __slots__ = ("ids", "order")

    def __init__(self, ids: IdSet, order: Optional[list] = None) -> None:
        self.ids = ids
        self.order = order

    def __len__(self) -> int:
        return len(self.ids) if self.order is None else len(self.order)

    def members(self) -> Sequence[Member]:
        return self.ids if self.order is None else self.order


# -- committed postings, cached per storage state ----------------------------------------

_POSTING_CACHE_LIMIT = 32 << 20     # cached ids per storage (8 bytes each: 256 MiB)
_posting_cache: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()


def _decode_postings(raw: bytes, key: bytes) -> IdSet:
    if not raw:
        return EMPTY
    klen = len(key)
    # Storage.dup_values may hand back LMDB "multiple" records (key + 8-byte value) or
    # bare values.  A record starts with the tag key, whose first byte is never the first
    # byte of a big-endian object id below 2**56, so the two cannot be confused.
    if raw[:klen] == key and len(raw) % (klen + 8) == 0:
        return IdSet.from_be_records(raw, klen + 8, klen)
    return IdSet.from_be_bytes(raw)


def committed_ids(px: Any, key: bytes) -> IdSet:
    """Committed members of a tag, cached until the prefix's storage state changes."""
    storage = px.storage
    state = storage.state
    entry = _posting_cache.get(storage)
    if entry is None or entry[0] != state:
        entry = [state, {}, 0]
        _posting_cache[storage] = entry
    ids = entry[1].get(key)
    if ids is None:
        ids = _decode_postings(px.tags.committed_members(key), key)
        if entry[2] + len(ids) > _POSTING_CACHE_LIMIT:
            entry[1].clear()
            entry[2] = 0
        entry[1][key] = ids
        entry[2] += len(ids)
    return ids


def effective_ids(px: Any, key: bytes) -> IdSet:
    """Members of a tag including uncommitted changes (read-your-writes)."""
    ids = committed_ids(px, key)
    pending = px.tags.pending_for(key)
    if pending:
        adds = [oid for oid, present in pending.items() if present]
        if len(adds) != len(pending):
            removed = IdSet.from_iterable([oid for oid, present in pending.items() if not present])
            ids = difference(ids, removed)
        if adds:
            ids = union(ids, IdSet.from_iterable(adds))
    return ids


def class_key(class_id: int) -> bytes:
    return b"C" + class_id.to_bytes(4, "big")


# -- materialising ------------------------------------------------------------------------

class Materializer:
    """Turns object ids of one prefix into proxies; caches class postings for its lifetime
    (one iteration), so an iteration sees the state at its start."""

    __slots__ = ("px", "_classes", "_marker")

    def __init__(self, px: Any) -> None:
        self.px = px
        self._classes: Optional[List[Tuple[int, IdSet]]] = None
        self._marker: Optional[IdSet] = None

    def _load_classes(self) -> None:
        px = self.px
        infos = sorted(px.class_infos(), key=lambda info: len(info.base_ids), reverse=True)
        classes = []
        for info in infos:
            ids = effective_ids(px, class_key(info.class_id))
            if ids:
                classes.append((info.class_id, ids))
        self._classes = classes
        self._marker = effective_ids(px, MARKER_KEY)

    def objects(self, oids: List[int]) -> List[Any]:
        """Proxies for local ``oids`` in the same order (None for ids that do not exist)."""
        px = self.px
        out, missing = px.identity_hits(oids if type(oids) is list else list(oids))
        if missing:
            with px.lock:
                made = self._ghosts(IdSet.from_iterable([oids[i] for i in missing]))
                place_made(out, missing, oids, made, px.try_get_object)
        return out

    def live(self, oids: List[int]) -> List[Any]:
        """The live objects of local ``oids``, in order (missing and dead ones skipped)."""
        px = self.px
        out, missing = px.live_hits(oids if type(oids) is list else list(oids), F_DEAD)
        if missing:
            place_live(out, missing, self.objects([oids[i] for i in missing]))
        return compact(out)

    def _ghosts(self, ids: IdSet) -> Dict[int, Any]:
        """Ghost proxies for the ids whose class the class postings tell (none loaded)."""
        px = self.px
        if self._classes is None:
            self._load_classes()
        made: Dict[int, Any] = {}
        remaining = ids
        if self._marker:
            remaining = difference(remaining, self._marker)
        fast = type(px).get_object is Prefix.get_object and type(px).register is Prefix.register
        for class_id, posting in self._classes:
            if not remaining:
                break
            found = intersect(remaining, posting)
            if not found:
                continue
            remaining = difference(remaining, found)
            group = found.to_list()
            if fast and class_id >= FIRST_USER_CLASS_ID:
                cls = px.class_by_id(class_id).cls
                objs = px.make_ghosts(group, cls)
            else:
                objs = [px.get_object(oid, class_id) for oid in group]
            made.update(zip(group, objs))
        return made

    def foreign(self, member: Tuple[bytes, int]) -> Any:
        prefix_uuid, oid = member
        try:
            other = self.px.workspace.prefix_by_uuid(prefix_uuid, auto_open=True)
        except errors.PrefixNotFoundError:
            return None
        with other.lock:
            return other.try_get_object(oid)


def _alive(obj: Any) -> bool:
    if obj is None:
        return False
    if isinstance(obj, MemoBase):
        return not (obj._flags & F_DEAD)
    return not getattr(obj, "_db0_dead", False)


def iter_objects(px: Any, members: Sequence[Member], mat: Optional[Materializer] = None) -> Iterator[Any]:
    """Objects for ``members`` (an IdSet or a list of members), in order, skipping the dead."""
    mat = mat or Materializer(px)
    n = len(members)
    for start in range(0, n, CHUNK):
        chunk = members[start:start + CHUNK]
        if isinstance(chunk, IdSet):
            yield from mat.live(chunk.to_list())
            continue
        if type(chunk) is list and all_ints(chunk):
            yield from mat.live(chunk)
            continue
        if all(type(m) is int for m in chunk):
            objs = mat.objects(chunk)
        else:
            local = [m for m in chunk if type(m) is int]
            found = iter(mat.objects(local))
            objs = [next(found) if type(m) is int else mat.foreign(m) for m in chunk]
        yield from live_objects(objs)


def object_at(px: Any, member: Member) -> Any:
    mat = Materializer(px)
    if type(member) is int:
        obj = mat.objects([member])[0]
    else:
        obj = mat.foreign(member)
    if not _alive(obj):
        raise errors.ReferenceError("Memo instance expired")
    return obj


def member_of(obj: Any, px: Any) -> Optional[Member]:
    """The member value of a memo object relative to prefix ``px``."""
    if obj._px is px:
        return obj._oid
    return (obj._px.uuid, obj._oid)


# -- query objects --------------------------------------------------------------------------

class Query:
    """Base of all lazy queries.  Subclasses implement :meth:`_evaluate`."""

    __slots__ = ("_px", "__weakref__")

    def __init__(self, px: Any) -> None:
        self._px = px

    # subclasses -------------------------------------------------------------------------
    def _evaluate(self) -> Result:
        raise NotImplementedError

    # evaluation helpers --------------------------------------------------------------------
    def _result(self) -> Result:
        px = self._px
        if px.closed:
            raise errors.ObjectClosedError("Object is no longer accessible")
        with px.lock:
            return self._evaluate()

    def _ids_in(self, px: Any) -> IdSet:
        """The ids of this query's objects that live in prefix ``px``."""
        if px is self._px:
            return self._result().ids
        result = self._result()
        if result.order is None:
            return EMPTY
        uuid = px.uuid
        return IdSet.from_iterable([m[1] for m in result.order if type(m) is tuple and m[0] == uuid])

    # public protocol ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        result = self._result()
        return iter_objects(self._px, result.members())

    def __len__(self) -> int:
        return len(self._result())

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return SliceQuery(self, key)
        if isinstance(key, bool) or not isinstance(key, int):
            try:
                key = key.__index__()
            except AttributeError:
                raise TypeError(f"query indices must be integers or slices, not {type(key).__name__}") from None
        members = self._result().members()
        n = len(members)
        if key < 0:
            key += n
        if not 0 <= key < n:
            raise IndexError("query index out of range")
        return object_at(self._px, members[key])

    def __repr__(self) -> str:
        return f"<db0.{type(self).__name__} prefix={self._px.name!r}>"

    def __reduce__(self):
        raise TypeError(f"cannot pickle '{type(self).__name__}' object (use db0.serialize)")


class SliceQuery(Query):
    """``query[a:b:c]``: the sliced members of another query, in its order."""

    __slots__ = ("_base", "_slice")

    def __init__(self, base: Query, key: slice) -> None:
        super().__init__(base._px)
        self._base = base
        self._slice = key

    def _evaluate(self) -> Result:
        result = self._base._evaluate()
        step = self._slice.step
        if result.order is None and (step is None or step > 0):
            return Result(result.ids[self._slice])
        members = result.members()
        if isinstance(members, IdSet):
            members = members.to_list()
        order = list(members[self._slice])
        return Result(IdSet.from_iterable([m for m in order if type(m) is int]), order)


class FilterQuery(Query):
    """``db0.filter(predicate, query)``: objects of ``query`` for which ``predicate`` is true.

    The predicate runs in Python on materialised objects, every time the query is used
    (``len`` too); its exceptions propagate unchanged.
    """

    __slots__ = ("_pred", "_base")

    def __init__(self, pred: Any, base: Query) -> None:
        super().__init__(base._px)
        self._pred = pred
        self._base = base

    def _evaluate(self) -> Result:
        base = self._base._evaluate()
        pred = self._pred
        px = self._px
        mat = Materializer(px)
        keep: List[Member] = []
        for obj in iter_objects(px, base.members(), mat):
            if pred(obj):
                keep.append(member_of(obj, px))
        if base.order is None:
            return Result(IdSet.from_iterable(keep))
        return Result(IdSet.from_iterable([m for m in keep if type(m) is int]), keep)

    def __iter__(self) -> Iterator[Any]:
        base = self._base._result()
        pred = self._pred
        for obj in iter_objects(self._px, base.members()):
            if pred(obj):
                yield obj


class SplitQuery(Query):
    """``db0.split_by(tags, query, exclusive)``: ``(obj, tag)`` pairs for objects of ``query``
    carrying one of ``tags``.  Exclusive: one pair per object, with the last listed tag
    it carries; otherwise one pair per carried tag, in the order the tags were listed."""

    __slots__ = ("_tags", "_keys", "_base", "_exclusive")

    def __init__(self, tags: List[Any], keys: List[Any], base: Query, exclusive: bool) -> None:
        super().__init__(base._px)
        self._tags = tags
        self._keys = keys
        self._base = base
        self._exclusive = exclusive

    def _tag_sets(self, ids: IdSet) -> List[IdSet]:
        from .tags import resolve_key
        out = []
        for key in self._keys:
            resolved = resolve_key(self._px, key)
            out.append(intersect(ids, effective_ids(self._px, resolved)) if resolved is not None else EMPTY)
        return out

    def _evaluate(self) -> Result:
        base = self._base._evaluate()
        sets = self._tag_sets(base.ids)
        ids = union_many(sets) if sets else EMPTY
        if base.order is None:
            return Result(ids)
        return Result(ids, [m for m in base.order if type(m) is int and m in ids])

    def _pairs(self) -> Tuple[Result, List[IdSet]]:
        base = self._base._result()
        with self._px.lock:
            return base, self._tag_sets(base.ids)

    def __iter__(self) -> Iterator[Tuple[Any, Any]]:
        base, sets = self._pairs()
        tags = self._tags
        ids = union_many(sets) if sets else EMPTY
        members = ids if base.order is None else [m for m in base.order if type(m) is int and m in ids]
        mat = Materializer(self._px)
        for obj in iter_objects(self._px, members, mat):
            oid = obj._oid
            hits = [i for i, s in enumerate(sets) if oid in s]
            if self._exclusive:
                yield obj, tags[hits[-1]]
            else:
                for i in hits:
                    yield obj, tags[i]

    def __len__(self) -> int:
        base, sets = self._pairs()
        if self._exclusive:
            return len(union_many(sets)) if sets else 0
        return sum(len(s) for s in sets)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return list(self)[key]
        return list(self)[key]
