# cython: language_level=3
"""The tag store's C interface, for the memo core's creation path (dbzero_ext/core.pyx)."""

from libc.stdint cimport uint64_t, uint32_t


cdef struct Op:
    uint64_t oid
    uint32_t tag            # index into TagStore._keys (sort rank during flush)
    uint32_t seq            # position in the log << 3 | OP_* bits


cdef class TagStore:
    cdef public object px
    cdef list _keys             # interned tag keys, by index
    cdef dict _key_index        # tag key -> index in _keys
    cdef dict _str_index        # str tag -> index (short keys only: see add_str)
    cdef Op* _ops
    cdef Py_ssize_t _n, _cap
    # Read index over the log (built lazily): oid -> {tag: present}, tag -> {oid: present}.
    cdef dict _by_obj
    cdef dict _by_tag
    cdef Py_ssize_t _indexed    # log entries already reflected in the read index
    cdef object _lock, _acquire, _release   # the prefix lock and its bound methods

    cdef uint32_t _intern(self, bytes key) except? 0xFFFFFFFF
    cdef int _grow(self) except -1
    cdef int _log(self, uint64_t oid, uint32_t tag, unsigned int flags) except -1
    cdef int add_new(self, uint64_t oid, bytes tag) except -1
    cdef int add_str(self, uint64_t oid, str text, object key_of, object note_long) except -1
    cdef _sync(self)
    cdef _flush(self, batch)
