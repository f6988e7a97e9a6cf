"""``db0.index()``: a persistent ordered multimap from keys to memo objects.

Storage layout (collection kind 6; see docs/format.md)
-------------------------------------------------------
Header: ``objects[pack_oid(ix)] = codec.pack([6, refcount, number of pairs, multi])``.

Each (key, object) pair is one *forward entry* ``section + ekey + tail`` and one
*reverse entry* ``member + ekey``:

* ``section`` is ``b"e"`` for a non-null key and ``b"n"`` for the null key (whose ``ekey``
  is empty), so null entries follow every keyed entry;
* ``ekey`` is ``dbzero_ext.keys.encode_key(key)``: canonical and order-preserving, so byte
  order is key order.  Mixed key types sort by type first - numbers (int, float, Decimal
  and bool compare as numbers) < str < bytes < date < naive datetime < aware datetime <
  time < tuple - then by value.  Equal keys (``1``, ``1.0``, ``True``) are the same key;
* ``tail`` names the object: ``oid (8 BE) + b"\\x00"`` for an object of the index's prefix,
  ``oid (8) + prefix uuid (7) + b"\\x01"`` for an object of another prefix (such entries
  are weak, like every cross-prefix reference); ``member`` is ``oid (8) + b"\\x00"`` or
  ``oid (8) + b"\\x01" + prefix uuid (7)``.

Entries are stored in sorted *blocks* of up to ~4000 bytes (~200 numeric entries) in the
versioned ``index`` table, ``P = pack_oid(ix)``::

    P + b"f" + last forward entry of the block  -> forward block
    P + b"r" + last reverse entry of the block  -> reverse block (object -> keys)

A block value is its entries back to back, each preceded by its length (see
``dbzero_ext/blocks.pxi``).  Keying a block by its last entry makes ``set_range`` land on
the one block that can hold an entry, so a range select is one cursor walk over whole
blocks and all per-entry work happens in C.  A commit merges the sorted pending adds and
removes into the blocks they fall into and rewrites only those (splitting blocks that
grew past the size, merging a block left under a quarter full into the next one, deleting
emptied ones); a new index is written as full blocks.  Versioned history keeps the replaced blocks, so snapshots read old blocks.

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
  ``find`` results).  Nulls are the largest keys unless ``null_first``.  Small queries
  look their objects' keys up in the reverse blocks and sort; large ones walk the
  forward blocks filtering by membership.
* Uncommitted adds/removes are kept in memory (sets of entries) and merged into every
  read (read-your-writes); a commit writes them block by block.  An add checks the
  committed blocks once (the last block read is reused, so adds with nearby keys cost no
  LMDB read), which keeps reference counts exact at all times.

Reads go through ``self._px.storage``; the hot loops are in ``dbzero_ext/query.pyx``.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import decimal
from typing import Any, Dict, List, Optional, Set, Tuple

from dbzero_ext.keys import encode_key
from dbzero_ext.postings import IdSet
from dbzero_ext.query import (BLOCK_BYTES, CursorSource, IndexCore, all_ints, configure_index,
                              ListSource, OidSet, Probe, decode_block, encode_blocks, entry_member,
                              lookup as _c_lookup, member_prefix, merge_entries, pair_entry,
                              reverse_entries, scan as _c_scan, sort_entries, subtract_entries)

from . import errors, workspace
from .prefix import F_DEAD, MemoBase, pack_oid, register_collection_kind
from .query import CHUNK, EMPTY, Materializer, Query, Result, iter_objects
from .storage import Storage

KIND = 6
FORWARD = b"f"
REVERSE = b"r"

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


def _split_entry(entry: bytes) -> Tuple[Any, bytes]:
    """(member, ekey) of a forward entry; ekey b"" for the null key."""
    tail = 9 if entry[-1] == 0 else 16
    return entry_member(entry), (entry[1:-tail] if entry[0] == 0x65 else b"")


def _entry_of(member: Any, ekey: bytes) -> bytes:
    """The forward entry of a member and an encoded key (b"" = null)."""
    if type(member) is int:
        return pair_entry(ekey or None, member, None)
    return pair_entry(ekey or None, member[1], member[0])


configure_index(errors, _ekey, _entry_of)


# -- the index ------------------------------------------------------------------------------------

class Index(IndexCore):
    """An ordered multimap key -> memo object with range selects and sorting of queries.

    Create with ``db0.index()``; keep it reachable (store it on a memo object) to persist it.
    ``add`` and ``remove`` and the fields they touch are in IndexCore
    (dbzero_ext/ixcore.pxi).
    """

    _db0_kind = KIND
    __slots__ = ("_flags", "_refcount", "_probes")

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
        self._pend_members: Dict[Any, int] = {}   # member -> number of pending adds
        self._new = False
        self._adds: Set[bytes] = set()            # pending forward entries (not committed)
        self._removes: Set[bytes] = set()         # committed forward entries pending removal
        self._cleared = False
        self._probes: Optional[tuple] = None
        self._version = 0
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        self._sorted: Optional[List[bytes]] = None
        self._sorted_removes: Optional[List[bytes]] = None
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
        adds = self._pending_sorted()
        if self._new or self._cleared:
            if self._cleared and not self._new:
                for key, _value in px.storage.scan("index", prefix):
                    batch.delete("index", key)
            fresh = self._new
            for section, entries in ((FORWARD, adds), (REVERSE, sort_entries(reverse_entries(adds)))):
                for last, payload in encode_blocks(entries, BLOCK_BYTES, False):
                    batch.put("index", prefix + section + last, payload, fresh=fresh)
            return
        removes = self._removed_sorted()
        if not adds and not removes:
            return
        self._merge_blocks(batch, prefix + FORWARD, adds, removes)
        self._merge_blocks(batch, prefix + REVERSE, sort_entries(reverse_entries(adds)),
                           sort_entries(reverse_entries(removes)))

    def _merge_blocks(self, batch: Any, prefix: bytes, adds: List[bytes], removes: List[bytes]) -> None:
        """Write sorted ``adds`` and ``removes`` into the committed blocks of one section,
        rewriting only the blocks they fall into.  A rewritten block left under a quarter
        full is merged into the block that follows it."""
        source = self._source(prefix)
        deleted: Set[bytes] = set()             # block keys deleted by this merge
        i = j = 0
        na, nr = len(adds), len(removes)
        held: Optional[list] = None             # [bound, entries, appending] not yet written
        while i < na or j < nr:
            first = adds[i] if j >= nr or (i < na and adds[i] < removes[j]) else removes[j]
            payload = source.seek(first)
            appending = payload is None         # past the last block: extend the last one
            if appending:
                payload = source.seek_last()
            bound = source.last                 # None: the section has no block yet
            if bound is None or appending:
                i2, j2 = na, nr
            else:
                i2 = bisect.bisect_right(adds, bound, i)
                j2 = bisect.bisect_right(removes, bound, j)
            if held is not None and held[0] == bound:
                entries = held[1]               # the last block again: keep merging into it
            else:
                entries = decode_block(payload) if payload is not None else []
                if held is not None:
                    entries = self._settle(batch, source, prefix, held, bound, entries, deleted)
            if j2 > j:
                entries = subtract_entries(entries, removes[j:j2])
            if i2 > i:
                entries = merge_entries(entries, adds[i:i2])
            held = [bound, entries, appending]
            i, j = i2, j2
        if held is not None:
            self._settle(batch, source, prefix, held, None, [], deleted)

    @classmethod
    def _settle(cls, batch: Any, source: Any, prefix: bytes, held: list, next_bound: Optional[bytes],
                next_entries: List[bytes], deleted: Set[bytes]) -> List[bytes]:
        """Write the held block; a small one goes in front of the following block instead
        (the next group's block ``next_bound``: returned as part of ``next_entries``)."""
        bound, entries, appending = held
        if bound is None or appending or \
                sum(map(len, entries)) + len(entries) >= BLOCK_BYTES // 4:
            cls._write_blocks(batch, prefix, [bound], entries, appending, deleted)
            return next_entries
        payload = source.seek(bound + b"\x00")
        following = source.last
        if payload is None:                     # the last block stays as it is
            cls._write_blocks(batch, prefix, [bound], entries, appending, deleted)
            return next_entries
        if following == next_bound:             # carry into the next group's block
            cls._write_blocks(batch, prefix, [bound], [], False, deleted)
            return entries + next_entries
        cls._write_blocks(batch, prefix, [bound, following], entries + decode_block(payload),
                          False, deleted)
        return next_entries

    @staticmethod
    def _write_blocks(batch: Any, prefix: bytes, old: List[Optional[bytes]], entries: List[bytes],
                      appending: bool, deleted: Set[bytes]) -> None:
        """Replace the blocks keyed ``old`` (None: none) by blocks holding ``entries``.  Keys
        that did not exist are written as fresh (no history lookup)."""
        for bound in old:
            if bound is not None:
                batch.delete("index", prefix + bound)
                deleted.add(bound)
        for last, block in encode_blocks(entries, BLOCK_BYTES, appending):
            batch.put("index", prefix + last, block, fresh=last not in deleted)

    def _db0_committed(self) -> None:
        self._pend_members = {}
        self._adds = set()
        self._removes = set()
        self._cleared = False
        self._new = False
        self._probes = None
        self._changed()

    def _db0_drop(self, batch: Any) -> None:
        prefix = pack_oid(self._oid)
        if not self._new:
            for key, _value in self._px.storage.scan("index", prefix):
                batch.delete("index", key)

    def _db0_release_all(self) -> None:
        self._release_members()
        self._adds = set()
        self._pend_members = {}
        self._removes = set()
        self._cleared = True
        self._count = 0
        self._multi = False
        self._changed()

    def _db0_invalidate(self) -> None:
        self._loaded = False
        self._probes = None
        self._changed()

    def _db0_undo_token(self) -> tuple:
        return (set(self._adds), set(self._removes), self._cleared, self._count,
                self._refcount, self._loaded, self._new, self._db0_dead, self._multi)

    def _db0_restore(self, token: tuple) -> None:
        (adds, removes, self._cleared, self._count, self._refcount, self._loaded, self._new,
         self._db0_dead, self._multi) = token
        self._adds = set(adds)
        pend: Dict[Any, int] = {}
        for entry in self._adds:
            member = entry_member(entry)
            pend[member] = pend.get(member, 0) + 1
        self._pend_members = pend
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

    # -- committed blocks and pending state ------------------------------------------------------

    def _source(self, prefix: bytes) -> Any:
        """Block source of one section (``P + b"f"`` or ``P + b"r"``) of the committed index."""
        storage = self._px.storage
        if type(storage) is Storage and storage._rtxn is not None:
            return CursorSource(storage._rtxn.cursor(db=storage._dbs["index"]), prefix)
        keys: List[bytes] = []
        values: List[bytes] = []
        n = len(prefix)
        for key, value in storage.scan("index", prefix):
            keys.append(key[n:])
            values.append(value)
        return ListSource(keys, values)

    def _committed(self, section: bytes) -> Any:
        """The block source of a section, or None if nothing committed counts."""
        if self._new or self._cleared:
            return None
        return self._source(pack_oid(self._oid) + section)

    def _probe(self, section: bytes) -> Probe:
        """A Probe of a committed section, kept for the current read transaction (adds
        with nearby keys reuse its block)."""
        storage = self._px.storage
        txn = storage._rtxn if type(storage) is Storage else None
        cache = self._probes
        if txn is None or cache is None or cache[0] is not txn:
            prefix = pack_oid(self._oid)
            cache = (txn, Probe(self._source(prefix + FORWARD)), Probe(self._source(prefix + REVERSE)))
            if txn is not None:
                self._probes = cache
        return cache[1] if section == FORWARD else cache[2]

    def _committed_has(self, entry: bytes) -> bool:
        if self._new or self._cleared:
            return False
        return self._probe(FORWARD).has(entry)

    def _member_has_key(self, member: Any) -> bool:
        """True if ``member`` currently has some key in this index."""
        if self._pend_members.get(member):
            return True
        if self._new or self._cleared:
            return False
        keys = self._probe(REVERSE).with_prefix(member_prefix(member))
        removes = self._removes
        for ekey in keys:
            if not removes or _entry_of(member, ekey) not in removes:
                return True
        return False

    def _pending_sorted(self) -> List[bytes]:
        if self._sorted is None:
            self._sorted = sort_entries(self._adds)
        return self._sorted

    def _removed_sorted(self) -> List[bytes]:
        if self._sorted_removes is None:
            self._sorted_removes = sort_entries(self._removes)
        return self._sorted_removes

    def _pending_by_member(self) -> Dict[Any, Tuple[Set[bytes], Set[bytes]]]:
        if self._by_member is None:
            out: Dict[Any, Tuple[Set[bytes], Set[bytes]]] = {}
            for entry in self._adds:
                member, ekey = _split_entry(entry)
                out.setdefault(member, (set(), set()))[0].add(ekey)
            for entry in self._removes:
                member, ekey = _split_entry(entry)
                out.setdefault(member, (set(), set()))[1].add(ekey)
            self._by_member = out
        return self._by_member

    # -- public API ----------------------------------------------------------------------------------

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
            self._db0_release_all()
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
        members, _keys = self._scan(b"", b"\xff", False)
        local = [m for m in members if type(m) is int]
        if not local:
            return
        objs = Materializer(px).objects(local)
        for obj in objs:
            if obj is not None:
                px.decref(obj)

    def _scan(self, lo: bytes, hi: bytes, reverse: bool, only: Optional[OidSet] = None,
              seen: Optional[OidSet] = None, want_keys: bool = False
              ) -> Tuple[List[Any], Optional[List[bytes]]]:
        """Members of the forward entries in [lo, hi) merged with pending changes, in walk
        order (see dbzero_ext.query.scan for ``only``/``seen``/``want_keys``)."""
        pend = self._pending_sorted()
        if pend:
            pend = pend[bisect.bisect_left(pend, lo):bisect.bisect_left(pend, hi)]
        return _c_scan(self._committed(FORWARD), lo, hi, reverse, pend,
                       self._removed_sorted(), only, seen, want_keys)

    def _lookup(self, members: List[Any]) -> List[List[bytes]]:
        """Current encoded keys of each member (b"" = null), committed merged with pending."""
        source = self._committed(REVERSE)
        if source is None:
            found: List[List[bytes]] = [[] for _ in members]
        else:
            prefixes = [member_prefix(m) for m in members]
            order = sorted(range(len(prefixes)), key=prefixes.__getitem__)
            keys = _c_lookup(source, [prefixes[i] for i in order])
            found = [None] * len(members)   # type: ignore[list-item]
            for k, i in enumerate(order):
                found[i] = keys[k]
        if self._adds or self._removes:
            pend = self._pending_by_member()
            for i, member in enumerate(members):
                change = pend.get(member)
                if change is not None:
                    keys_now = set(found[i]) - change[1]
                    keys_now |= change[0]
                    found[i] = sorted(keys_now)
        return found

    def _sort_keys(self, members: List[Any], desc: bool, prefer_null: bool) -> List[Optional[bytes]]:
        """Per member the key it sorts by: None (not in the index), b"" (null) or an ekey."""
        return [_choose(keys, desc, prefer_null) for keys in self._lookup(members)]

    def _state_key(self) -> Any:
        """Names the index contents a query result was computed from (None: unknown, do
        not cache): pending changes bump ``_version``, commits and refreshes replace the
        read transaction."""
        storage = self._px.storage
        if type(storage) is not Storage or storage._rtxn is None:
            return None
        return (self._version, storage._rtxn)

    def _sections(self, desc: bool, null_first: bool) -> List[str]:
        nulls_first = null_first if not desc else not null_first
        return ["N", "E"] if nulls_first else ["E", "N"]


register_collection_kind(KIND, Index)


def index() -> Index:
    """A new, empty range index in the current prefix (collected unless made reachable)."""
    return Index()


# -- index queries ------------------------------------------------------------------------------------

class _IndexQuery(Query):
    """Iteration of index query results: a result that fits one materialising chunk is
    turned into objects at once (no generator step per object)."""

    __slots__ = ()

    def __iter__(self) -> Any:
        order = self._result().order
        if len(order) <= CHUNK and all_ints(order):
            return iter(Materializer(self._px).live(order))
        return iter_objects(self._px, order)


class SelectQuery(_IndexQuery):
    """``Index.select(low, high, null_first)``: objects with keys in a range, in key order."""

    __slots__ = ("_ix", "_lo", "_hi", "_null_first", "_cached")

    def __init__(self, ix: Index, lo: Optional[bytes], hi: Optional[bytes], null_first: bool) -> None:
        super().__init__(ix._px)
        self._ix = ix
        self._lo = lo
        self._hi = hi
        self._null_first = null_first
        self._cached: Optional[Tuple[Any, Result]] = None    # (Index._state_key(), result)

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
        state = ix._state_key()
        cached = self._cached
        if cached is not None and state is not None and cached[0] == state:
            return cached[1]        # len() then iter() (list(q)) walks once
        erange, nulls = self._ranges()
        seen = OidSet() if ix._multi else None      # one key per object: no duplicates
        members: List[Any] = []
        for section in (["N", "E"] if self._null_first else ["E", "N"]):
            if section == "E" and erange is not None:
                members += ix._scan(erange[0], erange[1], False, None, seen)[0]
            elif section == "N" and nulls:
                members += ix._scan(b"n", b"o", False, None, seen)[0]
        result = _OrderedResult(members)
        if state is not None:
            self._cached = (state, result)
        return result


class SortQuery(_IndexQuery):
    """``Index.sort(query, desc, null_first)``: a query's objects in index key order."""

    __slots__ = ("_ix", "_query", "_desc", "_null_first", "_cached")

    # Per-member cost of a reverse-block lookup relative to one entry of the block walk
    # (measured: ~2 us per looked-up member vs ~20 ns per walked entry; the two meet
    # when the query holds ~1% of the index).
    LOOKUP_COST = 64

    def __init__(self, ix: Index, query: Query, desc: bool, null_first: bool) -> None:
        super().__init__(ix._px)
        self._ix = ix
        self._query = query
        self._desc = desc
        self._null_first = null_first
        self._cached: Optional[Tuple[Any, Result]] = None    # only for sorted selects

    def _evaluate(self) -> Result:
        ix = self._ix
        ix._check()
        query = self._query
        if isinstance(query, SelectQuery) and query._ix is ix and not ix._multi:
            # Every object has one key: sorting a select of this index is that range
            # walked in the requested order.
            state = ix._state_key()
            cached = self._cached
            if cached is not None and state is not None and cached[0] == state:
                return cached[1]
            result = _OrderedResult(self._walk_select(query))
            if state is not None:
                self._cached = (state, result)
            return result
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
        return _OrderedResult(order)

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


class _OrderedResult(Result):
    """A Result in member order whose ``ids`` are built only if set algebra asks for them
    (iterating a select or sort never does)."""

    __slots__ = ("_ids",)

    def __init__(self, order: List[Any]) -> None:
        self.order = order
        self._ids: Optional[IdSet] = None

    @property
    def ids(self) -> IdSet:     # type: ignore[override]
        if self._ids is None:
            self._ids = _local_ids(self.order)
        return self._ids


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
