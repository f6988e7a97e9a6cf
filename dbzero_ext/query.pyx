# cython: language_level=3, boundscheck=False, wraparound=False
"""Hot loops of range-index queries and of materialising query results.

An index keeps its (key, object) pairs as sorted *entries* packed into blocks (see
``blocks.pxi``, included at the end, and dbzero/index.py).  The tail of a forward entry
names the object: ``oid (8 bytes BE) + b"\\x00"`` for an object of the index's own
prefix, ``oid (8) + prefix uuid (7) + b"\\x01"`` for an object of another prefix.  The
last byte therefore tells how to read a member back:

* ``0`` - a local object: the member is the ``int`` object id;
* ``1`` - a foreign object: the member is the tuple ``(prefix_uuid, oid)``.

:func:`scan` walks a key range over whole blocks merged with the pending (uncommitted)
entries, filtering by an :class:`OidSet` and de-duplicating in C; :func:`lookup` and
:func:`contains` answer many point questions with one pass over the blocks.  A 100k-entry
walk costs a few nanoseconds per entry plus one LMDB read per ~200 entries.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport PyObject, PyObject_GenericSetAttr
from cpython.dict cimport PyDict_GetItem
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcmp, memset

from dbzero_ext.memo cimport MemoBase, F_DEAD
from dbzero_ext.core cimport incref_memo, is_pinned_dirty, prefix_logging, prefix_writable


cdef inline unsigned long long _be64(const unsigned char* p) noexcept:
    cdef unsigned long long v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline object _member(bytes key, Py_ssize_t* tail):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(key)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(key)
    if p[n - 1] == 0:
        tail[0] = 9
        return _be64(p + n - 9)
    tail[0] = 16
    return (key[n - 8:n - 1], _be64(p + n - 16))


# Local ids below this use the bitmap of an OidSet; larger ones (never allocated in
# practice) fall back to a Python set, so a bitmap never exceeds 256 MiB.
cdef uint64_t BITMAP_LIMIT = 1ULL << 31


cdef class OidSet:
    """A set of members: a growable bitmap over local object ids plus a Python set for
    foreign members ``(prefix_uuid, oid)`` and huge ids.  ``in`` and :meth:`add` work
    from Python; :func:`collect` tests and sets bits in C."""

    cdef uint8_t* bits
    cdef Py_ssize_t nbytes
    cdef public set other

    def __cinit__(self):
        self.bits = NULL
        self.nbytes = 0
        self.other = set()

    def __dealloc__(self):
        free(self.bits)

    @staticmethod
    def from_idset(ids):
        """An OidSet holding the ids of an IdSet (decoded from its big-endian bytes)."""
        cdef OidSet out = OidSet()
        cdef bytes raw = ids.to_be_bytes()
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
        cdef Py_ssize_t i, n = PyBytes_GET_SIZE(raw) // 8
        if n:
            out._grow(_be64(p + 8 * (n - 1)))
        for i in range(n):
            out._add(_be64(p + 8 * i))
        return out

    cdef int _grow(self, uint64_t oid) except -1:
        cdef Py_ssize_t need = <Py_ssize_t>(oid >> 3) + 1, size
        cdef uint8_t* grown
        if need <= self.nbytes:
            return 0
        size = self.nbytes * 2 if self.nbytes * 2 > need else need
        if size < 1024:
            size = 1024
        grown = <uint8_t*>realloc(self.bits, size)
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.nbytes, 0, size - self.nbytes)
        self.bits = grown
        self.nbytes = size
        return 0

    cdef inline bint _has(self, uint64_t oid):
        if oid >= BITMAP_LIMIT:
            return oid in self.other
        return <Py_ssize_t>(oid >> 3) < self.nbytes and (self.bits[oid >> 3] >> (oid & 7)) & 1

    cdef inline int _add(self, uint64_t oid) except -1:
        if oid >= BITMAP_LIMIT:
            self.other.add(oid)
            return 0
        if <Py_ssize_t>(oid >> 3) >= self.nbytes:
            self._grow(oid)
        self.bits[oid >> 3] |= <uint8_t>(1 << (oid & 7))
        return 0

    def add(self, member):
        if type(member) is int and member >= 0:
            self._add(member)
        else:
            self.other.add(member)

    def __contains__(self, member):
        if type(member) is int and member >= 0:
            return self._has(member)
        return member in self.other


include "blocks.pxi"
include "ixcore.pxi"


def place_made(list out, list missing, list oids, dict made, try_get):
    """``out[i]`` = the proxy made for ``oids[i]`` (else ``try_get(oid)``) for i in ``missing``."""
    cdef PyObject* found
    for i in missing:
        oid = oids[i]
        found = PyDict_GetItem(made, oid)
        out[i] = <object>found if found is not NULL else try_get(oid)


def place_live(list out, list missing, list objs):
    """``out[missing[k]]`` = ``objs[k]`` where that object is alive (see live_objects)."""
    cdef Py_ssize_t k
    for k in range(len(missing)):
        obj = objs[k]
        if obj is not None and not _dead(obj):
            out[missing[k]] = obj
