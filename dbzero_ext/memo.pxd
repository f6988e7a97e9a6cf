# Declarations shared with dbzero_ext/core.pyx (the engine reads these fields directly).

cdef class MemoBase:
    cdef public object _px
    cdef public unsigned long long _oid
    cdef public int _flags
    cdef public long long _rc
    cdef public unsigned long long _wstate   # state that wrote the stored record (0: unknown)


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
    F_SLOW = 1 | 8 | 64
    F_SLOW_WRITE = 1 | 8 | 16 | 64 | 128
