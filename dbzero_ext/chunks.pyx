# cython: language_level=3, boundscheck=True, wraparound=True
"""Chunked storage behind the persistent collections (List, Tuple, ByteArray, Dict, Set).

The public classes live in ``dbzero/lists.py`` and ``dbzero/dicts.py``; they subclass the
cdef classes here, which hold the in-memory state and implement the hot paths (positional
access, append, iteration, hashed lookup) without going through Python bytecode.

Storage layout (see docs/format.md, "Collections")
==================================================

Every collection has a header record in ``objects`` under its 8-byte object id and items in
``chunks`` under keys that start with the same 8 bytes.

Sequences (List=1, Tuple=4, ByteArray=5)::

    objects[oid]             [kind, refcount, length, version, flags, next_chunk_id,
                              n_chunks, dir_chunk, inline_directory | nil]
    chunks[oid + be32(cid)]  List/Tuple: msgpack array of the items
                             ByteArray: the raw bytes of the chunk
    chunks[oid + b"d" + be32(n)]   directory entries n*dir_chunk ... (n+1)*dir_chunk - 1,
                             only when n_chunks > dir_chunk (else the header holds them)

  The directory lists the chunks in list order as (chunk id, item count) pairs of
  little-endian uint32.  A chunk id is allocated once and never reused within a collection;
  ids say nothing about position, so inserting in the middle only rewrites the chunk
  concerned (split in two when it exceeds 2*K items, merged with a neighbour when it shrinks
  below K/4).  In memory the directory is kept with the prefix sums of the sizes, so position
  -> chunk is a binary search; a commit rewrites only the directory chunks from the first
  changed entry on (appending touches the last one only).

Hashed collections (Dict=2, Set=3), linear hashing plus an insertion-order log::

    objects[oid]             [kind, refcount, length, version, flags, level, split,
                              next_seq, first_seq, order_chunk]
    chunks[oid + b"b" + be32(bucket)]   msgpack array, flat:
                              Dict: [ekey, key, value, seq, ekey, key, value, seq, ...]
                              Set:  [ekey, key, seq, ...]
    chunks[oid + b"o" + be32(n)]        msgpack array of up to ``order_chunk`` slots for the
                              sequence numbers n*order_chunk ...; each slot is the ekey of
                              the item inserted with that number, or nil once removed.

  ``ekey`` is ``dbzero_ext.keys.encode_key(key)`` (canonical: 1, 1.0 and True are one key).
  The bucket of a key is chosen from a 64-bit FNV-1a/murmur hash of its ekey: with
  ``level``/``split`` as in linear hashing there are ``2**level + split`` buckets, and
  bucket ``split`` is split in two whenever ``length > buckets * BUCKET_LOAD``.  A lookup is
  therefore one point read of one bucket.  Iteration walks the order chunks.

``flags`` bit 0 (HAS_REFS) is set once an item that references another object (memo object,
collection, weak reference) was stored; collections without it are never decoded on
deletion.  ``version`` is incremented by every commit that writes the collection; read-only
processes key their cache entries with it, so a refresh never serves stale chunks.

Memory
======

Decoded chunks live in ``dbzero.cache.chunk_cache`` (byte-bounded LRU), keyed by
``(prefix token, oid, version or 0, chunk number)``; only chunks changed since the last
commit are pinned in the collection.  References inside cached chunks are kept as
:class:`Ref` placeholders (object id + class id), not as proxies, so the cache never keeps
memo objects alive or loaded; they are resolved through the prefix's identity map on read.

Each proxy also has a small direct-mapped table ("TLB") from chunk number to a *weak*
reference to the cached chunk object.  A hit skips the OrderedDict lookup and LRU update
(the dominant cost of a warm random read); the cache alone still decides what stays in
memory: when it evicts a chunk, the weak reference dies and the next read goes through the
cache again.  Every 32nd TLB hit also refreshes the chunk's LRU position ("sampled LRU").

Concurrency
===========

Every storage read and every mutation runs under the prefix lock, inside which the proxy
counts itself ``_busy``.  Two kinds of fast path skip the lock:

* reads served from pinned or cached chunks (C-level dict/list/OrderedDict work only);
* writes whose target chunk is already private (append to a pinned tail chunk, insert or
  replace a str/int key in a pinned bucket) with a plain value, outside atomic blocks.

Both run only while no other thread is inside a locked section of the same proxy
(``_busy == 0``; writes also not between ``_db0_flush`` and ``_db0_committed``), allocate
nothing GC-tracked between their first and last mutation, and call no Python code, so under
the GIL they cannot interleave with anything; any other case takes the lock.  The prefix
calls ``_db0_committed`` / ``_db0_restore`` / ``_db0_invalidate`` / ``_db0_release_all``
with its lock held; they raise ``_busy`` as well.  (Free-threaded CPython would need real
per-proxy locking instead.)
"""

from cpython cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Next, PyDict_Size
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_CheckExact
from cpython.ref cimport Py_INCREF, PyObject
from cpython.weakref cimport PyWeakref_GET_OBJECT, PyWeakref_NewRef
from libc.string cimport memmove
from libc.stdint cimport uint64_t

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)

import array as _pyarray
import operator
import struct
import sys
import weakref
from collections import OrderedDict

from dbzero_ext.codec import Codec, EXT_CODES
from dbzero_ext.keys import encode_key
from dbzero_ext.memo import MemoBase

# -- tunables (chosen by measurement; see docs/format.md) -------------------------------------

LIST_CHUNK = 512          # items per List/Tuple chunk (split above 2x, merge below 1/4)
BYTES_CHUNK = 4096        # bytes per ByteArray chunk
BUCKET_LOAD = 32          # average items per hash bucket before a split
ORDER_CHUNK = 512         # insertion-order slots per order chunk
DIR_CHUNK = 248           # directory entries per directory chunk (8 bytes each)
TLB_MAX = 1 << 14         # max slots of the per-proxy chunk table

cdef Py_ssize_t C_LIST_CHUNK = LIST_CHUNK
cdef Py_ssize_t C_BYTES_CHUNK = BYTES_CHUNK
cdef Py_ssize_t C_ORDER_CHUNK = ORDER_CHUNK
cdef Py_ssize_t C_BUCKET_LOAD = BUCKET_LOAD
cdef Py_ssize_t C_TLB_MAX = TLB_MAX
cdef Py_ssize_t C_DIR_CHUNK = DIR_CHUNK


def set_tuning(list_chunk=None, bytes_chunk=None, bucket_load=None, order_chunk=None,
               dir_chunk=None):
    """Change the chunking parameters (tests use tiny chunks); returns the previous values.

    Safe at any time: list/bytes chunk sizes and the bucket load only steer future splits;
    the order-chunk and directory-chunk sizes are recorded in each header at creation.
    """
    global C_LIST_CHUNK, C_BYTES_CHUNK, C_BUCKET_LOAD, C_ORDER_CHUNK, C_DIR_CHUNK
    old = {"list_chunk": C_LIST_CHUNK, "bytes_chunk": C_BYTES_CHUNK,
           "bucket_load": C_BUCKET_LOAD, "order_chunk": C_ORDER_CHUNK,
           "dir_chunk": C_DIR_CHUNK}
    if list_chunk is not None:
        C_LIST_CHUNK = max(int(list_chunk), 2)
    if bytes_chunk is not None:
        C_BYTES_CHUNK = max(int(bytes_chunk), 2)
    if bucket_load is not None:
        C_BUCKET_LOAD = max(int(bucket_load), 1)
    if order_chunk is not None:
        C_ORDER_CHUNK = max(int(order_chunk), 1)
    if dir_chunk is not None:
        C_DIR_CHUNK = max(int(dir_chunk), 1)
    return old

KIND_LIST = 1
KIND_DICT = 2
KIND_SET = 3
KIND_TUPLE = 4
KIND_BYTEARRAY = 5

cdef int HAS_REFS = 1

cdef int X_REF = EXT_CODES["REF"]
cdef object _REF = struct.Struct(">QI")
cdef object _BE32 = struct.Struct(">I").pack
cdef object _OID = struct.Struct(">Q").pack
cdef bint _BIG_ENDIAN = sys.byteorder == "big"
cdef array.array _Q_TEMPLATE = _pyarray.array("q")
cdef object _od_move_to_end = OrderedDict.move_to_end

# Installed by dbzero.collections (avoids importing the Python layer from here).
# Cache-size estimates of decoded chunks: each item costs its list slot plus the object
# itself (ints and floats take 32 bytes, short strings ~50), each dict entry two objects
# and its hash-table slot.  Encoded sizes alone undercount Python memory several times.
DEF ITEM_COST = 48
DEF ENTRY_COST = 112

cdef object _cache = None             # dbzero.cache.chunk_cache
cdef object _cache_items = None       # its OrderedDict: key -> (value, size)
cdef object _WeakRef = None           # dbzero.prefix.WeakRef
cdef object _ReferenceError = None
cdef object _ClosedError = None
cdef object _UnsupportedTypeError = None
cdef object _FormatError = None
cdef object _enum_value_type = None
cdef bint _cache_direct = False

cdef object _MISS = object()     # "not available without a storage read"

cdef int _F_DEAD = 8       # mirrors dbzero_ext.memo flag bits (Prefix code reads ``_flags``)
cdef int _F_CLOSED = 64


def configure(chunk_cache, weakref_type, reference_error, closed_error, unsupported_error,
              format_error, enum_value_type):
    """Install the Python-layer objects this module works with."""
    global _cache, _cache_items, _WeakRef, _ReferenceError, _ClosedError
    global _UnsupportedTypeError, _FormatError, _enum_value_type
    global _cache_direct
    _cache = chunk_cache
    _cache_items = chunk_cache._items
    # put() below mirrors ChunkCache.put (dbzero/cache.py) without a Python-level call;
    # any other cache implementation goes through its public put().
    _cache_direct = (type(_cache_items) is OrderedDict and hasattr(chunk_cache, "_evict")
                     and type(chunk_cache).__name__ == "ChunkCache")
    _WeakRef = weakref_type
    _ReferenceError = reference_error
    _ClosedError = closed_error
    _UnsupportedTypeError = unsupported_error
    _FormatError = format_error
    _enum_value_type = enum_value_type


# -- cached chunk objects ----------------------------------------------------------------------
# Decoded chunks are stored in the cache as these subclasses, which accept weak references
# (the per-proxy TLB holds only weak references, so the cache alone bounds memory).
# Clean (cached) chunk objects are never mutated: writes go to a private copy.

class _Chunk(list):
    __slots__ = ("__weakref__",)


class _Bucket(dict):
    __slots__ = ("__weakref__",)


class _BChunk(bytearray):
    __slots__ = ("__weakref__",)


cdef object new_bucket(object src=None):
    """An empty (or copied) bucket, untracked by the cyclic GC while it holds only atomic
    entries: CPython tracks a dict again as soon as a trackable value is inserted, so a
    bucket holding references to proxies is tracked as usual."""
    b = _Bucket()
    PyObject_GC_UnTrack(<void*>b)
    if src is not None:
        b.update(src)
    return b


# -- placeholders for references inside cached chunks -----------------------------------------

cdef class Ref:
    """A same-prefix reference as decoded from a chunk: object id and class id, no proxy."""
    cdef readonly bytes payload
    cdef readonly unsigned long long oid
    cdef readonly unsigned int class_id

    def __repr__(self):
        return f"<db0 ref oid={self.oid} class={self.class_id}>"


cdef Ref make_ref(bytes payload):
    cdef Ref r = Ref.__new__(Ref)
    r.payload = payload
    r.oid, r.class_id = _REF.unpack_from(payload)
    return r


cdef class _PxInfo:
    cdef object codec
    cdef object token


_pxinfo = weakref.WeakKeyDictionary()
cdef long long _next_token = 0


cdef _PxInfo pxinfo(px):
    """Per-prefix chunk codec (decodes references to Ref placeholders) and cache token."""
    global _next_token
    cdef _PxInfo info = _pxinfo.get(px)
    if info is not None:
        return info
    pxref = weakref.ref(px)

    def ref_of(value):
        if type(value) is Ref:
            return (X_REF, (<Ref>value).payload)
        return pxref()._ref_of(value)

    def resolve(code, payload):
        if code == X_REF:
            return make_ref(payload)
        return pxref()._resolve(code, payload)

    ws = px.workspace
    info = _PxInfo.__new__(_PxInfo)
    info.codec = Codec(ref_of, resolve, ws.enum_of, ws.enum_value)
    _next_token += 1
    info.token = _next_token
    _pxinfo[px] = info
    return info


# -- values ----------------------------------------------------------------------------------

cdef inline bint is_plain(object v):
    cdef type t = type(v)
    return t is int or t is str or t is float or t is bool or v is None or t is bytes


cdef inline bint is_ref(object v):
    """Does a stored value reference an object (so it must be resolved/released)?"""
    cdef type t = type(v)
    return t is Ref or t is _WeakRef or isinstance(v, MemoBase) or isinstance(v, CollectionBase)


cdef object resolve1(object px, object v):
    cdef type t = type(v)
    if t is Ref:
        return px.get_object((<Ref>v).oid, (<Ref>v).class_id)
    if t is _WeakRef:
        target = v.resolve()
        return v if target is None else target
    if t is tuple:
        for x in <tuple>v:
            if type(x) is Ref or type(x) is _WeakRef or type(x) is tuple:
                return tuple([resolve1(px, y) for y in <tuple>v])
    return v


cdef void release1(object px, object v) except *:
    """Drop the reference a stored value held (Ref placeholders are resolved first)."""
    cdef type t = type(v)
    if t is Ref:
        v = px.get_object((<Ref>v).oid, (<Ref>v).class_id)
        px.release(v)
    elif t is tuple:
        for x in <tuple>v:
            release1(px, x)
    elif isinstance(v, MemoBase) or isinstance(v, CollectionBase):
        px.release(v)


def release_value(px, v):
    """Release the reference a stored value holds (public for the Python layer)."""
    release1(px, v)


def resolve_value(px, v):
    """The user-visible form of a stored value (references resolved to proxies)."""
    return resolve1(px, v)


cdef list adopt_all(object px, object iterable, int* flags):
    """Adopt every value (validating before anything is stored); all or nothing."""
    cdef list out = []
    cdef object r
    try:
        for v in iterable:
            if is_plain(v):
                out.append(v)
            else:
                r = px.adopt(v)
                out.append(r)
                if is_ref(r):
                    flags[0] |= HAS_REFS
    except BaseException:
        for r in out:
            release1(px, r)
        raise
    return out


cdef inline tuple entry3(object k, object v, object seq):
    """A bucket entry; untracked by the cyclic GC when it holds only atomic values."""
    cdef tuple e = (k, v, seq)
    if is_plain(k) and is_plain(v):
        PyObject_GC_UnTrack(<void*>e)
    return e


cdef bint chunk_has_refs(object items):
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    cdef object x
    for i in range(n):
        x = <object>PyList_GET_ITEM(items, i)
        if not is_plain(x) and is_ref(x):
            return True
    return False


cdef object resolve_chunk(object px, object items):
    """``items`` with every reference resolved (the same list if it has none)."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    cdef object x
    cdef type t
    for i in range(n):
        x = <object>PyList_GET_ITEM(items, i)
        t = type(x)
        if t is Ref or t is _WeakRef or t is tuple:
            return [resolve1(px, y) for y in items]
    return items


cdef object placeholder1(object px, object x):
    """``x`` fit for the cache: a same-prefix proxy becomes a Ref placeholder."""
    if isinstance(x, MemoBase) or isinstance(x, CollectionBase):
        code, payload = px._ref_of(x)
        return make_ref(payload) if code == X_REF else x
    if type(x) is tuple:
        return tuple([placeholder1(px, y) for y in <tuple>x])
    return x


# -- cache access ----------------------------------------------------------------------------

cdef unsigned long long _tlb_hits = 0


cdef inline void count_tlb_hit() except *:
    # TLB hits are folded into the cache's hit counter in batches (it is a Python attribute)
    global _tlb_hits
    _tlb_hits += 1
    if (_tlb_hits & 1023) == 0:
        _cache.hits += 1024


cdef inline object cache_get(object key):
    # C-level OrderedDict calls only: atomic under the GIL.
    cdef PyObject* item = PyDict_GetItem(_cache_items, key)
    if item == NULL:
        _cache.misses += 1
        return None
    _od_move_to_end(_cache_items, key)
    _cache.hits += 1
    return (<tuple>item)[0]


cdef void cache_put(object key, object value, Py_ssize_t size) except *:
    """ChunkCache.put: replace the entry, account its size, evict LRU entries if over."""
    if not _cache_direct:
        _cache.put(key, value, size)
        return
    old = _cache_items.pop(key, None)
    total = _cache.size
    if old is not None:
        total -= (<tuple>old)[1]
    _cache_items[key] = (value, size)
    total += size
    _cache.size = total
    if total > _cache.capacity:
        _cache._evict()


cdef inline void cache_discard(object key) except *:
    if PyDict_GetItem(_cache_items, key) != NULL:
        _cache.discard(key)


# -- hashing of encoded keys -----------------------------------------------------------------

cdef inline uint64_t hash_bytes(bytes data) noexcept:
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(data)
    cdef uint64_t h = 0xcbf29ce484222325ULL
    for i in range(n):
        h = (h ^ p[i]) * 0x100000001b3ULL
    # murmur3 finaliser: FNV's low bits are weak and buckets use the low bits
    h ^= h >> 33
    h *= 0xff51afd7ed558ccdULL
    h ^= h >> 33
    h *= 0xc4ceb9fe1a85ec53ULL
    h ^= h >> 33
    return h


def key_hash(bytes ekey):
    """The bucket hash of an encoded key (exposed for tests and tools)."""
    return hash_bytes(ekey)


cdef inline long long* LL(array.array a) noexcept:
    return a.data.as_longlongs


cdef array.array new_q(Py_ssize_t n):
    return array.clone(_Q_TEMPLATE, n, zero=True)


cdef Py_ssize_t next_pow2(Py_ssize_t n) noexcept:
    cdef Py_ssize_t p = 8
    while p < n:
        p <<= 1
    return p


# ---------------------------------------------------------------------------------------------

cdef class CollectionBase:
    """State shared by every persistent collection proxy.

    Life cycle: new (created in this process, header not written yet) -> clean -> dirty ->
    clean; ghost proxies load their header on first use.  ``_db0_dead`` (deleted) and
    ``_db0_closed`` (prefix closed) are set by the prefix and make every use raise.
    """

    cdef public object _px
    cdef public unsigned long long _oid
    cdef public bint _db0_closed
    cdef public bint _db0_dead
    cdef object __weakref__
    cdef object _codec
    cdef object _tok
    cdef object _oid_obj
    cdef object _kvo            # version for cache keys (0 in read-write prefixes)
    cdef object _lock
    cdef object _acquire
    cdef object _release
    cdef dict _pxd              # the prefix's __dict__ (fast access to dirty / atomic_log)
    cdef bint _ro
    cdef bytes _okey
    cdef bint _loaded
    cdef bint _is_new
    cdef long long _refc
    cdef long long _version
    cdef int _hflags
    cdef int _kind
    cdef public unsigned long long _mod
    # TLB: chunk number -> weak reference to the cached chunk object
    cdef array.array _tlb_no
    cdef list _tlb_ref
    cdef Py_ssize_t _tlb_mask
    cdef unsigned int _hits
    # Concurrency: _busy counts the locked sections of this proxy in progress (only the
    # thread holding the prefix lock changes it); _flushing is set from _db0_flush until
    # _db0_committed.  Lock-free fast paths run only when both are clear.
    cdef int _busy
    cdef bint _flushing

    def __cinit__(self, *args, **kwargs):
        self._loaded = False
        self._tlb_mask = -1

    # -- setup -------------------------------------------------------------------------

    cdef _attach(self, px, unsigned long long oid):
        cdef _PxInfo info = pxinfo(px)
        self._px = px
        self._oid = oid
        self._oid_obj = oid
        self._okey = _OID(oid)
        self._codec = info.codec
        self._tok = info.token
        self._kind = type(self)._db0_kind
        self._lock = px.lock
        self._acquire = px.lock.acquire
        self._release = px.lock.release
        self._ro = bool(px.readonly)
        self._kvo = 0
        d = getattr(px, "__dict__", None)
        self._pxd = d if type(d) is dict else None

    cdef _setup_new(self, px, long long refcount):
        """Register a brand-new collection (state already filled in by the caller)."""
        self._attach(px, px.new_oid())
        self._loaded = True
        self._is_new = True
        self._refc = refcount
        self._version = 0
        px.register(self)
        px.mark_dirty(self)
        if refcount == 0:
            px.note_zero(self._oid)
        log = px.atomic_log
        if log is not None and hasattr(log, "created"):
            log.created(self)

    @classmethod
    def _db0_ghost(cls, px, oid):
        """A proxy for a stored collection; its header is read on first use."""
        cdef CollectionBase obj = cls.__new__(cls)
        obj._attach(px, oid)
        return obj

    cdef inline void _enter(self) except *:
        self._acquire()
        self._busy += 1

    cdef inline void _leave(self) except *:
        self._busy -= 1
        self._release()

    cdef inline object _pxattr(self, str name):
        cdef PyObject* r
        if self._pxd is not None:
            r = PyDict_GetItem(self._pxd, name)
            if r != NULL:
                return <object>r
        return getattr(self._px, name)

    # -- checks --------------------------------------------------------------------------

    cdef inline int _check(self) except -1:
        if self._db0_dead or self._db0_closed or not self._loaded:
            self._slow_check()
        return 0

    cdef int _slow_check(self) except -1:
        if self._db0_dead:
            raise _ReferenceError("Memo instance expired")
        if self._db0_closed:
            raise _ClosedError("Object is no longer accessible")
        if not self._loaded:
            self._load()
        return 0

    cdef int _load(self) except -1:
        px = self._px
        self._enter()
        try:
            if self._loaded:
                return 0
            if px.closed:
                self._db0_closed = True
                raise _ClosedError("Object is no longer accessible")
            raw = px.storage.get("objects", self._okey)
            if raw is None:
                self._db0_dead = True
                raise _ReferenceError("Memo instance expired")
            rec = px.codec.unpack(raw)
            if rec[0] != self._kind:
                raise _FormatError(f"object {self._oid} is not a {type(self).__name__} "
                                   f"(stored kind {rec[0]})")
            self._refc = rec[1]
            self._version = rec[3]
            self._hflags = rec[4]
            self._kvo = self._version if self._ro else 0
            self._is_new = False
            self._tlb_clear()
            self._read_header(rec)
            self._loaded = True
        finally:
            self._leave()
        return 0

    cdef _read_header(self, list rec):
        raise NotImplementedError

    cdef list _header(self):
        raise NotImplementedError

    cdef object _wbegin(self):
        """Check that a write is allowed; returns the prefix."""
        self._check()
        px = self._px
        if self._ro or self._pxattr("closed"):
            px.check_writable()
        return px

    cdef inline void _undo(self, px) except *:
        if self._pxattr("atomic_log") is not None:
            px.log_undo(self)

    cdef inline void _dirtied(self, px) except *:
        cdef dict dirty = self._pxattr("dirty")
        cdef PyObject* cur
        self._mod += 1
        cur = PyDict_GetItem(dirty, self._oid_obj)
        if cur != <PyObject*>self:
            px.mark_dirty(self)

    cdef inline bint _fast_write_ok(self):
        """May a write skip the lock?  Only when nothing but C-level work follows and no
        other thread is inside a locked section of this proxy or committing it."""
        return (self._busy == 0 and not self._flushing and self._loaded and not self._db0_dead
                and not self._db0_closed and not self._ro and self._pxattr("atomic_log") is None)

    # -- chunk cache with the per-proxy TLB ---------------------------------------------------

    cdef inline object _key(self, long long n):
        return (self._tok, self._oid_obj, self._kvo, n)

    cdef inline object _cget(self, long long n):
        """The cached chunk object number ``n``, or None."""
        cdef Py_ssize_t slot
        cdef PyObject* o
        if self._tlb_mask >= 0:
            slot = n & self._tlb_mask
            if LL(self._tlb_no)[slot] == n:
                o = PyWeakref_GET_OBJECT(<object>PyList_GET_ITEM(self._tlb_ref, slot))
                if o != <PyObject*>None:
                    count_tlb_hit()
                    self._hits += 1
                    if (self._hits & 31) == 0:
                        self._touch_lru(n)
                    return <object>o
        key = self._key(n)
        obj = cache_get(key)
        if obj is not None:
            self._tlb_set(n, obj)
        return obj

    cdef void _touch_lru(self, long long n) except *:
        key = self._key(n)
        if PyDict_GetItem(_cache_items, key) != NULL:
            _od_move_to_end(_cache_items, key)

    cdef void _cput(self, long long n, object obj, Py_ssize_t size) except *:
        cache_put(self._key(n), obj, size)
        self._tlb_set(n, obj)

    cdef void _cdrop(self, long long n) except *:
        cdef Py_ssize_t slot
        cache_discard(self._key(n))
        if self._tlb_mask >= 0:
            slot = n & self._tlb_mask
            if LL(self._tlb_no)[slot] == n:
                LL(self._tlb_no)[slot] = -1

    cdef void _tlb_set(self, long long n, object obj) except *:
        cdef Py_ssize_t want = self._tlb_want(), slot
        if want > C_TLB_MAX:
            want = C_TLB_MAX
        if self._tlb_mask < 0 or want > self._tlb_mask + 1:
            want = next_pow2(want)
            self._tlb_no = array.clone(_Q_TEMPLATE, want, zero=False)
            for slot in range(want):
                LL(self._tlb_no)[slot] = -1
            self._tlb_ref = [None] * want
            self._tlb_mask = want - 1
        slot = n & self._tlb_mask
        self._tlb_ref[slot] = PyWeakref_NewRef(obj, None)
        LL(self._tlb_no)[slot] = n

    cdef void _tlb_clear(self) noexcept:
        self._tlb_mask = -1
        self._tlb_no = None
        self._tlb_ref = None

    cdef Py_ssize_t _tlb_want(self):
        return 8

    # -- protocol used by the prefix --------------------------------------------------------

    @property
    def _rc(self):
        try:
            self._check()
        except Exception:
            return 0
        return self._refc

    @property
    def _flags(self):
        return (_F_DEAD if self._db0_dead else 0) | (_F_CLOSED if self._db0_closed else 0)

    @_flags.setter
    def _flags(self, value):
        if value & _F_DEAD:
            self._db0_dead = True
        if value & _F_CLOSED:
            self._db0_closed = True

    def _db0_refcount(self):
        self._check()
        return self._refc

    def _db0_incref(self):
        px = self._wbegin()
        self._enter()
        try:
            self._undo(px)
            self._refc += 1
            px.zero_rc.discard(self._oid)
            px.mark_dirty(self)
        finally:
            self._leave()

    def _db0_decref(self):
        if self._db0_dead:
            return
        px = self._wbegin()
        self._enter()
        try:
            self._undo(px)
            self._refc -= 1
            px.mark_dirty(self)
            if self._refc <= 0:
                px.note_zero(self._oid)
        finally:
            self._leave()

    # The prefix calls these with its lock held; _busy makes lock-free readers in other
    # threads wait for the lock instead of seeing a half-updated proxy.

    def _db0_invalidate(self):
        """A read-only prefix moved to a newer state: forget the header and pinned data."""
        self._busy += 1
        try:
            self._loaded = False
            self._mod += 1
            self._tlb_clear()
            self._forget()
        finally:
            self._busy -= 1

    def _db0_flush(self, batch):
        """Write the pending changes into ``batch`` (commit, lock held)."""
        self._flushing = True    # no lock-free writes until _db0_committed
        self._flush(batch)

    def _db0_committed(self):
        """The batch was committed: pinned chunks become clean cache entries."""
        self._busy += 1
        try:
            self._committed()
        finally:
            self._busy -= 1
            self._flushing = False

    def _db0_release_all(self):
        """Deleted (unreachable): release what the items reference; forget cached chunks."""
        self._busy += 1
        try:
            self._release_all()
        finally:
            self._busy -= 1

    def _db0_restore(self, token):
        """Put back the state captured by _db0_undo_token (atomic rollback)."""
        self._busy += 1
        try:
            self._mod += 1
            self._restore(token)
        finally:
            self._busy -= 1
            self._flushing = False

    cdef _flush(self, batch):
        raise NotImplementedError

    cdef _committed(self):
        raise NotImplementedError

    cdef _release_all(self):
        raise NotImplementedError

    cdef _restore(self, token):
        raise NotImplementedError

    cdef _forget(self):
        pass

    def __reduce__(self):
        raise TypeError(f"cannot pickle '{type(self).__name__}' object "
                        "(collections live in their prefix; use db0.load() for a plain copy)")

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __copy__(self):
        return self.copy()

    def _db0_header(self):
        """The header record as stored (for tools and tests)."""
        self._check()
        return self._header()


# =============================================================================================
# Sequences
# =============================================================================================

cdef void arr_insert(array.array a, Py_ssize_t i, long long v) except *:
    cdef Py_ssize_t n = len(a)
    array.resize_smart(a, n + 1)
    if i < n:
        memmove(&a.data.as_longlongs[i + 1], &a.data.as_longlongs[i], (n - i) * sizeof(long long))
    a.data.as_longlongs[i] = v


cdef void arr_delete(array.array a, Py_ssize_t i) except *:
    cdef Py_ssize_t n = len(a)
    if i < n - 1:
        memmove(&a.data.as_longlongs[i], &a.data.as_longlongs[i + 1], (n - i - 1) * sizeof(long long))
    array.resize_smart(a, n - 1)


cdef bytes dir_bytes(array.array ids, array.array sizes, Py_ssize_t a, Py_ssize_t b):
    """Directory entries [a, b) as stored: (chunk id, size) pairs of little-endian uint32."""
    cdef Py_ssize_t i
    out = _pyarray.array("I", bytes(8 * (b - a)))
    for i in range(a, b):
        out[2 * (i - a)] = LL(ids)[i]
        out[2 * (i - a) + 1] = LL(sizes)[i]
    if _BIG_ENDIAN:
        out.byteswap()
    return out.tobytes()


cdef tuple dir_arrays(bytes raw):
    """(ids, sizes) arrays from stored directory bytes."""
    pairs = _pyarray.array("I")
    pairs.frombytes(raw)
    if _BIG_ENDIAN:
        pairs.byteswap()
    return _pyarray.array("q", pairs[0::2]), _pyarray.array("q", pairs[1::2])


cdef class SeqBase(CollectionBase):
    """A sequence stored in chunks: List, Tuple (read-only API) and ByteArray (bytes chunks)."""

    cdef array.array _ids
    cdef array.array _sizes
    cdef array.array _ends
    cdef Py_ssize_t _n
    cdef Py_ssize_t _len
    cdef long long _next_id
    cdef dict _dirty            # cid -> _Chunk/_BChunk (pinned until commit) or None (delete)
    cdef set _fresh             # cids never written to storage
    cdef dict _flushed          # cid -> encoded size, between flush and commit
    cdef bint _bytes
    cdef Py_ssize_t _K
    cdef Py_ssize_t _D          # directory entries per directory chunk (from the header)
    cdef Py_ssize_t _dir_from   # first directory entry changed since the last commit, or -1
    cdef Py_ssize_t _stored_ndir   # directory chunks in storage (0: directory in the header)
    cdef Py_ssize_t _new_ndir      # the same after the pending flush
    cdef object _lc             # last chunk read: items, with [_lc_start, _lc_end)
    cdef Py_ssize_t _lc_start
    cdef Py_ssize_t _lc_end

    def __cinit__(self, *args, **kwargs):
        self._bytes = type(self)._db0_kind == KIND_BYTEARRAY
        self._K = C_BYTES_CHUNK if self._bytes else C_LIST_CHUNK
        self._dirty = {}
        self._fresh = set()
        self._flushed = {}
        self._ids = new_q(0)
        self._sizes = new_q(0)
        self._ends = new_q(0)
        self._D = C_DIR_CHUNK
        self._dir_from = -1

    # -- header --------------------------------------------------------------------------

    cdef _read_header(self, list rec):
        # called with the lock held
        cdef Py_ssize_t n = rec[6], D = rec[7], dn, ndir
        self._len = rec[2]
        self._next_id = rec[5]
        self._D = D
        self._dir_from = -1
        if rec[8] is not None:
            raw = rec[8]
            self._stored_ndir = 0
        else:
            ndir = (n + D - 1) // D
            parts = []
            storage = self._px.storage
            for dn in range(ndir):
                part = storage.get("chunks", self._okey + b"d" + _BE32(dn))
                if part is None:
                    raise _FormatError(f"collection {self._oid}: directory chunk {dn} is missing")
                parts.append(part)
            raw = b"".join(parts)
            self._stored_ndir = ndir
        ids, sizes = dir_arrays(raw)
        if len(ids) != n:
            raise _FormatError(f"collection {self._oid}: directory has {len(ids)} entries, expected {n}")
        ends = new_q(len(ids))
        self._dirty = {}
        self._fresh = set()
        self._lc = None
        self._ids = ids
        self._sizes = sizes
        self._ends = ends
        self._n = len(ids)
        self._recompute_ends(0)

    cdef list _header(self):
        inline = dir_bytes(self._ids, self._sizes, 0, self._n) if self._n <= self._D else None
        return [self._kind, self._refc, self._len, self._version, self._hflags, self._next_id,
                self._n, self._D, inline]

    cdef _forget(self):
        self._dirty = {}
        self._fresh = set()
        self._lc = None

    cdef inline void _dir_touch(self, Py_ssize_t ci) noexcept:
        if self._dir_from < 0 or ci < self._dir_from:
            self._dir_from = ci

    cdef Py_ssize_t _tlb_want(self):
        return self._next_id

    cdef void _recompute_ends(self, Py_ssize_t ci) noexcept:
        cdef long long* e = LL(self._ends)
        cdef long long* s = LL(self._sizes)
        cdef long long acc = e[ci - 1] if ci > 0 else 0
        cdef Py_ssize_t i
        for i in range(ci, self._n):
            acc += s[i]
            e[i] = acc

    # -- creation ------------------------------------------------------------------------

    def _db0_create(self, px, iterable, long long refcount):
        """Fill this (unregistered) proxy with ``iterable`` and register it in ``px``."""
        cdef int flags = 0
        if self._bytes:
            items = bytearray(iterable)
        else:
            items = adopt_all(px, iterable, &flags)
        self._hflags = flags
        self._next_id = 0
        self._n = 0
        self._len = 0
        self._stored_ndir = 0
        self._dir_from = 0
        self._append_many(items)
        self._setup_new(px, refcount)

    # -- chunk access ----------------------------------------------------------------------

    cdef inline Py_ssize_t _find(self, Py_ssize_t i) noexcept:
        """Index of the chunk holding position i (0 <= i < len)."""
        cdef long long* e = LL(self._ends)
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if e[mid] <= i:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef inline Py_ssize_t _start(self, Py_ssize_t ci) noexcept:
        return LL(self._ends)[ci - 1] if ci > 0 else 0

    cdef object _chunk(self, Py_ssize_t ci):
        """The items of chunk ``ci`` (read-only: list or bytearray, maybe with Refs)."""
        cdef long long cid = LL(self._ids)[ci]
        cdef PyObject* d
        if self._dirty:
            d = PyDict_GetItem(self._dirty, cid)
            if d != NULL:
                return <object>d
        items = self._cget(cid)
        if items is not None:
            return items
        return self._load_chunk(cid, True)

    cdef object _load_chunk(self, long long cid, bint keep):
        px = self._px
        self._enter()
        try:
            if px.closed:
                self._db0_closed = True
                raise _ClosedError("Object is no longer accessible")
            raw = px.storage.get("chunks", self._okey + _BE32(cid))
        finally:
            self._leave()
        if raw is None:
            raise _FormatError(f"collection {self._oid}: chunk {cid} is missing")
        if self._bytes:
            items = _BChunk(raw)
            size = len(raw) + 64
        else:
            items = _Chunk(self._codec.unpack(raw))
            size = 64 + ITEM_COST * len(items) + 2 * len(raw)
        if keep:
            self._cput(cid, items, size)
        return items

    cdef object _wchunk(self, Py_ssize_t ci):
        """Chunk ``ci`` made writable: a private copy pinned until the next commit."""
        cdef long long cid = LL(self._ids)[ci]
        cdef PyObject* d = PyDict_GetItem(self._dirty, cid)
        if d != NULL:
            return <object>d
        clean = self._chunk(ci)
        items = _BChunk(clean) if self._bytes else _Chunk(clean)
        self._dirty[cid] = items
        self._cdrop(cid)
        return items

    cdef long long _new_chunk(self, items):
        cdef long long cid = self._next_id
        self._next_id += 1
        self._fresh.add(cid)
        if self._bytes:
            self._dirty[cid] = items if type(items) is _BChunk else _BChunk(items)
        else:
            self._dirty[cid] = items if type(items) is _Chunk else _Chunk(items)
        return cid

    cdef void _drop_chunk(self, long long cid) except *:
        if cid in self._fresh:
            self._fresh.discard(cid)
            self._dirty.pop(cid, None)
        else:
            self._dirty[cid] = None
            self._cdrop(cid)

    cdef object _empty(self):
        return bytearray() if self._bytes else []

    cdef object _resolved(self, items):
        if self._hflags & HAS_REFS and not self._bytes:
            return resolve_chunk(self._px, items)
        return items

    # -- reads -----------------------------------------------------------------------------
    # A read first tries a lock-free path that touches only pinned or cached chunks (C-level
    # work only); anything that needs storage, or finds another thread inside a locked
    # section (_busy), is redone under the prefix lock.

    cdef Py_ssize_t _norm(self, object idx, str what) except -1:
        cdef Py_ssize_t i = idx
        if i < 0:
            i += self._len
        if i < 0 or i >= self._len:
            raise IndexError(f"{self._kindname()} {what}index out of range")
        return i

    cdef str _kindname(self):
        return "bytearray" if self._bytes else ("tuple" if self._kind == KIND_TUPLE else "list")

    cdef object _chunk_nowait(self, Py_ssize_t ci):
        """Chunk ``ci`` if it is pinned or cached, else None (never reads storage)."""
        cdef long long cid = LL(self._ids)[ci]
        cdef PyObject* d
        if self._dirty:
            d = PyDict_GetItem(self._dirty, cid)
            if d != NULL:
                return <object>d
        return self._cget(cid)

    cdef object _raw(self, Py_ssize_t i):
        """Stored item at position i (0 <= i < len), unresolved.  Lock held."""
        cdef Py_ssize_t ci
        if self._lc is not None and self._lc_start <= i < self._lc_end:
            return self._lc[i - self._lc_start]
        ci = self._find(i)
        items = self._chunk(ci)
        self._lc = items
        self._lc_start = self._start(ci)
        self._lc_end = LL(self._ends)[ci]
        return items[i - self._lc_start]

    cdef object _raw_nowait(self, Py_ssize_t i):
        """Like _raw without the lock; _MISS if a chunk would have to be read."""
        cdef Py_ssize_t ci
        if self._lc is not None and self._lc_start <= i < self._lc_end:
            return self._lc[i - self._lc_start]
        ci = self._find(i)
        items = self._chunk_nowait(ci)
        if items is None:
            return _MISS
        self._lc = items
        self._lc_start = self._start(ci)
        self._lc_end = LL(self._ends)[ci]
        return items[i - self._lc_start]

    cdef inline object _out(self, object x):
        if self._hflags & HAS_REFS and not is_plain(x):
            return resolve1(self._px, x)
        return x

    def __len__(self):
        self._check()
        return self._len

    def __getitem__(self, idx):
        self._check()
        if PyLong_CheckExact(idx):
            if self._busy == 0:
                x = self._raw_nowait(self._norm(idx, ""))
                if x is not _MISS:
                    return self._out(x)
        elif isinstance(idx, slice):
            self._enter()
            try:
                return self._getslice(idx)
            finally:
                self._leave()
        else:
            try:
                idx = operator.index(idx)
            except TypeError:
                raise TypeError(f"{self._kindname()} indices must be integers or slices, "
                                f"not {type(idx).__name__}") from None
        self._enter()
        try:
            x = self._raw(self._norm(idx, ""))
        finally:
            self._leave()
        return self._out(x)

    cdef object _getslice(self, slice sl):
        cdef Py_ssize_t start, stop, step
        start, stop, step = sl.indices(self._len)
        if step == 1:
            out = self._range(start, stop)
        elif self._bytes:
            out = bytearray([self._raw(i) for i in range(start, stop, step)])
        else:
            out = self._resolved([self._raw(i) for i in range(start, stop, step)])
        if self._bytes:
            return bytes(out)
        if self._kind == KIND_TUPLE:
            return tuple(out)
        return list(out) if type(out) is not list else out

    cdef object _range(self, Py_ssize_t a, Py_ssize_t b):
        """Items [a, b) resolved, as a new list (bytearray for ByteArray).  Lock held."""
        out = self._empty()
        if b <= a:
            return out
        cdef Py_ssize_t ci = self._find(a)
        cdef Py_ssize_t s, e
        while a < b:
            s = self._start(ci)
            e = LL(self._ends)[ci]
            items = self._chunk(ci)
            out += items[a - s: (b if b < e else e) - s]
            a = e
            ci += 1
        return self._resolved(out)

    def _chunks_from(self, Py_ssize_t pos=0):
        """(position, items) chunk by chunk from ``pos`` on: bounded memory, lock held only
        while a chunk is fetched.  Position-based like a list iterator, so it sees edits
        made in between; the items are resolved and never a pinned (mutable) chunk."""
        self._check()
        cdef Py_ssize_t ci, start, end
        cdef long long cid
        while True:
            self._enter()
            try:
                if pos >= self._len:
                    return
                ci = self._find(pos)
                start = self._start(ci)
                end = LL(self._ends)[ci]
                cid = LL(self._ids)[ci]
                items = self._chunk(ci)
                if pos > start or PyDict_GetItem(self._dirty, cid) != NULL:
                    items = items[pos - start:]
                here = pos
            finally:
                self._leave()
            pos = end
            yield here, self._resolved(items)

    def _chunks(self):
        """Resolved chunk contents in order (see _chunks_from)."""
        for _pos, items in self._chunks_from(0):
            yield items

    def __iter__(self):
        self._check()
        cdef SeqIter it = SeqIter.__new__(SeqIter)
        it.s = self
        it.items = None
        it.pos = 0
        it.off = 0
        it.mod = self._mod
        return it

    def __contains__(self, value):
        self._check()
        if self._bytes:
            return self._bytes_contains(value)
        for items in self._chunks():
            if value in items:
                return True
        return False

    cdef bint _bytes_contains(self, value) except -1:
        if isinstance(value, int):
            value = operator.index(value)
            if not 0 <= value < 256:
                raise ValueError("byte must be in range(0, 256)")
            for items in self._chunks():
                if value in items:
                    return True
            return False
        needle = bytes(memoryview(value))
        self._enter()
        try:
            return needle in self._range(0, self._len)
        finally:
            self._leave()

    def _index(self, value, Py_ssize_t start, Py_ssize_t stop):
        """Position of the first item equal to ``value`` in [start, stop), or -1."""
        self._check()
        cdef Py_ssize_t hi
        if start < 0:
            start = max(start + self._len, 0)
        if stop < 0:
            stop += self._len
        if start >= stop:
            return -1
        for pos, items in self._chunks_from(start):
            if pos >= stop:
                break
            hi = stop - pos
            if hi > len(items):
                hi = len(items)
            try:
                return pos + items.index(value, 0, hi)
            except ValueError:
                pass
        return -1

    def _count(self, value):
        self._check()
        cdef Py_ssize_t n = 0
        for items in self._chunks():
            n += items.count(value)
        return n

    # -- mutation primitives (callers hold the lock and did the checks) ------------------------

    cdef void _append1(self, object v) except *:
        cdef Py_ssize_t last = self._n - 1
        cdef long long cid
        if last >= 0 and LL(self._sizes)[last] < self._K:
            self._wchunk(last).append(v)
            LL(self._sizes)[last] += 1
            LL(self._ends)[last] += 1
            self._dir_touch(last)
        else:
            self._dir_touch(self._n)
            cid = self._new_chunk(_BChunk([v]) if self._bytes else _Chunk([v]))
            arr_insert(self._ids, self._n, cid)
            arr_insert(self._sizes, self._n, 1)
            arr_insert(self._ends, self._n, self._len + 1)
            self._n += 1
        self._len += 1
        self._lc = None

    cdef void _append_many(self, items) except *:
        cdef Py_ssize_t n = len(items), pos = 0, room, take, last
        cdef long long cid
        self._lc = None
        if n == 0:
            return
        last = self._n - 1
        self._dir_touch(last if last >= 0 else 0)
        if last >= 0 and LL(self._sizes)[last] < self._K:
            room = self._K - LL(self._sizes)[last]
            take = room if room < n else n
            self._wchunk(last).extend(items[:take])
            LL(self._sizes)[last] += take
            LL(self._ends)[last] += take
            self._len += take
            pos = take
        while pos < n:
            take = self._K if n - pos > self._K else n - pos
            piece = items[pos:pos + take]
            cid = self._new_chunk(_BChunk(piece) if self._bytes else _Chunk(piece))
            arr_insert(self._ids, self._n, cid)
            arr_insert(self._sizes, self._n, take)
            arr_insert(self._ends, self._n, self._len + take)
            self._n += 1
            self._len += take
            pos += take

    cdef void _insert1(self, Py_ssize_t i, object v) except *:
        cdef Py_ssize_t ci, s, j
        if i >= self._len:
            self._append1(v)
            return
        ci = self._find(i)
        s = self._start(ci)
        items = self._wchunk(ci)
        items.insert(i - s, v)
        LL(self._sizes)[ci] += 1
        self._dir_touch(ci)
        for j in range(ci, self._n):
            LL(self._ends)[j] += 1
        self._len += 1
        self._lc = None
        if LL(self._sizes)[ci] > 2 * self._K:
            self._split(ci)

    cdef void _split(self, Py_ssize_t ci) except *:
        items = self._wchunk(ci)
        cdef Py_ssize_t half = len(items) // 2
        second = items[half:]
        del items[half:]
        cdef long long cid = self._new_chunk(second)
        arr_insert(self._ids, ci + 1, cid)
        arr_insert(self._sizes, ci + 1, len(second))
        arr_insert(self._ends, ci + 1, 0)
        LL(self._sizes)[ci] = half
        self._dir_touch(ci)
        self._n += 1
        self._recompute_ends(ci)

    cdef object _pop1(self, Py_ssize_t i):
        """Remove and return the stored (unresolved) item at position i."""
        cdef Py_ssize_t ci = self._find(i), s = self._start(ci), j
        items = self._wchunk(ci)
        old = items[i - s]
        del items[i - s]
        LL(self._sizes)[ci] -= 1
        self._dir_touch(ci)
        for j in range(ci, self._n):
            LL(self._ends)[j] -= 1
        self._len -= 1
        self._lc = None
        self._rebalance(ci)
        return old

    cdef void _remove_chunk_at(self, Py_ssize_t ci) except *:
        self._dir_touch(ci)
        self._drop_chunk(LL(self._ids)[ci])
        arr_delete(self._ids, ci)
        arr_delete(self._sizes, ci)
        arr_delete(self._ends, ci)
        self._n -= 1

    cdef void _rebalance(self, Py_ssize_t ci) except *:
        """Drop an empty chunk; merge a small one into a neighbour that has room."""
        cdef long long size = LL(self._sizes)[ci]
        cdef Py_ssize_t other, lo, hi
        if size == 0:
            self._remove_chunk_at(ci)
            return
        if size >= self._K // 4 or self._n < 2:
            return
        other = ci + 1 if ci + 1 < self._n else ci - 1
        if LL(self._sizes)[other] + size > self._K:
            return
        lo = ci if ci < other else other
        hi = lo + 1
        first = self._wchunk(lo)
        first.extend(self._chunk(hi))
        LL(self._sizes)[lo] += LL(self._sizes)[hi]
        self._dir_touch(lo)
        self._remove_chunk_at(hi)
        self._recompute_ends(lo)

    cdef object _set1(self, Py_ssize_t i, object v):
        """Replace position i; returns the stored item that was there."""
        cdef Py_ssize_t ci = self._find(i), s = self._start(ci)
        items = self._wchunk(ci)
        old = items[i - s]
        items[i - s] = v
        self._lc = None
        return old

    cdef list _splice(self, Py_ssize_t start, Py_ssize_t stop, new_items, bint collect):
        """Replace items [start, stop) by ``new_items`` (adopted already).

        Returns the removed stored items when ``collect`` (for releasing), else None.
        The chunks touched are rewritten as pieces of K items.
        """
        cdef Py_ssize_t c0, c1, s0, s1, i
        cdef list removed = [] if collect else None
        cdef long long cid
        if stop < start:
            stop = start
        self._lc = None
        if self._n == 0 or start >= self._len:
            self._append_many(new_items)
            return removed
        c0 = self._find(start)
        c1 = self._find(stop - 1) if stop > start else c0
        self._dir_touch(c0)
        s0 = self._start(c0)
        s1 = self._start(c1)
        first = self._chunk(c0)
        last = self._chunk(c1) if c1 != c0 else first
        if self._bytes:
            combined = bytearray(first[:start - s0])
            combined += bytearray(new_items)
        else:
            combined = list(first[:start - s0])
            combined += new_items
        combined += last[stop - s1:]
        if collect:
            if c0 == c1:
                removed.extend(first[start - s0:stop - s0])
            else:
                removed.extend(first[start - s0:])
                for i in range(c0 + 1, c1):
                    removed.extend(self._chunk(i))
                removed.extend(last[:stop - s1])
        # replace the directory entries c0..c1 by pieces of ``combined``
        old_ids = [LL(self._ids)[i] for i in range(c0, c1 + 1)]
        pieces = [combined[i:i + self._K] for i in range(0, len(combined), self._K)]
        new_ids = []
        for i in range(len(pieces)):
            piece = _BChunk(pieces[i]) if self._bytes else _Chunk(pieces[i])
            if i < len(old_ids):
                cid = old_ids[i]
                self._dirty[cid] = piece
                self._cdrop(cid)
            else:
                cid = self._new_chunk(piece)
            new_ids.append(cid)
        for i in range(len(pieces), len(old_ids)):
            self._drop_chunk(old_ids[i])
        ids = _pyarray.array("q", self._ids[:c0])
        ids.extend(new_ids)
        ids.extend(self._ids[c1 + 1:])
        sizes = _pyarray.array("q", self._sizes[:c0])
        sizes.extend([len(p) for p in pieces])
        sizes.extend(self._sizes[c1 + 1:])
        ends = new_q(len(ids))
        self._ids = ids
        self._sizes = sizes
        self._ends = ends
        self._n = len(ids)
        self._recompute_ends(0)
        self._len = LL(self._ends)[self._n - 1] if self._n else 0
        if len(pieces) == 1 and c0 < self._n:
            self._rebalance(c0)
        return removed

    cdef void _clear_all(self) except *:
        """Drop every item (no releasing; see _release_items)."""
        cdef Py_ssize_t ci
        self._dir_touch(0)
        for ci in range(self._n):
            self._drop_chunk(LL(self._ids)[ci])
        self._n = 0
        self._ids = new_q(0)
        self._sizes = new_q(0)
        self._ends = new_q(0)
        self._len = 0
        self._lc = None

    cdef void _release_items(self) except *:
        """Release every reference the items hold, chunk by chunk (nothing is cached)."""
        cdef Py_ssize_t ci
        cdef long long cid
        cdef PyObject* d
        if self._bytes or not self._hflags & HAS_REFS:
            return
        px = self._px
        for ci in range(self._n):
            cid = LL(self._ids)[ci]
            d = PyDict_GetItem(self._dirty, cid)
            if d != NULL:
                items = <object>d
            else:
                items = self._cget(cid)
                if items is None:
                    items = self._load_chunk(cid, False)
            for x in items:
                if not is_plain(x):
                    release1(px, x)

    # -- commit protocol -----------------------------------------------------------------------

    cdef _flush(self, batch):
        px = self._px
        pack = self._codec.pack
        okey = self._okey
        fresh = self._is_new
        self._flushed = {}
        for cid, items in self._dirty.items():
            key = okey + _BE32(cid)
            if items is None:
                if not fresh and cid not in self._fresh:
                    batch.delete("chunks", key)
                continue
            data = bytes(items) if self._bytes else pack(list(items))
            batch.put("chunks", key, data, fresh=fresh or cid in self._fresh)
            self._flushed[cid] = len(data)
        self._flush_directory(batch, fresh)
        self._version += 1
        batch.put("objects", okey, px.codec.pack(self._header()), fresh=fresh)

    cdef _flush_directory(self, batch, bint fresh):
        """Write the directory chunks that changed (small directories live in the header)."""
        cdef Py_ssize_t D = self._D, n = self._n, ndir, dn, start
        okey = self._okey
        if n <= D:
            ndir = 0
            start = 0
        else:
            ndir = (n + D - 1) // D
            if self._stored_ndir == 0:
                start = 0
            elif self._dir_from < 0:
                start = ndir
            else:
                start = self._dir_from // D
            for dn in range(start, ndir):
                batch.put("chunks", okey + b"d" + _BE32(dn),
                          dir_bytes(self._ids, self._sizes, dn * D, min(n, (dn + 1) * D)),
                          fresh=fresh)
        if not fresh:
            for dn in range(ndir, self._stored_ndir):
                batch.delete("chunks", okey + b"d" + _BE32(dn))
        self._new_ndir = ndir

    cdef _committed(self):
        px = self._px
        for cid, items in self._dirty.items():
            if items is None:
                continue
            size = self._flushed.get(cid, 0)
            if self._bytes:
                self._cput(cid, items, size + 64)
            else:
                if self._hflags & HAS_REFS and chunk_has_refs(items):
                    items = _Chunk([placeholder1(px, x) for x in items])
                self._cput(cid, items, 64 + ITEM_COST * len(items) + 2 * size)
        self._dirty = {}
        self._fresh = set()
        self._flushed = {}
        self._is_new = False
        self._lc = None
        self._stored_ndir = self._new_ndir
        self._dir_from = -1

    cdef _release_all(self):
        """Deleted (unreachable): release what the items reference; forget cached chunks."""
        self._release_items()
        cdef Py_ssize_t ci
        for ci in range(self._n):
            self._cdrop(LL(self._ids)[ci])
        self._dirty = {}
        self._fresh = set()
        self._lc = None

    def _db0_drop(self, batch):
        px = self._px
        for key, _value in px.storage.scan("chunks", self._okey):
            batch.delete("chunks", key)

    def _db0_undo_token(self):
        if not self._loaded:
            return None
        dirty = {cid: (None if items is None else (bytearray(items) if self._bytes else list(items)))
                 for cid, items in self._dirty.items()}
        return (self._len, self._next_id, self._refc, self._hflags, self._is_new,
                _pyarray.array("q", self._ids), _pyarray.array("q", self._sizes),
                dirty, set(self._fresh), self._dir_from, self._stored_ndir)

    cdef _restore(self, token):
        self._mod += 1
        self._lc = None
        if token is None:
            self._loaded = False
            self._tlb_clear()
            self._forget()
            return
        (length, next_id, refc, hflags, is_new, ids, sizes, dirty, fresh,
         self._dir_from, self._stored_ndir) = token
        self._dirty = {cid: (None if items is None else
                             (_BChunk(items) if self._bytes else _Chunk(items)))
                       for cid, items in dirty.items()}
        self._fresh = set(fresh)
        ids = _pyarray.array("q", ids)
        sizes = _pyarray.array("q", sizes)
        ends = new_q(len(ids))
        self._ids = ids
        self._sizes = sizes
        self._ends = ends
        self._n = len(ids)
        self._recompute_ends(0)
        self._len = length
        self._next_id = next_id
        self._refc = refc
        self._hflags = hflags
        self._is_new = is_new
        self._loaded = True
        if self._refc > 0:
            self._px.zero_rc.discard(self._oid)

    def _db0_stats(self):
        """Directory facts for tests and tools."""
        self._check()
        return {"length": self._len, "chunks": self._n, "chunk_sizes": list(self._sizes),
                "chunk_ids": list(self._ids), "dirty": len(self._dirty), "flags": self._hflags,
                "version": self._version, "dir_chunk": self._D, "dir_chunks": self._stored_ndir}


cdef class MutableSeq(SeqBase):
    """The write API shared by List and ByteArray."""

    cdef object _check_byte(self, object v):
        if not isinstance(v, int):
            raise TypeError(f"'{type(v).__name__}' object cannot be interpreted as an integer")
        v = operator.index(v)
        if not 0 <= v < 256:
            raise ValueError("byte must be in range(0, 256)")
        return v

    cdef list _adopt_many(self, px, iterable):
        cdef int flags = 0
        cdef list out
        if self._bytes:
            if isinstance(iterable, (bytes, bytearray, memoryview)):
                return list(bytes(iterable))
            if isinstance(iterable, (str, int)):
                raise TypeError("can assign only bytes, buffers, or iterables of ints in range(0, 256)")
            return [self._check_byte(v) for v in iterable]
        out = adopt_all(px, iterable, &flags)
        self._hflags |= flags
        return out

    cdef object _adopt_one(self, px, v):
        if self._bytes:
            return self._check_byte(v)
        if is_plain(v):
            return v
        r = px.adopt(v)
        if is_ref(r):
            self._hflags |= HAS_REFS
        return r

    cdef inline void _release_list(self, px, items) except *:
        if items and not self._bytes:
            for x in items:
                if not is_plain(x):
                    release1(px, x)

    def append(self, value):
        """Append one item (O(1) amortised)."""
        cdef Py_ssize_t last
        cdef PyObject* d
        # Lock-free fast path: plain value, tail chunk already private and not full.  Only
        # C-level operations follow, so no other thread can run in between (GIL).
        if self._fast_write_ok() and self._dirty and (
                (not self._bytes and is_plain(value)) or
                (self._bytes and PyLong_CheckExact(value) and 0 <= value < 256)):
            last = self._n - 1
            if last >= 0 and LL(self._sizes)[last] < self._K:
                d = PyDict_GetItem(self._dirty, LL(self._ids)[last])
                if d != NULL and d != <PyObject*>None:
                    (<object>d).append(value)
                    LL(self._sizes)[last] += 1
                    LL(self._ends)[last] += 1
                    self._dir_touch(last)
                    self._len += 1
                    self._lc = None
                    self._mod += 1  # a private tail chunk implies we are registered as dirty
                    return
        px = self._wbegin()
        v = self._adopt_one(px, value)
        self._enter()
        try:
            self._undo(px)
            self._append1(v)
            self._dirtied(px)
        finally:
            self._leave()

    def extend(self, iterable):
        """Append every item of ``iterable`` (all validated first: all or nothing)."""
        px = self._wbegin()
        if iterable is self:
            self._enter()
            try:
                iterable = self._range(0, self._len)
            finally:
                self._leave()
        items = self._adopt_many(px, iterable)
        if not items:
            return
        self._enter()
        try:
            self._undo(px)
            self._append_many(items)
            self._dirtied(px)
        finally:
            self._leave()

    def insert(self, index, value):
        """Insert before ``index`` (clamped like list.insert)."""
        px = self._wbegin()
        cdef Py_ssize_t i = operator.index(index)
        v = self._adopt_one(px, value)
        self._enter()
        try:
            if i < 0:
                i += self._len
                if i < 0:
                    i = 0
            if i > self._len:
                i = self._len
            self._undo(px)
            self._insert1(i, v)
            self._dirtied(px)
        finally:
            self._leave()

    def pop(self, index=-1):
        """Remove and return the item at ``index`` (default last); releases its reference."""
        px = self._wbegin()
        cdef Py_ssize_t i = operator.index(index)
        self._enter()
        try:
            if self._len == 0:
                raise IndexError(f"pop from empty {self._kindname()}")
            if i < 0:
                i += self._len
            if i < 0 or i >= self._len:
                raise IndexError("pop index out of range")
            self._undo(px)
            old = self._pop1(i)
            self._dirtied(px)
        finally:
            self._leave()
        if self._bytes or is_plain(old):
            return old
        value = resolve1(px, old)
        release1(px, old)
        return value

    def clear(self):
        """Remove every item, releasing the references they held."""
        px = self._wbegin()
        self._enter()
        try:
            if self._len == 0:
                return
            self._undo(px)
            self._release_items()
            self._clear_all()
            self._hflags = 0
            self._dirtied(px)
        finally:
            self._leave()

    def _w_rewrite(self, items):
        """Replace the whole content by ``items`` (the same elements reordered)."""
        px = self._wbegin()
        if not self._bytes:
            items = list(items)
        self._enter()
        try:
            self._undo(px)
            self._clear_all()
            self._append_many(items)
            self._dirtied(px)
        finally:
            self._leave()

    def __setitem__(self, idx, value):
        px = self._wbegin()
        cdef Py_ssize_t i
        if isinstance(idx, slice):
            self._setslice(px, idx, value)
            return
        try:
            idx = operator.index(idx)
        except TypeError:
            raise TypeError(f"{self._kindname()} indices must be integers or slices, "
                            f"not {type(idx).__name__}") from None
        v = self._adopt_one(px, value)
        self._enter()
        try:
            try:
                i = self._norm(idx, "assignment ")
            except IndexError:
                if not self._bytes and not is_plain(v):
                    release1(px, v)
                raise
            self._undo(px)
            old = self._set1(i, v)
            self._dirtied(px)
        finally:
            self._leave()
        if not self._bytes and not is_plain(old):
            release1(px, old)

    cdef _setslice(self, px, slice sl, value):
        cdef Py_ssize_t start, stop, step, n, j
        if value is self:
            self._enter()
            try:
                value = self._range(0, self._len)
            finally:
                self._leave()
        new_items = self._adopt_many(px, value)
        removed = None
        olds = []
        self._enter()
        try:
            start, stop, step = sl.indices(self._len)
            if step == 1:
                self._undo(px)
                removed = self._splice(start, stop, new_items,
                                       not self._bytes and self._hflags & HAS_REFS)
                self._dirtied(px)
            else:
                positions = range(start, stop, step)
                n = len(positions)
                if len(new_items) != n:
                    self._release_list(px, new_items)
                    raise ValueError(f"attempt to assign {'bytes' if self._bytes else 'sequence'} "
                                     f"of size {len(new_items)} to extended slice of size {n}")
                self._undo(px)
                for j in range(n):
                    olds.append(self._set1(positions[j], new_items[j]))
                self._dirtied(px)
        finally:
            self._leave()
        self._release_list(px, removed)
        self._release_list(px, olds)

    def __delitem__(self, idx):
        px = self._wbegin()
        cdef Py_ssize_t start, stop, step, i
        removed = None
        if not isinstance(idx, slice):
            try:
                idx = operator.index(idx)
            except TypeError:
                raise TypeError(f"{self._kindname()} indices must be integers or slices, "
                                f"not {type(idx).__name__}") from None
        self._enter()
        try:
            if isinstance(idx, slice):
                start, stop, step = idx.indices(self._len)
                positions = range(start, stop, step)
                if len(positions) == 0:
                    return
                if step < 0:
                    positions = positions[::-1]
                    step = -step
                    start = positions[0]
                    stop = positions[-1] + 1
                self._undo(px)
                if step == 1:
                    removed = self._splice(start, stop, [],
                                           not self._bytes and self._hflags & HAS_REFS)
                else:
                    removed = [self._pop1(i) for i in reversed(positions)]
            else:
                i = self._norm(idx, "assignment ")
                self._undo(px)
                removed = [self._pop1(i)]
            self._dirtied(px)
        finally:
            self._leave()
        self._release_list(px, removed)


cdef class SeqIter:
    """Iterator over a SeqBase, index-based like list's (sees appends, survives edits)."""
    cdef SeqBase s
    cdef object items
    cdef Py_ssize_t pos
    cdef Py_ssize_t off
    cdef unsigned long long mod

    def __iter__(self):
        return self

    def __next__(self):
        cdef object x
        cdef object items = self.items
        if items is not None and self.mod == self.s._mod and self.s._busy == 0:
            if isinstance(items, list):
                if self.off < PyList_GET_SIZE(items):
                    x = <object>PyList_GET_ITEM(items, self.off)
                    self.off += 1
                    self.pos += 1
                    return x
            elif self.off < len(items):
                x = items[self.off]
                self.off += 1
                self.pos += 1
                return x
        return self._slow()

    cdef object _slow(self):
        cdef SeqBase s = self.s
        cdef Py_ssize_t ci, start
        cdef long long cid
        if s is None:
            raise StopIteration
        s._check()
        s._enter()
        try:
            if self.pos >= s._len:
                self.s = None
                self.items = None
                raise StopIteration
            ci = s._find(self.pos)
            start = s._start(ci)
            cid = LL(s._ids)[ci]
            items = s._chunk(ci)
            if PyDict_GetItem(s._dirty, cid) != NULL:
                # a pinned chunk may change under us: iterate over a copy of the rest
                items = items[self.pos - start:]
                start = self.pos
            self.mod = s._mod
        finally:
            s._leave()
        items = s._resolved(items)
        self.items = items
        self.off = self.pos - start
        x = items[self.off]
        self.off += 1
        self.pos += 1
        return x

    def __length_hint__(self):
        if self.s is None:
            return 0
        return max(self.s._len - self.pos, 0)


# =============================================================================================
# Hashed collections
# =============================================================================================

cdef bint all_none(object items) noexcept:
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    cdef PyObject* none = <PyObject*>None
    for i in range(n):
        if PyList_GET_ITEM(items, i) != none:
            return False
    return True


cdef object _MISSING = object()
cdef object _EMPTY_BUCKET = _Bucket()


def _key_fallback(obj):
    """Identity bytes for key values that encode_key does not know."""
    if isinstance(obj, MemoBase):
        return b"M" + obj._px.uuid + _OID(obj._oid)
    if type(obj) is _WeakRef:
        return b"M" + obj.prefix_uuid + _OID(obj.oid)
    if _enum_value_type is not None and type(obj) is _enum_value_type:
        return b"E" + obj.type_name.encode("utf-8", "surrogatepass") + b"\x00" + \
            obj.name.encode("utf-8", "surrogatepass")
    return None


key_fallback = _key_fallback


cdef bytes ekey_of(object k, bint lookup):
    """Encoded key of ``k``; None (lookup only) for hashable values that cannot be stored.

    Unhashable keys raise TypeError exactly like a Python dict would.
    """
    cdef type t = type(k)
    if t is str or t is int:
        return encode_key(k)
    if isinstance(k, CollectionBase):
        raise TypeError(f"unhashable type: '{t.__name__}'")
    try:
        return encode_key(k, _key_fallback)
    except TypeError:
        hash(k)   # raises "unhashable type: 'list'" for unhashable keys
        if lookup:
            return None
        raise _UnsupportedTypeError(f"Type unsupported by dbzero: {t.__name__}") from None


def encoded_key(k):
    """The canonical key bytes a Dict/Set uses for ``k`` (TypeError if unhashable)."""
    return ekey_of(k, False)


cdef object adopt_key(object px, object k, int* flags):
    """Validate a new key and take the references it implies (memo objects by identity)."""
    cdef type t = type(k)
    if is_plain(k):
        return k
    if t is tuple:
        out = []
        try:
            for x in <tuple>k:
                out.append(adopt_key(px, x, flags))
        except BaseException:
            for x in out:
                release1(px, x)
            raise
        return tuple(out)
    if isinstance(k, CollectionBase):
        raise TypeError(f"unhashable type: '{t.__name__}'")
    if isinstance(k, MemoBase) or t is _WeakRef:
        flags[0] |= HAS_REFS
        return px.adopt(k)
    px.workspace.check_storable(k)
    if isinstance(k, int) or isinstance(k, str) or isinstance(k, float) or isinstance(k, bytes):
        raise _UnsupportedTypeError(f"Type unsupported by dbzero: {t.__name__}")
    return k


def check_key(px, k):
    """Raise, without side effects, if ``k`` cannot be a key of a Dict/Set in ``px``."""
    ekey_of(k, False)
    check_key_storable(px, k)


cdef check_key_storable(px, k):
    cdef type t = type(k)
    if is_plain(k) or t is _WeakRef:
        return
    if t is tuple:
        for x in <tuple>k:
            check_key_storable(px, x)
        return
    if isinstance(k, CollectionBase):
        raise TypeError(f"unhashable type: '{t.__name__}'")
    if isinstance(k, MemoBase):
        if k._flags & _F_DEAD:
            raise _ReferenceError("Memo instance expired")
        return
    px.workspace.check_storable(k)
    if isinstance(k, int) or isinstance(k, str) or isinstance(k, float) or isinstance(k, bytes):
        raise _UnsupportedTypeError(f"Type unsupported by dbzero: {t.__name__}")


cdef list flat_bucket(object d, bint is_set):
    """[ekey, key, (value,) seq, ...] of a bucket, the stored form."""
    cdef Py_ssize_t n = PyDict_Size(d), pos = 0, i = 0, stride = 3 if is_set else 4
    cdef list flat = PyList_New(n * stride)
    cdef PyObject* kp
    cdef PyObject* vp
    cdef object x
    while PyDict_Next(d, &pos, &kp, &vp):
        e = <tuple><object>vp
        Py_INCREF(<object>kp)
        PyList_SET_ITEM(flat, i, <object>kp)
        x = e[0]
        Py_INCREF(x)
        PyList_SET_ITEM(flat, i + 1, x)
        if is_set:
            x = e[2]
            Py_INCREF(x)
            PyList_SET_ITEM(flat, i + 2, x)
        else:
            x = e[1]
            Py_INCREF(x)
            PyList_SET_ITEM(flat, i + 2, x)
            x = e[2]
            Py_INCREF(x)
            PyList_SET_ITEM(flat, i + 3, x)
        i += stride
    return flat


cdef class HashBase(CollectionBase):
    """Dict/Set storage: linear-hashed buckets of (ekey -> (key, value, seq)) + order log."""

    cdef Py_ssize_t _len
    cdef int _level
    cdef long long _split
    cdef long long _next_seq
    cdef long long _first_seq
    cdef dict _dbk          # bucket -> _Bucket (pinned) or None (empty: delete at flush)
    cdef dict _dord         # order chunk -> _Chunk (pinned) or None (delete at flush)
    cdef bint _is_set
    cdef dict _flushed
    cdef long long _ocs         # order chunk size (recorded in the header)

    def __cinit__(self, *args, **kwargs):
        self._ocs = C_ORDER_CHUNK
        self._is_set = type(self)._db0_kind == KIND_SET
        self._dbk = {}
        self._dord = {}
        self._flushed = {}

    cdef _read_header(self, list rec):
        self._dbk = {}
        self._dord = {}
        self._len = rec[2]
        self._level = rec[5]
        self._split = rec[6]
        self._next_seq = rec[7]
        self._first_seq = rec[8]
        self._ocs = rec[9]

    cdef list _header(self):
        return [self._kind, self._refc, self._len, self._version, self._hflags, self._level,
                self._split, self._next_seq, self._first_seq, self._ocs]

    cdef _forget(self):
        self._dbk = {}
        self._dord = {}

    cdef Py_ssize_t _tlb_want(self):
        cdef long long nb = self._nbuckets()
        cdef long long no = self._next_seq // self._ocs + 1
        return 2 * (nb if nb > no else no)

    def _db0_create_empty(self, px, long long refcount):
        """Register this (unregistered) proxy as a new, empty collection in ``px``."""
        self._len = 0
        self._level = 0
        self._split = 0
        self._next_seq = 0
        self._first_seq = 0
        self._hflags = 0
        self._ocs = C_ORDER_CHUNK
        self._setup_new(px, refcount)

    # -- buckets ---------------------------------------------------------------------------

    cdef inline long long _bno(self, uint64_t h) noexcept:
        cdef uint64_t half = (<uint64_t>1) << self._level
        cdef uint64_t b = h & (half - 1)
        if b < <uint64_t>self._split:
            b = h & ((half << 1) - 1)
        return <long long>b

    cdef inline long long _nbuckets(self) noexcept:
        return ((<long long>1) << self._level) + self._split

    cdef object _bucket(self, long long b):
        """Bucket ``b`` (read-only mapping ekey -> (key, value, seq))."""
        cdef PyObject* d
        if self._dbk:
            d = PyDict_GetItem(self._dbk, b)
            if d != NULL:
                return _EMPTY_BUCKET if d == <PyObject*>None else <object>d
        obj = self._cget(b * 2)
        if obj is not None:
            return obj
        return self._load_bucket(b, True)

    cdef object _load_bucket(self, long long b, bint keep):
        px = self._px
        self._enter()
        try:
            if px.closed:
                self._db0_closed = True
                raise _ClosedError("Object is no longer accessible")
            raw = px.storage.get("chunks", self._okey + b"b" + _BE32(b))
        finally:
            self._leave()
        d = new_bucket()
        cdef list flat
        cdef Py_ssize_t i, n
        if raw is not None:
            flat = self._codec.unpack(raw)
            n = len(flat)
            if self._is_set:
                for i in range(0, n, 3):
                    d[flat[i]] = entry3(flat[i + 1], None, flat[i + 2])
            else:
                for i in range(0, n, 4):
                    d[flat[i]] = entry3(flat[i + 1], flat[i + 2], flat[i + 3])
        if keep:
            self._cput(b * 2, d, 128 + ENTRY_COST * len(d) + 2 * (len(raw) if raw is not None else 0))
        return d

    cdef object _wbucket(self, long long b):
        cdef PyObject* p = PyDict_GetItem(self._dbk, b)
        if p == NULL:
            d = new_bucket(self._bucket(b))
            self._dbk[b] = d
            self._cdrop(b * 2)
        elif p == <PyObject*>None:
            d = new_bucket()
            self._dbk[b] = d
        else:
            d = <object>p
        return d

    cdef void _split_one(self) except *:
        cdef uint64_t half = (<uint64_t>1) << self._level
        cdef long long old_b = self._split
        cdef long long new_b = old_b + <long long>half
        cdef uint64_t mask = (half << 1) - 1
        ob = self._wbucket(old_b)
        keep = new_bucket()
        nb = new_bucket()
        cdef Py_ssize_t pos = 0
        cdef PyObject* kp
        cdef PyObject* vp
        while PyDict_Next(ob, &pos, &kp, &vp):
            if <long long>(hash_bytes(<bytes>kp) & mask) != old_b:
                nb[<object>kp] = <object>vp
            else:
                keep[<object>kp] = <object>vp
        self._dbk[old_b] = keep if keep else None
        self._dbk[new_b] = nb if nb else None
        if not self._is_new:
            self._cdrop(new_b * 2)
        self._split += 1
        if <uint64_t>self._split == half:
            self._level += 1
            self._split = 0

    # -- order log ---------------------------------------------------------------------------

    cdef object _ochunk(self, long long c):
        """Order chunk ``c`` (list of ekeys/None) or None if it does not exist."""
        cdef PyObject* p
        if self._dord:
            p = PyDict_GetItem(self._dord, c)
            if p != NULL:
                return <object>p
        obj = self._cget(c * 2 + 1)
        if obj is not None:
            return obj
        px = self._px
        self._enter()
        try:
            if px.closed:
                self._db0_closed = True
                raise _ClosedError("Object is no longer accessible")
            raw = px.storage.get("chunks", self._okey + b"o" + _BE32(c))
        finally:
            self._leave()
        if raw is None:
            return None
        obj = _Chunk(self._codec.unpack(raw))
        self._cput(c * 2 + 1, obj, 64 + ITEM_COST * len(obj) + 2 * len(raw))
        return obj

    cdef list _wochunk(self, long long c):
        cdef PyObject* p = PyDict_GetItem(self._dord, c)
        if p == NULL:
            src = self._ochunk(c)
            d = _Chunk() if src is None else _Chunk(src)
            self._dord[c] = d
            self._cdrop(c * 2 + 1)
        elif p == <PyObject*>None:
            d = _Chunk()
            self._dord[c] = d
        else:
            d = <object>p
        return <list>d

    cdef void _order_add(self, bytes ekey, long long seq) except *:
        cdef long long c = seq // self._ocs
        cdef Py_ssize_t slot = seq - c * self._ocs
        cdef list oc = self._wochunk(c)
        while len(oc) < slot:
            oc.append(None)
        if len(oc) == slot:
            oc.append(ekey)
        else:
            oc[slot] = ekey
            del oc[slot + 1:]

    cdef void _drop_all_order(self) except *:
        cdef long long c
        for c in range(self._first_seq // self._ocs,
                       (self._next_seq + self._ocs - 1) // self._ocs):
            self._dord[c] = None
            self._cdrop(c * 2 + 1)

    cdef void _order_remove(self, long long seq) except *:
        cdef long long c = seq // self._ocs
        cdef Py_ssize_t slot = seq - c * self._ocs, j
        cdef list oc = self._wochunk(c)
        oc[slot] = None
        if self._len == 0:
            # everything is gone: drop every order chunk, restart the numbering
            self._drop_all_order()
            self._next_seq = 0
            self._first_seq = 0
            return
        if seq == self._next_seq - 1:
            # trim trailing holes so that appends and popitem stay O(1)
            while self._next_seq > self._first_seq:
                c = (self._next_seq - 1) // self._ocs
                slot = self._next_seq - 1 - c * self._ocs
                ro = self._ochunk(c)
                if ro is None or len(ro) == 0:
                    if ro is not None:
                        self._dord[c] = None
                        self._cdrop(c * 2 + 1)
                    self._next_seq = c * self._ocs
                    continue
                if slot >= len(ro):
                    self._next_seq = c * self._ocs + len(ro)
                    continue
                if ro[slot] is not None:
                    break
                j = slot
                while j >= 0 and ro[j] is None:
                    j -= 1
                oc = self._wochunk(c)
                del oc[j + 1:]
                if not oc:
                    self._dord[c] = None
                self._next_seq = c * self._ocs + j + 1
            if self._first_seq > self._next_seq:
                self._first_seq = self._next_seq
        elif all_none(oc):
            self._dord[c] = None
            if c == self._first_seq // self._ocs:
                self._first_seq = (c + 1) * self._ocs

    # -- reads -----------------------------------------------------------------------------
    # Lock-free when the bucket is pinned or cached and no other thread is inside a locked
    # section of this proxy (see SeqBase); otherwise under the prefix lock.

    cdef object _bucket_nowait(self, long long b):
        """Bucket ``b`` if pinned or cached, else None (never reads storage)."""
        cdef PyObject* d
        if self._dbk:
            d = PyDict_GetItem(self._dbk, b)
            if d != NULL:
                return _EMPTY_BUCKET if d == <PyObject*>None else <object>d
        return self._cget(b * 2)

    cdef object _ochunk_nowait(self, long long c):
        """Order chunk ``c``, None if it does not exist, _MISS if it is not in memory."""
        cdef PyObject* p
        if self._dord:
            p = PyDict_GetItem(self._dord, c)
            if p != NULL:
                return <object>p
        obj = self._cget(c * 2 + 1)
        return _MISS if obj is None else obj

    cdef inline object _entry(self, bytes ekey):
        """The stored entry of ``ekey`` or None.  Lock held."""
        cdef PyObject* e = PyDict_GetItem(self._bucket(self._bno(hash_bytes(ekey))), ekey)
        return None if e == NULL else <object>e

    cdef object _find_entry(self, bytes ekey):
        """The stored entry of ``ekey`` or None, lock-free when possible."""
        cdef PyObject* e
        if self._busy == 0:
            d = self._bucket_nowait(self._bno(hash_bytes(ekey)))
            if d is not None:
                e = PyDict_GetItem(d, ekey)
                return None if e == NULL else <object>e
        self._enter()
        try:
            return self._entry(ekey)
        finally:
            self._leave()

    cdef inline object _value_out(self, object e):
        v = (<tuple>e)[1]
        if self._hflags & HAS_REFS and not is_plain(v):
            return resolve1(self._px, v)
        return v

    def __len__(self):
        self._check()
        return self._len

    def __contains__(self, k):
        self._check()
        cdef bytes ekey = ekey_of(k, True)
        if ekey is None:
            return False
        return self._find_entry(ekey) is not None

    def _lookup(self, k, default):
        """The stored value for ``k`` (resolved) or ``default``."""
        self._check()
        cdef bytes ekey = ekey_of(k, True)
        if ekey is None:
            return default
        e = self._find_entry(ekey)
        if e is None:
            return default
        return self._value_out(e)

    def _key_of(self, k, default=None):
        """The stored key object equal to ``k`` (Python keeps the first one), or ``default``."""
        self._check()
        cdef bytes ekey = ekey_of(k, True)
        if ekey is None:
            return default
        e = self._find_entry(ekey)
        return default if e is None else resolve1(self._px, (<tuple>e)[0])

    def _iter(self, int mode):
        """Iterator: mode 0 keys, 1 values, 2 (key, value) items; insertion order."""
        self._check()
        cdef HashIter it = HashIter.__new__(HashIter)
        it.h = self
        it.px = self._px
        it.mode = mode
        it.c = self._first_seq // self._ocs - 1
        it.oc = None
        it.slot = 0
        it.n = 0
        it.start_len = self._len
        return it

    def __iter__(self):
        return self._iter(0)

    # -- writes ----------------------------------------------------------------------------

    cdef int _fast_put(self, k, v, bint replace) except -2:
        """Lock-free insert/replace for str/int keys and plain values; -1 if not applicable.

        Applies only when the target bucket (and, for a new key, the tail order chunk) is
        already private to this proxy.  Every allocation happens before the first mutation,
        and the mutation itself runs only C-level list/dict operations on str/bytes/int
        objects, so it can neither run Python code, trigger the cyclic GC nor let another
        thread in: under the GIL it is as atomic as holding the prefix lock.
        """
        cdef type t = type(k)
        cdef bytes ekey
        cdef long long b, seq, c
        cdef Py_ssize_t slot
        cdef PyObject* wp
        cdef PyObject* p
        cdef PyObject* op
        cdef tuple e, entry
        if not (self._dbk and self._fast_write_ok() and is_plain(v)):
            return -1
        if t is int:
            if not -0x8000000000000000 <= k <= 0x7FFFFFFFFFFFFFFF:
                return -1
        elif t is not str:
            return -1
        ekey = encode_key(k)
        b = self._bno(hash_bytes(ekey))
        wp = PyDict_GetItem(self._dbk, b)
        if wp == NULL or wp == <PyObject*>None:
            return -1
        p = PyDict_GetItem(<object>wp, ekey)
        if p != NULL:
            if not replace:
                return 0
            e = <tuple>p
            old = e[1]
            entry = entry3(e[0], v, e[2])
            (<object>wp)[ekey] = entry
            self._mod += 1      # a private bucket implies we are registered as dirty
            if not is_plain(old):
                release1(self._px, old)
            return 0
        seq = self._next_seq
        c = seq // self._ocs
        slot = seq - c * self._ocs
        op = PyDict_GetItem(self._dord, c) if self._dord else NULL
        if op == NULL or op == <PyObject*>None or PyList_GET_SIZE(<object>op) != slot:
            return -1
        entry = entry3(k, v, seq)
        (<object>wp)[ekey] = entry
        (<list>op).append(ekey)
        self._next_seq = seq + 1
        self._len += 1
        self._mod += 1
        if self._len > self._nbuckets() * C_BUCKET_LOAD:
            self._enter()
            try:
                while self._len > self._nbuckets() * C_BUCKET_LOAD:
                    self._split_one()
            finally:
                self._leave()
        return 1

    cdef int _put(self, px, k, v, bint replace) except -1:
        """Store k -> v.  replace=False (Set.add / setdefault) keeps an existing value.

        Returns 1 if a new key was inserted, 0 if it existed.  Everything after encoding the
        key happens under the lock, so a concurrent split can never misplace the key.
        """
        cdef int flags = 0
        cdef bytes ekey = ekey_of(k, False)
        cdef long long b, seq
        cdef object e, old = None
        cdef PyObject* p
        cdef PyObject* wp
        cdef int result = 0
        self._enter()
        try:
            b = self._bno(hash_bytes(ekey))
            wp = PyDict_GetItem(self._dbk, b) if self._dbk else NULL
            if wp != NULL and wp != <PyObject*>None:
                p = PyDict_GetItem(<object>wp, ekey)
                e = <object>p if p != NULL else None
            else:
                wp = NULL
                e = self._entry(ekey)
            if e is not None:
                if not replace:
                    return 0
                nv = v if is_plain(v) else px.adopt(v)
                if not is_plain(nv) and is_ref(nv):
                    flags |= HAS_REFS
                self._undo(px)
                old = (<tuple>e)[1]
                self._wbucket(b)[ekey] = entry3((<tuple>e)[0], nv, (<tuple>e)[2])
                self._hflags |= flags
                self._dirtied(px)
            else:
                nk = adopt_key(px, k, &flags)
                if not is_plain(v):
                    try:
                        nv = px.adopt(v)
                    except BaseException:
                        release1(px, nk)
                        raise
                    if is_ref(nv):
                        flags |= HAS_REFS
                else:
                    nv = v
                self._undo(px)
                seq = self._next_seq
                self._next_seq += 1
                wb = <object>wp if wp != NULL else self._wbucket(b)
                wb[ekey] = entry3(nk, nv, seq)
                self._order_add(ekey, seq)
                self._len += 1
                self._hflags |= flags
                while self._len > self._nbuckets() * C_BUCKET_LOAD:
                    self._split_one()
                self._dirtied(px)
                result = 1
        finally:
            self._leave()
        if old is not None and not is_plain(old):
            release1(px, old)
        return result

    cdef object _take(self, px, bytes ekey):
        """Remove ``ekey``; returns its stored (key, value, seq) or None.  Lock held;
        the caller releases the references."""
        cdef long long b = self._bno(hash_bytes(ekey))
        cdef PyObject* p = PyDict_GetItem(self._bucket(b), ekey)
        if p == NULL:
            return None
        e = <object>p
        self._undo(px)
        wb = self._wbucket(b)
        del wb[ekey]
        if not wb:
            self._dbk[b] = None
        self._len -= 1
        self._order_remove((<tuple>e)[2])
        self._dirtied(px)
        return e

    cdef object _taken(self, px, object e):
        """(key, value) of a removed entry, resolved; its references released."""
        key = resolve1(px, (<tuple>e)[0])
        value = resolve1(px, (<tuple>e)[1])
        release1(px, (<tuple>e)[0])
        release1(px, (<tuple>e)[1])
        return (key, value)

    def _w_put(self, k, v, bint replace=True):
        cdef int r = self._fast_put(k, v, replace)
        if r >= 0:
            return r
        return self._put(self._wbegin(), k, v, replace)

    def _w_remove(self, k):
        """Remove ``k``; returns (key, value) resolved, or None if absent."""
        px = self._wbegin()
        cdef bytes ekey = ekey_of(k, True)
        if ekey is None:
            return None
        self._enter()
        try:
            e = self._take(px, ekey)
        finally:
            self._leave()
        return None if e is None else self._taken(px, e)

    def _w_popitem(self):
        """Remove the most recently inserted item; returns (key, value) or None if empty."""
        px = self._wbegin()
        cdef long long s, c
        cdef Py_ssize_t slot
        e = None
        self._enter()
        try:
            if self._len == 0:
                return None
            s = self._next_seq - 1
            while s >= 0:
                c = s // self._ocs
                oc = self._ochunk(c)
                if oc is None:
                    s = c * self._ocs - 1
                    continue
                slot = s - c * self._ocs
                if slot < len(oc) and oc[slot] is not None:
                    e = self._take(px, oc[slot])
                    break
                s -= 1
        finally:
            self._leave()
        if e is None:
            raise _FormatError(f"collection {self._oid}: order log lost an item")
        return self._taken(px, e)

    def clear(self):
        """Remove every item, releasing the references they held."""
        px = self._wbegin()
        cdef long long b
        self._enter()
        try:
            if self._len == 0:
                return
            self._undo(px)
            self._release_items()
            for b in range(self._nbuckets()):
                self._dbk[b] = None
                self._cdrop(b * 2)
            self._drop_all_order()
            self._len = 0
            self._level = 0
            self._split = 0
            self._next_seq = 0
            self._first_seq = 0
            self._hflags = 0
            self._dirtied(px)
        finally:
            self._leave()

    cdef void _release_items(self) except *:
        cdef long long b
        cdef PyObject* p
        if not self._hflags & HAS_REFS:
            return
        px = self._px
        for b in range(self._nbuckets()):
            p = PyDict_GetItem(self._dbk, b)
            if p != NULL:
                if p == <PyObject*>None:
                    continue
                d = <object>p
            else:
                d = self._cget(b * 2)
                if d is None:
                    d = self._load_bucket(b, False)
            for e in d.values():
                if not is_plain(e[0]):
                    release1(px, e[0])
                if not is_plain(e[1]):
                    release1(px, e[1])

    # -- commit protocol -----------------------------------------------------------------------

    cdef _flush(self, batch):
        px = self._px
        pack = self._codec.pack
        okey = self._okey
        fresh = self._is_new
        cdef list flat
        self._flushed = {}
        for b, d in self._dbk.items():
            key = okey + b"b" + _BE32(b)
            if not d:
                if not fresh:
                    batch.delete("chunks", key)
                continue
            data = pack(flat_bucket(d, self._is_set))
            batch.put("chunks", key, data, fresh=fresh)
            self._flushed[b * 2] = len(data)
        for c, oc in self._dord.items():
            key = okey + b"o" + _BE32(c)
            if not oc:
                if not fresh:
                    batch.delete("chunks", key)
                continue
            data = pack(list(oc))
            batch.put("chunks", key, data, fresh=fresh)
            self._flushed[c * 2 + 1] = len(data)
        self._version += 1
        batch.put("objects", okey, px.codec.pack(self._header()), fresh=fresh)

    cdef _committed(self):
        px = self._px
        refs = self._hflags & HAS_REFS
        for b, d in self._dbk.items():
            if not d:
                continue
            if refs:
                d = new_bucket({ek: (placeholder1(px, e[0]), placeholder1(px, e[1]), e[2])
                             for ek, e in d.items()})
            self._cput(b * 2, d, 128 + ENTRY_COST * len(d) + 2 * self._flushed.get(b * 2, 0))
        for c, oc in self._dord.items():
            if not oc:
                continue
            self._cput(c * 2 + 1, oc, 64 + ITEM_COST * len(oc) + 2 * self._flushed.get(c * 2 + 1, 0))
        self._dbk = {}
        self._dord = {}
        self._flushed = {}
        self._is_new = False

    cdef _release_all(self):
        self._release_items()
        cdef long long b
        for b in range(self._nbuckets()):
            self._cdrop(b * 2)
        cdef long long c
        for c in range(self._first_seq // self._ocs,
                       (self._next_seq + self._ocs - 1) // self._ocs):
            self._cdrop(c * 2 + 1)
        self._dbk = {}
        self._dord = {}

    def _db0_drop(self, batch):
        px = self._px
        for key, _value in px.storage.scan("chunks", self._okey):
            batch.delete("chunks", key)

    def _db0_undo_token(self):
        if not self._loaded:
            return None
        return (self._len, self._level, self._split, self._next_seq, self._first_seq,
                self._refc, self._hflags, self._is_new,
                {b: (None if d is None else dict(d)) for b, d in self._dbk.items()},
                {c: (None if o is None else list(o)) for c, o in self._dord.items()})

    cdef _restore(self, token):
        self._mod += 1
        if token is None:
            self._loaded = False
            self._tlb_clear()
            self._forget()
            return
        (length, level, split, next_seq, first_seq, refc, hflags, is_new, dbk, dord) = token
        self._dbk = {b: (None if d is None else new_bucket(d)) for b, d in dbk.items()}
        self._dord = {c: (None if o is None else _Chunk(o)) for c, o in dord.items()}
        self._len = length
        self._level = level
        self._split = split
        self._next_seq = next_seq
        self._first_seq = first_seq
        self._refc = refc
        self._hflags = hflags
        self._is_new = is_new
        self._loaded = True
        if self._refc > 0:
            self._px.zero_rc.discard(self._oid)

    def _db0_stats(self):
        self._check()
        return {"length": self._len, "level": self._level, "split": self._split,
                "buckets": self._nbuckets(), "next_seq": self._next_seq,
                "first_seq": self._first_seq, "order_chunk": self._ocs,
                "dirty_buckets": len(self._dbk),
                "dirty_order": len(self._dord), "flags": self._hflags, "version": self._version}


cdef class HashIter:
    """Insertion-order iterator over a HashBase (keys, values or items)."""
    cdef HashBase h
    cdef object px
    cdef int mode
    cdef long long c
    cdef object oc
    cdef Py_ssize_t slot
    cdef Py_ssize_t n
    cdef Py_ssize_t start_len

    def __iter__(self):
        return self

    def __next__(self):
        cdef HashBase h = self.h
        if h is None:
            raise StopIteration
        if h._len != self.start_len:
            self.h = None
            raise RuntimeError(f"{'Set' if h._is_set else 'dictionary'} changed size during iteration")
        h._check()
        if h._busy == 0:
            e = self._advance(False)
            if e is not _MISS:
                return self._emit(e)
        h._enter()
        try:
            e = self._advance(True)
        finally:
            h._leave()
        return self._emit(e)

    cdef object _advance(self, bint locked):
        """The next entry; _MISS (state unchanged) if unlocked and a read is needed."""
        cdef HashBase h = self.h
        cdef long long c
        cdef PyObject* p
        while True:
            if self.slot >= self.n:
                c = self.c + 1
                if c * h._ocs >= h._next_seq:
                    self.h = None
                    raise StopIteration
                oc = h._ochunk(c) if locked else h._ochunk_nowait(c)
                if oc is _MISS:
                    return _MISS
                if oc is not None and h._dord and PyDict_GetItem(h._dord, c) != NULL:
                    oc = list(oc)      # pinned: may change under us
                self.c = c
                self.oc = oc
                self.slot = 0
                self.n = 0 if oc is None else len(oc)
                continue
            ek = self.oc[self.slot]
            if ek is None:
                self.slot += 1
                continue
            d = h._bucket(h._bno(hash_bytes(ek))) if locked else \
                h._bucket_nowait(h._bno(hash_bytes(ek)))
            if d is None:
                return _MISS
            p = PyDict_GetItem(d, ek)
            self.slot += 1
            if p != NULL:
                return <object>p

    cdef object _emit(self, object e):
        k = (<tuple>e)[0]
        if not is_plain(k):
            k = resolve1(self.px, k)
        if self.mode == 0:
            return k
        v = (<tuple>e)[1]
        if not is_plain(v):
            v = resolve1(self.px, v)
        if self.mode == 1:
            return v
        return (k, v)

    def __length_hint__(self):
        return 0 if self.h is None else self.h._len


cdef class DictCore(HashBase):
    """Hot paths of Dict."""

    def __getitem__(self, k):
        self._check()
        cdef bytes ekey = ekey_of(k, True)
        cdef object e = None
        if ekey is not None:
            e = self._find_entry(ekey)
        if e is None:
            raise KeyError(k)
        return self._value_out(e)

    def get(self, k, default=None):
        """``D[k]`` if k is a key, else ``default``."""
        self._check()
        cdef bytes ekey = ekey_of(k, True)
        if ekey is None:
            return default
        e = self._find_entry(ekey)
        if e is None:
            return default
        return self._value_out(e)

    def __setitem__(self, k, v):
        if self._fast_put(k, v, True) < 0:
            self._put(self._wbegin(), k, v, True)

    def __delitem__(self, k):
        if self._w_remove(k) is None:
            raise KeyError(k)


cdef class SetCore(HashBase):
    """Hot paths of Set."""

    def add(self, item):
        """Add ``item`` (no effect if an equal item is present; the first one is kept)."""
        if self._fast_put(item, None, False) < 0:
            self._put(self._wbegin(), item, None, False)

    def discard(self, item):
        """Remove ``item`` if present."""
        self._w_remove(item)
