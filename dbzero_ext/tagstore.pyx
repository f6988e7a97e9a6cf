# cython: language_level=3
"""Tag membership of one prefix, and the thin path of ``db0.tags(obj).add(...)``.

Pending changes are an append-only *log* of ``(object id, tag, present)`` operations in a
C array: recording one is a few stores, with no LMDB lookup and no dictionary work.  The
log is an overlay on the committed tables (``tags``: tag -> object ids, ``obj_tags``:
object id -> tags); the last operation on a pair wins.  An add of a pair that is already
committed is harmless: the commit finds out (see Storage, ``dup_sets``) and writes no
history for it.

Readers of the pending state (``has``, ``tags_of``, ``pending_for``, the collector) go
through a per-object / per-tag dictionary index that is built from the log on first use and
caught up incrementally afterwards, so a bulk tagging loop never pays for it.

``flush`` turns the log into sorted runs - ``(tag, id)`` pairs for ``tags`` and
``(id, tag)`` pairs for ``obj_tags`` - with one sort (none when the log is already in id
order, the usual case) and hands them to the WriteBatch.
"""

from cpython.object cimport PyObject
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_SIZE, PyList_GET_ITEM
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdlib cimport malloc, realloc, free, qsort
from libc.string cimport memcpy, memcmp, memmove
from libc.stdint cimport uint64_t, uint32_t

cimport cython
import gc as _gc

from dbzero_ext.memo cimport MemoBase

cdef extern from "Python.h":
    Py_ssize_t _refcnt "Py_REFCNT"(PyObject* o)
    void Py_INCREF(object o)
    void Py_XDECREF(PyObject* o)
    PyObject* _tuple_item "PyTuple_GET_ITEM"(tuple t, Py_ssize_t i)
    void _tuple_set "PyTuple_SET_ITEM"(tuple t, Py_ssize_t i, PyObject* o)
    void PyObject_GC_UnTrack(object o)
    int PyBytes_CheckExact(object o)
    int PyUnicode_CheckExact(object o)
    int PyList_CheckExact(object o)
    int PyTuple_CheckExact(object o)

# Object flags (dbzero_ext/memo.pyx).
cdef enum:
    F_NEW = 4
    F_DEAD = 8
    F_READONLY = 16
    F_CLOSED = 64

cdef enum:
    CLASS_TAG = 0x43        # b"C": class tags and ...
    MARKER_TAG = 0x58       # b"X": ... the marker never count as references
    HASHED_LEN = 465        # length of a hashed (long) tag key, see dbzero/tags.py

# Op.seq flag bits.  A default class tag (given at creation) is written to `tags` only:
# `obj_tags` lists an object's other tags, and its class tags only once they were edited by
# hand (the marker `X` says so) - see docs/format.md.
cdef enum:
    OP_PRESENT = 1
    OP_NO_OBJ_TAGS = 2      # write the `tags` posting only
    OP_NO_TAGS = 4          # write the `obj_tags` entry only
    OP_SHIFT = 3

# Op (one logged operation) is declared in tagstore.pxd.


cdef inline bytes _pack_oid(uint64_t oid):
    cdef char buf[8]
    cdef int i
    for i in range(8):
        buf[7 - i] = <char>((oid >> (8 * i)) & 0xFF)
    return PyBytes_FromStringAndSize(buf, 8)


cdef inline uint64_t _unpack_oid(bytes b):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline bint _is_reference_key(bytes key):
    """Every tag except class tags and the marker is a reference to the object."""
    if PyBytes_GET_SIZE(key) == 0:
        return True
    cdef unsigned char c = (<const unsigned char*>PyBytes_AS_STRING(key))[0]
    return c != CLASS_TAG and c != MARKER_TAG


cdef int _cmp_ops(const void* a, const void* b) noexcept nogil:
    cdef const Op* x = <const Op*>a
    cdef const Op* y = <const Op*>b
    if x.oid != y.oid:
        return -1 if x.oid < y.oid else 1
    if x.tag != y.tag:
        return -1 if x.tag < y.tag else 1
    if x.seq != y.seq:
        return -1 if x.seq < y.seq else 1
    return 0


cdef class TagStore:
    """Tag membership of one prefix: committed postings in LMDB plus a log of pending
    operations (see the module docstring).  Tag keys are bytes, members object ids."""

    # Fields are declared in tagstore.pxd.

    def __cinit__(self, px=None):
        self.px = px
        self._keys = []
        self._key_index = {}
        self._str_index = {}
        self._ops = NULL
        self._n = self._cap = 0
        self._by_obj = None
        self._by_tag = None
        self._indexed = 0

    def __dealloc__(self):
        free(self._ops)

    # -- recording -------------------------------------------------------------------

    cdef uint32_t _intern(self, bytes key) except? 0xFFFFFFFF:
        cdef PyObject* found = PyDict_GetItem(self._key_index, key)
        if found is not NULL:
            return <uint32_t><Py_ssize_t><object>found
        cdef Py_ssize_t idx = PyList_GET_SIZE(self._keys)
        self._keys.append(key)
        self._key_index[key] = idx
        return <uint32_t>idx

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2 if self._cap else 1024
        cdef Op* ops = <Op*>realloc(self._ops, cap * sizeof(Op))
        if ops is NULL:
            raise MemoryError()
        self._ops = ops
        self._cap = cap
        return 0

    cdef int _log(self, uint64_t oid, uint32_t tag, unsigned int flags) except -1:
        if self._n == self._cap:
            self._grow()
        cdef Op* op = &self._ops[self._n]
        op.oid = oid
        op.tag = tag
        op.seq = <uint32_t>((self._n << OP_SHIFT) | flags)
        self._n += 1
        return 0

    def add_to_new(self, oid, bytes tag):
        """Give a new object one of its default class tags (a `tags` posting only)."""
        self.add_new(oid, tag)

    cdef int add_new(self, uint64_t oid, bytes tag) except -1:
        return self._log(oid, self._intern(tag), OP_PRESENT | OP_NO_OBJ_TAGS)

    def set(self, oid, bytes tag, bint present, committed=None):
        """Record that ``oid`` does (not) carry ``tag``.  Blind: nothing is looked up; the
        commit writes (and records history for) only what really changes.  Returns True."""
        self._log(oid, self._intern(tag), OP_PRESENT if present else 0)
        return True

    def list_class_tag(self, oid, bytes tag):
        """List a default class tag the object carries in `obj_tags` too (its class tags
        are about to be edited by hand)."""
        self._log(oid, self._intern(tag), OP_PRESENT | OP_NO_TAGS)

    cdef int add_str(self, uint64_t oid, str text, object key_of, object note_long) except -1:
        """The fast path of ``tags(obj).add("text")``."""
        cdef PyObject* found = PyDict_GetItem(self._str_index, text)
        cdef uint32_t idx
        cdef bytes key
        if found is not NULL:
            idx = <uint32_t><Py_ssize_t><object>found
        else:
            key = key_of(text)
            idx = self._intern(key)
            if PyBytes_GET_SIZE(key) == HASHED_LEN:
                note_long(self.px, key)     # its full text is written at every commit using it
            else:
                self._str_index[text] = idx
        return self._log(oid, idx, OP_PRESENT)

    # -- the read index ----------------------------------------------------------------

    cdef _sync(self):
        # Ops are copied by value and the bound fixed up front: the dictionary work below
        # may run other Python code, and nothing here must depend on the array staying put.
        cdef Py_ssize_t i, n = self._n
        cdef Op op
        cdef dict by_obj, by_tag
        cdef PyObject* found
        cdef object d
        if self._by_obj is None or self._indexed > self._n:
            self._by_obj = {}
            self._by_tag = {}
            self._indexed = 0
        by_obj = self._by_obj
        by_tag = self._by_tag
        keys = self._keys
        for i in range(self._indexed, n):
            op = self._ops[i]
            oid = op.oid
            key = <object>PyList_GET_ITEM(keys, op.tag)
            present = bool(op.seq & OP_PRESENT)
            found = PyDict_GetItem(by_obj, oid)
            if found is NULL:
                d = {}
                by_obj[oid] = d
            else:
                d = <object>found
            d[key] = present
            found = PyDict_GetItem(by_tag, key)
            if found is NULL:
                d = {}
                by_tag[key] = d
            else:
                d = <object>found
            d[oid] = present
        self._indexed = n

    def has(self, oid, bytes tag):
        self._sync()
        cdef PyObject* found = PyDict_GetItem(self._by_obj, oid)
        if found is not NULL:
            mine = <dict>found
            if tag in mine:
                return mine[tag]
        if not _is_reference_key(tag):
            # Default class tags are not listed in obj_tags; the postings are complete.
            return self.px.storage.dup_contains("tags", tag, _pack_oid(oid))
        return self.px.storage.dup_contains("obj_tags", _pack_oid(oid), tag)

    def pending_of(self, oid):
        """``{tag: present}`` pending for one object (empty if none)."""
        self._sync()
        cdef PyObject* found = PyDict_GetItem(self._by_obj, oid)
        return dict(<dict>found) if found is not NULL else {}

    def tags_of(self, oid):
        """Sorted tag keys of ``oid`` (committed, with pending changes applied).  Default
        class tags are included only while pending or after a hand edit (marker)."""
        tags = set(self.px.storage.dup_list("obj_tags", _pack_oid(oid)))
        self._sync()
        cdef PyObject* found = PyDict_GetItem(self._by_obj, oid)
        if found is not NULL:
            for tag, present in (<dict>found).items():
                if present:
                    tags.add(tag)
                else:
                    tags.discard(tag)
        return sorted(tags)

    def reference_count(self, oid):
        """Number of distinct tags of ``oid`` that count as references (not class tags)."""
        cdef Py_ssize_t n = 0
        for tag in self.tags_of(oid):
            if _is_reference_key(tag):
                n += 1
        return n

    def is_referenced(self, oid):
        """Does ``oid`` carry any tag that counts as a reference?  (Garbage collection:
        one cursor walk over its committed tags, plus the pending overlay.)"""
        cdef dict mine = None
        self._sync()
        cdef PyObject* found = PyDict_GetItem(self._by_obj, oid)
        if found is not NULL:
            mine = <dict>found
            for tag, present in mine.items():
                if present and _is_reference_key(tag):
                    return True
        for tag in self.px.storage.dup_list("obj_tags", _pack_oid(oid)):
            if _is_reference_key(tag) and (mine is None or mine.get(tag, True)):
                return True
        return False

    def committed_members(self, bytes tag):
        return self.px.storage.dup_values("tags", tag)

    def pending_for(self, bytes tag):
        """``{oid: present}`` pending for one tag (read-your-writes of queries)."""
        self._sync()
        cdef PyObject* found = PyDict_GetItem(self._by_tag, tag)
        return <dict>found if found is not NULL else {}

    # -- atomic blocks and resets ---------------------------------------------------------

    def snapshot(self):
        """A token for :meth:`restore` (the log is append-only between commits)."""
        return self._n

    def restore(self, Py_ssize_t token):
        """Forget the operations recorded after :meth:`snapshot`."""
        if token < self._n:
            self._n = token
            self._by_obj = None       # rebuilt on next read

    def clear(self):
        """Drop every pending operation."""
        self._n = 0
        self._by_obj = None
        self._by_tag = None
        self._indexed = 0
        if PyList_GET_SIZE(self._keys) > 100_000:
            self._keys = []
            self._key_index = {}
            self._str_index = {}

    def __bool__(self):
        return self._n > 0

    def __len__(self):
        return self._n

    # -- commit ------------------------------------------------------------------------------

    def flush(self, batch):
        """Hand the pending changes to ``batch`` as sorted runs (see WriteBatch.dup_set)."""
        # Building the runs allocates two tuples per pair; none can form a cycle, so the
        # collector is held off instead of walking the whole heap in the middle.
        cdef bint collecting = _gc.isenabled()
        if collecting:
            _gc.disable()
        try:
            self._flush(batch)
        finally:
            if collecting:
                _gc.enable()

    cdef _flush(self, batch):
        cdef Py_ssize_t n = self._n, i, j, m, nt
        if n == 0:
            return
        cdef list keys = self._keys
        cdef Py_ssize_t k = PyList_GET_SIZE(keys)
        cdef Op* w = <Op*>malloc(n * sizeof(Op))
        cdef uint32_t* rank = <uint32_t*>malloc(k * sizeof(uint32_t))
        cdef Py_ssize_t* start = NULL
        cdef Py_ssize_t* order = NULL
        cdef MemberRun t_adds, o_adds
        cdef bint by_oid, by_pair
        cdef Op tmp, op_t, op_o
        cdef Py_ssize_t g, last_t, last_o
        cdef list tag_keys, o_removes, t_removes
        if w is NULL or rank is NULL:
            free(w)
            free(rank)
            raise MemoryError()
        try:
            # Ranks of the tags used, in byte order (LMDB's order of keys and duplicates).
            for i in range(k):
                rank[i] = 0xFFFFFFFF
            used = []
            for i in range(n):
                if rank[self._ops[i].tag] == 0xFFFFFFFF:
                    rank[self._ops[i].tag] = 0
                    used.append(self._ops[i].tag)
            used.sort(key=keys.__getitem__)
            nt = len(used)
            tag_keys = [keys[<Py_ssize_t>t] for t in used]
            for i in range(nt):
                rank[<Py_ssize_t>used[i]] = <uint32_t>i
            memcpy(w, self._ops, n * sizeof(Op))
            by_oid = by_pair = True
            for i in range(n):
                w[i].tag = rank[w[i].tag]
                if i and w[i].oid <= w[i - 1].oid:
                    if w[i].oid < w[i - 1].oid:
                        by_oid = by_pair = False
                    elif w[i].tag <= w[i - 1].tag:
                        by_pair = False
            if not by_oid:
                qsort(w, n, sizeof(Op), _cmp_ops)
            elif not by_pair:
                # In id order already (the usual bulk loop): sort each object's few ops.
                for i in range(1, n):
                    j = i
                    while j and w[j - 1].oid == w[j].oid and _cmp_ops(&w[j - 1], &w[j]) > 0:
                        tmp = w[j]
                        w[j] = w[j - 1]
                        w[j - 1] = tmp
                        j -= 1
            # For each (oid, tag) and table, the last operation that writes that table wins.
            m = 0
            i = 0
            while i < n:
                j = i + 1
                while j < n and w[j].oid == w[i].oid and w[j].tag == w[i].tag:
                    j += 1
                last_t = last_o = -1
                for g in range(i, j):
                    if not w[g].seq & OP_NO_TAGS:
                        last_t = g
                    if not w[g].seq & OP_NO_OBJ_TAGS:
                        last_o = g
                if last_t == last_o:
                    w[m] = w[last_t]
                    m += 1
                else:
                    op_t = w[last_t] if last_t >= 0 else w[i]
                    op_o = w[last_o] if last_o >= 0 else w[i]
                    if last_t >= 0:
                        w[m] = op_t
                        w[m].seq |= OP_NO_OBJ_TAGS
                        m += 1
                    if last_o >= 0:
                        w[m] = op_o
                        w[m].seq |= OP_NO_TAGS
                        m += 1
                i = j
            # obj_tags: (oid, tag) pairs in (oid, tag) order; adds as a MemberRun (pairs made
            # on demand), removes (rare) as tuples.
            o_adds = _new_run(m, tag_keys, False)
            o_removes = []
            for i in range(m):
                if w[i].seq & OP_NO_OBJ_TAGS:
                    continue
                if w[i].seq & OP_PRESENT:
                    o_adds._append(w[i].oid, w[i].tag)
                else:
                    o_removes.append(_pair(_pack_oid(w[i].oid),
                                           <bytes>PyList_GET_ITEM(tag_keys, w[i].tag)))
            # tags: (tag, oid) pairs in (tag, oid) order - a stable counting sort by tag.
            start = <Py_ssize_t*>malloc((nt + 1) * sizeof(Py_ssize_t))
            order = <Py_ssize_t*>malloc((m if m else 1) * sizeof(Py_ssize_t))
            if start is NULL or order is NULL:
                raise MemoryError()
            for j in range(nt + 1):
                start[j] = 0
            for i in range(m):
                start[w[i].tag + 1] += 1
            for j in range(nt):
                start[j + 1] += start[j]
            for i in range(m):
                order[start[w[i].tag]] = i
                start[w[i].tag] += 1
            t_adds = _new_run(m, tag_keys, True)
            t_removes = []
            for j in range(m):
                i = order[j]
                if w[i].seq & OP_NO_TAGS:
                    continue
                if w[i].seq & OP_PRESENT:
                    t_adds._append(w[i].oid, w[i].tag)
                else:
                    t_removes.append(_pair(<bytes>PyList_GET_ITEM(tag_keys, w[i].tag),
                                           _pack_oid(w[i].oid)))
        finally:
            free(w)
            free(rank)
            free(start)
            free(order)
        batch.dup_set("tags", t_adds, t_removes)
        batch.dup_set("obj_tags", o_adds, o_removes)
        if self._n == n:
            self.clear()
        else:       # (only if ops were recorded meanwhile, which the prefix lock prevents)
            memmove(self._ops, self._ops + n, (self._n - n) * sizeof(Op))
            self._n -= n
            for i in range(self._n):
                self._ops[i].seq = <uint32_t>((i << OP_SHIFT) | (self._ops[i].seq & 7))
            self._by_obj = None


# -- membership runs -----------------------------------------------------------------------

@cython.final
cdef class _PairIter:
    """Iteration of a MemberRun or a PackedPairs (the one that is set)."""

    cdef MemberRun run
    cdef PackedPairs packed
    cdef Py_ssize_t i, n
    cdef tuple last         # the pair handed out last

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.n:
            raise StopIteration
        cdef Py_ssize_t i = self.i
        self.i += 1
        if self.run is not None:
            key = self.run._key(i)
            value = self.run._value(i)
        else:
            key = self.packed._part(2 * i)
            value = self.packed._part(2 * i + 1)
        self.last = _hand_out(<PyObject*>self.last, key, value)
        return self.last


cdef MemberRun _new_run(Py_ssize_t cap, list keys, bint key_is_tag):
    cdef MemberRun run = MemberRun.__new__(MemberRun)
    run.keys = keys
    run.key_is_tag = key_is_tag
    run.oids = <uint64_t*>malloc((cap if cap else 1) * sizeof(uint64_t))
    run.tags = <uint32_t*>malloc((cap if cap else 1) * sizeof(uint32_t))
    if run.oids is NULL or run.tags is NULL:
        raise MemoryError()
    return run


@cython.final
cdef class MemberRun:
    """Sorted ``(key, value)`` membership pairs of one table - ``(tag, id)`` for `tags`,
    ``(id, tag)`` for `obj_tags` - kept as C arrays.  A sequence of 2-tuples to its users
    (``len``, slices, iteration: what ``Cursor.putmulti`` reads); the tuples are made one
    at a time, so a bulk put never holds hundreds of thousands of them at once."""

    cdef uint64_t* oids
    cdef uint32_t* tags         # index into keys
    cdef Py_ssize_t n
    cdef list keys
    cdef bint key_is_tag

    def __dealloc__(self):
        free(self.oids)
        free(self.tags)

    cdef inline void _append(self, uint64_t oid, uint32_t tag):
        self.oids[self.n] = oid
        self.tags[self.n] = tag
        self.n += 1

    cdef inline tuple _pair_at(self, Py_ssize_t i):
        return (self._key(i), self._value(i))

    def __len__(self):
        return self.n

    def __iter__(self):
        cdef _PairIter it = _PairIter.__new__(_PairIter)
        it.run = self
        it.n = self.n
        return it

    cdef inline object _key(self, Py_ssize_t i):
        if self.key_is_tag:
            return <bytes>PyList_GET_ITEM(self.keys, self.tags[i])
        return _pack_oid(self.oids[i])

    cdef inline object _value(self, Py_ssize_t i):
        if self.key_is_tag:
            return _pack_oid(self.oids[i])
        return <bytes>PyList_GET_ITEM(self.keys, self.tags[i])

    cdef inline bint _same_key(self, Py_ssize_t i, Py_ssize_t j):
        if self.key_is_tag:
            return self.tags[i] == self.tags[j]
        return self.oids[i] == self.oids[j]

    cdef MemberRun _select(self, Py_ssize_t lo, Py_ssize_t hi, uint64_t floor, int below):
        """Entries lo..hi (all if below < 0, else those with id < floor (below=1) or not)."""
        cdef MemberRun out = _new_run(hi - lo, self.keys, self.key_is_tag)
        cdef Py_ssize_t i
        for i in range(lo, hi):
            if below < 0 or (self.oids[i] < floor) == (below == 1):
                out._append(self.oids[i], self.tags[i])
        return out

    def __getitem__(self, index):
        if isinstance(index, slice):
            lo, hi, step = index.indices(self.n)
            if step != 1:
                raise ValueError("MemberRun slices take no step")
            return self._select(lo, max(lo, hi), 0, -1)
        cdef Py_ssize_t i = index
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(index)
        return self._pair_at(i)


cdef inline tuple _hand_out(PyObject* last, object a, object b):
    """The pair ``(a, b)``: ``last`` (the iterator's own, borrowed: a counted reference
    here would hide whether anyone else holds it) refilled if nobody but the iterator
    holds it any more (a bulk put reads each pair and lets it go), as zip() does, else
    a new pair."""
    if last == NULL or last == <PyObject*>None or _refcnt(last) != 1:
        return _pair(a, b)
    cdef tuple t = <tuple>last
    cdef PyObject* old_a = _tuple_item(t, 0)
    cdef PyObject* old_b = _tuple_item(t, 1)
    Py_INCREF(a)
    Py_INCREF(b)
    _tuple_set(t, 0, <PyObject*>a)
    _tuple_set(t, 1, <PyObject*>b)
    Py_XDECREF(old_a)
    Py_XDECREF(old_b)
    return t


# -- storage helpers ---------------------------------------------------------------------

cdef inline tuple _pair(object a, object b):
    """``(a, b)``, not tracked by the cyclic GC (bytes cannot form cycles): a commit makes
    hundreds of thousands of these and must not make the collector walk them."""
    cdef tuple t = (a, b)
    PyObject_GC_UnTrack(t)
    return t


cdef inline Py_ssize_t _len_size(Py_ssize_t n, Py_ssize_t fixmax):
    return 1 if n <= fixmax else (3 if n < 0x10000 else 5)


cdef inline char* _put_len(char* p, Py_ssize_t n, unsigned char fix, unsigned char b16,
                           unsigned char b32, Py_ssize_t fixmax):
    if n <= fixmax:
        p[0] = <char>(fix | n)
        return p + 1
    if n < 0x10000:
        p[0] = <char>b16
        p[1] = <char>((n >> 8) & 0xFF)
        p[2] = <char>(n & 0xFF)
        return p + 3
    p[0] = <char>b32
    p[1] = <char>((n >> 24) & 0xFF)
    p[2] = <char>((n >> 16) & 0xFF)
    p[3] = <char>((n >> 8) & 0xFF)
    p[4] = <char>(n & 0xFF)
    return p + 5


cdef inline Py_ssize_t _members_size(list pairs, Py_ssize_t lo, Py_ssize_t hi):
    cdef Py_ssize_t i, ln, size = _len_size(hi - lo, 15)
    for i in range(lo, hi):
        ln = PyBytes_GET_SIZE(<bytes>PyTuple_GET_ITEM(<tuple>PyList_GET_ITEM(pairs, i), 1))
        size += ln + (2 if ln < 0x100 else (3 if ln < 0x10000 else 5))
    return size


cdef inline char* _put_members(char* p, list pairs, Py_ssize_t lo, Py_ssize_t hi):
    """msgpack array of the bin values of pairs[lo:hi]."""
    cdef Py_ssize_t i, ln
    cdef bytes v
    p = _put_len(p, hi - lo, 0x90, 0xDC, 0xDD, 15)
    for i in range(lo, hi):
        v = <bytes>PyTuple_GET_ITEM(<tuple>PyList_GET_ITEM(pairs, i), 1)
        ln = PyBytes_GET_SIZE(v)
        if ln < 0x100:
            p[0] = <char>0xC4
            p[1] = <char>ln
            p += 2
        else:
            p = _put_len(p, ln, 0, 0xC5, 0xC6, -1)
        memcpy(p, PyBytes_AS_STRING(v), ln)
        p += ln
    return p


cdef inline bytes _key_of(list pairs, Py_ssize_t i):
    return <bytes>PyTuple_GET_ITEM(<tuple>PyList_GET_ITEM(pairs, i), 0)


cdef inline bint _same(bytes a, bytes b):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(a)
    return a is b or (n == PyBytes_GET_SIZE(b) and memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), n) == 0)


def first_of_each_key(pairs):
    """``[(key, first value)]`` for each run of equal keys in sorted ``pairs``."""
    cdef list out = []
    cdef MemberRun run
    cdef Py_ssize_t k
    if isinstance(pairs, MemberRun):
        run = <MemberRun>pairs
        for k in range(run.n):
            if k == 0 or not run._same_key(k, k - 1):
                out.append(run._pair_at(k))
        return out
    cdef Py_ssize_t i, n = PyList_GET_SIZE(pairs)
    cdef bytes key, prev = None
    for i in range(n):
        key = _key_of(pairs, i)
        if prev is None or not _same(key, prev):
            out.append((key, <bytes>PyTuple_GET_ITEM(<tuple>PyList_GET_ITEM(pairs, i), 1)))
            prev = key
    return out


def split_by_floor(pairs, bytes floor, bint member_is_value):
    """``(old, new)``: pairs whose member (value, else the first 8 bytes of the key) is
    an 8-byte id below ``floor`` and the others; both keep their order."""
    cdef list old = [], new = []
    cdef MemberRun run
    if isinstance(pairs, MemberRun):
        run = <MemberRun>pairs
        limit = _unpack_oid(floor)
        return run._select(0, run.n, limit, 1), run._select(0, run.n, limit, 0)
    cdef Py_ssize_t i, n = PyList_GET_SIZE(pairs)
    cdef bytes member
    cdef const char* f = PyBytes_AS_STRING(floor)
    for i in range(n):
        pair = <object>PyList_GET_ITEM(pairs, i)
        member = <bytes>PyTuple_GET_ITEM(<tuple>pair, 1 if member_is_value else 0)
        if PyBytes_GET_SIZE(member) >= 8 and memcmp(PyBytes_AS_STRING(member), f, 8) >= 0:
            new.append(pair)
        else:
            old.append(pair)
    return old, new


def membership_history(int db_id, bytes state, added, list removed):
    """History records of the changed pairs of one duplicate-set table (both lists sorted
    by key): ``([(db id + key + state, msgpack [added values, removed values])], journal,
    count)``, one record per key; ``journal`` is the msgpack encoding of the ``count``
    journal entries ``[db id, key]`` (see join_journal)."""
    cdef list out = []
    cdef Py_ssize_t i = 0, j = 0, i2, j2, size, klen, count = 0
    cdef Py_ssize_t na = 0, nr = PyList_GET_SIZE(removed)
    cdef bytes key, hkey, value
    cdef char* p
    cdef char* journal = NULL       # msgpack journal entries, grown as needed
    cdef char* grown
    cdef Py_ssize_t jlen = 0, jcap = 0
    if isinstance(added, MemberRun):
        if removed or (<MemberRun>added).n < 2:
            added = list(added)
        else:
            return _run_history(db_id, state, <MemberRun>added)
    na = PyList_GET_SIZE(added)
    try:
        while i < na or j < nr:
            if j >= nr:
                key = _key_of(added, i)
            elif i >= na:
                key = _key_of(removed, j)
            else:
                key = _key_of(added, i)
                if _key_of(removed, j) < key:
                    key = _key_of(removed, j)
            i2 = i
            while i2 < na and _same(_key_of(added, i2), key):
                i2 += 1
            j2 = j
            while j2 < nr and _same(_key_of(removed, j2), key):
                j2 += 1
            klen = PyBytes_GET_SIZE(key)
            hkey = PyBytes_FromStringAndSize(NULL, klen + 9)
            p = PyBytes_AS_STRING(hkey)
            p[0] = <char>db_id
            memcpy(p + 1, PyBytes_AS_STRING(key), klen)
            memcpy(p + 1 + klen, PyBytes_AS_STRING(state), 8)
            size = 1 + _members_size(added, i, i2) + _members_size(removed, j, j2)
            value = PyBytes_FromStringAndSize(NULL, size)
            p = PyBytes_AS_STRING(value)
            p[0] = <char>0x92
            p = _put_members(p + 1, added, i, i2)
            _put_members(p, removed, j, j2)
            out.append(_pair(hkey, value))
            # [db id (positive fixint), bin key]
            if jlen + klen + 5 > jcap:
                jcap = 2 * jcap + klen + 4096
                grown = <char*>realloc(journal, jcap)
                if grown is NULL:
                    raise MemoryError()
                journal = grown
            p = journal + jlen
            p[0] = <char>0x92
            p[1] = <char>db_id
            if klen < 0x100:
                p[2] = <char>0xC4
                p[3] = <char>klen
                p += 4
            else:
                p[2] = <char>0xC5
                p[3] = <char>((klen >> 8) & 0xFF)
                p[4] = <char>(klen & 0xFF)
                p += 5
            memcpy(p, PyBytes_AS_STRING(key), klen)
            jlen = (p - journal) + klen
            count += 1
            i, j = i2, j2
        return out, PyBytes_FromStringAndSize(journal, jlen), count
    finally:
        free(journal)


cdef inline char* _put_bin(char* p, const char* data, Py_ssize_t ln):
    if ln < 0x100:
        p[0] = <char>0xC4
        p[1] = <char>ln
        p += 2
    else:
        p = _put_len(p, ln, 0, 0xC5, 0xC6, -1)
    memcpy(p, data, ln)
    return p + ln


cdef tuple _run_history(int db_id, bytes state, MemberRun run):
    """membership_history for a run of adds only (no removals); the records come as
    PackedPairs."""
    cdef PackedPairs out = PackedPairs.__new__(PackedPairs)
    cdef Py_ssize_t i = 0, i2, g, size, klen, vlen, count = 0, jlen = 0
    cdef char kbuf[8]
    cdef char vbuf[8]
    cdef const char* kp
    cdef const char* vp
    cdef bytes tag
    cdef char* p
    cdef char* journal = NULL
    cdef Py_ssize_t n_keys = 0
    cdef Py_ssize_t jcap = 0
    cdef int b
    try:
        # Journal size: one entry per key.
        for i in range(run.n):
            if i and run._same_key(i, i - 1):
                continue
            klen = 8 if not run.key_is_tag else PyBytes_GET_SIZE(<bytes>PyList_GET_ITEM(run.keys, run.tags[i]))
            jcap += klen + 5
        journal = <char*>malloc(jcap if jcap else 1)
        if journal is NULL:
            raise MemoryError()
        i = 0
        while i < run.n:
            i2 = i + 1
            while i2 < run.n and run._same_key(i2, i):
                i2 += 1
            if run.key_is_tag:
                tag = <bytes>PyList_GET_ITEM(run.keys, run.tags[i])
                kp = PyBytes_AS_STRING(tag)
                klen = PyBytes_GET_SIZE(tag)
                size = 1 + _len_size(i2 - i, 15) + (i2 - i) * 10 + 1
            else:
                for b in range(8):
                    kbuf[7 - b] = <char>((run.oids[i] >> (8 * b)) & 0xFF)
                kp = kbuf
                klen = 8
                size = 1 + _len_size(i2 - i, 15) + 1
                for g in range(i, i2):
                    vlen = PyBytes_GET_SIZE(<bytes>PyList_GET_ITEM(run.keys, run.tags[g]))
                    size += vlen + (2 if vlen < 0x100 else (3 if vlen < 0x10000 else 5))
            p = out._reserve(klen + 9)
            p[0] = <char>db_id
            memcpy(p + 1, kp, klen)
            memcpy(p + 1 + klen, PyBytes_AS_STRING(state), 8)
            p = out._reserve(size)
            p[0] = <char>0x92
            p = _put_len(p + 1, i2 - i, 0x90, 0xDC, 0xDD, 15)
            for g in range(i, i2):
                if run.key_is_tag:
                    for b in range(8):
                        vbuf[7 - b] = <char>((run.oids[g] >> (8 * b)) & 0xFF)
                    p = _put_bin(p, vbuf, 8)
                else:
                    tag = <bytes>PyList_GET_ITEM(run.keys, run.tags[g])
                    p = _put_bin(p, PyBytes_AS_STRING(tag), PyBytes_GET_SIZE(tag))
            p[0] = <char>0x90             # no removals
            p = journal + jlen
            p[0] = <char>0x92
            p[1] = <char>db_id
            p = _put_bin(p + 2, kp, klen)
            jlen = p - journal
            count += 1
            i = i2
        return out, PyBytes_FromStringAndSize(journal, jlen), count
    finally:
        free(journal)


@cython.final
cdef class PackedPairs:
    """``(key, value)`` byte pairs packed back to back in one buffer, a sequence of
    2-tuples to its users (``len``, iteration): the history records of a bulk commit are
    ~100k small pairs that a bulk put reads once, so they are made one at a time, as
    they are read, into memory the previous pair has just given back."""

    cdef char* data
    cdef Py_ssize_t size, cap
    cdef Py_ssize_t* ends       # end offset of each key and each value, in turn
    cdef Py_ssize_t nparts, pcap

    def __dealloc__(self):
        free(self.data)
        free(self.ends)

    cdef char* _reserve(self, Py_ssize_t n) except NULL:
        """Room for the next key or value (``n`` bytes), to be written at once."""
        cdef char* grown
        cdef Py_ssize_t* more
        if self.size + n > self.cap:
            self.cap = 2 * self.cap + n + 4096
            grown = <char*>realloc(self.data, self.cap)
            if grown is NULL:
                raise MemoryError()
            self.data = grown
        if self.nparts == self.pcap:
            self.pcap = 2 * self.pcap + 1024
            more = <Py_ssize_t*>realloc(self.ends, self.pcap * sizeof(Py_ssize_t))
            if more is NULL:
                raise MemoryError()
            self.ends = more
        cdef char* p = self.data + self.size
        self.size += n
        self.ends[self.nparts] = self.size
        self.nparts += 1
        return p

    cdef inline bytes _part(self, Py_ssize_t k):
        cdef Py_ssize_t start = self.ends[k - 1] if k else 0
        return PyBytes_FromStringAndSize(self.data + start, self.ends[k] - start)

    def __len__(self):
        return self.nparts // 2

    def __iter__(self):
        cdef _PairIter it = _PairIter.__new__(_PairIter)
        it.packed = self
        it.n = self.nparts // 2
        return it


def join_journal(bytes packed, list extra):
    """One msgpack array: the items of array ``packed`` followed by the ``(encoded items,
    count)`` chunks of ``extra``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(packed)
    cdef Py_ssize_t n, head
    if p[0] & 0xF0 == 0x90:
        n, head = p[0] & 0x0F, 1
    elif p[0] == 0xDC:
        n, head = (p[1] << 8) | p[2], 3
    else:
        n = (<Py_ssize_t>p[1] << 24) | (p[2] << 16) | (p[3] << 8) | p[4]
        head = 5
    parts = [packed[head:]]
    for blob, count in extra:
        n += count
        parts.append(blob)
    cdef char buf[5]
    cdef char* end = _put_len(buf, n, 0x90, 0xDC, 0xDD, 15)
    return buf[:end - buf] + b"".join(parts)


# -- db0.tags(...) ------------------------------------------------------------------------

cdef object _errors = None
cdef object _str_key = None
cdef object _note_long = None
cdef object _apply = None
cdef object _contains = None
cdef object _iterate = None
cdef object _query_type = None


def configure(errors, str_key, note_long, apply, contains, iterate, query_type):
    """Install helpers from dbzero/tags.py (avoids an import cycle): the str key of a
    tag, the long-name hook, and the general paths of add/remove, ``in`` and iteration
    (``fn(objs, ...)``)."""
    global _errors, _str_key, _note_long, _apply, _contains, _iterate, _query_type
    _errors = errors
    _str_key = str_key
    _note_long = note_long
    _apply = apply
    _contains = contains
    _iterate = iterate
    _query_type = query_type


# Memo object fields are read as C fields, past MemoBase.__getattribute__ (which only
# adds checks that _check_target makes itself).

cdef inline int _check_target(MemoBase obj, object px, bint present) except -1:
    cdef int flags = obj._flags
    if flags & F_DEAD:
        raise _errors.ReferenceError("Memo instance expired")
    if flags & F_CLOSED or px.closed:
        raise _errors.ObjectClosedError("Object is no longer accessible")
    if flags & F_READONLY or px.readonly:
        if present:
            raise _errors.ReadOnlyError("ObjectTagManager: cannot add tags to read-only object")
        raise _errors.ReadOnlyError("ObjectTagManager: cannot remove tags from read-only object")
    return 0


@cython.freelist(8)
cdef class ObjectTagManager:
    """``db0.tags(*objs)``: add, remove, test and list the tags of memo objects (or of
    every object of a query).  Adding str tags to one object is handled here; the other
    cases are in dbzero/tags.py."""

    cdef readonly tuple _objs

    def __init__(self, tuple objs):
        self._objs = objs

    def add(self, *tags):
        """Add tags (str, enum values, memo objects, ``as_tag(...)``; iterables expand)."""
        cdef tuple objs = self._objs
        cdef object texts = tags
        if PyTuple_GET_SIZE(objs) == 1 and isinstance(<object>PyTuple_GET_ITEM(objs, 0), MemoBase):
            if PyTuple_GET_SIZE(tags) == 1:
                texts = <object>PyTuple_GET_ITEM(tags, 0)
                if not (PyList_CheckExact(texts) or PyTuple_CheckExact(texts)):
                    texts = tags
            if _add_strs(<object>PyTuple_GET_ITEM(objs, 0), texts):
                return
        _apply(objs, tags, True)

    def remove(self, *tags):
        """Remove tags; removing a tag the object does not carry is a no-op."""
        _apply(self._objs, tags, False)

    def __contains__(self, tag):
        return _contains(self._objs, tag)

    def __iter__(self):
        return _iterate(self._objs)

    def __repr__(self):
        return f"<db0.ObjectTagManager of {len(self._objs)} object(s)>"


def tags(*objs):
    """The tag manager of memo objects (or of every object of a query)."""
    for obj in objs:
        if not isinstance(obj, MemoBase) and not isinstance(obj, _query_type):
            raise _errors.Error("All arguments must be dbzero memo objects or object queries")
    cdef ObjectTagManager mgr = ObjectTagManager.__new__(ObjectTagManager)
    mgr._objs = objs
    return mgr


cdef bint _add_strs(MemoBase obj, object texts) except -1:
    """Add the str tags in list/tuple ``texts`` to ``obj``; False (nothing done) if some
    element is not a str."""
    cdef Py_ssize_t i, n = len(texts)
    for i in range(n):
        if not PyUnicode_CheckExact(texts[i]):
            return False
    px = obj._px
    _check_target(obj, px, True)
    if n == 0:
        return True
    cdef TagStore store = <TagStore>px.tags
    cdef uint64_t oid = obj._oid
    if store._lock is None:
        store._lock = px.lock
        store._acquire = store._lock.acquire
        store._release = store._lock.release
    store._acquire()
    try:
        for i in range(n):
            store.add_str(oid, <str>texts[i], _str_key, _note_long)
    finally:
        store._release()
    return True
