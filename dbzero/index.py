"""``db0.index()``: a persistent ordered multimap from keys to memo objects.

Storage layout (collection kind 6; see docs/format.md)
-------------------------------------------------------
Header: ``objects[pack_oid(ix)] = codec.pack([6, refcount, number of pairs])``.

Entries live in the versioned ``index`` table; ``P = pack_oid(ix)`` (8 bytes BE)::

    P + b"e" + ekey + tail  -> codec.pack(original key)      non-null keys, in key order
    P + b"n" + tail         -> codec.pack(None)              null keys
    P + b"r" + member + ekey -> b""                          reverse map (object -> keys)

``ekey`` is ``dbzero_ext.keys.encode_key(key)``: canonical and order-preserving, so LMDB's
byte order is the key order.  Mixed key types sort by type first - numbers (int, float,
Decimal and bool compare as numbers) < str < bytes < date < naive datetime < aware
datetime < time < tuple - then by value.  Equal keys (``1``, ``1.0``, ``True``) are the
same key.  In the reverse map the null key is the empty ``ekey``.

``tail`` names the object: ``oid (8 BE) + b"\\x00"`` for an object of the index's prefix,
``oid (8) + prefix uuid (7) + b"\\x01"`` for an object of another prefix (such entries are
weak, like every cross-prefix reference).  ``member`` in the reverse map is
``oid (8) + b"\\x00"`` or ``oid (8) + b"\\x01" + prefix uuid (7)``.

Semantics
---------
* A (key, object) pair is stored once; each pair of a same-prefix object is one strong
  reference to the object.
* ``select(low, high)``: inclusive bounds, ``None`` = open end.  An open end stops at the
  end of the other bound's type (``select(5)`` does not return str keys); nulls are the
  largest keys unless ``null_first=True``.  Results come in key order; an object stored
  under several keys in the range appears once, at its first key.
* ``sort(query, desc, null_first)``: the query's objects ordered by their key in this
  index (an object with several keys sorts by its first key in walk order); objects not
  in the index are dropped; equal keys keep the query's order (ascending object id for
  ``find`` results).  Nulls are the largest keys unless ``null_first``.
* Uncommitted adds/removes are kept in memory and merged into every read
  (read-your-writes); a commit writes them in key order.

Reads go through ``self._px.storage``; the hot loops are in ``dbzero_ext/query.pyx``.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import decimal
from typing import Any, Dict, List, Optional, Set, Tuple

from dbzero_ext.keys import encode_key
from dbzero_ext.postings import IdSet

from . import errors, workspace
from .prefix import F_DEAD, MemoBase, pack_oid, register_collection_kind
from .query import EMPTY, Materializer, Query, Result
from .storage import Storage

from dbzero_ext.query import OidSet, collect, lookup as _c_lookup, lookup_keys as _c_lookup_keys

KIND = 6
LOCAL = b"\x00"
FOREIGN = b"\x01"

_KEY_TYPES = (int, float, decimal.Decimal, str, bytes, _dt.date, _dt.time, tuple)
# First bytes of encode_key per comparable type (numbers, str, bytes, date, datetime, time,
# tuple): an open end of a range stops at the end of the other bound's type.
_KIND_RANGES = ((0x20, 0x26), (0x30, 0x31), (0x40, 0x41), (0x50, 0x51), (0x51, 0x53),
                (0x53, 0x55), (0x60, 0x61), (0x70, 0x71))

__all__ = ["Index", "index"]


def _ekey(key: Any) -> Optional[bytes]:
    """Encoded key (None for the null key); TypeError for unsupported key types."""
    if key is None:
        return None
    if not isinstance(key, _KEY_TYPES):
        raise TypeError(f"Unsupported index key type: {type(key).__name__}")
    return encode_key(key)


def _kind_range(ekey: bytes) -> Tuple[int, int]:
    first = ekey[0]
    for lo, hi in _KIND_RANGES:
        if lo <= first < hi:
            return lo, hi
    return first, first + 1


def _after(prefix: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def _tail_of(obj: Any, px: Any) -> bytes:
    if obj._px is px:
        return pack_oid(obj._oid) + LOCAL
    return pack_oid(obj._oid) + obj._px.uuid + FOREIGN


def _rmember(tail: bytes) -> bytes:
    return tail if tail[-1] == 0 else tail[:8] + FOREIGN + tail[8:15]


def _split_suffix(suffix: bytes) -> Tuple[Any, bytes]:
    """(member, ekey) of a forward suffix; ekey b"" for the null key."""
    tail = 9 if suffix[-1] == 0 else 16
    oid = int.from_bytes(suffix[-tail:-tail + 8], "big")
    member = oid if tail == 9 else (suffix[-8:-1], oid)
    return member, (suffix[1:-tail] if suffix[:1] == b"e" else b"")


def _member_rkey(member: Any) -> bytes:
    if type(member) is int:
        return pack_oid(member) + LOCAL
    return pack_oid(member[1]) + FOREIGN + member[0]


# -- reverse-map reads without a cursor (snapshot views) ------------------------------------------

def _lookup_py(storage: Any, rprefix: bytes, members: List[Any]) -> List[List[bytes]]:
    out = []
    for member in members:
        p = rprefix + _member_rkey(member)
        out.append([k[len(p):] for k, _v in storage.scan("index", p)])
    return out


# -- the index ------------------------------------------------------------------------------------

class Index:
    """An ordered multimap key -> memo object with range selects and sorting of queries.

    Create with ``db0.index()``; keep it reachable (store it on a memo object) to persist it.
    """

    _db0_kind = KIND
    __slots__ = ("_px", "_oid", "_flags", "_db0_closed", "_db0_dead", "_loaded", "_refcount",
                 "_count", "_new", "_adds", "_removes", "_cleared", "_sorted", "_removed_keys",
                 "_by_member", "_multi", "_pend_members", "__weakref__")

    def __init__(self) -> None:
        ws = workspace.current()
        with ws.lock:
            px = ws.current_prefix()
            px.check_writable()
            self._setup(px, px.new_oid())
            self._loaded = True
            self._new = True
            px.register(self)
            px.mark_dirty(self)
            px.note_zero(self._oid)
            log = px.atomic_log
            if log is not None and hasattr(log, "created"):
                log.created(self)

    def _setup(self, px: Any, oid: int) -> None:
        self._px = px
        self._oid = oid
        self._flags = 0
        self._db0_closed = False
        self._db0_dead = False
        self._loaded = False
        self._refcount = 0
        self._count = 0
        self._multi = False         # some object may have more than one key (conservative)
        self._pend_members: Dict[bytes, int] = {}   # tail -> number of pending adds
        self._new = False
        self._adds: Dict[bytes, Any] = {}
        self._removes: Set[bytes] = set()
        self._cleared = False
        self._changed()

    def _changed(self) -> None:
        self._sorted: Optional[List[bytes]] = None
        self._removed_keys: Optional[Set[bytes]] = None
        self._by_member: Optional[Dict[Any, Tuple[Set[bytes], Set[bytes]]]] = None

    # -- persistence protocol (see dbzero/prefix.py) -------------------------------------------

    @classmethod
    def _db0_ghost(cls, px: Any, oid: int) -> "Index":
        ix = cls.__new__(cls)
        ix._setup(px, oid)
        return ix

    def _load(self) -> None:
        if self._loaded:
            return
        px = self._px
        raw = px.storage.get("objects", pack_oid(self._oid))
        if raw is None:
            self._db0_dead = True
            raise errors.ReferenceError("Memo instance expired")
        rec = px.codec.unpack(raw)
        self._refcount = rec[1]
        self._count = rec[2]
        self._multi = bool(rec[3]) if len(rec) > 3 else True
        self._loaded = True
        if self._refcount <= 0:
            px.zero_rc.add(self._oid)

    @property
    def _rc(self) -> int:
        self._load()
        return self._refcount

    def _db0_refcount(self) -> int:
        with self._px.lock:
            self._check()
            return self._refcount

    def _db0_incref(self) -> None:
        px = self._px
        self._load()
        px.log_undo(self)
        self._refcount += 1
        px.zero_rc.discard(self._oid)
        px.mark_dirty(self)

    def _db0_decref(self) -> None:
        px = self._px
        if self._db0_dead:
            return
        self._load()
        px.log_undo(self)
        self._refcount -= 1
        if self._refcount <= 0:
            px.note_zero(self._oid)
        px.mark_dirty(self)

    def _db0_flush(self, batch: Any) -> None:
        px = self._px
        prefix = pack_oid(self._oid)
        self._load()
        batch.put("objects", prefix, px.codec.pack([KIND, self._refcount, self._count, int(self._multi)]),
                  fresh=self._new)
        if self._cleared:
            for key, _value in px.storage.scan("index", prefix):
                batch.delete("index", key)
        fresh = not self._cleared
        reverse: List[Tuple[bytes, bool, Any]] = []
        for suffix in sorted(self._removes):
            batch.delete("index", prefix + suffix)
            member, ekey = _split_suffix(suffix)
            reverse.append((prefix + b"r" + _member_rkey(member) + ekey, False, None))
        pack = px.codec.pack
        for suffix in sorted(self._adds):
            batch.put("index", prefix + suffix, pack(self._adds[suffix]), fresh=fresh)
            member, ekey = _split_suffix(suffix)
            reverse.append((prefix + b"r" + _member_rkey(member) + ekey, True, None))
        reverse.sort()
        for key, add, _ in reverse:
            if add:
                batch.put("index", key, b"", fresh=fresh)
            else:
                batch.delete("index", key)

    def _db0_committed(self) -> None:
        self._pend_members = {}
        self._adds = {}
        self._removes = set()
        self._cleared = False
        self._new = False
        self._changed()

    def _db0_drop(self, batch: Any) -> None:
        prefix = pack_oid(self._oid)
        if not self._new:
            for key, _value in self._px.storage.scan("index", prefix):
                batch.delete("index", key)

    def _db0_release_all(self) -> None:
        self._release_members()
        self._adds = {}
        self._pend_members = {}
        self._removes = set()
        self._cleared = True
        self._count = 0
        self._multi = False
        self._changed()

    def _db0_invalidate(self) -> None:
        self._loaded = False
        self._changed()

    def _db0_undo_token(self) -> tuple:
        return (dict(self._adds), set(self._removes), self._cleared, self._count,
                self._refcount, self._loaded, self._new, self._db0_dead, self._multi)

    def _db0_restore(self, token: tuple) -> None:
        (adds, removes, self._cleared, self._count, self._refcount, self._loaded, self._new,
         self._db0_dead, self._multi) = token
        self._adds = dict(adds)
        self._pend_members = {}
        for suffix in self._adds:
            tail = suffix[-9:] if suffix[-1] == 0 else suffix[-16:]
            self._pend_members[tail] = self._pend_members.get(tail, 0) + 1
        self._removes = set(removes)
        self._changed()
        px = self._px
        if self._refcount <= 0:
            px.zero_rc.add(self._oid)
        else:
            px.zero_rc.discard(self._oid)

    # -- checks ------------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._db0_dead:
            raise errors.ReferenceError("Memo instance expired")
        if self._db0_closed or self._px.closed:
            raise errors.ObjectClosedError("Object is no longer accessible")
        self._load()

    def _check_write(self) -> None:
        self._check()
        self._px.check_writable()

    # -- committed/pending state ------------------------------------------------------------------

    def _committed_has(self, suffix: bytes) -> bool:
        if self._new or self._cleared:
            return False
        return self._px.storage.get("index", pack_oid(self._oid) + suffix) is not None

    def _member_has_key(self, tail: bytes) -> bool:
        """True if the object named by ``tail`` currently has some key in this index."""
        if self._pend_members.get(tail):
            return True
        if self._new or self._cleared:
            return False
        rprefix = pack_oid(self._oid) + b"r" + _rmember(tail)
        removes = self._removes
        storage = self._px.storage
        if self._cursor_ok(storage):
            cur = storage._rtxn.cursor(db=storage._dbs["index"])
            keys = cur.iternext(keys=True, values=False) if cur.set_range(rprefix) else ()
        else:
            keys = (k for k, _v in storage.scan("index", rprefix))
        for key in keys:
            if not key.startswith(rprefix):
                break
            ekey = key[len(rprefix):]
            if (b"e" + ekey + tail if ekey else b"n" + tail) not in removes:
                return True
        return False

    def _pending_sorted(self) -> List[bytes]:
        if self._sorted is None:
            self._sorted = sorted(self._adds)
        return self._sorted

    def _removed_full(self) -> Optional[Set[bytes]]:
        if not self._removes:
            return None
        if self._removed_keys is None:
            prefix = pack_oid(self._oid)
            self._removed_keys = {prefix + s for s in self._removes}
        return self._removed_keys

    def _pending_by_member(self) -> Dict[Any, Tuple[Set[bytes], Set[bytes]]]:
        if self._by_member is None:
            out: Dict[Any, Tuple[Set[bytes], Set[bytes]]] = {}
            for suffix in self._adds:
                member, ekey = _split_suffix(suffix)
                out.setdefault(member, (set(), set()))[0].add(ekey)
            for suffix in self._removes:
                member, ekey = _split_suffix(suffix)
                out.setdefault(member, (set(), set()))[1].add(ekey)
            self._by_member = out
        return self._by_member

    # -- public API ----------------------------------------------------------------------------------

    def add(self, key: Any, obj: Any) -> None:
        """Store ``obj`` under ``key`` (a pair stored twice counts once).

        Keys: int, float, Decimal, bool, str, bytes, date, datetime, time, tuples of
        those, or None (null).  Raises ``db0.Error("Expected a memo object")`` for a
        non-memo value, TypeError for an unsupported key type.
        """
        if not isinstance(obj, MemoBase):
            raise errors.Error("Expected a memo object")
        ekey = _ekey(key)
        px = self._px
        with px.lock:
            self._check_write()
            if obj._flags & F_DEAD:
                raise errors.ReferenceError("Memo instance expired")
            tail = _tail_of(obj, px)
            suffix = (b"e" + ekey + tail) if ekey is not None else (b"n" + tail)
            if suffix in self._adds:
                return
            revive = suffix in self._removes
            if not revive and self._committed_has(suffix):
                return
            px.log_undo(self)
            if not self._multi and self._member_has_key(tail):
                self._multi = True
            if revive:
                self._removes.discard(suffix)
            else:
                self._adds[suffix] = key
                self._pend_members[tail] = self._pend_members.get(tail, 0) + 1
            self._count += 1
            self._changed()
            px.mark_dirty(self)
            if obj._px is px:
                px.incref(obj)

    def remove(self, key: Any, obj: Any) -> None:
        """Remove the pair (key, obj); an absent pair is silently ignored."""
        if not isinstance(obj, MemoBase):
            raise errors.Error("Expected a memo object")
        ekey = _ekey(key)
        px = self._px
        with px.lock:
            self._check_write()
            tail = _tail_of(obj, px)
            suffix = (b"e" + ekey + tail) if ekey is not None else (b"n" + tail)
            if suffix in self._adds:
                px.log_undo(self)
                del self._adds[suffix]
                left = self._pend_members[tail] - 1
                if left:
                    self._pend_members[tail] = left
                else:
                    del self._pend_members[tail]
            elif suffix not in self._removes and self._committed_has(suffix):
                px.log_undo(self)
                self._removes.add(suffix)
            else:
                return
            self._count -= 1
            self._changed()
            px.mark_dirty(self)
            if obj._px is px:
                px.decref(obj)

    def __len__(self) -> int:
        with self._px.lock:
            self._check()
            return self._count

    def __bool__(self) -> bool:
        return len(self) > 0

    def clear(self) -> None:
        """Remove every pair (releasing the references they held)."""
        px = self._px
        with px.lock:
            self._check_write()
            px.log_undo(self)
            self._release_members()
            self._adds = {}
            self._pend_members = {}
            self._removes = set()
            self._cleared = True
            self._count = 0
            self._multi = False
            self._changed()
            px.mark_dirty(self)

    def flush(self) -> None:
        """Kept for compatibility: pending changes are always visible to queries."""
        with self._px.lock:
            self._check()

    def select(self, low: Any = None, high: Any = None, null_first: bool = False) -> "SelectQuery":
        """Objects whose key is in ``[low, high]`` (None = open end), in key order.

        Nulls are the largest keys (``null_first=False``): an open high end includes them,
        ``select(None, high)`` excludes them; with ``null_first=True`` the reverse.
        No arguments: everything including nulls.  Raises TypeError for bound types that
        cannot be keys.
        """
        elo = _ekey(low)
        ehi = _ekey(high)
        with self._px.lock:
            self._check()
        return SelectQuery(self, elo, ehi, bool(null_first))

    def sort(self, query: Any, desc: bool = False, null_first: bool = False) -> "SortQuery":
        """The objects of ``query`` ordered by their key in this index (lazy query).

        Objects not in the index are dropped; equal keys keep the query's order.
        Raises TypeError if ``query`` is not a db0 query (e.g. a list).
        """
        if not isinstance(query, Query):
            raise TypeError(f"Index.sort expects a db0 query, not {type(query).__name__}")
        with self._px.lock:
            self._check()
        snap = getattr(self._px, "snapshot", None)
        if snap is not None and getattr(query._px, "snapshot", None) is not snap:
            from .changes import rebind     # sort as of the index's snapshot
            query = rebind(query, snap)
        return SortQuery(self, query, bool(desc), bool(null_first))

    def __repr__(self) -> str:
        try:
            n = len(self)
        except errors.Error:
            return "<db0.Index (inaccessible)>"
        return f"<db0.Index len={n}>"

    def __reduce__(self):
        raise TypeError("cannot pickle 'Index' object")

    # -- internals -----------------------------------------------------------------------------------

    def _release_members(self) -> None:
        """Drop the strong references of every current pair (clear / delete)."""
        px = self._px
        local: List[int] = []
        if not self._new and not self._cleared:
            prefix = pack_oid(self._oid)
            removed = self._removed_full()
            for key, _value in px.storage.scan("index", prefix, prefix + b"e", prefix + b"o"):
                if (removed and key in removed) or key[-1] != 0:
                    continue
                local.append(int.from_bytes(key[-9:-1], "big"))
        for suffix in self._adds:
            if suffix[-1] == 0:
                local.append(int.from_bytes(suffix[-9:-1], "big"))
        if not local:
            return
        objs = Materializer(px).objects(local)
        for obj in objs:
            if obj is not None:
                px.decref(obj)

    def _scan(self, lo: bytes, hi: bytes, reverse: bool, only: Optional[OidSet] = None,
              seen: Optional[OidSet] = None, want_keys: bool = False
              ) -> Tuple[List[Any], Optional[List[bytes]]]:
        """Members of the suffix range [lo, hi) merged with pending changes, in walk order
        (see dbzero_ext.query.collect for ``only``/``seen``)."""
        prefix = pack_oid(self._oid)
        flo, fhi = prefix + lo, prefix + hi
        it = None
        if not (self._new or self._cleared):
            it = self._committed_iter(flo, fhi, reverse)
        pend = self._pending_sorted()
        if pend:
            pend = pend[bisect.bisect_left(pend, lo):bisect.bisect_left(pend, hi)]
            pend = [prefix + s for s in (reversed(pend) if reverse else pend)]
        return collect(it, flo if reverse else fhi, reverse, pend, self._removed_full(), only,
                       seen, len(prefix) + 1, want_keys)

    def _committed_iter(self, flo: bytes, fhi: bytes, reverse: bool) -> Any:
        storage = self._px.storage
        if type(storage) is Storage and storage._rtxn is not None:
            cur = storage._rtxn.cursor(db=storage._dbs["index"])
            if not reverse:
                if not cur.set_range(flo):
                    return None
                return cur.iternext(keys=True, values=False)
            if cur.set_range(fhi):
                if not cur.prev():
                    return None
            elif not cur.last():
                return None
            return cur.iterprev(keys=True, values=False)
        prefix = pack_oid(self._oid)
        return (k for k, _v in storage.scan("index", prefix, flo, fhi, reverse=reverse))

    def _lookup(self, members: List[Any]) -> List[List[bytes]]:
        """Current encoded keys of each member (b"" = null), committed merged with pending."""
        prefix = pack_oid(self._oid)
        rprefix = prefix + b"r"
        if self._new or self._cleared:
            found: List[List[bytes]] = [[] for _ in members]
        else:
            storage = self._px.storage
            if all(type(m) is int for m in members) and self._cursor_ok(storage):
                found = _c_lookup(storage._rtxn.cursor(db=storage._dbs["index"]), rprefix, members)
            else:
                found = _lookup_py(storage, rprefix, members)
        if self._adds or self._removes:
            pend = self._pending_by_member()
            for i, member in enumerate(members):
                change = pend.get(member)
                if change is not None:
                    keys = set(found[i]) - change[1]
                    keys |= change[0]
                    found[i] = sorted(keys)
        return found

    def _sort_keys(self, members: List[Any], desc: bool, prefer_null: bool) -> List[Optional[bytes]]:
        """Per member the key it sorts by: None (not in the index), b"" (null) or an ekey."""
        storage = self._px.storage
        pend = self._pending_by_member() if (self._adds or self._removes) else None
        if self._new or self._cleared or not self._cursor_ok(storage) \
                or not all(type(m) is int for m in members):
            return [_choose(keys, desc, prefer_null) for keys in self._lookup(members)]
        rprefix = pack_oid(self._oid) + b"r"
        out = _c_lookup_keys(storage._rtxn.cursor(db=storage._dbs["index"]), rprefix, members,
                             desc, prefer_null)
        if pend:
            changed = [i for i, m in enumerate(members) if m in pend]
            if changed:
                full = self._lookup([members[i] for i in changed])
                for i, keys in zip(changed, full):
                    out[i] = _choose(keys, desc, prefer_null)
        return out

    @staticmethod
    def _cursor_ok(storage: Any) -> bool:
        return type(storage) is Storage and storage._rtxn is not None

    def _sections(self, desc: bool, null_first: bool) -> List[str]:
        nulls_first = null_first if not desc else not null_first
        return ["N", "E"] if nulls_first else ["E", "N"]


register_collection_kind(KIND, Index)


def index() -> Index:
    """A new, empty range index in the current prefix (collected unless made reachable)."""
    return Index()


# -- index queries ------------------------------------------------------------------------------------

class SelectQuery(Query):
    """``Index.select(low, high, null_first)``: objects with keys in a range, in key order."""

    __slots__ = ("_ix", "_lo", "_hi", "_null_first")

    def __init__(self, ix: Index, lo: Optional[bytes], hi: Optional[bytes], null_first: bool) -> None:
        super().__init__(ix._px)
        self._ix = ix
        self._lo = lo
        self._hi = hi
        self._null_first = null_first

    def _ranges(self) -> Tuple[Optional[Tuple[bytes, bytes]], bool]:
        """(suffix range of the non-null keys or None, whether null keys are included)."""
        lo, hi = self._lo, self._hi
        if lo is None and hi is None:
            return (b"e", b"f"), True
        start = b"e" + (lo if lo is not None else bytes((_kind_range(hi)[0],)))
        stop = _after(b"e" + hi) if hi is not None else b"e" + bytes((_kind_range(lo)[1],))
        erange = (start, stop) if start < stop else None
        return erange, ((lo is None) if self._null_first else (hi is None))

    def _evaluate(self) -> Result:
        ix = self._ix
        ix._check()
        erange, nulls = self._ranges()
        seen = OidSet() if ix._multi else None      # one key per object: no duplicates
        members: List[Any] = []
        for section in (["N", "E"] if self._null_first else ["E", "N"]):
            if section == "E" and erange is not None:
                members += ix._scan(erange[0], erange[1], False, None, seen)[0]
            elif section == "N" and nulls:
                members += ix._scan(b"n", b"o", False, None, seen)[0]
        return Result(_local_ids(members), members)


class SortQuery(Query):
    """``Index.sort(query, desc, null_first)``: a query's objects in index key order."""

    __slots__ = ("_ix", "_query", "_desc", "_null_first")

    # Per-member cost of a reverse-map lookup relative to one step of the index walk.
    LOOKUP_COST = 16

    def __init__(self, ix: Index, query: Query, desc: bool, null_first: bool) -> None:
        super().__init__(ix._px)
        self._ix = ix
        self._query = query
        self._desc = desc
        self._null_first = null_first

    def _evaluate(self) -> Result:
        ix = self._ix
        ix._check()
        query = self._query
        if isinstance(query, SelectQuery) and query._ix is ix and not ix._multi:
            # Every object has one key: sorting a select of this index is that range
            # walked in the requested order.
            order = self._walk_select(query)
            return Result(_local_ids(order), order)
        base = self._query._result()
        px = ix._px
        natural = base.order is None and self._query._px is px
        if natural:
            members: Any = base.ids
        else:
            members = _rebase(base.members(), self._query._px, px)
        if not len(members):
            return Result(EMPTY, [])
        sections = ix._sections(self._desc, self._null_first)
        if len(members) * self.LOOKUP_COST < ix._count:
            order = self._by_lookup(members, sections)
        else:
            order = self._by_walk(members, natural, sections)
        return Result(_local_ids(order), order)

    def _walk_select(self, query: "SelectQuery") -> List[Any]:
        ix = self._ix
        desc = self._desc
        erange, nulls = query._ranges()
        out: List[Any] = []
        for section in ix._sections(desc, self._null_first):
            if section == "E" and erange is not None:
                found, keys = ix._scan(erange[0], erange[1], desc, None, None, desc)
                if desc:
                    _order_ties(found, keys, None)
                out += found
            elif section == "N" and nulls:
                out += ix._scan(b"n", b"o", False)[0]
        return out

    def _by_walk(self, members: Any, natural: bool, sections: List[str]) -> List[Any]:
        ix = self._ix
        desc = self._desc
        if natural:
            only = OidSet.from_idset(members)
            rank = None
        else:
            only = OidSet.from_idset(_local_ids(members))
            for m in members:
                if type(m) is tuple:
                    only.add(m)
            rank = {m: i for i, m in enumerate(members)}
        seen = OidSet()
        out: List[Any] = []
        for section in sections:
            if section == "N":
                found, _ = ix._scan(b"n", b"o", False, only, seen)
                if rank is not None:
                    found.sort(key=rank.__getitem__)
                out += found
                continue
            fix_ties = desc or rank is not None
            found, keys = ix._scan(b"e", b"f", desc, only, seen, fix_ties)
            if fix_ties:
                _order_ties(found, keys, rank)
            out += found
        return out

    def _by_lookup(self, members: Any, sections: List[str]) -> List[Any]:
        desc = self._desc
        mlist = members.to_list() if isinstance(members, IdSet) else list(members)
        null_section_first = sections[0] == "N"
        nulls: List[Any] = []
        keyed: List[Tuple[bytes, Any]] = []
        for member, key in zip(mlist, self._ix._sort_keys(mlist, desc, null_section_first)):
            if key is None:
                continue
            if key:
                keyed.append((key, member))
            else:
                nulls.append(member)
        keyed.sort(key=_first, reverse=desc)
        ordered = [m for _k, m in keyed]
        return nulls + ordered if null_section_first else ordered + nulls


def _choose(keys: List[bytes], desc: bool, prefer_null: bool) -> Optional[bytes]:
    """The sort key among an object's sorted keys (see Index._sort_keys)."""
    if not keys:
        return None
    has_null = keys[0] == b""
    if has_null and (prefer_null or len(keys) == 1):
        return b""
    return keys[-1] if desc else keys[has_null]


def _first(pair: Tuple[bytes, Any]) -> bytes:
    return pair[0]


def _order_ties(members: List[Any], keys: List[bytes], rank: Optional[Dict[Any, int]]) -> None:
    """Within runs of equal keys, restore the query's order (in place)."""
    n = len(members)
    i = 0
    while i < n:
        j = i + 1
        k = keys[i]
        while j < n and keys[j] == k:
            j += 1
        if j - i > 1:
            run = members[i:j]
            if rank is None:
                run.sort(key=_oid_rank)
            else:
                run.sort(key=rank.__getitem__)
            members[i:j] = run
        i = j


def _oid_rank(member: Any) -> Any:
    return (member, b"") if type(member) is int else (member[1], member[0])


def _local_ids(members: List[Any]) -> IdSet:
    return IdSet.from_iterable([m for m in members if type(m) is int])


def _rebase(members: Any, from_px: Any, to_px: Any) -> List[Any]:
    """Members relative to ``from_px`` re-expressed relative to ``to_px``."""
    if from_px is to_px:
        return members.to_list() if isinstance(members, IdSet) else list(members)
    out: List[Any] = []
    for m in members:
        if type(m) is int:
            out.append((from_px.uuid, m))
        elif m[0] == to_px.uuid:
            out.append(m[1])
        else:
            out.append(m)
    return out
