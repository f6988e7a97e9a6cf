# Declarations shared with dbzero_ext/core.pyx (the engine reads these fields directly).

cdef class MemoBase:
    cdef public object _px
    cdef public unsigned long long _oid
    cdef public int _flags
    cdef public long long _rc
