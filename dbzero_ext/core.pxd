# C functions of dbzero_ext/core.pyx that other extension modules call directly (a Python
# method call per call would cost more than the work on hot paths such as Index.add).

from dbzero_ext.memo cimport MemoBase

cdef int incref_memo(object px, MemoBase m) except -1
cdef bint prefix_writable(object px) except -1
cdef bint prefix_logging(object px) except -1
cdef bint is_pinned_dirty(object px, object obj, object oid) except -1
