"""Many processes on one prefix: reader refresh, shared writers, transactions, fork.

Readers (``open(name, "r")``) and shared writers (``open(name, "rw", shared=True)``) keep
their in-memory objects in step with the newest committed state of the prefix:

* **Change detection** is a probe of LMDB's last transaction id: a read transaction is
  begun (py-lmdb renews a spare one), its id compared with the id of the snapshot we read
  through, and aborted.  Nothing else happens when nothing was committed, so
  ``db0.refresh()`` can be polled at well over 500k calls per second.
* **Catching up** swaps the read transaction for a new one and, for every state in
  between, reads the journal (the keys each commit overwrote): cached objects listed
  there are turned back into ghosts (reloaded exactly on next access), collections and
  indexes forget their loaded data, and the class table is reloaded if it changed.
  Objects not listed stay loaded.  The old read transaction is dropped, not aborted, so a
  scan that is still iterating over it finishes on its own consistent snapshot.
* A background thread (one per process, started on demand) does this for every reader
  and idle shared writer every ``refresh_interval`` ms (default 10), and clears stale
  reader slots of dead processes every few seconds.

Shared writers (several processes writing one prefix) never share the in-memory id
counter: each process reserves blocks of ids with ``Storage.allocate_ids``.  A commit

1. writes its batch with ``Storage.commit(batch, base_state=<the state this process last
   caught up with>)``: every object it writes was read at or before that state, so if
   any key of the batch was written after it by someone else, nothing is written and
   ConflictError is raised.  (A ``refresh()`` while changes are pending moves that base
   forward; dirty objects another writer changed meanwhile are then remembered as
   *doomed* and make the next commit conflict.)
2. after success, catches up with the other writers' commits around its own (journal);
3. on a conflict rolls back every pending change of this process in that prefix (dirty
   objects become ghosts of the committed state, objects created since the last commit
   expire, pending tags / collection / index changes are dropped), moves to the newest
   state and re-raises.  No update is ever lost silently.

``transaction(fn)`` wraps that into a retry loop.  Autocommit is off for shared writers:
a conflict must surface in user code, never in a background thread.

Fork: after ``os.fork()`` the child forgets the inherited LMDB environments (storage.py)
and this module makes every prefix reopen lazily on first use: read-only prefixes stay
read-only, shared writers reopen shared, and prefixes the parent holds with the exclusive
writer lock reopen **read-only** (the parent remains the only writer).  Pending changes of
the parent are not visible in the child; cached objects are reloaded from the committed
state.  See docs/processes.md.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import operator
import os
import random
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

import lmdb
import msgpack

from dbzero_ext.core import sort_journal

from . import errors, workspace
from .prefix import (F_DEAD, F_DIRTY, F_GHOST, F_INIT, F_NEW, F_READONLY, FIRST_USER_CLASS_ID,
                     MemoBase, Prefix, pack_oid, raw_dict)
from . import prefix as _prefix_mod
from . import storage as _storage_mod
from .storage import Storage

# Dirty bits of a memo object: fields changed, or (prefix.py) only its reference count,
# possibly as increments of a ghost that were never applied to its record.
F_CHANGED = (F_DIRTY | getattr(_prefix_mod, "F_RCDIRTY", 0)
             | getattr(_prefix_mod, "F_RCDELTA", 0))
DEFAULT_REFRESH_INTERVAL_MS = 10
READER_CHECK_EVERY_S = 5.0
DEFAULT_RETRIES = 100
_ID_BLOCK_MIN = 256
_ID_BLOCK_MAX = 65536

_OID = struct.Struct(">Q")
_unpack_oid = _OID.unpack_from
_first = operator.itemgetter(0)

# Journal db ids (storage.VERSIONED_DBS): classes 1, objects 2, chunks 3, index 4
# (core.sort_journal reads them).
assert _storage_mod.VERSIONED_DBS == {"classes": 1, "objects": 2, "chunks": 3, "index": 4}
# Where the journal of state S lives (docs/format.md): history[JOURNAL + S], msgpack.
_JOURNAL_KEY = getattr(_storage_mod, "JOURNAL", None)


class ShareState:
    """Per-prefix bookkeeping of this module (``px._share``)."""

    __slots__ = ("synced", "txnid", "doomed", "doomed_classes", "refresh_interval",
                 "last_auto", "id_block", "class_entries")

    def __init__(self, refresh_interval: float) -> None:
        self.synced = 0                 # state our cached objects agree with
        self.txnid = -1                 # LMDB txn id of the read snapshot at that state
        self.doomed: Set[int] = set()   # dirty oids another writer changed: commit conflicts
        self.doomed_classes = False
        self.refresh_interval = refresh_interval
        self.last_auto = 0.0
        self.id_block = _ID_BLOCK_MIN
        self.class_entries = -1


# -- attaching to prefixes --------------------------------------------------------------------

class SharedStorage(Storage):
    """A Storage opened by one of several writer processes (flock LOCK_SH).

    ``commit`` runs the optimistic protocol described in the module docstring once the
    owning prefix is attached (``owner``); before that (recovery at open) it is a plain
    commit.
    """

    owner: Optional[Prefix] = None

    def __init__(self, path: str, **kwargs: Any) -> None:
        kwargs["shared"] = True
        super().__init__(path, **kwargs)

    def commit(self, batch, base_state: Optional[int] = None) -> int:
        px = self.owner
        if px is None or base_state is not None:
            return Storage.commit(self, batch, base_state)
        return _commit_shared(px, self, batch)


def attach(ws, px: Prefix, refresh_interval: Optional[float]) -> None:
    """Set up a freshly opened prefix (called by Workspace.open)."""
    interval = ws_refresh_interval(ws) if refresh_interval is None else refresh_interval
    if px.readonly or px.shared:
        sh = ShareState(interval)
        px._share = sh
        _mark_synced(px, sh)
        sh.class_entries = _class_entries(px.storage)
        if px.shared:
            px.storage.owner = px
            px._oid_limit = 0           # the first new object reserves a block of ids
        ensure_refresher(ws)


def check_refresh_interval(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"refresh_interval must be a number of milliseconds >= 0, got {value!r}")
    return float(value)


def ws_refresh_interval(ws) -> float:
    return getattr(ws, "refresh_interval", DEFAULT_REFRESH_INTERVAL_MS)


def _mark_synced(px: Prefix, sh: ShareState) -> None:
    storage = px.storage
    sh.synced = storage.state
    sh.txnid = storage._rtxn.id()


def _class_entries(storage) -> int:
    try:
        return storage._rtxn.stat(storage._dbs["classes"])["entries"]
    except Exception:
        return -1


def reserve_oids(px: Prefix) -> int:
    """Shared writers: reserve the next block of object ids; returns the first id."""
    sh = px._share
    block = sh.id_block
    first = px.storage.allocate_ids(block)
    sh.id_block = min(block * 2, _ID_BLOCK_MAX)
    px._next_oid = first
    px._oid_limit = first + block
    return first


# -- catching up with other processes -------------------------------------------------------------

def _latest_txnid(env) -> int:
    try:
        txn = env.begin(buffers=False)
    except lmdb.MapResizedError:
        env.set_mapsize(0)
        txn = env.begin(buffers=False)
    tid = txn.id()
    txn.abort()
    return tid


def sync_prefix(px: Prefix) -> bool:
    """Move a reader / shared writer to the newest committed state; True if it moved.

    The caller holds the workspace lock.  Cheap when nothing was committed.
    """
    sh = px._share
    if sh is None or px.closed:
        return False
    storage = px.storage
    env = storage._env
    if env is None:
        return False
    if _latest_txnid(env) == sh.txnid:
        return False
    return _advance(px, sh, storage)


def _advance(px: Prefix, sh: ShareState, storage) -> bool:
    env = storage._env
    try:
        txn = env.begin(buffers=False)
    except lmdb.MapResizedError:
        env.set_mapsize(0)
        txn = env.begin(buffers=False)
    # Drop (do not abort) the old snapshot: an iterator still scanning it keeps it alive.
    storage._rtxn = txn
    sh.txnid = txn.id()
    new_state = storage.state
    old_state = sh.synced
    if new_state == old_state:
        return False
    apply_journal(px, old_state, new_state)
    sh.synced = new_state
    return True


def _journal_entries(storage, state: int):
    """The journal of ``state`` as [db id, key] pairs (raw msgpack when the format is the
    one this module knows, which skips building tuples; else Storage.journal)."""
    if _JOURNAL_KEY is not None:
        rtxn = getattr(storage, "_rtxn", None)
        if rtxn is not None:
            raw = rtxn.get(_JOURNAL_KEY + _OID.pack(state), db=storage._dbs["history"])
            return msgpack.unpackb(raw) if raw else ()
    return storage.journal(state)


def changed_since(storage, after: int, upto: int,
                  skip: Iterable[int] = ()) -> Tuple[Set[int], Set[int], bool]:
    """What commits in ``(after, upto]`` overwrote: ids of objects (records, collection
    chunks, index entries), ids of collections whose chunks changed, and whether a class
    record changed."""
    heads: Set[bytes] = set()
    chunk_heads: Set[bytes] = set()
    classes = False
    skip = set(skip)
    for state in range(after + 1, upto + 1):
        if state in skip:
            continue
        entries = _journal_entries(storage, state)
        if entries and sort_journal(entries, heads, chunk_heads):
            classes = True
    heads |= chunk_heads
    return _ids_of(heads), _ids_of(chunk_heads), classes


def _ids_of(heads: Set[bytes]) -> Set[int]:
    """8-byte big-endian key heads as ints (one C-level unpack)."""
    try:
        return set(map(_first, _OID.iter_unpack(b"".join(heads))))
    except struct.error:        # a key shorter than 8 bytes (not written by dbzero)
        whole = b"".join(h for h in heads if len(h) == 8)
        return set(map(_first, _OID.iter_unpack(whole)))


def apply_journal(px: Prefix, after: int, upto: int, skip: Iterable[int] = (),
                  include_dirty: bool = False) -> None:
    """Invalidate the cached objects changed by commits in ``(after, upto]``.

    Dirty objects of a shared writer are not touched (``include_dirty`` False): they are
    recorded as doomed, and the next commit raises ConflictError.
    """
    storage = px.storage
    sh = px._share
    if after < _history_floor(storage):
        # The journals of some skipped states were pruned (db0.compact): no way to know
        # what changed, so everything cached is stale.
        oids, classes = {oid for oid, _obj in px.cached_items()}, True
        chunk_oids: Set[int] = set()
        if not px.readonly:
            from .cache import chunk_cache
            chunk_cache.clear()
    else:
        oids, chunk_oids, classes = changed_since(storage, after, upto, skip)
    # Read-write prefixes key cached chunks without a version, and the cache outlives the
    # proxies: drop the changed chunks even of collections no proxy holds right now.
    swept: Set[int] = set(chunk_oids) if not px.readonly else set()
    collections = px.invalidate(oids, include_dirty, sh.doomed if sh is not None else None)
    if not px.readonly:
        swept.update(collections)
    if swept:
        _sweep_chunk_cache(swept)
    entries = _class_entries(storage)
    if classes or (sh is not None and entries != sh.class_entries):
        if any(info.dirty for info in px.class_infos()):
            if not merge_classes(px) and sh is not None:
                sh.doomed_classes = True
        else:
            reload_classes(px)
        if sh is not None:
            sh.class_entries = entries


def _history_floor(storage) -> int:
    try:
        return storage.history_floor
    except Exception:
        return 1


def _sweep_chunk_cache(oids: Set[int]) -> None:
    from .cache import chunk_cache
    items = chunk_cache._items
    stale = [k for k in items if type(k) is tuple and len(k) == 4 and k[1] in oids]
    for key in stale:
        chunk_cache.discard(key)


def reload_classes(px: Prefix, keep_dirty: bool = False) -> None:
    """Rebuild the class table of ``px`` from storage (uncommitted classes are dropped)."""
    bound = {info.name: info.cls for info in px.class_infos() if info.cls is not None}
    px._classes_by_id = {}
    px._classes_by_name = {}
    px._next_class_id = FIRST_USER_CLASS_ID
    px._load_classes()
    for name, cls in bound.items():
        info = px._classes_by_name.get(name)
        if info is not None and info.cls is None:
            info.cls = cls
    for cache in ("_info_by_cls", "_class_tags"):
        if isinstance(getattr(px, cache, None), dict):
            setattr(px, cache, {})


def merge_classes(px: Prefix) -> bool:
    """Reload the class table keeping this process's uncommitted class changes.

    Works when the other writers' changes are compatible: a class we registered was
    registered by them under the same id, or they added fields to a class we also added
    fields to (the merged layout is theirs followed by ours - our dirty records are only
    encoded at commit).  Returns False (the commit must conflict) when an id was taken by
    another class, a class got another id, or singletons / bases disagree.
    """
    import msgpack
    from .prefix import _CLS, ClassInfo
    stored: Dict[int, dict] = {}
    for key, value in px.storage.scan("classes", b""):
        stored[_CLS.unpack(key)[0]] = msgpack.unpackb(value, raw=False)
    id_of_name = {rec["name"]: cid for cid, rec in stored.items()}
    dirty = {info.class_id: info for info in px.class_infos() if info.dirty}
    for cid, info in dirty.items():
        rec = stored.get(cid)
        if rec is None:
            if info.name in id_of_name:
                return False
            continue
        theirs = rec.get("singleton", 0)
        if rec["name"] != info.name or list(rec.get("bases", [])) != list(info.base_ids) \
                or (theirs and info.singleton_oid and theirs != info.singleton_oid):
            return False
    bound = {info.name: info.cls for info in px.class_infos() if info.cls is not None}
    by_id: Dict[int, Any] = {}
    for cid, rec in stored.items():
        info = dirty.get(cid)
        if info is None:
            info = ClassInfo(cid, rec["name"], list(rec["fields"]), bound.get(rec["name"]),
                             rec.get("singleton", 0), list(rec.get("bases", [])))
        else:
            fields = list(rec["fields"])
            fields += [f for f in info.fields if f not in fields]
            info.fields = fields
            info.field_index = {f: i for i, f in enumerate(fields)}
            info.singleton_oid = info.singleton_oid or rec.get("singleton", 0)
        by_id[cid] = info
    for cid, info in dirty.items():
        by_id.setdefault(cid, info)
    px._classes_by_id = by_id
    px._classes_by_name = {info.name: info for info in by_id.values()}
    px._next_class_id = max([FIRST_USER_CLASS_ID - 1, *by_id]) + 1
    for cache in ("_info_by_cls", "_class_tags"):
        if isinstance(getattr(px, cache, None), dict):
            setattr(px, cache, {})
    return True


# -- shared-writer commits ------------------------------------------------------------------------------

def _commit_shared(px: Prefix, storage: SharedStorage, batch) -> int:
    # Every object we are about to write was read at (or before) the state we are synced
    # with, so that state is the base of the conflict check: any key of the batch that
    # another writer wrote after it makes Storage.commit refuse the whole batch.  What
    # other writers committed meanwhile is caught up with after our commit.
    sh = px._share
    if storage.state != sh.synced:         # the snapshot moved without us (compaction)
        _advance(px, sh, storage)
    doomed = sh.doomed and sh.doomed & (set(px.dirty) | set(px.pending_deletes))
    if doomed or sh.doomed_classes:
        _roll_back_and_catch_up(px, sh, storage)
        what = f"object {px.uuid_of(min(doomed))}" if doomed else "the class table"
        raise errors.ConflictError(f"prefix {px.name}: {what} was changed by another writer "
                                   "since this process read it; pending changes were rolled back")
    batch.meta.pop(b"next_oid", None)   # shared writers reserve ids with allocate_ids
    base = sh.synced
    try:
        state = Storage.commit(storage, batch, base_state=base)
    except errors.ConflictError as exc:
        _roll_back_and_catch_up(px, sh, storage)
        raise errors.ConflictError(f"prefix {px.name}: {exc}; pending changes were rolled back") from None
    except BaseException:
        rollback_pending(px)
        raise
    # Storage.commit renewed the read snapshot, possibly past our own state: catch up
    # with the other writers' commits around ours (ours needs no invalidation).
    latest = storage.state
    if latest != state or state != base + 1:
        apply_journal(px, base, latest, skip=(state,), include_dirty=True)
    sh.synced = latest
    sh.txnid = storage._rtxn.id()
    sh.doomed.clear()
    return state


def _roll_back_and_catch_up(px: Prefix, sh: ShareState, storage) -> None:
    """After a conflict: drop our changes, then move to the newest state, so that the
    objects we had changed reload what the other writer committed."""
    rollback_pending(px)
    _advance(px, sh, storage)


def rollback_pending(px: Prefix) -> None:
    """Drop every uncommitted change of ``px`` in this process.

    Dirty objects become ghosts of the committed state, objects created since the last
    commit expire, objects deleted since then come back, pending tags and collection /
    index changes are dropped, and uncommitted classes are forgotten.
    """
    from .index import Index
    expired: Set[int] = set()
    swept: Set[int] = set()
    storage = px.storage

    def roll_collection(obj: Any) -> None:
        oid = obj._oid
        if storage.get("objects", pack_oid(oid)) is None:
            obj._db0_dead = True
            expired.add(oid)
            return
        if isinstance(obj, Index):
            obj._db0_committed()        # forget pending entries
        obj._db0_invalidate()
        swept.add(oid)

    for oid, obj in list(px.dirty.items()):
        if isinstance(obj, MemoBase):
            if obj._flags & F_NEW:
                obj._flags = (obj._flags | F_DEAD) & ~(F_GHOST | F_CHANGED | F_NEW | F_INIT)
                expired.add(oid)
            else:
                obj._flags = (obj._flags | F_GHOST) & ~F_CHANGED
            raw_dict(obj).clear()
        else:
            roll_collection(obj)
    for oid, obj in list(px.pending_deletes.items()):
        if isinstance(obj, MemoBase):
            obj._flags = (obj._flags | F_GHOST) & ~(F_DEAD | F_CHANGED)
            raw_dict(obj).clear()
        else:
            obj._db0_dead = False
            roll_collection(obj)
        if oid not in expired:
            px.register(obj)
    for oid in expired:
        px.forget(oid)
    if swept:
        _sweep_chunk_cache(swept)
    px.dirty = {}
    px.pending_deletes = {}
    px.tags.clear()
    if px.shared:
        px.zero_rc = set()
        px.gc_candidates = set()
    else:
        px.zero_rc = px.zero_rc - expired
        px.gc_candidates = px.gc_candidates - expired
    if any(info.dirty for info in px.class_infos()):
        reload_classes(px)
    px.changed = False
    sh = px._share
    if sh is not None:
        sh.doomed.clear()
        sh.doomed_classes = False
        sh.class_entries = _class_entries(storage)


# -- public: refresh, wait, pause ------------------------------------------------------------------------

def refresh() -> bool:
    """Readers and shared writers: move to the newest committed state now.

    Returns True if any prefix moved.  Exclusive read-write prefixes are unaffected.
    """
    ws = workspace._workspace
    if ws is None:
        raise errors.NotInitializedError("dbzero not initialized")
    changed = False
    with ws.lock:
        for px in ws.prefixes.values():
            if px._share is not None and sync_prefix(px):
                changed = True
    return changed


def wait(prefix: str, state: int, timeout_ms: Optional[float] = None) -> bool:
    """Block until ``prefix`` reaches ``state`` (True) or ``timeout_ms`` passes (False).

    Polls the last transaction id every 0.2-0.5 ms (a few hundred nanoseconds each), so it
    wakes within about a millisecond of the commit.
    """
    ws = workspace.current()
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
    pause = 0.0002
    while True:
        if _reached(ws, prefix, state):
            return True
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
        else:
            time.sleep(pause)
        pause = min(pause * 1.25, 0.0005)


def _reached(ws, prefix: str, state: int) -> bool:
    """Has ``prefix`` reached ``state`` (after catching up with other processes)?"""
    with ws.lock:
        px = ws.get_prefix(prefix)
        if px._share is not None:
            sync_prefix(px)
        return px.state_num >= state


def async_wait(prefix: str, state: int, timeout_ms: Optional[float] = None):
    """``wait`` for asyncio code: an ``asyncio.Future`` (call it inside a running event
    loop; ``await`` it) resolving to True when ``prefix`` reaches ``state``, False on
    timeout.  Polls every millisecond without blocking the loop."""
    import asyncio
    return asyncio.ensure_future(_async_wait(prefix, state, timeout_ms))


async def _async_wait(prefix: str, state: int, timeout_ms: Optional[float]) -> bool:
    import asyncio
    ws = workspace.current()
    deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
    while True:
        if _reached(ws, prefix, state):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.001)


@contextlib.contextmanager
def pause_refresh():
    """Keep the background refresh from moving any prefix while the block runs.

    Reads of several attributes (possibly of several objects) inside the block all come
    from the same committed state.  Explicit ``db0.refresh()``/``db0.wait()`` still work.
    A refresh the background thread had to skip runs when the outermost block ends.
    """
    ws = workspace.current()
    with ws.lock:
        ws._db0_refresh_paused = getattr(ws, "_db0_refresh_paused", 0) + 1
    try:
        yield
    finally:
        with ws.lock:
            ws._db0_refresh_paused -= 1
        if not ws._db0_refresh_paused and getattr(ws, "_db0_refresh_wanted", False):
            ws._db0_refresh_wanted = False
            if workspace._workspace is ws:
                refresh()


# -- the background refresher ---------------------------------------------------------------------------

def ensure_refresher(ws) -> None:
    with ws.lock:
        if getattr(ws, "_db0_refresher", False):
            return
        ws._db0_refresher = True
    _thread.start_new_thread(_refresher_loop, (ws,))


def _refresher_loop(ws) -> None:
    try:
        _refresher_body(ws)
    except BaseException as exc:  # pragma: no cover - last resort, keep the process alive
        try:
            sys.stderr.write(f"dbzero: refresher stopped: {exc!r}\n")
        except Exception:
            pass
        ws._db0_refresher = False


def _refresher_body(ws) -> None:
    last_check = time.monotonic()
    pid = os.getpid()
    while True:
        intervals = [px._share.refresh_interval for px in list(ws.prefixes.values())
                     if px._share is not None and px._share.refresh_interval > 0]
        tick = (min(intervals) if intervals else 50.0) / 1000.0
        time.sleep(tick)
        if os.getpid() != pid:
            return      # a forked child: its own refresher is started on reopen
        if not ws.lock.acquire(timeout=0.05):
            continue
        try:
            if workspace._workspace is not ws:
                ws._db0_refresher = False
                return
            now = time.monotonic()
            paused = getattr(ws, "_db0_refresh_paused", 0)
            for px in list(ws.prefixes.values()):
                sh = px._share
                if sh is None or px.closed or sh.refresh_interval <= 0:
                    continue
                if paused:
                    ws._db0_refresh_wanted = True      # done when pause_refresh() ends
                    continue
                if now - sh.last_auto < sh.refresh_interval / 1000.0 * 0.9:
                    continue
                if px.shared and (ws.atomic_depth or px.has_changes()):
                    continue
                if isinstance(px.storage, _ReopenOnUse):
                    continue
                sh.last_auto = now
                try:
                    sync_prefix(px)
                except Exception as exc:
                    sys.stderr.write(f"dbzero: refresh of {px.name} failed: {exc!r}\n")
            if now - last_check >= READER_CHECK_EVERY_S:
                last_check = now
                check_readers(ws)
        finally:
            ws.lock.release()


def check_readers(ws) -> int:
    """Clear reader-table slots left by dead processes in every open prefix file."""
    cleared = 0
    for px in list(ws.prefixes.values()):
        env = getattr(px.storage, "_env", None) if not isinstance(px.storage, _ReopenOnUse) else None
        if env is not None and not px.closed:
            try:
                cleared += env.reader_check()
            except lmdb.Error:
                pass
    return cleared


# -- transactions -----------------------------------------------------------------------------------------

def transaction(fn: Callable[..., Any], *args: Any, retries: int = DEFAULT_RETRIES, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` all-or-nothing and commit; retry on ConflictError.

    Each attempt catches up with the newest state, runs ``fn`` inside ``db0.atomic()`` and
    commits the prefixes it changed.  If a shared prefix reports a conflict, every change
    of the attempt is rolled back and ``fn`` runs again after a short random back-off
    (at most ``retries`` times; then the ConflictError propagates).  An exception raised
    by ``fn`` rolls its changes back and propagates without retry.  Returns ``fn``'s result.
    ``fn`` may change at most one shared prefix (plus any exclusive ones).
    """
    from .atomic import AtomicManager
    from . import coordinator
    ws = workspace.current()
    attempt = 0
    while True:
        with ws.lock:
            if ws.atomic_depth:
                raise errors.TransactionError("db0.transaction cannot run inside db0.atomic")
            for px in list(ws.prefixes.values()):
                if px.shared and not px.closed:
                    sync_prefix(px)
            tx = AtomicManager()
            tx.begin()
            ok = False
            try:
                result = fn(*args, **kwargs)
                ok = True
            finally:
                if not ok:
                    tx._finish(rollback=True)
            shared = [px for px in ws.prefixes.values()
                      if px.shared and not px.closed and px.has_changes()]
            if len(shared) > 1:
                tx._finish(rollback=True)
                names = ", ".join(sorted(px.name for px in shared))
                raise errors.TransactionError(f"db0.transaction changed several shared prefixes ({names}); "
                                              "commits across shared prefixes are not atomic")
            # The shared prefix leaves the atomic block now: on a conflict its own rollback
            # (rollback_pending) applies, the block's undo log covers the other prefixes.
            for px in shared:
                level = tx._levels.pop(px, None)
                log = px.atomic_log
                if log is not None and level in log.levels:
                    log.levels.remove(level)
                    if not log.levels:
                        px.atomic_log = None
            try:
                for px in shared:
                    px.commit()
            except errors.ConflictError:
                tx._finish(rollback=True)
                if attempt >= retries:
                    raise
            except BaseException:
                tx._finish(rollback=True)
                raise
            else:
                tx._finish(rollback=False)
                rest = [px for px in ws.prefixes.values()
                        if not px.shared and not px.readonly and not px.closed]
                coordinator.commit_all(ws, rest)
                return result
        attempt += 1
        time.sleep(random.uniform(0, min(0.02, 0.0002 * (2 ** min(attempt, 10)))))


def transactional(fn: Optional[Callable[..., Any]] = None, *, retries: int = DEFAULT_RETRIES):
    """Decorator form of :func:`transaction`: ``@db0.transactional`` or
    ``@db0.transactional(retries=5)``."""
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return transaction(func, *args, retries=retries, **kwargs)
        return wrapper

    if fn is not None:
        return decorate(fn)
    return decorate


# -- fork ----------------------------------------------------------------------------------------------------

class _ReopenOnUse:
    """Stands in for a prefix's Storage in a forked child until it is first used."""

    def __init__(self, px: Prefix, path: str, prefix_uuid: bytes, mode: str) -> None:
        self._px = px
        self.path = path
        self.prefix_uuid = prefix_uuid
        self._mode = mode

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_reopen(self._px, self), name)


def _reopen(px: Prefix, stub: _ReopenOnUse):
    ws = px.workspace
    with ws.lock:
        if px.storage is not stub:
            return px.storage
        if px.closed:
            raise errors.ObjectClosedError("Object is no longer accessible")
        flags = ws.lock_flags
        kwargs = dict(lock_blocking=bool(flags.get("blocking", False)),
                      lock_timeout=float(flags.get("timeout", 0) or 0), durability=ws.durability)
        if stub._mode == "shared":
            storage = SharedStorage(stub.path, readonly=False, create=False, **kwargs)
        else:
            storage = Storage(stub.path, readonly=True, create=False, **kwargs)
        px.storage = storage
        reload_classes(px)
        sh = px._share
        if sh is None:
            sh = px._share = ShareState(ws_refresh_interval(ws))
        _mark_synced(px, sh)
        sh.class_entries = _class_entries(storage)
        sh.doomed.clear()
        sh.doomed_classes = False
        if px.shared:
            storage.owner = px
            px._oid_limit = 0
        ensure_refresher(ws)
        return storage


def _before_fork() -> None:
    workspace._global_lock.acquire()


def _after_fork_in_parent() -> None:
    workspace._global_lock.release()


def _after_fork_in_child() -> None:
    try:
        workspace._global_lock.release()
    except RuntimeError:
        pass
    ws = workspace._workspace
    if ws is None:
        return
    ws._db0_refresher = False
    try:
        from .snapshot import _open_snapshots
        for snap in list(_open_snapshots):
            try:
                snap.close()
            except Exception:
                pass
        from .cache import chunk_cache
        chunk_cache.clear()
        for px in list(ws.prefixes.values()):
            _prepare_child(px)
    except Exception as exc:  # never break the child's start-up
        sys.stderr.write(f"dbzero: preparing the forked child failed: {exc!r}\n")


def _prepare_child(px: Prefix) -> None:
    """Make an inherited prefix reopen lazily; forget the parent's pending changes."""
    if px.closed:
        return
    old = px.storage
    if px.readonly:
        mode = "r"
    elif px.shared:
        mode = "shared"
    else:
        mode = "r"                     # the parent stays the only exclusive writer
        px.readonly = True
        px.autocommit = False
    to_readonly = mode == "r"
    px.atomic_log = None
    from .index import Index
    for oid, obj in px.cached_items():
        if isinstance(obj, MemoBase):
            if obj._flags & (F_DEAD | F_INIT):
                continue
            flags = (obj._flags | F_GHOST) & ~(F_CHANGED | F_NEW)
            if to_readonly:
                flags |= F_READONLY
            obj._flags = flags
            raw_dict(obj).clear()
        elif to_readonly and not old.readonly:
            # A collection proxy of a formerly writable prefix cannot be made read-only in
            # place; re-read it from its owner object in the child.
            obj._db0_closed = True
            px.forget(oid)
        else:
            if isinstance(obj, Index):
                obj._db0_committed()    # forget the parent's pending entries
            obj._db0_invalidate()
    px.dirty = {}
    px.pending_deletes = {}
    px.tags.clear()
    px.zero_rc = set()
    px.gc_candidates = set()
    px.changed = False
    px.storage = _ReopenOnUse(px, old.path, px.uuid, mode)
    if px._share is not None:
        px._share.doomed.clear()
        px._share.doomed_classes = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
