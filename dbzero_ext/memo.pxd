# Declarations shared with dbzero_ext/core.pyx (the engine reads these fields directly).

from cpython.object cimport PyObject
from libc.stdint cimport uint64_t


cdef class MemoBase:
    cdef public object _px
    cdef public unsigned long long _oid
    cdef public int _flags
    cdef public long long _rc
    cdef public unsigned long long _wstate   # state that wrote the stored record (0: unknown)


cdef struct ProxySlot:
    uint64_t oid
    PyObject* obj           # borrowed; NULL: never used; PROXY_GONE: removed


cdef class ProxyMap:
    """The identity map of memo proxies: object id -> borrowed pointer.  A proxy removes
    its own entry when it is deallocated (MemoBase.__dealloc__), so the map holds no weak
    references and never keeps a proxy alive.  PrefixCore (dbzero_ext/core.pyx) extends
    it and is told of every removal through ``_proxy_gone``."""
    cdef ProxySlot* _slots
    cdef size_t _mask
    cdef size_t _used           # live entries
    cdef size_t _filled         # live entries + removed markers
    cdef int _shift
    cdef int _alloc(self, size_t capacity) except -1
    cdef int _rehash(self) except -1
    cdef PyObject* proxy_get(self, uint64_t oid)
    cdef int proxy_put(self, uint64_t oid, object obj) except -1
    cdef bint proxy_remove(self, uint64_t oid, PyObject* only)
    cdef list proxy_items(self)
    cdef void proxy_clear(self)
    cdef void _proxy_gone(self, uint64_t oid) noexcept


# Flag bits of MemoBase._flags (mirrored in dbzero/prefix.py).
cdef enum:
    F_GHOST = 1
    F_DIRTY = 2
    F_NEW = 4
    F_DEAD = 8
    F_READONLY = 16
    F_INIT = 32
    F_CLOSED = 64
    F_TRACKED = 128         # an atomic block is active on this object's prefix
    F_RUNNING_INIT = 256    # the user's __init__ is running (core.make_init)
    F_RCDIRTY = 512         # only the reference count changed (record rewritten in place)
    F_RCDELTA = 1024        # a ghost whose _rc holds increments not yet applied to its record
    F_SLOW = 1 | 8 | 64
    F_SLOW_WRITE = 1 | 8 | 16 | 64 | 128


cdef void gc_track_for(object obj, object value)
cdef void gc_track_by_content(object obj, dict d)
