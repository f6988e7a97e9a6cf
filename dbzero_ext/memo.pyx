# cython: language_level=3
"""The base of every memo object.

A memo instance is a real instance of the user's class (the decorator builds a subclass of
the user class and of :class:`MemoBase`).  Decoded field values live in the instance
``__dict__``, so a read of a loaded object is an ordinary attribute lookup.  Three states
need more than that and are flagged in ``_flags``:

* GHOST  - the object is known by id but its record is not decoded yet (or was evicted);
           the first attribute access loads it through its prefix.
* DEAD   - deleted, rolled back or expired: access raises ``db0.ReferenceError``.
* CLOSED - its prefix or snapshot was closed: access raises ``ObjectClosedError``.

Writes go through ``__setattr__``/``__delattr__`` which hand the value to the owning prefix
(``_px``).  Plain scalars take a short path here; everything else (containers, references,
read-only checks, atomic undo logging) is the prefix's job.
"""

cimport cython
from cpython.object cimport PyObject, PyObject_GenericGetAttr, PyObject_GenericSetAttr, PyTypeObject
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free

cdef extern from "Python.h":
    PyObject* _PyType_Lookup(PyTypeObject *type, object name)
    PyObject** _PyObject_GetDictPtr(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    bint PyObject_IS_GC(object o)
    bint PyObject_GC_IsTracked(object o)
    void PyObject_GC_Track(void* o)
    Py_ssize_t Py_REFCNT(PyObject* o)


# -- garbage-collector tracking ---------------------------------------------------------------
#
# A memo proxy whose fields are all atomic values (numbers, strings, bytes, None) cannot be
# part of a reference cycle, so, like CPython's own tuples and dicts, it is not tracked by
# the cyclic collector: creating or loading many such objects then costs no collector walks.
# It is tracked as soon as a field may refer to a container or another object.

cdef void gc_track_for(object obj, object value):
    """Track ``obj`` if ``value`` (now one of its fields) could be part of a cycle."""
    if PyObject_IS_GC(value) and not PyObject_GC_IsTracked(obj):
        PyObject_GC_Track(<void*>obj)


cdef void gc_track_by_content(object obj, dict d):
    """Track ``obj`` if any of the fields in its dict ``d`` could be part of a cycle."""
    if PyObject_GC_IsTracked(obj):
        return
    for value in d.values():
        if PyObject_IS_GC(value):
            PyObject_GC_Track(<void*>obj)
            return


def track_by_content(obj):
    """(Re)track a memo proxy whose fields were replaced wholesale (atomic rollback)."""
    gc_track_by_content(obj, _instance_dict(obj))


cdef inline dict _instance_dict(object obj):
    cdef PyObject** slot = _PyObject_GetDictPtr(obj)
    if slot is not NULL and slot[0] is not NULL:
        return <dict>slot[0]
    return <dict>PyObject_GenericGetAttr(obj, "__dict__")


cdef inline bint _is_int64(object value):
    cdef int overflow = 0
    PyLong_AsLongLongAndOverflow(value, &overflow)
    return overflow == 0

# Flag bits: declared in memo.pxd (shared with core.pyx), mirrored in dbzero/prefix.py.

GHOST = F_GHOST
DIRTY = F_DIRTY
NEW = F_NEW
DEAD = F_DEAD
READONLY = F_READONLY
INIT = F_INIT
CLOSED = F_CLOSED
TRACKED = F_TRACKED

cdef object _ReferenceError = None
cdef object _ObjectClosedError = None
cdef object _ReadOnlyError = None
cdef object _WeakRefType = None
cdef bint _tracking = False   # an atomic block is open: every write takes the logged path


def set_tracking(bint on):
    """Route all writes through the prefix (which logs undo state) while atomic is active."""
    global _tracking
    _tracking = on


# Engine bookkeeping, readable in every state without loading the object.
cdef frozenset _INTERNAL = frozenset({"_px", "_oid", "_flags", "_rc", "__class__"})


def configure(reference_error, closed_error, readonly_error, weakref_type):
    """Install classes from the Python layer (avoids an import cycle)."""
    global _ReferenceError, _ObjectClosedError, _ReadOnlyError, _WeakRefType
    _ReferenceError = reference_error
    _ObjectClosedError = closed_error
    _ReadOnlyError = readonly_error
    _WeakRefType = weakref_type


cdef inline bint _is_plain_type(object t):
    return t is str or t is int or t is float or t is bool or t is type(None) or t is bytes


cdef inline bint _is_plain(object value):
    """A value stored as it is (no conversion, no reference counting)."""
    cdef object t = type(value)
    if t is int:
        return _is_int64(value)
    return t is str or t is float or t is bool or value is None or t is bytes


cdef inline bint _is_data_descriptor(object obj, object name):
    cdef object tp = type(obj)
    cdef PyObject* d = _PyType_Lookup(<PyTypeObject*>tp, name)
    if d is NULL:
        return False
    return hasattr(type(<object>d), "__set__")


@cython.no_gc_clear         # _px must outlive the proxy: __dealloc__ leaves the identity map
cdef class MemoBase:
    """Base class of all memo objects (and the class of objects whose class is unknown)."""

    def __dealloc__(self):
        px = self._px
        if isinstance(px, ProxyMap):
            if (<ProxyMap>px).proxy_remove(self._oid, <PyObject*>self):
                (<ProxyMap>px)._proxy_gone(self._oid)

    # Fields (_px, _oid, _flags, _rc) are declared in memo.pxd.
    # No `cdef dict __dict__` here: Cython's dealloc would clear the dict's contents,
    # breaking `vars(fetch(uid))` on a temporary.  The Python subclass built by the
    # decorator owns a normal instance dict and weakref slot instead.

    def __getattribute__(self, name):
        if self._flags & F_SLOW and name not in _INTERNAL:
            _slow_access(self, name)
        value = PyObject_GenericGetAttr(self, name)
        if type(value) is _WeakRefType:
            # Weak and cross-prefix references read as their target while it lives.
            target = value.resolve()
            return value if target is None else target
        return value

    def __setattr__(self, name, value):
        cdef dict d
        if _is_data_descriptor(self, name):
            # Properties with setters run their own code, which sets real fields.
            PyObject_GenericSetAttr(self, name, value)
            return
        if not (self._flags & F_SLOW_WRITE) and not _tracking:
            if _is_plain(value):
                d = _instance_dict(self)
                old = d.get(name, d)
                if old is d or _is_plain_type(type(old)):
                    d[name] = value
                    if not (self._flags & F_DIRTY):
                        self._flags |= F_DIRTY
                        self._px.mark_dirty(self)
                    return
        self._px.set_attr(self, name, value)
        gc_track_for(self, _instance_dict(self).get(name))

    def __delattr__(self, name):
        if _is_data_descriptor(self, name):
            PyObject_GenericSetAttr(self, name, None)
            return
        self._px.del_attr(self, name)

    def __hash__(self):
        return hash((self._oid, id(self._px.storage_key)))

    def __reduce__(self):
        raise TypeError(f"cannot pickle '{type(self).__name__}' object (memo objects live in their prefix; store db0.uuid(obj))")

    def __reduce_ex__(self, protocol):
        return self.__reduce__()

    def __copy__(self):
        self.__reduce__()

    def __deepcopy__(self, memo):
        self.__reduce__()


cdef _slow_access(MemoBase self, name):
    cdef int flags = self._flags
    if flags & F_DEAD:
        raise _ReferenceError("Memo instance expired")
    if flags & F_CLOSED:
        raise _ObjectClosedError("Object is no longer accessible")
    if flags & F_GHOST:
        self._px.load_into(self)


def raw_dict(MemoBase obj):
    """The instance dict without triggering a load (for the engine only)."""
    return _instance_dict(obj)



# -- identity map -----------------------------------------------------------------------------

cdef PyObject* PROXY_GONE = <PyObject*>1     # marks a removed entry (probing continues past it)
DEF MIN_CAPACITY = 1024


cdef inline size_t _home(uint64_t oid, int shift):
    # Runs of 16 consecutive ids share four cache lines (objects are mostly made and read
    # in id order); the runs are spread by Fibonacci hashing, so strided ids do not pile up.
    return <size_t>((((oid >> 4) * <uint64_t>11400714819323198485ULL) >> shift) & ~<uint64_t>15) \
        | <size_t>(oid & 15)


cdef class ProxyMap:
    """See memo.pxd.  Open addressing with linear probing over a power-of-two table."""

    def __cinit__(self):
        self._alloc(MIN_CAPACITY)

    def __dealloc__(self):
        free(self._slots)
        self._slots = NULL

    cdef int _alloc(self, size_t capacity) except -1:
        cdef int bits = 0
        while (<size_t>1 << bits) < capacity:
            bits += 1
        self._slots = <ProxySlot*>calloc(<size_t>1 << bits, sizeof(ProxySlot))
        if self._slots == NULL:
            raise MemoryError()
        self._mask = (<size_t>1 << bits) - 1
        self._shift = 64 - bits
        self._used = 0
        self._filled = 0
        return 0

    cdef int _rehash(self) except -1:
        cdef ProxySlot* old = self._slots
        cdef size_t i, j, n = self._mask + 1
        cdef size_t capacity = MIN_CAPACITY
        while capacity < 2 * self._used + 2:
            capacity *= 2
        self._alloc(capacity)
        for i in range(n):
            if old[i].obj != NULL and old[i].obj != PROXY_GONE:
                j = _home(old[i].oid, self._shift)
                while self._slots[j].obj != NULL:
                    j = (j + 1) & self._mask
                self._slots[j] = old[i]
                self._used += 1
                self._filled += 1
        free(old)
        return 0

    cdef PyObject* proxy_get(self, uint64_t oid):
        """The proxy of ``oid`` (borrowed), NULL if none; a proxy being deallocated (count
        0, e.g. while its fields are released) counts as none."""
        cdef size_t i = _home(oid, self._shift)
        cdef ProxySlot* s
        while True:
            s = &self._slots[i]
            if s.obj == NULL:
                return NULL
            if s.oid == oid and s.obj != PROXY_GONE:
                return s.obj if Py_REFCNT(s.obj) > 0 else NULL
            i = (i + 1) & self._mask

    cdef int proxy_put(self, uint64_t oid, object obj) except -1:
        """Make ``obj`` the proxy of ``oid`` (replacing any other)."""
        cdef size_t i, free_at
        cdef ProxySlot* s
        cdef bint have_free = False
        if 4 * (self._filled + 1) > 3 * (self._mask + 1):
            self._rehash()
        i = _home(oid, self._shift)
        while True:
            s = &self._slots[i]
            if s.obj == NULL:
                break
            if s.obj == PROXY_GONE:
                if not have_free:
                    free_at, have_free = i, True
            elif s.oid == oid:
                s.obj = <PyObject*>obj
                return 0
            i = (i + 1) & self._mask
        if have_free:
            s = &self._slots[free_at]
        else:
            self._filled += 1
        s.oid = oid
        s.obj = <PyObject*>obj
        self._used += 1
        return 0

    cdef bint proxy_remove(self, uint64_t oid, PyObject* only):
        """Remove the entry of ``oid`` (only if it is ``only``, unless that is NULL)."""
        cdef size_t i = _home(oid, self._shift)
        cdef ProxySlot* s
        while True:
            s = &self._slots[i]
            if s.obj == NULL:
                return False
            if s.oid == oid and s.obj != PROXY_GONE:
                if only != NULL and s.obj != only:
                    return False
                s.obj = PROXY_GONE
                self._used -= 1
                return True
            i = (i + 1) & self._mask

    cdef list proxy_items(self):
        """``[(oid, proxy)]`` of every live entry."""
        cdef list out = []
        cdef size_t i
        cdef PyObject* p
        for i in range(self._mask + 1):
            p = self._slots[i].obj
            if p != NULL and p != PROXY_GONE and Py_REFCNT(p) > 0:
                out.append((self._slots[i].oid, <object>p))
        return out

    cdef void proxy_clear(self):
        """Forget every entry (the proxies stay valid; they find no entry when they die)."""
        cdef size_t i
        for i in range(self._mask + 1):
            self._slots[i].obj = NULL
        self._used = 0
        self._filled = 0

    cdef void _proxy_gone(self, uint64_t oid) noexcept:
        pass

    def proxy_count(self):
        """Number of entries (live proxies)."""
        return self._used
