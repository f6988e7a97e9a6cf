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

from cpython.object cimport PyObject, PyObject_GenericGetAttr, PyObject_GenericSetAttr, PyTypeObject

cdef extern from "Python.h":
    PyObject* _PyType_Lookup(PyTypeObject *type, object name)
    PyObject** _PyObject_GetDictPtr(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1


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

# Scalars stored as-is: no conversion, no reference counting.
cdef tuple _PLAIN = (str, float, bool, type(None), bytes)

# Engine bookkeeping, readable in every state without loading the object.
cdef frozenset _INTERNAL = frozenset({"_px", "_oid", "_flags", "_rc", "__class__"})


def configure(reference_error, closed_error, readonly_error, weakref_type):
    """Install classes from the Python layer (avoids an import cycle)."""
    global _ReferenceError, _ObjectClosedError, _ReadOnlyError, _WeakRefType
    _ReferenceError = reference_error
    _ObjectClosedError = closed_error
    _ReadOnlyError = readonly_error
    _WeakRefType = weakref_type


cdef inline bint _is_data_descriptor(object obj, object name):
    cdef object tp = type(obj)
    cdef PyObject* d = _PyType_Lookup(<PyTypeObject*>tp, name)
    if d is NULL:
        return False
    return hasattr(type(<object>d), "__set__")


cdef class MemoBase:
    """Base class of all memo objects (and the class of objects whose class is unknown)."""

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
            if type(value) in _PLAIN or (type(value) is int and _is_int64(value)):
                d = _instance_dict(self)
                old = d.get(name, d)
                if old is d or type(old) in _PLAIN or type(old) is int:
                    d[name] = value
                    if not (self._flags & F_DIRTY):
                        self._flags |= F_DIRTY
                        self._px.mark_dirty(self)
                    return
        self._px.set_attr(self, name, value)

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

