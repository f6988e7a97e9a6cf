"""``db0.atomic()``: all-or-nothing groups of changes.

On entry each read-write prefix gets an undo log.  The first time a block touches an
object, the object's in-memory state is saved (memo objects: their field dict, reference
count and flags; collections: an undo token of their pending state).  Objects created in
the block are remembered.  On an exception everything is put back and the created objects
expire; on success the changes simply stay pending and the next commit writes them.

The block holds the workspace lock for its whole duration, so other threads (and the
autocommit thread) never see or commit half of it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from dbzero_ext import memo as _memo
from dbzero_ext.memo import track_by_content

from . import errors, workspace
from .prefix import F_DEAD, F_DIRTY, F_GHOST, MemoBase, Prefix, raw_dict



class _PrefixUndo:
    """Everything needed to put one prefix back to its state at the start of a block."""

    def __init__(self, px: Prefix) -> None:
        self.px = px
        self.saved: Dict[int, tuple] = {}
        self.created: List[Any] = []
        self.dirty = dict(px.dirty)
        self.zero_rc = set(px.zero_rc)
        self.gc_candidates = set(px.gc_candidates)
        self.pending_deletes = dict(px.pending_deletes)
        self.tags = px.tags.snapshot()
        self.changed = px.changed
        self.singletons = {info.class_id: info.singleton_oid for info in px.class_infos()}
        self.touched = set(getattr(px, "_db0_touched", None) or ())    # dbzero.changes.touch

    def save(self, obj: Any) -> None:
        oid = obj._oid
        if oid in self.saved or any(o is obj for o in self.created):
            return
        if isinstance(obj, MemoBase):
            self.saved[oid] = (obj, dict(raw_dict(obj)), obj._rc, obj._flags)
        else:
            self.saved[oid] = (obj, obj._db0_undo_token())

    def rollback(self) -> None:
        px = self.px
        for obj in self.created:
            if isinstance(obj, MemoBase):
                raw_dict(obj).clear()
                obj._flags = (obj._flags | F_DEAD) & ~F_GHOST
            else:
                obj._db0_dead = True
            px.forget(obj._oid)
        for entry in self.saved.values():
            obj = entry[0]
            if isinstance(obj, MemoBase):
                _obj, fields, rc, flags = entry
                d = raw_dict(obj)
                d.clear()
                d.update(fields)
                obj._rc = rc
                obj._flags = flags
                track_by_content(obj)
                if not flags & F_DEAD:
                    px.register(obj)
            else:
                obj._db0_restore(entry[1])
                obj._db0_dead = False
        px.dirty = self.dirty
        px.zero_rc = self.zero_rc
        px.gc_candidates = self.gc_candidates
        px.pending_deletes = self.pending_deletes
        px.tags.restore(self.tags)
        px.changed = self.changed
        touched = getattr(px, "_db0_touched", None)
        if touched is not None:
            touched.intersection_update(self.touched)
        for info in px.class_infos():
            if info.class_id in self.singletons:
                info.singleton_oid = self.singletons[info.class_id]


class _UndoLog:
    """The undo logs of all nested blocks of one prefix; installed as ``px.atomic_log``."""

    def __init__(self) -> None:
        self.levels: List[_PrefixUndo] = []

    def record(self, obj: Any) -> None:
        for level in self.levels:
            level.save(obj)

    def created(self, obj: Any) -> None:
        if self.levels:
            self.levels[-1].created.append(obj)

    def deleted(self, obj: Any) -> None:
        self.record(obj)


class AtomicManager:
    """Context manager returned by ``db0.atomic()``; ``cancel()`` rolls back early."""

    def __init__(self) -> None:
        self._ws = None
        self._levels: Dict[Prefix, _PrefixUndo] = {}
        self._active = False

    def __enter__(self) -> "AtomicManager":
        self.begin()
        return self

    def begin(self) -> None:
        ws = workspace.current()
        ws.lock.acquire()
        self._ws = ws
        ws.atomic_depth += 1
        _memo.set_tracking(True)
        for px in ws.prefixes.values():
            if px.readonly or px.closed:
                continue
            if px.atomic_log is None:
                px.atomic_log = _UndoLog()
            level = _PrefixUndo(px)
            px.atomic_log.levels.append(level)
            self._levels[px] = level
        self._active = True

    def _finish(self, rollback: bool) -> None:
        if not self._active:
            return
        self._active = False
        ws = self._ws
        try:
            for px, level in self._levels.items():
                log = px.atomic_log
                if rollback:
                    level.rollback()
                if log is not None and level in log.levels:
                    log.levels.remove(level)
                    if not log.levels:
                        px.atomic_log = None
                if not rollback and log is not None and log.levels:
                    # Objects created here belong to the enclosing block from now on.
                    log.levels[-1].created.extend(level.created)
        finally:
            ws.atomic_depth -= 1
            if ws.atomic_depth == 0:
                _memo.set_tracking(False)
            ws.lock.release()

    def cancel(self) -> None:
        """Undo the block's changes so far; the rest of the block runs non-atomically."""
        self._finish(rollback=True)

    def close(self) -> None:
        """End the block keeping its changes (what a normal exit does)."""
        self._finish(rollback=False)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._finish(rollback=exc_type is not None)
        return False


def atomic() -> AtomicManager:
    """Group changes all-or-nothing: ``with db0.atomic(): ...``.

    On an exception every memo attribute, collection, tag and index change made inside
    is undone, objects created inside expire, and the exception propagates. On normal
    exit the changes join the pending transaction (the block does not commit).
    ``db0.commit()`` inside raises TransactionError; autocommit waits for the block.
    """
    return AtomicManager()


def atomic_assign(*objs: Any, **attrs: Any) -> None:
    """Set the same attributes on every object, all-or-nothing."""
    with atomic():
        for obj in objs:
            for name, value in attrs.items():
                setattr(obj, name, value)
