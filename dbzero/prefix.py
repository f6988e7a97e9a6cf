"""A prefix: one open LMDB file plus the in-memory state of its objects.

Life cycle of a persistent object (memo object or collection) inside a prefix::

    new ──commit──> clean ──write──> dirty ──commit──> clean
     │                 │                                  │
     └──── refcount 0 and no Python reference ────────────┴──> deleted at next commit

* Identity map: one proxy per object id (weak values), so ``fetch(uuid) is obj``.
* Dirty map: objects changed since the last commit, pinned (strong) until written.
* Reference counts: each object record carries the number of *persistent* strong
  references to it (memo attributes, collection items and index entries, all within this
  prefix).  Tags (other than class tags) also keep an object alive but are not counted in
  the record: the collector asks the tag store.  An object whose count is 0, that carries
  no tag and that Python no longer holds is deleted at the next commit; singletons are
  roots and never collected.
"""

from __future__ import annotations

import gc
import struct
import weakref
from typing import Any, Dict, Iterable, List, Optional, Set

import msgpack

from dbzero_ext import memo as _memo
from dbzero_ext.codec import ABSENT, EXT_CODES, Codec
from dbzero_ext.core import ClassInfo, PrefixCore, RCDELTA, RCDIRTY
from dbzero_ext.tagstore import TagStore  # noqa: F401 - the tag store of every prefix

from . import errors
from .storage import Storage, WriteBatch

_OID = struct.Struct(">Q")
_REF = struct.Struct(">QI")
_CLS = struct.Struct(">I")
pack_oid = _OID.pack

X_REF = EXT_CODES["REF"]
X_WEAKREF = EXT_CODES["WEAKREF"]

F_GHOST, F_DIRTY, F_NEW, F_DEAD = _memo.GHOST, _memo.DIRTY, _memo.NEW, _memo.DEAD
F_READONLY, F_INIT, F_CLOSED, F_TRACKED = _memo.READONLY, _memo.INIT, _memo.CLOSED, _memo.TRACKED
# Only the reference count changed: the record is rewritten in place at commit, keeping its
# write state and writing no history (fields are what time travel and change queries see).
F_RCDIRTY = RCDIRTY
# A ghost (not loaded) whose _rc holds increments its stored record does not have yet: the
# commit adds them to the record in place, a load adds them to the count it reads.
F_RCDELTA = RCDELTA

MemoBase = _memo.MemoBase
raw_dict = _memo.raw_dict

# Class ids below this are reserved for collection kinds (List=1, Dict=2, ...).
FIRST_USER_CLASS_ID = 16
COLLECTION_KINDS: Dict[int, type] = {}


def register_collection_kind(kind: int, cls: type) -> None:
    COLLECTION_KINDS[kind] = cls


class WeakRef:
    """A reference that does not keep its target alive (cross-prefix refs, weak_proxy)."""

    __slots__ = ("prefix_uuid", "oid", "class_id", "_target", "_workspace", "__weakref__")

    def __init__(self, workspace, prefix_uuid: bytes, oid: int, class_id: int, target=None) -> None:
        self._workspace = workspace
        self.prefix_uuid = prefix_uuid
        self.oid = oid
        self.class_id = class_id
        self._target = weakref.ref(target) if target is not None else None

    def resolve(self):
        """The target object, or None if it no longer exists."""
        target = self._target() if self._target is not None else None
        if target is not None and not (target._flags & F_DEAD):
            return target
        px = self._workspace.prefix_by_uuid(self.prefix_uuid, auto_open=True)
        obj = px.try_get_object(self.oid, self.class_id)
        if obj is not None:
            self._target = weakref.ref(obj)
        return obj

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        target = self.resolve()
        if target is None:
            raise errors.ReferenceError("Memo instance expired")
        return getattr(target, name)

    def __repr__(self) -> str:
        return f"<db0.WeakRef oid={self.oid}>"


class Prefix(PrefixCore):
    """An open prefix: storage, identity map, dirty objects, classes and tags.

    The per-object hot paths (identity map, create, fetch, reference counts, packing
    records) are inherited from :class:`dbzero_ext.core.PrefixCore`.
    """

    def __init__(self, workspace, name: str, storage: Storage, *, readonly: bool,
                 autocommit: bool) -> None:
        self.workspace = workspace
        self.name = name
        self.storage = storage
        self.storage_key = storage.path
        self.uuid: bytes = storage.prefix_uuid
        self.readonly = readonly
        self.autocommit = autocommit
        self.closed = False
        self.objects: Dict[int, weakref.ref] = {}
        self._ref_oid: Dict[int, int] = {}
        self._sweep_at = 4096
        self.dirty: Dict[int, Any] = {}
        self.zero_rc: Set[int] = set()
        self.gc_candidates: Set[int] = set()
        self.pending_deletes: Dict[int, Any] = {}
        self.tags = TagStore(self)
        self.index_hooks: List[Any] = []      # flushers registered by dbzero.index
        self.changed = False
        self.lock = workspace.lock
        self._class_tags: Dict[type, List[bytes]] = {}
        self._info_by_cls: Dict[type, ClassInfo] = {}
        self._classes_by_id: Dict[int, ClassInfo] = {}
        self._classes_by_name: Dict[str, ClassInfo] = {}
        self._next_class_id = FIRST_USER_CLASS_ID
        self._load_classes()
        raw = storage.meta_get(b"next_oid")
        self._next_oid = _OID.unpack(raw)[0] if raw else 1
        # Shared writers (dbzero/sharing.py) draw ids from reserved blocks below this limit.
        self.shared = getattr(storage, "shared", False)
        self._oid_limit = 1 << 63
        self._share = None                      # sharing.ShareState for readers / shared writers
        self.codec = Codec(self._ref_of, self._resolve, workspace.enum_of, workspace.enum_value)
        self.atomic_log: Optional[Any] = None   # set by dbzero.atomic while a block is open
        self.snapshot: Optional[Any] = None     # the Snapshot this prefix is a view of
        # Several writers need every change versioned (conflict checks read write states).
        self.in_place_refcounts = not self.shared

    # -- classes -------------------------------------------------------------------

    def _load_classes(self) -> None:
        for key, value in self.storage.scan("classes", b""):
            rec = msgpack.unpackb(value, raw=False)
            class_id = _CLS.unpack(key)[0]
            info = ClassInfo(class_id, rec["name"], list(rec["fields"]), None,
                             rec.get("singleton", 0), list(rec.get("bases", [])))
            self._classes_by_id[class_id] = info
            self._classes_by_name[info.name] = info
            self._next_class_id = max(self._next_class_id, class_id + 1)

    def class_info(self, cls: type, create: bool = True) -> Optional[ClassInfo]:
        """The ClassInfo of a memo class in this prefix (registered on first use)."""
        name = cls.__db0_type_id__
        info = self._classes_by_name.get(name)
        if info is None:
            if not create:
                return None
            self.check_writable()
            base_ids = [self.class_info(base).class_id for base in cls.__db0_memo_bases__]
            info = ClassInfo(self._next_class_id, name, [], cls, 0, base_ids)
            info.dirty = True
            self._next_class_id += 1
            self._classes_by_id[info.class_id] = info
            self._classes_by_name[name] = info
            self.note_change()
        if info.cls is None:
            info.cls = cls
        return info

    def class_by_id(self, class_id: int) -> ClassInfo:
        info = self._classes_by_id.get(class_id)
        if info is None:
            raise errors.FormatError(f"prefix {self.name}: unknown class id {class_id}")
        if info.cls is None:
            info.cls = self.workspace.resolve_class(info.name)
        return info

    def class_infos(self) -> List[ClassInfo]:
        return list(self._classes_by_id.values())

    def class_info_by_name(self, name: str) -> Optional[ClassInfo]:
        return self._classes_by_name.get(name)

    # -- identity ------------------------------------------------------------------

    def uuid_of(self, oid: int) -> str:
        return self.workspace.format_uuid(self.uuid, oid)

    # -- references inside records ---------------------------------------------------

    def _ref_of(self, value: Any):
        if isinstance(value, WeakRef):
            payload = _REF.pack(value.oid, value.class_id)
            return X_WEAKREF, payload + value.prefix_uuid
        if isinstance(value, MemoBase) or getattr(value, "_db0_kind", None) is not None:
            px = value._px
            payload = _REF.pack(value._oid, self._class_id_of(value))
            if px is not self:
                return X_WEAKREF, payload + px.uuid
            return X_REF, payload
        return None

    def _class_id_of(self, obj: Any) -> int:
        kind = getattr(obj, "_db0_kind", None)
        if kind is not None:
            return kind
        return obj._px.class_info(type(obj)).class_id

    def _resolve(self, code: int, payload: bytes) -> Any:
        oid, class_id = _REF.unpack_from(payload)
        if code == X_REF:
            return self.get_object(oid, class_id)
        prefix_uuid = payload[12:] or self.uuid
        return WeakRef(self.workspace, prefix_uuid, oid, class_id)

    # -- values ----------------------------------------------------------------------

    def adopt(self, value: Any) -> Any:
        """Validate a value for storage in this prefix and take the references it implies.

        Plain list/dict/set/tuple become new persistent collections (deep copy); memo
        objects and collections of this prefix get their reference count increased;
        references to other prefixes become weak.  Raises TypeError (a dbzero
        UnsupportedTypeError) for values that cannot be stored, before changing anything.
        """
        t = type(value)
        if t in _SCALARS:
            return value
        if t is int:
            return value
        if isinstance(value, MemoBase) or getattr(value, "_db0_kind", None) is not None:
            if value._flags & F_DEAD if isinstance(value, MemoBase) else False:
                raise errors.ReferenceError("Memo instance expired")
            if value._px is not self:
                return WeakRef(self.workspace, value._px.uuid, value._oid,
                               value._px._class_id_of(value), value)
            self.incref(value)
            return value
        if t in _CONVERTED:
            return _CONVERTED[t](self, value)
        if isinstance(value, WeakRef):
            return value
        self.workspace.check_storable(value)
        return value

    def release(self, value: Any) -> None:
        """Drop the reference that a stored value held (inverse of adopt)."""
        if isinstance(value, MemoBase) or getattr(value, "_db0_kind", None) is not None:
            if value._px is self:
                self.decref(value)

    def note_zero(self, oid: int) -> None:
        """A collection's count reached zero: collect it once Python lets go."""
        self.zero_rc.add(oid)
        self.gc_candidates.add(oid)

    def _is_singleton(self, obj: Any) -> bool:
        return getattr(type(obj), "__db0_singleton__", False)

    # -- writes ------------------------------------------------------------------------

    def check_writable(self) -> None:
        if self.readonly:
            raise errors.ReadOnlyError(f"Cannot modify read-only prefix: {self.name}")
        if self.closed:
            raise errors.ObjectClosedError(f"prefix {self.name} is closed")

    def note_change(self) -> None:
        self.changed = True

    def log_undo(self, obj: Any) -> None:
        if self.atomic_log is not None:
            self.atomic_log.record(obj)

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        with self.lock:
            self._check_obj_writable(obj)
            if obj._flags & F_GHOST:
                self.load_into(obj)
            try:
                new = self.adopt(value)
            except errors.Error as exc:
                if isinstance(exc, TypeError):
                    raise errors.UnsupportedAttributeError(
                        f"Unsupported attribute type: {type(value).__name__} "
                        f"(attribute '{name}' of {type(obj).__name__})") from None
                raise
            except TypeError as exc:
                raise errors.UnsupportedAttributeError(
                    f"Unsupported attribute type: {exc} (attribute '{name}' of {type(obj).__name__})") from None
            self.log_undo(obj)
            d = raw_dict(obj)
            old = d.get(name, ABSENT)
            d[name] = new
            if old is not ABSENT:
                self.release(old)
            self.mark_dirty(obj)

    def del_attr(self, obj: Any, name: str) -> None:
        with self.lock:
            self._check_obj_writable(obj)
            if obj._flags & F_GHOST:
                self.load_into(obj)
            d = raw_dict(obj)
            if name not in d:
                raise AttributeError(f"Attribute not found: {name}")
            self.log_undo(obj)
            old = d.pop(name)
            self.release(old)
            self.mark_dirty(obj)

    def _check_obj_writable(self, obj: Any) -> None:
        flags = obj._flags
        if flags & F_DEAD:
            raise errors.ReferenceError("Memo instance expired")
        if flags & F_CLOSED or self.closed:
            raise errors.ObjectClosedError("Object is no longer accessible")
        if flags & F_READONLY or self.readonly:
            raise errors.ReadOnlyError(f"Cannot modify read-only prefix: {self.name}")

    # -- creating and deleting memo objects -------------------------------------------

    def rehome(self, obj: Any, target: "Prefix") -> None:
        """Move an object under construction (no fields yet) to another prefix."""
        target.check_writable()
        oid = obj._oid
        for tag in self.tags.tags_of(oid):
            self.tags.set(oid, tag, False)
        self.dirty.pop(oid, None)
        self.zero_rc.discard(oid)
        self.forget(oid)
        info = self._classes_by_name.get(type(obj).__db0_type_id__)
        if info is not None and info.singleton_oid == oid:
            info.singleton_oid = 0
        obj._px = target
        obj._oid = target.new_oid()
        cls = type(obj)
        if cls.__db0_singleton__:
            target.register(obj)
        else:
            target.track(obj)       # new objects with a count of 0 are tracked from birth
        target.mark_dirty(obj)
        if cls.__db0_singleton__:
            tinfo = target.class_info(cls)
            tinfo.singleton_oid = obj._oid
            tinfo.dirty = True
        else:
            target.zero_rc.add(obj._oid)
        if not cls.__db0_no_default_tags__:
            for tag in target.workspace.class_tags(target, cls):
                target.tags.add_to_new(obj._oid, tag)

    def discard_new(self, obj: Any) -> None:
        """Undo the creation of an object whose __init__ failed."""
        with self.lock:
            self.delete_object(obj, force=True)

    def delete_object(self, obj: Any, force: bool = False) -> None:
        """Delete ``obj`` now: release what it references, drop its tags, expire the proxy."""
        if obj._flags & F_DEAD:
            return
        if obj._flags & F_GHOST:
            self.load_into(obj)
        if not force and (obj._rc > 0 or self.tags.is_referenced(obj._oid)):
            raise errors.ReferencedObjectError("Cannot delete a memo object with references")
        oid = obj._oid
        self.log_undo(obj)
        if self.atomic_log is not None:
            self.atomic_log.deleted(obj)
        tags = set(self.tags.tags_of(oid))
        if isinstance(obj, MemoBase) and not type(obj).__db0_no_default_tags__:
            # Default class tags are not listed in obj_tags: take them from the class record.
            info = self._classes_by_name.get(type(obj).__db0_type_id__)
            if info is not None:
                for class_id in (info.class_id, *info.base_ids):
                    tags.add(b"C" + class_id.to_bytes(4, "big"))
        for tag in tags:
            self.tags.set(oid, tag, False)
        if isinstance(obj, MemoBase):
            for value in list(raw_dict(obj).values()):
                self.release(value)
            info = self._classes_by_name.get(type(obj).__db0_type_id__)
            if info is not None and info.singleton_oid == oid:
                info.singleton_oid = 0
                info.dirty = True
            obj._flags = (obj._flags | F_DEAD) & ~(F_DIRTY | F_INIT)
        else:
            obj._db0_release_all()
            obj._db0_dead = True
        self.dirty.pop(oid, None)
        self.zero_rc.discard(oid)
        if not (getattr(obj, "_flags", 0) & F_NEW) or not isinstance(obj, MemoBase):
            self.pending_deletes[oid] = obj
        self.changed = True

    def collect_garbage(self, everything: bool = False) -> None:
        """Delete unreachable objects (count 0, not held by Python unless ``everything``)."""
        if everything:
            candidates = set(self.zero_rc)
            self.gc_candidates = set()
        else:
            candidates = self.take_unheld_candidates()
        while candidates:
            oid = candidates.pop()
            if oid not in self.zero_rc:
                continue
            obj = self.cached(oid)
            if obj is None:
                obj = self.try_get_object(oid)
                if obj is None:
                    self.zero_rc.discard(oid)
                    continue
            if getattr(obj, "_rc", 0) > 0 or self._is_singleton(obj):
                self.zero_rc.discard(oid)
                continue
            if isinstance(obj, MemoBase) and self.tags.is_referenced(oid):
                # Tags keep it alive; removing its last tag makes it a candidate again
                # (tags.py), so it need not be watched until then.
                self.zero_rc.discard(oid)
                continue
            self.delete_object(obj, force=True)
            del obj
            if self.gc_candidates:
                more = self.gc_candidates
                candidates |= set(more if everything else self.unheld(more))
                self.gc_candidates = set()

    # -- commit ------------------------------------------------------------------------

    def has_changes(self) -> bool:
        return bool(self.changed or self.dirty or self.pending_deletes or self.tags
                    or self.gc_candidates)

    def commit(self) -> bool:
        """Write every pending change in one LMDB transaction; True if a state was made."""
        if self.readonly or self.closed:
            return False
        self.collect_garbage()
        if not (self.dirty or self.pending_deletes or self.tags or self.changed):
            return False
        # The batch holds short-lived containers per changed object; letting Python's cyclic
        # collector walk every live object again while they pile up costs more than the
        # commit itself (nothing here creates cycles).
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._write_commit()
        finally:
            if paused:
                gc.enable()

    def _write_commit(self) -> bool:
        batch = WriteBatch()
        self.pack_dirty(batch, self.storage.next_header())
        for oid, obj in self.pending_deletes.items():
            batch.delete("objects", pack_oid(oid))
            if not isinstance(obj, MemoBase):
                obj._db0_drop(batch)
        for hook in self.index_hooks:
            hook(batch)
        self.tags.flush(batch)
        for info in self._classes_by_id.values():
            if info.dirty:
                batch.put("classes", _CLS.pack(info.class_id), msgpack.packb(info.record()))
        batch.meta[b"next_oid"] = pack_oid(self._next_oid)
        state = self.storage.commit(batch)
        for info in self._classes_by_id.values():
            info.dirty = False
        self.after_commit(state)
        return True

    @property
    def state_num(self) -> int:
        return self.storage.state

    def refresh(self) -> bool:
        """Readers / shared writers: move to the newest committed state, reloading exactly
        the cached objects that changed (dbzero/sharing.py)."""
        if self._share is not None:
            return _sharing().sync_prefix(self)
        old = self.storage.state
        if not self.storage.refresh():
            return False
        changed_oids = set()
        for state in range(old + 1, self.storage.state + 1):
            for db_id, key in self.storage.journal(state):
                if db_id == 2 and len(key) == 8:
                    changed_oids.add(_OID.unpack(key)[0])
                elif db_id == 3:
                    changed_oids.add(_OID.unpack(key[:8])[0])
        self.invalidate(changed_oids, True, None)
        self._load_classes()
        return True

    def close(self) -> None:
        """Commit (read-write), expire every proxy and close the file."""
        if self.closed:
            return
        try:
            if not self.readonly:
                self.collect_garbage(everything=True)
                self.commit()
        finally:
            self.closed = True
            for _oid, obj in self.cached_items():
                if isinstance(obj, MemoBase):
                    obj._flags |= F_CLOSED
                else:
                    obj._db0_closed = True
            self.forget_all()
            self.dirty.clear()
            self.storage.close()


def _sharing():
    from . import sharing
    return sharing


_SCALARS = frozenset({str, float, bool, type(None), bytes})
_CONVERTED: Dict[type, Any] = {}   # list/dict/set/tuple -> converter, filled by dbzero.collections


def register_converter(py_type: type, converter) -> None:
    _CONVERTED[py_type] = converter
