# Included by query.pyx: the pending-write state of a range index as C fields, and
# ``Index.add`` / ``Index.remove`` on it.  dbzero/index.py subclasses IndexCore (the class
# docstring and the rest of the index are there); a bulk ``ix.add`` loop spends most of
# its time here, so the fields an add touches are read without attribute lookups.

from dbzero_ext.keys import encode_key as _encode_key

cdef object _ix_errors = None
cdef object _ix_ekey = None
cdef object _ix_entry_of = None
cdef bytes _FORWARD = b"f"


def configure_index(errors, ekey, entry_of):
    """Install helpers from dbzero/index.py (avoids an import cycle): the errors module,
    ``_ekey`` (encoded key, TypeError for unsupported types) and ``_entry_of``."""
    global _ix_errors, _ix_ekey, _ix_entry_of
    _ix_errors = errors
    _ix_ekey = ekey
    _ix_entry_of = entry_of


cdef inline object _fast_ekey(object key):
    cdef type t = type(key)
    if t is int or t is float or t is str or t is bytes:
        return _encode_key(key)
    return _ix_ekey(key)


cdef class IndexCore:
    """The fields of an Index that its writes touch (see dbzero/index.py for the rest)."""

    cdef public object _px
    cdef public object _oid
    cdef public bint _db0_dead, _db0_closed, _loaded, _new, _cleared
    cdef public bint _multi         # some object may have more than one key (conservative)
    cdef public set _adds           # pending forward entries (not committed)
    cdef public set _removes        # committed forward entries pending removal
    cdef public dict _pend_members  # member -> number of pending adds
    cdef public object _sorted, _sorted_removes, _by_member    # caches over the above
    cdef public Py_ssize_t _count, _version
    cdef object __weakref__

    def add(self, key, obj):
        """Store ``obj`` under ``key`` (a pair stored twice counts once).

        Keys: int, float, Decimal, bool, str, bytes, date, datetime, time, tuples of
        those, or None (null).  Raises ``db0.Error("Expected a memo object")`` for a
        non-memo value, TypeError for an unsupported key type.
        """
        if not isinstance(obj, MemoBase):
            raise _ix_errors.Error("Expected a memo object")
        ekey = _fast_ekey(key)
        px = self._px
        lock = px.lock
        lock.acquire()
        try:
            self._add(px, ekey, <MemoBase>obj)
        finally:
            lock.release()

    cdef int _add(self, object px, object ekey, MemoBase obj) except -1:
        if self._db0_dead or self._db0_closed or not self._loaded or not prefix_writable(px):
            self._check_write()
        if obj._flags & F_DEAD:
            raise _ix_errors.ReferenceError("Memo instance expired")
        cdef bint local = obj._px is px
        if local:
            member = obj._oid
            entry = pair_entry(ekey, obj._oid, None)
        else:
            member = (obj._px.uuid, obj._oid)
            entry = pair_entry(ekey, obj._oid, obj._px.uuid)
        if entry in self._adds:
            return 0
        cdef bint revive = entry in self._removes
        cdef bint committed = not (self._new or self._cleared)
        if not revive and committed and (<Probe>self._probe(_FORWARD)).has(entry):
            return 0
        if prefix_logging(px):
            px.log_undo(self)
        cdef dict pend = self._pend_members
        if not self._multi and (member in pend or (committed and self._member_has_key(member))):
            self._multi = True
        cdef PyObject* found
        if revive:
            self._removes.discard(entry)
            self._sorted_removes = None
        else:
            self._adds.add(entry)
            found = PyDict_GetItem(pend, member)
            pend[member] = 1 if found is NULL else <object>found + 1
            self._sorted = None
        self._by_member = None
        self._version += 1
        self._count += 1
        if not is_pinned_dirty(px, self, self._oid):
            px.mark_dirty(self)
        if local:
            incref_memo(px, obj)
        return 0

    def remove(self, key, obj):
        """Remove the pair (key, obj); an absent pair is silently ignored."""
        if not isinstance(obj, MemoBase):
            raise _ix_errors.Error("Expected a memo object")
        ekey = _ix_ekey(key)
        px = self._px
        lock = px.lock
        lock.acquire()
        try:
            self._remove(px, ekey, <MemoBase>obj)
        finally:
            lock.release()

    cdef int _remove(self, object px, object ekey, MemoBase obj) except -1:
        self._check_write()
        cdef bint local = obj._px is px
        member = obj._oid if local else (obj._px.uuid, obj._oid)
        entry = _ix_entry_of(member, ekey or b"")
        cdef dict pend = self._pend_members
        if entry in self._adds:
            px.log_undo(self)
            self._adds.discard(entry)
            left = pend[member] - 1
            if left:
                pend[member] = left
            else:
                del pend[member]
        elif entry not in self._removes and self._committed_has(entry):
            px.log_undo(self)
            self._removes.add(entry)
        else:
            return 0
        self._count -= 1
        self._changed()
        px.mark_dirty(self)
        if local:
            px.decref(obj)
        return 0
