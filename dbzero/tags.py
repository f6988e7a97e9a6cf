"""Tags and tag queries: ``db0.tags``, ``db0.as_tag``, ``db0.no``, ``db0.find``,
``db0.split_by``, ``db0.filter``.

Tag keys
--------
A tag is stored as a byte key (part of the storage format, see docs/format.md)::

    str tag            b"s" + UTF-8 (surrogatepass)
    db0 enum value     b"e" + enum type name (UTF-8) + b"\\0" + value name (UTF-8)
    memo object        b"o" + prefix uuid (7 bytes) + object id (8 bytes, big-endian)
    memo class         b"C" + class id (4 bytes, big-endian; ids are per prefix)
    marker             b"X"  (internal: the object's class tags were edited by hand)

A key longer than 480 bytes is cut to its first 448 bytes followed by ``0xFF`` and the
16-byte BLAKE2b digest of the full key (465 bytes; ``0xFF`` never occurs in UTF-8, so
such keys cannot collide with a verbatim key).  The full text of such a tag is kept in
the ``index`` table under ``pack_oid(0) + b"t" + key`` so that ``list(db0.tags(obj))``
can still return it.

Membership lives in the object's prefix (``obj._px.tags``, a
:class:`dbzero_ext.tagstore.TagStore`): the ``tags`` table maps a tag key to the object
ids carrying it, ``obj_tags`` the reverse.  Every distinct tag except class tags keeps
the object alive, but tags are not counted in the object's stored reference count:
``db0.getrefcount`` adds them on demand and the collector asks the tag store before
deleting a count-0 object (docs/concepts.md, "Object lifetime").  So tagging never
rewrites the object's record, and adding a tag never reads LMDB.

Queries
-------
``db0.find`` builds a lazy :class:`FindQuery` (see dbzero/query.py).  Criteria are
compiled to a small tree at ``find`` time (so misuse raises there) and evaluated with
posting-list algebra in C on every use.  NOT is handled without a universe: every node
evaluates to ``(ids, negated)``; ``A AND NOT B`` is ``A - B``, ``NOT A OR B`` is
``NOT (A - B)`` and so on; a query whose whole result is negated is rejected.
Results come in ascending object-id order (creation order).
"""

from __future__ import annotations

import hashlib
import struct
import weakref
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from dbzero_ext.postings import IdSet, difference, intersect, intersect_many, union, union_many
from dbzero_ext import tagstore as _tagstore
from dbzero_ext.tagstore import ObjectTagManager, tags

from . import errors, workspace
from .enums import EnumValue, enum_value_for
from .memo import is_memo
from .prefix import F_CLOSED, F_DEAD, F_NEW, F_READONLY, MemoBase, WeakRef
from .query import (EMPTY, MARKER_KEY, FilterQuery, Materializer, Query, Result, SplitQuery,
                    class_key, effective_ids)

_OID = struct.Struct(">Q")
pack_oid = _OID.pack

MAX_TAG_KEY = 480
HASH_PREFIX = 448
HASHED_LEN = HASH_PREFIX + 1 + 16
CLASS_TAG = 0x43        # b"C"

__all__ = ["Tag", "ObjectTagManager", "FindQuery", "as_tag", "no", "tags", "find", "find_in",
           "split_by", "filter", "class_instance_count"]


# -- tag keys --------------------------------------------------------------------------------

def fit_key(key: bytes) -> bytes:
    """Keys over MAX_TAG_KEY bytes become prefix + 0xFF + digest (see module docstring)."""
    if len(key) <= MAX_TAG_KEY:
        return key
    return key[:HASH_PREFIX] + b"\xff" + hashlib.blake2b(key, digest_size=16).digest()


_str_keys: Dict[str, bytes] = {}


def str_key(text: str) -> bytes:
    key = _str_keys.get(text)
    if key is None:
        key = fit_key(b"s" + text.encode("utf-8", "surrogatepass"))
        if len(key) == HASHED_LEN:
            _remember_long_name(key, text)
        if len(_str_keys) > 100_000:
            _str_keys.clear()
        _str_keys[text] = key
    return key


def enum_key(value: EnumValue) -> bytes:
    return fit_key(b"e" + value.type_name.encode("utf-8", "surrogatepass") + b"\0"
                   + value.name.encode("utf-8", "surrogatepass"))


def object_key(prefix_uuid: bytes, oid: int) -> bytes:
    return b"o" + prefix_uuid + pack_oid(oid)


# Full text of long (hashed) str tags, written to the index table at the next commit of
# every prefix that uses them.  Keyed by tag key; names are tiny and few.
_long_names: Dict[bytes, str] = {}
_long_name_hooks: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()
LONG_NAME_PREFIX = pack_oid(0) + b"t"


def _remember_long_name(key: bytes, text: str) -> None:
    _long_names[key] = text


def _note_long_key(px: Any, key: bytes) -> None:
    if len(key) != HASHED_LEN or key[:1] != b"s":
        return
    pending = _long_name_hooks.get(px)
    if pending is None:
        pending = set()
        _long_name_hooks[px] = pending
        ref = weakref.ref(px)

        def flush_long_names(batch, _ref=ref, _pending=pending) -> None:
            for k in sorted(_pending):
                name = _long_names.get(k)
                if name is not None:
                    batch.put("index", LONG_NAME_PREFIX + k, name.encode("utf-8", "surrogatepass"))
            _pending.clear()

        px.index_hooks.append(flush_long_names)
    pending.add(key)


def _long_name(px: Any, key: bytes) -> Optional[str]:
    name = _long_names.get(key)
    if name is None:
        raw = px.storage.get("index", LONG_NAME_PREFIX + key)
        if raw is not None:
            name = raw.decode("utf-8", "surrogatepass")
    return name


class Tag:
    """A tag made from a memo object, a weak reference or a memo class (``db0.as_tag``).

    Object tags are absolute (prefix uuid + object id).  Class tags resolve to the class's
    default tag in whichever prefix they are used, since class ids are per prefix.
    """

    __slots__ = ("_key", "_cls")

    def __init__(self, key: Optional[bytes] = None, cls: Optional[type] = None) -> None:
        self._key = key
        self._cls = cls

    def key_in(self, px: Any, create: bool) -> Optional[bytes]:
        """The key of this tag in prefix ``px`` (None: a class the prefix does not know)."""
        if self._cls is None:
            return self._key
        info = px.class_info(self._cls, create=create)
        return None if info is None else class_key(info.class_id)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Tag):
            return NotImplemented
        return self._key == other._key and self._cls is other._cls

    def __hash__(self) -> int:
        return hash((self._key, id(self._cls)))

    def __repr__(self) -> str:
        if self._cls is not None:
            return f"<db0.Tag class {self._cls.__qualname__}>"
        return f"<db0.Tag {self._key!r}>"


def as_tag(obj: Any) -> Tag:
    """The tag derived from a memo object, a weak proxy (also an expired one) or a memo class."""
    if isinstance(obj, Tag):
        return obj
    if isinstance(obj, MemoBase):
        return Tag(object_key(obj._px.uuid, obj._oid))
    if isinstance(obj, WeakRef):
        return Tag(object_key(obj.prefix_uuid, obj.oid))
    if isinstance(obj, type) and is_memo(obj):
        return Tag(cls=obj)
    if isinstance(obj, str):
        return Tag(str_key(obj))
    if isinstance(obj, EnumValue):
        return Tag(enum_key(obj))
    raise errors.Error(f"Unable to interpret object of type: {type(obj).__name__} as a tag")


class _Not:
    """``db0.no(x)``: the negation of a tag, a list of tags or a query."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"db0.no({self.inner!r})"


def no(condition: Any) -> _Not:
    """Negation of a tag, a list/tuple of tags or a query; valid only next to a positive criterion."""
    return _Not(condition)


def _tag_key(tag: Any, out: List[Any]) -> None:
    """Append the key(s) of ``tag`` (expanding iterables) to ``out``; bytes or class Tags."""
    t = type(tag)
    if t is str:
        out.append(str_key(tag))
    elif t is EnumValue or isinstance(tag, EnumValue):
        out.append(enum_key(tag))
    elif isinstance(tag, MemoBase):
        out.append(object_key(tag._px.uuid, tag._oid))
    elif isinstance(tag, Tag):
        out.append(tag._key if tag._cls is None else tag)
    elif isinstance(tag, WeakRef):
        out.append(object_key(tag.prefix_uuid, tag.oid))
    elif isinstance(tag, (int, float, type, type(None))) or not hasattr(tag, "__iter__"):
        raise errors.Error(f"Unable to interpret object of type: {t.__name__} as a tag")
    else:
        for item in tag:
            _tag_key(item, out)


def resolve_key(px: Any, key: Any, create: bool = False) -> Optional[bytes]:
    """A bytes key, or the key of a class Tag in ``px``."""
    if type(key) is bytes:
        return key
    return key.key_in(px, create)


# -- the tag manager ----------------------------------------------------------------------------

class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


_NO_LOCK = _NoLock()


# ``db0.tags(*objs)`` returns a dbzero_ext.tagstore.ObjectTagManager: it adds str tags to
# one object itself and calls these for everything else.

def _targets(objs: Tuple[Any, ...]) -> List[Any]:
    if all(isinstance(o, MemoBase) for o in objs):
        return list(objs)
    out: List[Any] = []
    for o in objs:
        if isinstance(o, MemoBase):
            out.append(o)
        else:
            out.extend(o)
    return out


def _apply(objs: Tuple[Any, ...], tags: Tuple[Any, ...], present: bool) -> None:
    keys: List[Any] = []
    for tag in tags:
        if type(tag) is str:
            key = _str_keys.get(tag)
            keys.append(key if key is not None else str_key(tag))
        else:
            _tag_key(tag, keys)
    targets = _targets(objs)
    for obj in targets:
        _check_target(obj, present)
    if not keys:
        return
    lock = targets[0]._px.lock if targets else None
    with lock or _NO_LOCK:
        for obj in targets:
            _apply_one(obj._px, obj, keys, present)


def _contains(objs: Tuple[Any, ...], tag: Any) -> bool:
    keys: List[Any] = []
    _tag_key(tag, keys)
    targets = _targets(objs)
    if not targets:
        return False
    for obj in targets:
        px = obj._px
        with px.lock:
            for key in keys:
                key = resolve_key(px, key)
                if key is None or not px.tags.has(obj._oid, key):
                    return False
    return True


def _iterate(objs: Tuple[Any, ...]) -> Iterator[Any]:
    common: Optional[List[bytes]] = None
    px = None
    for obj in _targets(objs):
        if obj._flags & F_DEAD:
            raise errors.ReferenceError("Memo instance expired")
        px = obj._px
        with px.lock:
            own = _default_tags(px, type(obj))
            mine = [k for k in px.tags.tags_of(obj._oid) if k not in own and k != MARKER_KEY]
        if common is None:
            common = mine
        else:
            keep = set(mine)
            common = [k for k in common if k in keep]
    if not common or px is None:
        return iter(())
    return iter([_decode_tag(px, k) for k in common])


def _default_tags(px: Any, cls: type) -> set:
    """The class tags every instance of ``cls`` carries (not listed by ``iter(tags(obj))``)."""
    info = px.class_info_by_name(cls.__db0_type_id__)
    if info is None or cls.__db0_no_default_tags__:
        return set()
    return {class_key(info.class_id)} | {class_key(b) for b in info.base_ids}


def _check_target(obj: Any, present: bool) -> None:
    flags = obj._flags
    if flags & F_DEAD:
        raise errors.ReferenceError("Memo instance expired")
    px = obj._px
    if flags & F_CLOSED or px.closed:
        raise errors.ObjectClosedError("Object is no longer accessible")
    if flags & F_READONLY or px.readonly:
        if present:
            raise errors.ReadOnlyError("ObjectTagManager: cannot add tags to read-only object")
        raise errors.ReadOnlyError("ObjectTagManager: cannot remove tags from read-only object")


def _apply_one(px: Any, obj: Any, keys: List[Any], present: bool) -> None:
    oid = obj._oid
    ts = px.tags
    for key in keys:
        if type(key) is not bytes:
            key = key.key_in(px, True)
        if key[0] == CLASS_TAG:
            # Class postings tell materialisation the class of an object; once they are
            # edited by hand that no longer holds for this object (exact check: rare).
            if ts.has(oid, key) != present:
                if not ts.has(oid, MARKER_KEY):
                    # From now on obj_tags lists the object's class tags too.
                    for own in _default_tags(px, type(obj)):
                        if ts.has(oid, own):
                            ts.list_class_tag(oid, own)
                ts.set(oid, key, present)
                ts.set(oid, MARKER_KEY, True)
            continue
        ts.set(oid, key, present)     # blind: the commit finds out what really changed
        if present and len(key) == HASHED_LEN:
            _note_long_key(px, key)
    px.note_change()
    if not present and obj._rc <= 0:
        # Its last tag may be gone: let the collector look at it (it stays alive while
        # Python holds it, or while it has a reference or another tag).
        px.note_unreferenced(obj)


def _decode_tag(px: Any, key: bytes) -> Any:
    kind = key[:1]
    if kind == b"s":
        if len(key) == HASHED_LEN and key[HASH_PREFIX] == 0xFF:
            name = _long_name(px, key)
            if name is not None:
                return name
        return key[1:].decode("utf-8", "surrogatepass")
    if kind == b"e":
        type_name, _, value_name = key[1:].partition(b"\0")
        return enum_value_for(type_name.decode("utf-8", "surrogatepass"),
                              value_name.decode("utf-8", "surrogatepass"))
    if kind == b"o":
        prefix_uuid, oid = key[1:8], _OID.unpack_from(key, 8)[0]
        try:
            other = px.workspace.prefix_by_uuid(prefix_uuid, auto_open=True)
            obj = other.try_get_object(oid)
        except errors.Error:
            obj = None
        return obj if obj is not None else Tag(key)
    if kind == b"C":
        return px.class_by_id(int.from_bytes(key[1:5], "big")).cls
    return Tag(key)


_tagstore.configure(errors, str_key, _note_long_key, _apply, _contains, _iterate, Query)


# -- find ----------------------------------------------------------------------------------------

def _interpret_error(obj: Any) -> errors.Error:
    return errors.Error(f"Unable to interpret object of type: {type(obj).__name__} as a query")


def _node(crit: Any) -> tuple:
    t = type(crit)
    if t is str:
        return ("key", str_key(crit))
    if isinstance(crit, EnumValue):
        return ("key", enum_key(crit))
    if isinstance(crit, MemoBase):
        return ("obj", crit)
    if isinstance(crit, Query):
        return ("q", crit)
    if isinstance(crit, Tag):
        return ("key", crit._key) if crit._cls is None else ("ckey", crit._cls)
    if isinstance(crit, _Not):
        return ("not", _node(crit.inner))
    if t is list:
        return ("or", [_node(c) for c in crit])
    if t is tuple:
        return ("and", [_node(c) for c in crit])
    if isinstance(crit, WeakRef):
        return ("weak", crit.prefix_uuid, crit.oid)
    raise _interpret_error(crit)


def _positive(node: tuple) -> bool:
    kind = node[0]
    if kind == "not":
        return not _positive(node[1])
    if kind == "and":
        return not node[1] or any(_positive(c) for c in node[1])
    if kind == "or":
        return all(_positive(c) for c in node[1])
    return True


class _Eval:
    """One evaluation: memoises effective postings so a key is read once."""

    __slots__ = ("px", "memo")

    def __init__(self, px: Any) -> None:
        self.px = px
        self.memo: Dict[bytes, IdSet] = {}

    def key(self, key: Optional[bytes]) -> IdSet:
        if key is None:
            return EMPTY
        ids = self.memo.get(key)
        if ids is None:
            ids = effective_ids(self.px, key)
            self.memo[key] = ids
        return ids

    def class_ids(self, cls: type) -> IdSet:
        info = self.px.class_info(cls, create=False)
        return EMPTY if info is None else self.key(class_key(info.class_id))

    def run(self, node: tuple) -> Tuple[IdSet, bool]:
        kind = node[0]
        if kind == "key":
            return self.key(node[1]), False
        if kind == "and":
            return self.combine(node[1], True)
        if kind == "or":
            return self.combine(node[1], False)
        if kind == "not":
            ids, neg = self.run(node[1])
            return ids, not neg
        if kind == "q":
            query = node[1]
            snap = getattr(self.px, "snapshot", None)
            if snap is not None and getattr(query._px, "snapshot", None) is not snap:
                from .changes import rebind     # a live query inside a snapshot's find
                query = rebind(query, snap)
            return query._ids_in(self.px), False
        if kind == "ckey":
            return self.class_ids(node[1]), False
        if kind == "obj":
            obj = node[1]
            if obj._px is self.px and not obj._flags & F_DEAD:
                return IdSet.from_iterable((obj._oid,)), False
            if obj._px is not self.px and obj._px.uuid == self.px.uuid \
                    and self.px.try_get_object(obj._oid) is not None:
                return IdSet.from_iterable((obj._oid,)), False   # same object, other snapshot
            return EMPTY, False
        if kind == "weak":
            if node[1] == self.px.uuid and self.px.try_get_object(node[2]) is not None:
                return IdSet.from_iterable((node[2],)), False
            return EMPTY, False
        raise AssertionError(kind)

    def combine(self, children: List[tuple], conj: bool) -> Tuple[IdSet, bool]:
        if not children:
            return EMPTY, False
        pos: List[IdSet] = []
        neg: List[IdSet] = []
        for child in children:
            ids, negated = self.run(child)
            (neg if negated else pos).append(ids)
        if conj:
            if not pos:                       # NOT a AND NOT b = NOT (a OR b)
                return union_many(neg), True
            ids = intersect_many(pos)
            if neg and ids:
                ids = difference(ids, union_many(neg))
            return ids, False
        if not neg:
            return union_many(pos), False
        # NOT a OR NOT b OR p = NOT ((a AND b) - p)
        ids = intersect_many(neg)
        if pos and ids:
            ids = difference(ids, union_many(pos))
        return ids, True


class FindQuery(Query):
    """The lazy result of ``db0.find``: objects in ascending object-id order."""

    __slots__ = ("_cls", "_root")

    def __init__(self, px: Any, cls: Optional[type], root: Optional[tuple]) -> None:
        super().__init__(px)
        self._cls = cls
        self._root = root

    def _evaluate(self) -> Result:
        px = self._px
        ev = _Eval(px)
        ids = None
        neg = False
        if self._root is not None:
            ids, neg = ev.run(self._root)
        cls = self._cls
        if cls is not None:
            posting = ev.class_ids(cls)
            if ids is None:
                ids = posting
            elif neg:                         # Cls AND NOT x
                ids = difference(posting, ids)
            elif cls.__db0_no_default_tags__:
                # Own instances carry no class tag: check their class one by one.
                rest = difference(ids, posting)
                ids = intersect(ids, posting)
                if rest:
                    objs = Materializer(px).objects(rest.to_list())
                    extra = [o._oid for o in objs if o is not None and isinstance(o, cls)]
                    if extra:
                        ids = union(ids, IdSet.from_iterable(extra))
            else:
                ids = intersect(ids, posting)
        return Result(EMPTY if ids is None else ids)

    def __len__(self) -> int:
        return len(self._result().ids)


def _compile(criteria: Tuple[Any, ...]) -> Tuple[Optional[type], Optional[tuple], bool]:
    """(memo class or None, root node or None, empty) for find's criteria."""
    crits = list(criteria)
    cls = None
    empty = False
    if crits and isinstance(crits[0], type):
        first = crits.pop(0)
        if is_memo(first):
            cls = first
        else:
            empty = True
    nodes = [_node(c) for c in crits]
    root = ("and", nodes) if nodes else None
    if root is not None and cls is None and not _positive(root):
        raise errors.Error("Negated query components are not supported without positive components")
    if cls is None and root is None:
        empty = True
    return cls, root, empty


def _first_query_prefix(criteria: Iterable[Any]) -> Any:
    for crit in criteria:
        if isinstance(crit, Query):
            return crit._px
        if isinstance(crit, (list, tuple)):
            px = _first_query_prefix(crit)
            if px is not None:
                return px
    return None


def find_in(view: Any, criteria: Tuple[Any, ...], prefix: Optional[str] = None) -> Query:
    """``find`` evaluated in a snapshot: ``view.view_of(live_prefix)`` gives the prefix as
    of the snapshot's state."""
    ws = workspace.current()
    with ws.lock:
        return _find(view.view_of(_resolve_prefix(ws, criteria, prefix)), criteria)


def _resolve_prefix(ws: Any, criteria: Tuple[Any, ...], prefix: Optional[str]) -> Any:
    first = criteria[0] if criteria else None
    if isinstance(first, type) and is_memo(first) and first.__db0_prefix__:
        return ws.prefix_for_class(first)
    if prefix is not None:
        return ws.prefix_for_read(prefix)
    return _first_query_prefix(criteria) or ws.current_prefix()


def _find(px: Any, criteria: Tuple[Any, ...]) -> Query:
    for i, crit in enumerate(criteria):
        if isinstance(crit, SplitQuery):
            rest = criteria[:i] + (crit._base,) + criteria[i + 1:]
            return SplitQuery(crit._tags, crit._keys, _find(px, rest), crit._exclusive)
    cls, root, empty = _compile(criteria)
    if empty:
        return FindQuery(px, None, ("or", []))
    return FindQuery(px, cls, root)


def find(*criteria: Any, prefix: Optional[str] = None) -> Query:
    """Objects matching every criterion (lazy query, ascending object-id order).

    A criterion is a tag (str, enum value, ``as_tag(...)``), a list (OR), a tuple (AND),
    ``db0.no(x)`` (NOT), a query, or a memo object (exactly that object).  A memo class may
    only come first: instances of it and its subclasses.  Unknown tags, empty lists and no
    criteria give an empty result.

    The prefix searched is the first criterion's class prefix, else ``prefix``, else the
    prefix of the first query criterion, else the current prefix.
    Raises ``db0.Error`` for uninterpretable criteria and for purely negative queries.
    """
    from .snapshot import active_view
    view = active_view()
    if view is not None and hasattr(view, "find"):
        return view.find(*criteria, prefix=prefix)
    ws = workspace.current()
    with ws.lock:
        px = _resolve_prefix(ws, criteria, prefix)
        return _find(px, criteria)


# -- split_by / filter -------------------------------------------------------------------------------

def split_by(tags: Any, query: Any, exclusive: bool = True) -> Query:
    """``(obj, tag)`` pairs for the objects of ``query`` that carry one of ``tags``."""
    if not isinstance(query, Query):
        raise errors.Error("Invalid query object")
    if isinstance(tags, (str, EnumValue, Tag, MemoBase)):
        tags = [tags]
    tag_list = list(tags)
    keys: List[Any] = []
    for tag in tag_list:
        one: List[Any] = []
        _tag_key(tag, one)
        if len(one) != 1:
            raise errors.Error(f"Unable to interpret object of type: {type(tag).__name__} as a tag")
        keys.append(one[0])
    return SplitQuery(tag_list, keys, query, bool(exclusive))


def filter(predicate: Any, query: Any) -> Query:  # noqa: A001 - public name of the reference
    """Objects of ``query`` for which ``predicate(obj)`` is true (lazy, Python-side)."""
    if not callable(predicate):
        raise errors.Error("Invalid filter object")
    if not isinstance(query, Query):
        raise errors.Error("Invalid query object")
    return FilterQuery(predicate, query)


def class_instance_count(cls: type) -> int:
    """Number of live instances of a memo class (and subclasses) in its prefix."""
    ws = workspace.current()
    with ws.lock:
        px = ws.prefix_for_class(cls) if cls.__db0_prefix__ else ws.current_prefix()
        info = px.class_info(cls, create=False)
        if info is None:
            return 0
        return len(effective_ids(px, class_key(info.class_id)))
