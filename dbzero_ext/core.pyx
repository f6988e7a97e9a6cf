# cython: language_level=3
"""The per-object hot paths of a prefix, in C.

``dbzero.prefix.Prefix`` subclasses :class:`PrefixCore`; everything that runs once per
object on the common paths lives here: the identity map (register, track, cached),
creating a memo object (``memo_new`` and the generated ``__init__``), fetching and
loading records, reference counts, and packing dirty records at commit.  The rest of a
prefix (classes, deletes, garbage collection policy, refresh, close) stays in Python.

The fields declared below are the prefix's state; Python code reads and assigns them as
ordinary attributes.
"""

from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.weakref cimport PyWeakref_NewRef, PyWeakref_GetObject
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM

from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free

from dbzero_ext.tagstore cimport TagStore
from dbzero_ext.memo cimport (MemoBase, ProxyMap, gc_track_by_content, F_CLOSED, F_DEAD,
                              F_DIRTY, F_GHOST, F_INIT, F_NEW, F_RCDELTA, F_RCDIRTY,
                              F_READONLY, F_RUNNING_INIT)
from dbzero_ext.codec import ABSENT as _ABSENT
from dbzero_ext.codec import decode_uuid as _decode_uuid


cdef extern from "Python.h":
    Py_ssize_t Py_REFCNT(object o)
    PyObject** _PyObject_GetDictPtr(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    object PyObject_GenericGetAttr(object o, object name)
    void PyObject_GC_UnTrack(void* o)
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames)

cdef extern from *:
    void __builtin_prefetch(const void* p) nogil


from cpython.object cimport PyTypeObject, newfunc

# MemoBase's own allocator: memo classes replace their tp_new (install_slots below), after
# which `MemoBase.__new__(cls)` would refuse them as unsafe.
cdef newfunc _memobase_new = (<PyTypeObject*>MemoBase).tp_new


cdef inline MemoBase _alloc_proxy(type cls):
    """A new, empty instance of memo class ``cls`` (no __init__ run)."""
    return <MemoBase>_memobase_new(cls, <PyObject*>(), NULL)


cdef inline dict _dict_of(object obj):
    """The instance dict of a memo object, bypassing MemoBase.__getattribute__ (which would
    load a ghost)."""
    cdef PyObject** slot = _PyObject_GetDictPtr(obj)
    if slot is not NULL and slot[0] is not NULL:
        return <dict>slot[0]
    return <dict>PyObject_GenericGetAttr(obj, "__dict__")

RUNNING_INIT = F_RUNNING_INIT
RCDIRTY = F_RCDIRTY
RCDELTA = F_RCDELTA

DEF FIRST_USER_CLASS_ID = 16

# Installed by dbzero.prefix / dbzero.workspace (avoids import cycles).
cdef object _errors = None
cdef dict _collection_kinds = None
cdef object _reserve_oids = None
cdef object _singleton_of = None
cdef object _ws_module = None
cdef object _storage_type = None     # live storage: objects are read with one txn.get


def configure(errors, collection_kinds, reserve_oids, singleton_of, ws_module, storage_type):
    global _errors, _collection_kinds, _reserve_oids, _singleton_of, _ws_module, _storage_type
    _errors = errors
    _collection_kinds = collection_kinds
    _reserve_oids = reserve_oids
    _singleton_of = singleton_of
    _ws_module = ws_module
    _storage_type = storage_type


cdef inline bytes _pack_oid(unsigned long long oid):
    cdef char buf[8]
    cdef int i
    for i in range(8):
        buf[i] = <char>((oid >> (56 - 8 * i)) & 0xFF)
    return PyBytes_FromStringAndSize(buf, 8)


def pack_oid(unsigned long long oid):
    """8-byte big-endian key of an object id."""
    return _pack_oid(oid)


cdef class ClassInfo:
    """What a prefix knows about one stored class: its id, name and field layout."""

    cdef public int class_id
    cdef public str name
    cdef public list fields
    cdef public dict field_index
    cdef public object cls
    cdef public object singleton_oid
    cdef public list base_ids
    cdef public bint dirty

    def __init__(self, int class_id, str name, list fields, cls, singleton_oid=0, base_ids=None):
        self.class_id = class_id
        self.name = name
        self.fields = fields
        self.field_index = {f: i for i, f in enumerate(fields)}
        self.cls = cls
        self.singleton_oid = singleton_oid
        self.base_ids = list(base_ids) if base_ids else []
        self.dirty = False

    cpdef Py_ssize_t slot_of(self, field) except -1:
        cdef PyObject* found = PyDict_GetItem(self.field_index, field)
        if found is not NULL:
            return <Py_ssize_t><object>found
        idx = len(self.fields)
        self.fields.append(field)
        self.field_index[field] = idx
        self.dirty = True
        return idx

    def record(self):
        return {"name": self.name, "fields": self.fields, "singleton": self.singleton_oid,
                "bases": self.base_ids}


cdef list _record_of(MemoBase obj, ClassInfo info):
    """The stored record ``[class_id, refcount, slot...]`` of a memo object."""
    cdef dict d = _dict_of(obj)
    cdef dict index = info.field_index
    cdef Py_ssize_t nslots = len(info.fields) + 2
    cdef list slots = [_ABSENT] * nslots
    cdef Py_ssize_t idx, top = 1
    cdef PyObject* found
    slots[0] = info.class_id
    slots[1] = obj._rc
    for name, value in d.items():
        found = PyDict_GetItem(index, name)
        idx = (<Py_ssize_t><object>found if found is not NULL else info.slot_of(name)) + 2
        while idx >= nslots:
            slots.append(_ABSENT)
            nslots += 1
        slots[idx] = value
        if idx > top:
            top = idx
    if top + 1 < nslots:
        del slots[top + 1:]
    return slots


def record_of(MemoBase obj, ClassInfo info):
    return _record_of(obj, info)


include "records.pxi"


cdef class _ClassPlan:
    """What creating an instance of a memo class needs to know (read once per class)."""
    cdef object prefix_name
    cdef bint singleton
    cdef bint no_default_tags
    cdef object init            # the user's initialiser (None until first needed)


cdef dict _plans = {}     # memo class -> _ClassPlan (classes stay registered for the process)


cdef _ClassPlan _plan_of(type cls):
    cdef PyObject* found = PyDict_GetItem(_plans, cls)
    if found is not NULL:
        return <_ClassPlan>found
    if getattr(cls, "__db0_owner__", None) is not cls:
        raise TypeError(f"class {cls.__qualname__} subclasses a memo class but is not decorated "
                        "with @db0.memo")
    cdef _ClassPlan plan = _ClassPlan.__new__(_ClassPlan)
    plan.prefix_name = cls.__db0_prefix__
    plan.singleton = cls.__db0_singleton__
    plan.no_default_tags = cls.__db0_no_default_tags__
    _plans[cls] = plan
    return plan


cdef class PrefixCore(ProxyMap):
    """State and per-object operations of an open prefix (see dbzero.prefix.Prefix).

    Memo proxies are in the inherited ProxyMap (borrowed pointers, removed by the proxy's
    own deallocation); collection and index proxies, which are Python classes, in
    ``objects`` as weak references."""

    cdef public dict objects            # oid -> weakref of a collection/index proxy
    cdef public dict dirty              # oid -> object changed since the last commit (pinned)
    cdef public dict pending_deletes    # oid -> object deleted since the last commit
    cdef public dict _ref_oid           # id(tracking weakref) -> oid
    cdef public dict _info_by_cls       # memo class -> ClassInfo
    cdef public dict _classes_by_id     # class id -> ClassInfo
    cdef public dict _class_tags        # memo class -> its default tag keys
    cdef public set zero_rc             # oids whose persistent reference count is 0
    cdef public set gc_candidates       # zero_rc oids whose last proxy may be gone
    cdef public unsigned long long _next_oid
    cdef public unsigned long long _oid_limit
    cdef public Py_ssize_t _sweep_at
    cdef public bint readonly, closed, changed, shared, in_place_refcounts
    cdef public object storage, codec, tags, atomic_log, workspace, lock, name, uuid
    cdef public object storage_key, snapshot
    cdef object _dead_callback
    cdef object _ext_hook

    # -- identity map ----------------------------------------------------------------

    cdef inline _register(self, unsigned long long oid, obj):
        if isinstance(obj, MemoBase):
            self.proxy_put(oid, obj)
            return
        cdef dict objects = self.objects
        objects[oid] = PyWeakref_NewRef(obj, None)
        if len(objects) > self._sweep_at:
            self._sweep()

    def register(self, obj):
        """Put ``obj`` in the identity map.  (Count-0 collections are ``track``-ed instead,
        with a weak reference that reports their death; memo proxies always report it.)"""
        self._register(obj._oid, obj)

    def track(self, obj):
        """Register ``obj`` so that its death is noticed (reference count 0 objects)."""
        self._track(obj)

    cdef _track(self, obj):
        if isinstance(obj, MemoBase):
            self.proxy_put((<MemoBase>obj)._oid, obj)
            return
        if self._dead_callback is None:
            self._dead_callback = self._on_proxy_dead
        oid = obj._oid
        ref = PyWeakref_NewRef(obj, self._dead_callback)
        self.objects[oid] = ref
        self._ref_oid[<size_t><PyObject*>ref] = oid
        if len(self.objects) > self._sweep_at:
            self._sweep()

    cdef bint _is_tracked(self, obj):
        if isinstance(obj, MemoBase):
            return self.proxy_get((<MemoBase>obj)._oid) == <PyObject*>obj
        ref = self.objects.get(obj._oid)
        return ref is not None and (<size_t><PyObject*>ref) in self._ref_oid

    def note_unreferenced(self, obj):
        """``obj`` may have lost its last reference (e.g. its last tag): watch it, and let
        the next commit's collector look at it."""
        oid = obj._oid
        if self.shared:
            # Shared writers collect only what they created or released themselves.
            if oid in self.zero_rc:
                self.gc_candidates.add(oid)
            return
        if getattr(type(obj), "__db0_singleton__", False):
            return
        self.zero_rc.add(oid)
        self.gc_candidates.add(oid)
        if not self._is_tracked(obj):
            self._track(obj)

    def is_tracked(self, obj):
        """True if the death of proxy ``obj`` will be noticed."""
        return self._is_tracked(obj)

    def _sweep(self):
        cdef dict objects = self.objects
        dead = [oid for oid, ref in objects.items() if PyWeakref_GetObject(ref) == <PyObject*>None]
        for oid in dead:
            del objects[oid]
        self._sweep_at = max(4096, 2 * len(objects))

    def _on_proxy_dead(self, ref):
        oid = self._ref_oid.pop(<size_t><PyObject*>ref, None)
        if oid is None:
            return
        if self.objects.get(oid) is ref:
            del self.objects[oid]
        if oid in self.zero_rc:
            self.gc_candidates.add(oid)

    cdef void _proxy_gone(self, uint64_t oid) noexcept:
        # A memo proxy died (MemoBase.__dealloc__): a count-0 object may now be garbage.
        # (At interpreter exit the sets may already be cleared.)
        zero_rc = self.zero_rc
        candidates = self.gc_candidates
        if zero_rc is not None and candidates is not None and oid in zero_rc:
            candidates.add(oid)

    cdef inline object _cached(self, uint64_t oid):
        cdef PyObject* p = self.proxy_get(oid)
        if p is not NULL:
            return <object>p
        if not self.objects:
            return None
        cdef PyObject* ref = PyDict_GetItem(self.objects, oid)
        if ref is NULL:
            return None
        p = PyWeakref_GetObject(<object>ref)
        if p == <PyObject*>None:
            return None
        return <object>p

    def cached(self, unsigned long long oid):
        """The live proxy of ``oid`` if there is one, else None."""
        return self._cached(oid)

    def forget(self, unsigned long long oid):
        """Drop ``oid`` from the identity map (its proxy, if any, stays as it is)."""
        self.proxy_remove(oid, NULL)
        self.objects.pop(oid, None)

    def cached_items(self):
        """``[(oid, proxy)]`` of every live proxy in the identity map."""
        cdef list out = self.proxy_items()
        for oid, ref in list(self.objects.items()):
            obj = ref()
            if obj is not None:
                out.append((oid, obj))
        return out

    def forget_all(self):
        """Empty the identity map (close)."""
        self.proxy_clear()
        self.objects.clear()
        self._ref_oid.clear()

    def identity_hits(self, list oids):
        """Proxies of ``oids`` found in the identity map: ``(objects with None for the
        misses, positions of the misses)``."""
        cdef Py_ssize_t i, n = len(oids)
        cdef list out = [None] * n
        cdef list missing = []
        for i in range(n):
            obj = self._cached(<uint64_t>oids[i])
            if obj is None:
                missing.append(i)
            else:
                out[i] = obj
        return out, missing

    def live_hits(self, list oids, long dead_flag):
        """One pass of :meth:`identity_hits` dropping dead proxies: ``(objects, missing)``
        where ``objects[i]`` is the live proxy of ``oids[i]``, None if it is dead or not in
        the identity map, and ``missing`` lists the positions not in the map.

        Objects met in key order are scattered in memory: the map is probed for all of
        them first, prefetching each proxy, so the cache misses overlap.  No Python object
        is allocated between reading a borrowed pointer and owning it."""
        cdef Py_ssize_t i, n = len(oids)
        cdef list out = [None] * n
        cdef list missing = []
        cdef PyObject** ptrs = <PyObject**>malloc(sizeof(PyObject*) * (n + 1))
        cdef PyObject* p
        if ptrs == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                p = self.proxy_get(<uint64_t>oids[i])
                ptrs[i] = p
                if p is not NULL:
                    __builtin_prefetch(p)
            for i in range(n):
                p = ptrs[i]
                if p is not NULL:
                    if not (<MemoBase>p)._flags & dead_flag:
                        out[i] = <object>p
                else:
                    missing.append(i)
        finally:
            free(ptrs)
        if missing and self.objects:
            # Collections and indexes (weakly referenced), once every memo proxy is owned.
            misses = missing
            missing = []
            for i in misses:
                obj = self._cached(<uint64_t>oids[i])
                if obj is None:
                    missing.append(i)
                elif not getattr(obj, "_db0_dead", False):
                    out[i] = obj
        return out, missing

    # -- reading objects -------------------------------------------------------------

    cdef inline int _ghost_flags(self):
        return F_GHOST | (F_READONLY if self.readonly else 0)

    cdef object _new_proxy(self, unsigned long long oid, int class_id, int flags,
                           bint register=True):
        cdef MemoBase obj
        if class_id < FIRST_USER_CLASS_ID:
            made = _collection_kinds[class_id]._db0_ghost(self, oid)
            self._register(oid, made)
            return made
        obj = _alloc_proxy(self._info_by_id(class_id).cls)
        PyObject_GC_UnTrack(<void*>obj)       # no fields yet (see memo.pyx, gc tracking)
        obj._px = self
        obj._oid = oid
        obj._flags = flags
        if register:
            self.proxy_put(oid, obj)
        return obj

    def get_object(self, unsigned long long oid, int class_id):
        """The proxy for ``oid`` (a ghost if it is not loaded yet)."""
        obj = self._cached(oid)
        if obj is not None:
            return obj
        return self._new_proxy(oid, class_id, self._ghost_flags())

    def invalidate(self, oids, bint include_dirty, doomed):
        """Another process changed ``oids``: cached memo objects become ghosts (reloaded on
        next access), cached collections drop their state.  Objects with uncommitted
        changes are left alone and added to ``doomed`` instead, unless ``include_dirty``.
        Returns the ids of the collections invalidated."""
        cdef list collections = []
        cdef MemoBase m
        cdef dict dirty = self.dirty
        cdef dict deletes = self.pending_deletes
        for oid in oids:
            obj = self._cached(oid)
            if obj is None:
                continue
            if not include_dirty and (oid in dirty or oid in deletes):
                if doomed is not None:
                    doomed.add(oid)
                continue
            if isinstance(obj, MemoBase):
                m = <MemoBase>obj
                if not m._flags & (F_DEAD | F_INIT):
                    # Flag first, then clear: a lock-free read in another thread either
                    # still sees the old fields or takes the ghost path and waits for the lock.
                    m._flags |= F_GHOST
                    _dict_of(m).clear()
            else:
                obj._db0_invalidate()
                collections.append(oid)
        return collections

    def make_ghosts(self, list oids, type cls):
        """Ghost proxies of memo class ``cls`` for ``oids`` (none of them cached), registered
        in the identity map; the list of proxies in the same order."""
        cdef list out = []
        cdef MemoBase obj
        cdef int flags = self._ghost_flags()
        cdef unsigned long long oid
        for key in oids:
            oid = key
            obj = _alloc_proxy(cls)
            PyObject_GC_UnTrack(<void*>obj)
            obj._px = self
            obj._oid = oid
            obj._flags = flags
            self.proxy_put(oid, obj)
            out.append(obj)
        return out

    cdef _Reader _record_reader(self, unsigned long long oid):
        """A reader over the stored record of ``oid``, or None if there is none."""
        storage = self.storage
        cdef Py_ssize_t offset = 0
        if isinstance(storage, _storage_type):
            raw = storage._rtxn.get(_pack_oid(oid), None, storage._objects_db)
            offset = 8      # the write state in front of every versioned value
        else:
            raw = storage.get("objects", _pack_oid(oid))
        if raw is None:
            return None
        if self._ext_hook is None:
            self._ext_hook = self.codec._ext_hook
        return _reader(raw, offset, self._ext_hook)

    def try_get_object(self, unsigned long long oid, class_id=None):
        """The object if it exists (loaded or stored), else None."""
        return self._try_get_object(oid)

    cdef object _try_get_object(self, unsigned long long oid):
        cdef MemoBase m
        obj = self._cached(oid)
        if obj is not None:
            if isinstance(obj, MemoBase):
                if (<MemoBase>obj)._flags & F_DEAD:
                    return None
            elif obj._flags & F_DEAD:       # collections and indexes expose _flags too
                return None
            return obj
        if self.pending_deletes and oid in self.pending_deletes:
            return None
        cdef _Reader r = self._record_reader(oid)
        if r is None:
            return None
        cdef Py_ssize_t n = _read_array_header(r)
        cdef int cid = _read_value(r)
        if cid < FIRST_USER_CLASS_ID:
            return self._new_proxy(oid, cid, 0)
        m = <MemoBase>self._new_proxy(oid, cid, self._ghost_flags(), False)
        self._fill_from(m, r, n, cid, True)
        return m

    def fetch(self, unsigned long long oid):
        """The object with id ``oid``; ReferenceError if it does not exist (any more)."""
        return self._fetch(oid)

    cdef object _fetch(self, unsigned long long oid):
        obj = self._try_get_object(oid)
        if obj is None:
            raise _errors.ReferenceError(f"object {self.uuid_of(oid)} not found in prefix {self.name} "
                                         "(deleted or never committed)")
        return obj

    cdef _fill_from(self, MemoBase obj, _Reader r, Py_ssize_t n, int cid, bint register=False):
        """Decode the rest of a record (after its class id) into the ghost ``obj``; with
        ``register``, also put ``obj`` in the identity map (before decoding the fields,
        which may refer back to it)."""
        cdef ClassInfo info = self._info_by_id(cid)
        cdef list fields = info.fields
        cdef dict d = _dict_of(obj)
        cdef Py_ssize_t i
        if n - 2 > len(fields):
            raise _errors.FormatError(f"prefix {self.name}: record of object {obj._oid} has "
                                      f"{n - 2} slots, class {info.name} has {len(fields)} fields")
        rc = _read_value(r)
        if obj._flags & F_RCDELTA:
            rc += obj._rc       # increments taken while it was a ghost (see incref)
        # (Read-only prefixes never collect.  Shared writers collect only what they
        # created or released themselves: a count-0 object loaded here may be held by
        # the process that created it.)
        cdef bint watch = (rc == 0 and not self.shared and not self.readonly
                           and info.singleton_oid != obj._oid)
        if watch:
            self.zero_rc.add(obj._oid)
        if register:
            self.proxy_put(obj._oid, obj)
        try:
            for i in range(2, n):
                value = _read_value(r)
                if value is not _ABSENT:
                    d[fields[i - 2]] = value
        except BaseException:
            d.clear()
            raise
        gc_track_by_content(obj, d)
        obj._rc = rc
        obj._wstate = r.wstate
        obj._flags &= ~(F_GHOST | F_RCDELTA)


    def load_into(self, MemoBase obj):
        """Decode the stored record of a ghost into its ``__dict__``."""
        cdef _Reader r
        with self.lock:
            if not obj._flags & F_GHOST:
                return
            if self.closed:
                obj._flags |= F_CLOSED
                raise _errors.ObjectClosedError("Object is no longer accessible")
            r = self._record_reader(obj._oid)
            if r is None:
                obj._flags = (obj._flags | F_DEAD) & ~F_GHOST
                raise _errors.ReferenceError("Memo instance expired")
            n = _read_array_header(r)
            self._fill_from(obj, r, n, _read_value(r))

    # -- writes ----------------------------------------------------------------------

    def mark_dirty(self, obj):
        if isinstance(obj, MemoBase):
            (<MemoBase>obj)._flags |= F_DIRTY
        self.dirty[obj._oid] = obj
        self.changed = True

    cdef inline _mark_rc_dirty(self, MemoBase obj):
        obj._flags |= F_RCDIRTY
        self.dirty[obj._oid] = obj
        self.changed = True

    def incref(self, obj):
        if isinstance(obj, MemoBase):
            if (<MemoBase>obj)._px is self:
                incref_memo(self, <MemoBase>obj)
        elif obj._px is self:
            obj._db0_incref()

    cdef int _incref_memo(self, MemoBase m) except -1:
        if m._flags & F_GHOST and not self.in_place_refcounts:
            self.load_into(m)
        if self.atomic_log is not None:
            self.atomic_log.record(m)
        if m._flags & F_GHOST:
            # Decoding the record only to count a reference made loading most of the
            # cost of adding a query result to an index: the increment waits in _rc,
            # and the commit patches it into the stored record (or a load adds it).
            if not m._flags & F_RCDELTA:
                m._rc = 0       # an evicted object may keep its last loaded count
                m._flags |= F_RCDELTA
        m._rc += 1
        self.zero_rc.discard(m._oid)
        self._mark_rc_dirty(m)
        return 0

    def decref(self, obj):
        cdef MemoBase m
        if obj._px is not self:
            return
        if isinstance(obj, MemoBase):
            m = <MemoBase>obj
            if m._flags & (F_GHOST | F_DEAD):
                if m._flags & F_DEAD:
                    return
                self.load_into(m)
            if self.atomic_log is not None:
                self.atomic_log.record(m)
            m._rc -= 1
            if m._rc <= 0 and not getattr(type(m), "__db0_singleton__", False):
                self.zero_rc.add(m._oid)
                self.gc_candidates.add(m._oid)
                self._track(m)
            self._mark_rc_dirty(m)
        else:
            obj._db0_decref()

    # -- classes and ids -------------------------------------------------------------

    cdef ClassInfo _info_by_id(self, int class_id):
        """The ClassInfo of a stored class id, its Python class resolved."""
        cdef PyObject* found = PyDict_GetItem(self._classes_by_id, class_id)
        if found is NULL or (<ClassInfo>found).cls is None:
            return self.class_by_id(class_id)
        return <ClassInfo>found

    cdef ClassInfo _info_of_class(self, type cls):
        """The ClassInfo of a memo class (registered on first use), cached per class."""
        cdef PyObject* found = PyDict_GetItem(self._info_by_cls, cls)
        if found is not NULL:
            return <ClassInfo>found
        info = self.class_info(cls)
        self._info_by_cls[cls] = info
        return info

    cdef unsigned long long _new_oid(self) except? 0:
        cdef unsigned long long oid = self._next_oid
        if oid >= self._oid_limit:
            oid = _reserve_oids(self)   # shared writers draw ids from reserved blocks
        self._next_oid = oid + 1
        return oid

    def new_oid(self):
        """A fresh object id (ids are never reused)."""
        return self._new_oid()

    # -- creating --------------------------------------------------------------------

    cdef object _create(self, type cls, _ClassPlan plan):
        if self.readonly or self.closed:
            self.check_writable()
        cdef ClassInfo info = self._info_of_class(cls)
        cdef unsigned long long oid = self._new_oid()
        cdef MemoBase obj = _alloc_proxy(cls)
        PyObject_GC_UnTrack(<void*>obj)       # no fields yet (see memo.pyx, gc tracking)
        obj._px = self
        obj._oid = oid
        obj._flags = F_NEW | F_INIT | F_DIRTY
        key = oid
        self.proxy_put(oid, obj)
        self.dirty[key] = obj
        if not plan.singleton:
            # Count 0 from birth: its death after the commit schedules it for collection.
            self.zero_rc.add(key)
        else:
            info.singleton_oid = key
            info.dirty = True
        self.changed = True
        if not plan.no_default_tags:
            found = PyDict_GetItem(self._class_tags, cls)
            if found is NULL:
                tags = self.workspace.class_tags(self, cls)
                self._class_tags[cls] = tags
            else:
                tags = <object>found
            if tags:
                store = <TagStore?>self.tags
                for tag in <list>tags:
                    store.add_new(oid, <bytes>tag)
        if self.atomic_log is not None:
            self.atomic_log.created(obj)
        return obj

    def create(self, type cls):
        """A new, empty memo object of ``cls`` (its __init__ has not run yet)."""
        return self._create(cls, _plan_of(cls))

    # -- commit ----------------------------------------------------------------------

    def pack_dirty(self, batch, bytes fresh_header=None):
        """Encode every dirty object into ``batch``: new records go to
        ``batch.fresh_objects`` (key, value) in id order, their values starting with
        ``fresh_header`` (recorded as ``batch.fresh_header``), changed ones to ``puts``, the
        pending increments of unloaded objects to ``rc_deltas`` (key, delta)."""
        cdef dict objects = batch.puts.setdefault("objects", {})
        cdef list fresh = batch.fresh_objects
        cdef list in_place = batch.in_place
        cdef list rewrites = batch.in_place_full
        cdef list deltas = batch.rc_deltas
        cdef bint rc_in_place = self.in_place_refcounts
        cdef MemoBase m
        cdef ClassInfo info
        cdef int flags
        pack = self.codec.pack
        batch.fresh_header = fresh_header
        for oid, obj in self.dirty.items():
            if isinstance(obj, MemoBase):
                m = <MemoBase>obj
                if m._flags & F_RCDELTA:
                    if rc_in_place:
                        deltas.append((_pack_oid(m._oid), m._rc))
                        continue
                    self.load_into(m)       # the change must have history: whole record
                info = self._info_of_class(type(m))
                key = _pack_oid(m._oid)
                flags = m._flags
                if flags & F_NEW:
                    fresh.append((key, _pack_record(m, info, pack, fresh_header)))
                    continue
                if not flags & F_DIRTY and rc_in_place:
                    # Only the reference count changed: rewritten keeping its write state.
                    if m._wstate:
                        rewrites.append((key, _pack_record(m, info, pack, _pack_oid(m._wstate))))
                    else:
                        in_place.append((key, _pack_record(m, info, pack)))
                else:
                    objects[key] = _pack_record(m, info, pack)
            else:
                obj._db0_flush(batch)

    def after_commit(self, unsigned long long state):
        """Clear dirty state after commit ``state``; start tracking written count-0 objects."""
        cdef MemoBase m
        cdef bint rc_in_place = self.in_place_refcounts
        cdef set zero_rc = self.zero_rc
        cdef int flags
        for oid, obj in self.dirty.items():
            if isinstance(obj, MemoBase):
                m = <MemoBase>obj
                flags = m._flags
                m._flags = flags & ~(F_DIRTY | F_NEW | F_RCDIRTY | F_RCDELTA)
                if flags & F_RCDELTA:
                    m._rc = 0       # the stored record has the increments now
                if flags & (F_NEW | F_DIRTY) or not rc_in_place:
                    m._wstate = state       # its record was written with this state
                if flags & F_NEW:
                    continue    # created with a count of 0 and tracked since (_create)
            else:
                obj._db0_committed()
            if oid in zero_rc and not self._is_tracked(obj):
                self._track(obj)
        self.dirty = {}
        self.pending_deletes = {}
        self.changed = False

    def take_unheld_candidates(self):
        """The collector's candidates for this commit, taken from ``gc_candidates`` and the
        dirty objects of count 0: the ids Python code no longer holds (a set)."""
        cdef set out = set()
        cdef set zero_rc = self.zero_rc
        cdef dict dirty = self.dirty
        candidates = self.gc_candidates
        self.gc_candidates = set()
        if zero_rc:
            for oid, obj in dirty.items():
                # References held here: the dirty pin and `obj`.
                if Py_REFCNT(obj) <= 2 and oid in zero_rc:
                    out.add(oid)
        obj = None
        out.update(self.unheld([oid for oid in candidates if oid not in dirty]))
        return out

    def unheld(self, candidates):
        """The ids among ``candidates`` (zero_rc) that Python code no longer holds."""
        cdef list out = []
        cdef dict dirty = self.dirty
        cdef set zero_rc = self.zero_rc
        cdef Py_ssize_t internal
        for oid in candidates:
            if oid not in zero_rc:
                continue
            obj = self._cached(oid)
            if obj is None:
                out.append(oid)
                continue
            # References held here: `obj` itself and the dirty pin.
            internal = 1 + (1 if oid in dirty else 0)
            if Py_REFCNT(obj) <= internal:
                out.append(oid)
            obj = None
        return out


cdef int incref_memo(object px, MemoBase m) except -1:
    """One more stored reference to ``m``, an object of prefix ``px`` (core.pxd)."""
    return (<PrefixCore?>px)._incref_memo(m)


cdef bint prefix_writable(object px) except -1:
    """``px`` is open and read-write (core.pxd)."""
    cdef PrefixCore p = <PrefixCore?>px
    return not (p.closed or p.readonly)


cdef bint prefix_logging(object px) except -1:
    """An atomic block is open on ``px`` (core.pxd)."""
    return (<PrefixCore?>px).atomic_log is not None


cdef bint is_pinned_dirty(object px, object obj, object oid) except -1:
    """``obj`` (id ``oid``) is in the dirty map of ``px`` and the prefix knows it has
    changes: marking it dirty again would change nothing (core.pxd)."""
    cdef PrefixCore p = <PrefixCore?>px
    cdef PyObject* found = PyDict_GetItem(p.dirty, oid)
    return found is not NULL and <object>found is obj and p.changed


# -- memo construction --------------------------------------------------------------------

# The workspace lock's bound methods (the hottest path takes it once per call).
cdef object _lock = None
cdef object _lock_acquire = None
cdef object _lock_release = None


cdef _cache_lock(lock):
    global _lock, _lock_acquire, _lock_release
    _lock_acquire = lock.acquire
    _lock_release = lock.release
    _lock = lock


cdef object _memo_new(type cls):
    cdef _ClassPlan plan = _plan_of(cls)
    ws = _ws_module._workspace
    if ws is None:
        raise _errors.NotInitializedError("dbzero not initialized")
    lock = ws.lock
    if lock is not _lock:
        _cache_lock(lock)
    _lock_acquire()
    try:
        if plan.prefix_name is None:
            name = ws.current_name
            if name is None:
                raise _errors.NoDefaultPrefixError("dbzero: no default prefix exists")
            px = ws.prefixes[name]
        else:
            px = ws.prefix_for_class(cls)
        if plan.singleton:
            existing = _singleton_of(px, cls)
            if existing is not None:
                return existing
        return (<PrefixCore>px)._create(cls, plan)
    finally:
        _lock_release()


def memo_new(cls, *args, **kwargs):
    """``__new__`` of every memo class: create the object in its prefix (or return the
    existing singleton).  The generated ``__init__`` then runs the user's initialiser."""
    return _memo_new(cls)


cdef object _next_init(type gen):
    """The ``__init__`` that follows ``gen`` in its MRO (the user's initialiser)."""
    for klass in gen.__mro__[1:]:
        init = klass.__dict__.get("__init__")
        if init is not None:
            return init
    return object.__init__


DEF _MAX_STACK_ARGS = 8


cdef int _run_user_init(MemoBase self, type gen, object args, object kwargs) except -1:
    """Run the user's initialiser of memo class ``gen`` on the new ``self``; if it raises,
    the object is discarded."""
    cdef _ClassPlan plan = _plan_of(gen)
    cdef int flags = self._flags
    cdef PyObject* stack[_MAX_STACK_ARGS + 1]
    cdef Py_ssize_t i, n
    if not (flags & F_INIT):
        return 0                  # an existing singleton: the arguments are ignored
    self._flags = flags | F_RUNNING_INIT
    try:
        init = plan.init
        if init is None:
            init = plan.init = _next_init(gen)
        if init is object.__init__:
            if args or kwargs:
                raise TypeError(f"{gen.__name__}() takes no arguments")
        elif kwargs:
            init(self, *args, **kwargs)
        elif PyTuple_GET_SIZE(args) >= _MAX_STACK_ARGS:
            init(self, *args)
        else:
            # `init(self, *args)` would build a new tuple per call; a vectorcall does not.
            stack[0] = <PyObject*>self
            n = PyTuple_GET_SIZE(args)
            for i in range(n):
                stack[i + 1] = PyTuple_GET_ITEM(args, i)
            PyObject_Vectorcall(init, stack, n + 1, NULL)
    except BaseException:
        if not self._flags & F_DEAD:
            self._px.discard_new(self)
        raise
    finally:
        self._flags &= ~(F_INIT | F_RUNNING_INIT)
    return 0


# Type slots of memo classes: ``Cls(...)`` calls these directly (no look-up of __new__ and
# __init__, no re-packing of the arguments per call).

cdef extern from "Python.h":
    ctypedef struct _TypeSlots "PyTypeObject":
        PyObject* (*tp_new)(PyObject*, PyObject*, PyObject*) except NULL
        int (*tp_init)(PyObject*, PyObject*, PyObject*) except -1
    void Py_INCREF(PyObject*)


cdef PyObject* _memo_tp_new(PyObject* cls, PyObject* args, PyObject* kwargs) except NULL:
    obj = _memo_new(<type>cls)
    Py_INCREF(<PyObject*>obj)
    return <PyObject*>obj


cdef int _memo_tp_init(PyObject* self, PyObject* args, PyObject* kwargs) except -1:
    # Only instances of exactly this class get here (a subclass that defines __init__
    # gets CPython's generic slot, which calls the generated __init__ below).
    return _run_user_init(<MemoBase>self, type(<object>self), <object>args,
                          <object>kwargs if kwargs is not NULL else None)


def install_slots(type cls):
    """Make ``cls(...)`` create and initialise through the C slots above (after the class's
    ``__new__`` and ``__init__`` attributes are set, which reset the slots)."""
    (<_TypeSlots*><PyObject*>cls).tp_new = _memo_tp_new
    (<_TypeSlots*><PyObject*>cls).tp_init = _memo_tp_init


def make_init(type gen):
    """The ``__init__`` of memo class ``gen``: runs the user's initialiser once, on a new
    object; if it raises, the object is discarded.  Existing singletons ignore it."""
    def __init__(MemoBase self, *args, **kwargs):
        cdef int flags = self._flags
        if flags & F_RUNNING_INIT or type(self) is not gen:
            # A memo base class's __init__ reached through super(), or a subclass's
            # initialiser: continue the chain.
            if not flags & F_INIT:
                return
            if flags & F_RUNNING_INIT:
                super(gen, self).__init__(*args, **kwargs)
                return
            self._flags = flags | F_RUNNING_INIT
            try:
                super(gen, self).__init__(*args, **kwargs)
            except BaseException:
                if not self._flags & F_DEAD:
                    self._px.discard_new(self)
                raise
            finally:
                self._flags &= ~(F_INIT | F_RUNNING_INIT)
            return
        _run_user_init(self, gen, args, kwargs)

    return __init__


def with_header(bytes header, list items, Py_ssize_t skip=0):
    """``[(key, header + value[skip:])]`` for ``[(key, value)]`` (versioned values carry
    their write state in front; ``skip`` drops a header they already have)."""
    cdef list out = []
    for key, value in items:
        out.append((key, header + value[skip:] if skip else header + value))
    return out


cdef object _view_get = None
cdef object _fetch_other = None


def configure_fetch(view_get, fetch_other):
    global _view_get, _fetch_other
    _view_get = view_get
    _fetch_other = fetch_other


cdef extern from "Python.h":
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_1BYTE_KIND


cdef signed char _B32_VALUE[256]
for _i in range(256):
    _B32_VALUE[_i] = -1
for _i in range(32):
    _B32_VALUE[ord("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[_i])] = _i


cdef bint _parse_uuid(str text, uint64_t* prefix_key, uint64_t* oid):
    """Split a uuid (codec.encode_uuid: 24 base32 characters of the 7-byte prefix uuid and
    the 8-byte object id) without allocating; False if it is malformed."""
    if PyUnicode_GET_LENGTH(text) != 24 or PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND:
        return False
    cdef const unsigned char* chars = <const unsigned char*>PyUnicode_DATA(text)
    cdef uint64_t hi = 0, lo = 0
    cdef int i
    cdef signed char v
    for i in range(24):
        v = _B32_VALUE[chars[i]]
        if v < 0:
            return False
        hi = (hi << 5) | (lo >> 59)
        lo = (lo << 5) | <uint64_t>v
    prefix_key[0] = hi
    oid[0] = lo
    return True


# The prefix of the last uuid fetched (most fetches in a row read one prefix).
cdef object _last_ws = None
cdef object _last_px = None
cdef uint64_t _last_prefix_key = 0


cdef object _prefix_of_uuid(ws, uint64_t prefix_key):
    global _last_ws, _last_px, _last_prefix_key
    px = _last_px
    if (px is not None and prefix_key == _last_prefix_key and ws is _last_ws
            and not (<PrefixCore>px).closed):
        return px
    prefix_uuid = (<object>prefix_key).to_bytes(7, "big")
    px = ws.by_uuid.get(prefix_uuid)
    if px is None or px.closed:
        px = ws.prefix_by_uuid(prefix_uuid)
    _last_ws, _last_px, _last_prefix_key = ws, px, prefix_key
    return px


def fetch(identifier, expected_type=None, prefix=None):
    """The object with this uuid, or the instance of a singleton class.

    ``fetch(identifier: str | type, expected_type: type | None = None,
    prefix: str | None = None) -> Any``.  Inside ``with db0.snapshot(...)`` reads come
    from that snapshot.  Raises InvalidUUIDError, ReferenceError (deleted),
    PrefixNotFoundError, ClassNotFoundError (singleton never created), db0.Error (bad
    argument or type mismatch).
    """
    view = _view_get()
    if view is not None:
        return view.fetch(identifier, expected_type, prefix)
    ws = _ws_module._workspace
    if ws is None:
        raise _errors.NotInitializedError("dbzero not initialized")
    cdef uint64_t prefix_key, oid
    if type(identifier) is str:
        if not _parse_uuid(identifier, &prefix_key, &oid):
            raise _errors.InvalidUUIDError(f"Invalid UUID: {identifier!r}")
        lock = ws.lock
        if lock is not _lock:
            _cache_lock(lock)
        _lock_acquire()
        try:
            obj = (<PrefixCore>_prefix_of_uuid(ws, prefix_key))._fetch(oid)
        finally:
            _lock_release()
    else:
        obj = _fetch_other(ws, identifier, prefix)
    if expected_type is not None and not isinstance(obj, expected_type):
        raise _errors.Error("Object type mismatch")
    return obj


def sort_journal(entries, set heads, set chunk_heads):
    """Sort a state's journal ``[[db id, key], ...]``: the 8-byte object-id heads of
    changed records and index entries go to ``heads``, those of collection chunks to
    ``chunk_heads``; True if a class record changed.  (Database ids: docs/format.md.)"""
    cdef bint classes = False
    cdef long db
    for entry in entries:
        db = entry[0]
        if db == 2 or db == 4:          # objects, index
            heads.add(entry[1][:8])
        elif db == 3:                   # chunks
            chunk_heads.add(entry[1][:8])
        elif db == 1:                   # classes
            classes = True
    return classes


def keep_write_state(list olds, list items, bytes header):
    """``[(key, write state of the old record + new record)]`` for the ``(key, record)``
    ``items`` whose old records ``olds`` (``[(key, old)]``) were found; ``header`` (this
    commit's state) for any that were not."""
    cdef dict new = dict(items)
    cdef list out = []
    for key, old in olds:
        out.append((key, (<bytes>old)[:8] + new.pop(key)))
    for key, value in new.items():
        out.append((key, header + value))
    return out
