"""One prefix = one LMDB environment.

This module is the only place that talks to LMDB.  Everything above it sees a narrow
interface: point reads, prefix scans and duplicate-set reads inside the current read
snapshot, and :meth:`Storage.commit`, which applies a :class:`WriteBatch` in one write
transaction and returns the new state number.

Versioned sub-databases (``objects``, ``chunks``, ``classes``, ``index``) store every value
behind an 8-byte big-endian *write state*.  When a commit overwrites or deletes a key, the
previous value goes to ``history`` under ``(db id, key, state)`` and the key is listed in
``journal`` under the state.  A key's history therefore answers "what was the value as of
state S" without slowing down reads of the live value; see docs/format.md.

Map growth is internal: a write that hits MDB_MAP_FULL is retried with a doubled map.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import os
import struct
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import lmdb
import msgpack

from dbzero_ext.core import add_to_refcounts, keep_write_state, with_header
from dbzero_ext.postings import IdSet
from dbzero_ext.tagstore import first_of_each_key, join_journal, membership_history, split_by_floor

from .errors import ConflictError, FormatError, PrefixLockedError, PrefixNotFoundError, StorageError

FORMAT_VERSION = 3
# Format 2 files differ only in having a mark for every state: read as they are, and
# upgraded in place by the first read-write open.
READABLE_VERSIONS = (2, FORMAT_VERSION)

# Sub-database ids are part of the format (history keys start with them).
VERSIONED_DBS = {"classes": 1, "objects": 2, "chunks": 3, "index": 4}
DUP_DBS = {"tags": 5, "obj_tags": 6}
PLAIN_DBS = ("meta", "history")
# The journal of state S lives in `history` under JOURNAL + S: one B-tree fewer to write
# per commit (each tree touched adds pages to the fsync).  Every commit writes one, so the
# newest journal key (the last key of `history`) is also the current state (format 3).
JOURNAL = b"\xff"
_EMPTY_JOURNAL = msgpack.packb([])
# meta[MARK + S]: the next object id after commit S, written when it moved (see _mark_at).
MARK = b"oids@"
DB_NAMES = tuple(VERSIONED_DBS) + tuple(DUP_DBS) + PLAIN_DBS

_STATE = struct.Struct(">Q")
_pack_state = _STATE.pack
_unpack_state = _STATE.unpack_from

INITIAL_MAP_SIZE = (1 << 30) if sys.maxsize > 2**32 and sys.platform.startswith("linux") else (64 << 20)
MAX_READERS = 2048

# LMDB allows one Environment per file per process; this registry enforces it.
_open_paths: Dict[str, "Storage"] = {}
_registry_lock = threading.Lock()


def _on_fork_child() -> None:
    # An environment inherited through fork() must never be used in the child (lmdb.h,
    # "Caveats"): forget it without closing, and let the owner reopen lazily.
    inherited = list(_open_paths.values())
    for storage in inherited:
        storage._abandon_after_fork()
    _open_paths.clear()
    if inherited:
        _salt_env_keys()


def _salt_env_keys() -> None:
    """Let the child reopen files whose inherited environments it abandoned.

    py-lmdb refuses a second environment on files already open in the process, and the
    abandoned ones stay registered (they are never closed, see _abandon_after_fork).  They
    are also never used, so no fcntl lock of theirs can clash with a new environment:
    keying new environments by (child pid, file) is safe.
    """
    try:
        from lmdb import _envid
    except ImportError:     # an lmdb without the guard
        return
    original = _envid.env_keys
    pid = os.getpid()

    def env_keys(path, subdir):
        return tuple(("forked", pid) + tuple(key) for key in original(path, subdir))

    _envid.env_keys = env_keys


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_on_fork_child)


class WriteBatch:
    """Changes to apply in one commit.

    ``puts[db][key] = value`` (``None`` deletes) for versioned dbs; ``dups[db]`` holds
    ``(key, value, add)`` triples for duplicate-set dbs; ``meta`` holds raw meta keys.
    Keys in ``fresh`` are known not to exist yet, which skips the history lookup.
    ``dup_sets[db]`` holds bulk membership changes as pre-sorted runs (see ``dup_set``).
    """

    __slots__ = ("puts", "dups", "meta", "fresh", "in_place", "in_place_full", "rc_deltas",
                 "fresh_objects", "fresh_header", "dup_sets")

    def __init__(self) -> None:
        self.puts: Dict[str, Dict[bytes, Optional[bytes]]] = {}
        self.dups: Dict[str, List[Tuple[bytes, bytes, bool]]] = {}
        self.dup_sets: Dict[str, Tuple[list, list]] = {}
        self.meta: Dict[bytes, bytes] = {}
        self.fresh: set = set()
        # (key, record) of objects whose reference count alone changed: rewritten in place,
        # keeping their write state, no history (exclusive writers only).
        self.in_place: List[Tuple[bytes, bytes]] = []
        # The same with the write state already in front (the object knew it).
        self.in_place_full: List[Tuple[bytes, bytes]] = []
        # (key, n) of objects whose stored reference count grows by n and that were never
        # loaded: the stored record is patched in place, keeping its write state.
        self.rc_deltas: List[Tuple[bytes, int]] = []
        # (key, value) of objects created since the last commit, in id order: no history.
        self.fresh_objects: List[Tuple[bytes, bytes]] = []
        # The write-state header the fresh_objects values already start with (None: none).
        self.fresh_header: Optional[bytes] = None

    def put(self, db: str, key: bytes, value: Optional[bytes], fresh: bool = False) -> None:
        self.puts.setdefault(db, {})[key] = value
        if fresh:
            self.fresh.add((db, key))

    def delete(self, db: str, key: bytes) -> None:
        self.puts.setdefault(db, {})[key] = None
        self.fresh.discard((db, key))

    def dup(self, db: str, key: bytes, value: bytes, add: bool) -> None:
        self.dups.setdefault(db, []).append((key, value, add))

    def dup_set(self, db: str, adds: List[Tuple[bytes, bytes]],
                removes: List[Tuple[bytes, bytes]]) -> None:
        """Bulk membership changes of a duplicate-set db: ``(key, value)`` pairs to add and
        to remove, each a sorted sequence of 2-tuples without repeats (a list, or a
        dbzero_ext.tagstore.MemberRun, which the helpers read without making the tuples),
        no pair in both.  Pairs may be
        added blindly (already present) or removed blindly (absent): the commit writes,
        and records history for, exactly the pairs that change.  One call per db."""
        self.dup_sets[db] = (adds, removes)

    def dup_adds(self) -> Iterator[Tuple[str, bytes, bytes]]:
        """Every ``(db, key, value)`` membership the batch adds (cross-prefix markers)."""
        for name, ops in self.dups.items():
            for key, value, add in ops:
                if add:
                    yield name, key, value
        for name, (adds, _removes) in self.dup_sets.items():
            for key, value in adds:
                yield name, key, value

    def __bool__(self) -> bool:
        return bool(self.puts or self.dups or self.meta or self.fresh_objects or self.dup_sets
                    or self.in_place or self.in_place_full or self.rc_deltas)


def history_key(db_id: int, key: bytes, state: int) -> bytes:
    return bytes((db_id,)) + key + _pack_state(state)


class Storage:
    """An open LMDB environment for one prefix file.

    Not thread-safe by itself: the workspace serialises access with its lock.
    """

    commit_hook = None      # callable(batch) run before each commit (dbzero/coordinator.py)

    def __init__(self, path: str, *, readonly: bool, create: bool = True,
                 lock_blocking: bool = False, lock_timeout: float = 0.0,
                 durability: str = "full", shared: bool = False) -> None:
        self.path = os.path.realpath(path)
        self.readonly = readonly
        self.shared = shared and not readonly   # several writer processes (dbzero/sharing.py)
        self._durability = durability
        self._lock_fd: Optional[int] = None
        self._env: Optional[lmdb.Environment] = None
        self._rtxn: Optional[lmdb.Transaction] = None
        self._cursors: Dict[str, Any] = {}
        self._mark: Optional[Tuple[int, bytes]] = None    # (state, id mark) of our last commit
        self._state_snapshot = -1       # LMDB txn id that _state_num was read from
        self._state_num = 0
        # msgpack.packb builds a Packer per call; each commit packs a journal.  Not shared
        # between storages: Packer.pack is not reentrant (see the class docstring on threads).
        self._pack_journal = msgpack.Packer().pack
        self._pid = os.getpid()
        if not os.path.exists(self.path):
            if readonly or not create:
                raise PrefixNotFoundError(f"Prefix: {path} not found")
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with _registry_lock:
            if self.path in _open_paths:
                raise StorageError(f"prefix file {self.path} is already open in this process")
            if not readonly:
                self._acquire_writer_lock(lock_blocking, lock_timeout)
            try:
                self._open_env()
            except BaseException:
                self._release_writer_lock()
                raise
            _open_paths[self.path] = self

    # -- opening -------------------------------------------------------------------

    def _acquire_writer_lock(self, blocking: bool, timeout: float) -> None:
        # flock is released by the kernel when the holder dies, so a killed writer never
        # leaves a stale lock behind.
        lock_path = self.path + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + (timeout if blocking else 0.0)
        while True:
            try:
                # Shared writers take LOCK_SH: they exclude an exclusive writer, not each other.
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
                if not blocking or time.monotonic() >= deadline:
                    os.close(fd)
                    raise PrefixLockedError(f"Failed to aquire lock of: {lock_path}") from None
                time.sleep(0.01)
        self._lock_fd = fd

    def _release_writer_lock(self) -> None:
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _open_env(self) -> None:
        try:
            self._env = lmdb.open(
                self.path, subdir=False, readonly=self.readonly, create=not self.readonly,
                map_size=INITIAL_MAP_SIZE, max_dbs=len(DB_NAMES) + 2, max_readers=MAX_READERS,
                max_spare_txns=1, sync=True, metasync=self._durability == "full",
                writemap=False, map_async=False, readahead=False, lock=True,
            )
        except lmdb.Error as exc:
            raise StorageError(f"opening {self.path}: {exc}") from exc
        self._env.reader_check()
        self._dbs = {}
        if not self.readonly:
            with self._env.begin(write=True) as txn:
                for name in DB_NAMES:
                    dup = name in DUP_DBS
                    self._dbs[name] = self._env.open_db(name.encode(), txn=txn, create=True,
                                                        dupsort=dup, dupfixed=dup and name == "tags")
                meta = self._dbs["meta"]
                version = txn.get(b"format", db=meta)
                if version is None:
                    txn.put(b"format", _pack_state(FORMAT_VERSION), db=meta)
                    txn.put(b"uuid", os.urandom(7), db=meta)
                    txn.put(b"next_oid", _pack_state(1), db=meta)
                elif _unpack_state(version)[0] in READABLE_VERSIONS[:-1]:
                    _upgrade_to_3(txn, meta, self._dbs["history"])
        else:
            for name in DB_NAMES:
                try:
                    self._dbs[name] = self._env.open_db(name.encode(), create=False)
                except lmdb.NotFoundError:
                    self._env.close()
                    raise FormatError(f"{self.path} is not a dbzero prefix file (no '{name}' table)") from None
        self._rtxn = self._env.begin(buffers=False)
        version = self._rtxn.get(b"format", db=self._dbs["meta"])
        if version is None or _unpack_state(version)[0] not in READABLE_VERSIONS:
            found = _unpack_state(version)[0] if version else None
            self._rtxn.abort()
            self._env.close()
            self._env = self._rtxn = None
            raise FormatError(f"{self.path}: unsupported format version {found} "
                              f"(this dbzero reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        self.prefix_uuid: bytes = self._rtxn.get(b"uuid", db=self._dbs["meta"])
        self._objects_db = self._dbs["objects"]     # read directly by dbzero_ext/core.pyx

    def _abandon_after_fork(self) -> None:
        # The inherited objects must never be deallocated in the child: freeing the read
        # transaction releases its reader slot in the lock table the parent shares, and the
        # parent's next read then fails with MDB_BAD_RSLOT.  An extra reference that is
        # never dropped keeps them alive (also through interpreter shutdown).
        for obj in (self._env, self._rtxn):
            if obj is not None:
                ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
        self._env = None
        self._rtxn = None
        if self._lock_fd is not None:
            # Closing the child's copy of the descriptor keeps the parent's flock; leaving it
            # open would keep the lock alive after the parent exits.
            try:
                os.close(self._lock_fd)
            except OSError:
                pass
        self._lock_fd = None

    def _check_open(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError(f"prefix file {self.path} is closed")
        return self._env

    # -- read side -----------------------------------------------------------------

    @property
    def state(self) -> int:
        """The state number of the current read snapshot."""
        txn = self._rtxn
        # Keyed by LMDB's snapshot id, not the transaction object: holding that would keep
        # a dropped snapshot open (sharing.py replaces _rtxn without aborting it).
        snapshot = txn.id()
        if snapshot != self._state_snapshot:
            # Read-write opens upgrade format 2 files; only readers can meet meta `state`.
            self._state_num = current_state(txn, self._dbs["history"],
                                            self._dbs["meta"] if self.readonly else None)
            self._state_snapshot = snapshot
        return self._state_num

    def meta_get(self, key: bytes) -> Optional[bytes]:
        return self._rtxn.get(key, db=self._dbs["meta"])

    def refresh(self) -> bool:
        """Move the read snapshot to the newest committed state; True if it changed."""
        env = self._check_open()
        before = self.state
        self._rtxn.abort()
        try:
            self._rtxn = env.begin(buffers=False)
        except lmdb.MapResizedError:
            env.set_mapsize(0)
            self._rtxn = env.begin(buffers=False)
        return self.state != before

    def get(self, db: str, key: bytes) -> Optional[bytes]:
        """Live value of ``key`` (without its state header), or None."""
        raw = self._rtxn.get(key, db=self._dbs[db])
        if raw is None:
            return None
        return raw[8:] if db in VERSIONED_DBS else raw

    def get_versioned(self, db: str, key: bytes) -> Optional[Tuple[int, bytes]]:
        raw = self._rtxn.get(key, db=self._dbs[db])
        if raw is None:
            return None
        return _unpack_state(raw)[0], raw[8:]

    def scan(self, db: str, prefix: bytes, start: Optional[bytes] = None,
             stop: Optional[bytes] = None, reverse: bool = False) -> Iterator[Tuple[bytes, bytes]]:
        """Keys starting with ``prefix`` in ``[start, stop)`` (full keys), values without header."""
        strip = 8 if db in VERSIONED_DBS else 0
        lo = start if start is not None else prefix
        cur = self._rtxn.cursor(db=self._dbs[db])
        if not reverse:
            if not cur.set_range(lo):
                return
            for key, value in cur:
                if not key.startswith(prefix) or (stop is not None and key >= stop):
                    return
                yield key, value[strip:]
        else:
            hi = stop if stop is not None else _prefix_end(prefix)
            if hi is None or not cur.set_range(hi):
                if not cur.last():
                    return
            else:
                if not cur.prev():
                    return
            for key, value in cur.iterprev():
                if key < lo or not key.startswith(prefix):
                    return
                if stop is not None and key >= stop:
                    continue
                yield key, value[strip:]

    def scan_versioned(self, db: str, prefix: bytes, start: Optional[bytes] = None,
                       stop: Optional[bytes] = None) -> Iterator[Tuple[bytes, int, bytes]]:
        """Like scan over a versioned db, also yielding each value's write state."""
        cur = self._rtxn.cursor(db=self._dbs[db])
        if not cur.set_range(start if start is not None else prefix):
            return
        for key, value in cur:
            if not key.startswith(prefix) or (stop is not None and key >= stop):
                return
            yield key, _unpack_state(value)[0], value[8:]

    def dup_values(self, db: str, key: bytes) -> bytes:
        """All duplicate values of ``key`` in a dupfixed db, concatenated (8 bytes each)."""
        return self.dup_ids(db, key).to_be_bytes()

    def dup_ids(self, db: str, key: bytes) -> IdSet:
        """The 8-byte big-endian duplicate values of ``key`` as an IdSet (one LMDB call)."""
        cur = self._rtxn.cursor(db=self._dbs[db])
        if not cur.set_key(key):
            return IdSet.empty()
        # keyfixed=True returns one buffer of (key + value) records.
        records = cur.getmulti([key], True, 8, True)
        return IdSet.from_be_records(records, len(key) + 8, len(key))

    def _cursor(self, db: str) -> lmdb.Cursor:
        """A cursor on ``db`` in the current read transaction (reused between calls)."""
        cursors = self._cursors
        if cursors.get("_txn") is not self._rtxn:
            cursors.clear()
            cursors["_txn"] = self._rtxn
        cur = cursors.get(db)
        if cur is None:
            cur = cursors[db] = self._rtxn.cursor(db=self._dbs[db])
        return cur

    def dup_list(self, db: str, key: bytes) -> List[bytes]:
        cur = self._cursor(db)
        if not cur.set_key(key):
            return []
        return list(cur.iternext_dup())

    def dup_count(self, db: str, key: bytes) -> int:
        cur = self._rtxn.cursor(db=self._dbs[db])
        return cur.count() if cur.set_key(key) else 0

    def dup_contains(self, db: str, key: bytes, value: bytes) -> bool:
        cur = self._cursor(db)
        return cur.set_key_dup(key, value)

    # -- write side ----------------------------------------------------------------

    def allocate_ids(self, count: int) -> int:
        """Reserve ``count`` object ids; returns the first.  Ids are never reused."""
        env = self._check_open()
        while True:
            try:
                with env.begin(write=True) as txn:
                    meta = self._dbs["meta"]
                    first = _unpack_state(txn.get(b"next_oid", db=meta))[0]
                    txn.put(b"next_oid", _pack_state(first + count), db=meta)
                return first
            except lmdb.MapFullError:
                self._grow()

    def commit(self, batch: WriteBatch, base_state: Optional[int] = None) -> int:
        """Apply ``batch`` in one write transaction; returns the new state number.

        With ``base_state`` (several writers on one prefix), every key the batch overwrites
        must not have been written after that state; otherwise nothing is written and
        ConflictError names the first such key.
        """
        env = self._check_open()
        if self.readonly:
            raise StorageError(f"commit on read-only prefix file {self.path}")
        if self.commit_hook is not None:
            self.commit_hook(batch)     # cross-prefix commits add their marker (coordinator.py)
        while True:
            try:
                state = self._commit_once(env, batch, base_state)
                break
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                raise StorageError(f"commit to {self.path}: {exc}") from exc
        self._rtxn.abort()
        self._rtxn = env.begin(buffers=False)
        return state

    def _commit_once(self, env: lmdb.Environment, batch: WriteBatch,
                     base_state: Optional[int] = None) -> int:
        dbs = self._dbs
        with env.begin(write=True) as txn:
            meta, history = dbs["meta"], dbs["history"]
            state = current_state(txn, history) + 1
            header = _pack_state(state)
            # Ids at or above this were allocated after the previous commit: keys and set
            # memberships of such objects cannot have an earlier value, so they need no
            # history (a view at an older state filters them by its id mark, _mark_at).
            id_floor = txn.get(b"next_oid", db=meta)
            journal: List[Tuple[int, bytes]] = []
            fresh = batch.fresh
            if batch.fresh_objects:
                # Sorted new ids past the table's last key (the usual case) go in with
                # MDB_APPEND: no B-tree search per record.
                objects = dbs["objects"]
                fresh_items = batch.fresh_objects
                if batch.fresh_header != header:
                    # Packed for another state (a shared writer committed meanwhile).
                    fresh_items = with_header(header, fresh_items,
                                              len(batch.fresh_header or b""))
                self._put_many(txn, objects, fresh_items, dupdata=False,
                               append=self._appendable(txn, objects, fresh_items, False))
            if batch.in_place_full:
                self._put_many(txn, dbs["objects"], batch.in_place_full, dupdata=False)
            if batch.in_place:
                # One C-level read of the old records for their write states, one write.
                olds = txn.cursor(db=dbs["objects"]).getmulti([key for key, _ in batch.in_place])
                self._put_many(txn, dbs["objects"], keep_write_state(olds, batch.in_place, header),
                               dupdata=False)
            if batch.rc_deltas:
                olds = txn.cursor(db=dbs["objects"]).getmulti([key for key, _ in batch.rc_deltas])
                self._put_many(txn, dbs["objects"], add_to_refcounts(olds, batch.rc_deltas),
                               dupdata=False)
            for name, ops in batch.puts.items():
                db, db_id = dbs[name], VERSIONED_DBS[name]
                history_prefix = bytes((db_id,))
                cur = txn.cursor(db=db)
                new_items = []
                for key, value in ops.items():
                    if fresh and (name, key) in fresh:
                        if value is not None:
                            new_items.append((key, header + value))
                        continue
                    # One call writes and returns the old value; a conflict raised after
                    # it aborts the whole transaction.
                    old = cur.pop(key) if value is None else cur.replace(key, header + value)
                    if old is not None:
                        if base_state is not None and _unpack_state(old)[0] > base_state:
                            raise ConflictError(f"{self.path}: {name} key {key.hex()} was changed "
                                                f"by another writer after state {base_state}")
                        txn.put(history_prefix + key + header, old, db=history)
                        journal.append((db_id, key))
                if new_items:
                    self._put_many(txn, db, new_items, dupdata=False)
            for name, ops in batch.dups.items():
                db, db_id = dbs[name], DUP_DBS[name]
                adds = []
                changes: Dict[bytes, Tuple[list, list]] = {}
                for key, value, add in ops:
                    if add:
                        adds.append((key, value))
                        if (value if name == "tags" else key[:8]) >= id_floor:
                            continue    # member created by this commit: no history needed
                    elif not txn.delete(key, value, db=db):
                        continue
                    entry = changes.get(key)
                    if entry is None:
                        entry = changes[key] = ([], [])
                    entry[0 if add else 1].append(value)
                if adds:
                    adds.sort()
                    self._put_many(txn, db, adds, dupdata=True)
                # One history record per (key, state): the members it added and removed.
                for key, (added, removed) in changes.items():
                    txn.put(history_key(db_id, key, state), msgpack.packb([added, removed]), db=history)
                    journal.append((db_id, key))
            # Journal entries of bulk membership runs, already msgpack-encoded: (blob, count).
            packed_journal: List[Tuple[bytes, int]] = []
            if batch.dup_sets:
                # Bulk runs allocate a few tuples per changed key (history records), none
                # in a cycle: hold the collector off rather than let it walk the heap.
                collecting = gc.isenabled()
                gc.disable()
                try:
                    for name in sorted(batch.dup_sets):
                        adds, removes = batch.dup_sets[name]
                        self._apply_dup_set(env, txn, name, adds, removes, id_floor, header,
                                            packed_journal)
                finally:
                    if collecting:
                        gc.enable()
            next_oid = id_floor
            for key, value in batch.meta.items():
                # An unchanged value is not rewritten: each meta leaf a commit touches is
                # one more page to write and fsync (next_oid rarely moves).
                if value != (next_oid if key == b"next_oid" else txn.get(key, db=meta)):
                    txn.put(key, value, db=meta)
                    if key == b"next_oid":
                        next_oid = value
            # Written even when empty: the newest journal key is the state number, which
            # saves writing a `state` key into meta (one B-tree fewer per commit).
            packed = self._pack_journal(journal)
            txn.put(JOURNAL + header, join_journal(packed, packed_journal) if packed_journal
                    else packed, db=history)
            # A mark only when the next object id moved (format 3): most commits create
            # nothing, and a mark per state kept the meta tree growing.
            if next_oid != self._last_mark(txn, state - 1):
                txn.put(MARK + header, next_oid, db=meta)
        self._mark = (state, next_oid)
        return state

    def _last_mark(self, txn: lmdb.Transaction, state: int) -> bytes:
        """The id mark in force at ``state`` as seen by ``txn``."""
        mark = self._mark
        if mark is not None and mark[0] == state:
            # Our own previous commit, and nobody committed since (the new state is ours+1).
            return mark[1]
        return _mark_at(txn, self._dbs["meta"], state)

    def _apply_dup_set(self, env: lmdb.Environment, txn: lmdb.Transaction, name: str,
                       adds: list, removes: list, id_floor: bytes, header: bytes,
                       packed_journal: list) -> None:
        """Write one ``dup_set`` run and the history of the memberships it really changes.

        Members created since the previous commit (ids at or above ``id_floor``) need no
        history and are put blindly.  Older members may already be present (adds are
        recorded blindly): see _put_new for how the new ones are found.
        """
        db, db_id = self._dbs[name], DUP_DBS[name]
        member_is_value = name == "tags"
        removed = [pair for pair in removes if txn.delete(pair[0], pair[1], db=db)]
        added: list = []
        if adds:
            old, new = split_by_floor(adds, id_floor, member_is_value)
            if new:
                self._put_many(txn, db, new, dupdata=True,
                               append=self._appendable(txn, db, new, member_is_value))
            if old:
                added = self._put_new(env, txn, db, old, member_is_value)
        if added or removed:
            # One history record per (key, state): the members it added and removed.
            records, blob, count = membership_history(db_id, header, added, removed)
            packed_journal.append((blob, count))
            self._put_many(txn, self._dbs["history"], records, dupdata=False)

    def _put_new(self, env: lmdb.Environment, txn: lmdb.Transaction, db, pairs: list,
                 may_append: bool, chunk: int = 4096) -> list:
        """Put sorted ``pairs`` into dupsort ``db``; returns those that were not there.

        The pairs go in with NODUPDATA through a nested transaction: if every one was added
        (the usual case) it is kept; if none was, it is dropped and nothing changed.  A mix
        is redone in chunks the same way, and only a chunk that is itself mixed is put one
        pair at a time.
        """
        # When appending is safe no pair can be present yet either, and no nested
        # transaction is needed.
        if self._appendable(txn, db, pairs, may_append):
            self._put_many(txn, db, pairs, dupdata=False, append=True)
            return pairs
        child = env.begin(write=True, parent=txn)
        try:
            consumed, n_added = child.cursor(db=db).putmulti(pairs, dupdata=False)
        except BaseException:
            child.abort()
            raise
        if consumed == n_added == len(pairs):
            child.commit()
            return pairs
        child.abort()
        if n_added == 0:
            return []
        if len(pairs) > chunk:
            added: list = []
            for lo in range(0, len(pairs), chunk):
                added += self._put_new(env, txn, db, pairs[lo:lo + chunk], may_append, chunk)
            return added
        return [pair for pair in pairs if txn.put(pair[0], pair[1], dupdata=False, db=db)]

    @staticmethod
    def _appendable(txn: lmdb.Transaction, db, pairs, per_key: bool) -> bool:
        """May the sorted, repeat-free ``pairs`` go into ``db`` with MDB_APPEND(DUP)?

        APPEND skips the B-tree search per key and APPENDDUP the search inside a key's
        duplicates; they are safe when the run starts past the table's last key, or
        (``per_key``, for tables with few keys) when each key's new values all sort after
        its current last one.
        """
        cur = txn.cursor(db=db)
        if not cur.last() or cur.key() < pairs[0][0]:
            return True
        return per_key and all(not cur.set_key(key) or (cur.last_dup() and cur.value() < first)
                               for key, first in first_of_each_key(pairs))

    @staticmethod
    def _put_many(txn: lmdb.Transaction, db, items: list, dupdata: bool,
                  append: bool = False) -> None:
        # One C-level loop instead of a Python call per key (LMDB.md rule 9: pass a list
        # and check the counts).
        consumed, added = txn.cursor(db=db).putmulti(items, dupdata=dupdata, overwrite=True,
                                                     append=append)
        if consumed != len(items) or (append and added != consumed):
            raise StorageError(f"putmulti wrote {added} of {len(items)} items")

    def _grow(self) -> None:
        env = self._check_open()
        new_size = env.info()["map_size"] * 2
        self._rtxn.abort()
        env.set_mapsize(new_size)
        self._rtxn = env.begin(buffers=False)

    def next_header(self) -> bytes:
        """The write-state header of the next commit, as this process sees the file now
        (``_commit_once`` checks it: another writer may commit first)."""
        return _pack_state(self.state + 1)

    def history_scan(self, db: str, key: bytes, after_state: int) -> Optional[Tuple[int, bytes]]:
        """First history entry of ``key`` with a state greater than ``after_state``."""
        db_id = VERSIONED_DBS.get(db) or DUP_DBS[db]
        prefix = bytes((db_id,)) + key
        cur = self._rtxn.cursor(db=self._dbs["history"])
        if not cur.set_range(prefix + _pack_state(after_state + 1)):
            return None
        hkey = cur.key()
        if len(hkey) != len(prefix) + 8 or not hkey.startswith(prefix):
            return None
        return _unpack_state(hkey, len(prefix))[0], cur.value()

    def history_range(self, db: str, prefix: bytes) -> Iterator[Tuple[bytes, int, bytes]]:
        """Every history entry of keys starting with ``prefix``: (key, state, old value)."""
        db_id = VERSIONED_DBS.get(db) or DUP_DBS[db]
        hprefix = bytes((db_id,)) + prefix
        for hkey, value in self.scan("history", hprefix):
            yield hkey[1:-8], _unpack_state(hkey, len(hkey) - 8)[0], value

    @property
    def history_floor(self) -> int:
        """States below this were pruned by compaction and can no longer be read."""
        raw = self._rtxn.get(b"history_floor", db=self._dbs["meta"])
        return _unpack_state(raw)[0] if raw else 1

    def compact(self, before: int) -> int:
        """Drop history needed only for states older than ``before``; returns entries removed."""
        env = self._check_open()
        floor = self.history_floor
        before = min(before, self.state)
        if before <= floor:
            return 0
        removed = 0
        while True:
            try:
                with env.begin(write=True) as txn:
                    hdb = self._dbs["history"]
                    newest = current_state(txn, hdb)
                    for state in range(floor + 1, before + 1):
                        skey = JOURNAL + _pack_state(state)
                        raw = txn.get(skey, db=hdb)
                        if raw is None:
                            continue
                        for db_id, key in msgpack.unpackb(raw):
                            removed += txn.delete(history_key(db_id, key, state), db=hdb)
                        if state != newest:     # the newest journal key is the state number
                            txn.delete(skey, db=hdb)
                    txn.put(b"history_floor", _pack_state(before), db=self._dbs["meta"])
                break
            except lmdb.MapFullError:
                self._grow()
        self.refresh()
        return removed

    def journal(self, state: int) -> List[Tuple[int, bytes]]:
        raw = self._rtxn.get(JOURNAL + _pack_state(state), db=self._dbs["history"])
        return [tuple(x) for x in msgpack.unpackb(raw)] if raw else []

    # -- closing -------------------------------------------------------------------

    def copy_to(self, path: str) -> None:
        """A consistent, compacted copy of the committed data (LMDB hot copy)."""
        self._check_open().copy(path, compact=True)

    def stat(self) -> Dict[str, int]:
        env = self._check_open()
        out = {"file_size": os.path.getsize(self.path), "map_size": env.info()["map_size"]}
        for name in DB_NAMES:
            out[name + "_entries"] = self._rtxn.stat(self._dbs[name])["entries"]
        return out

    def close(self) -> None:
        with _registry_lock:
            if _open_paths.get(self.path) is self:
                del _open_paths[self.path]
        if os.getpid() != self._pid:
            self._abandon_after_fork()
            return
        if self._rtxn is not None:
            self._rtxn.abort()
            self._rtxn = None
        if self._env is not None:
            self._env.close()
            self._env = None
        self._release_writer_lock()


def current_state(txn: lmdb.Transaction, history, meta=None) -> int:
    """The last committed state as seen by ``txn``: the state of the newest journal
    (format 3), or, given ``meta``, its `state` in a format 2 file not yet upgraded; 1
    before any commit."""
    if meta is not None:
        legacy = txn.get(b"state", db=meta)
        if legacy is not None:
            return _unpack_state(legacy)[0]
    cur = txn.cursor(db=history)
    if cur.last():
        key = cur.key()
        if len(key) == len(JOURNAL) + 8 and key.startswith(JOURNAL):
            return _unpack_state(key, len(JOURNAL))[0]
    return 1


def _upgrade_to_3(txn: lmdb.Transaction, meta, history) -> None:
    """Format 2 -> 3 in place: the state moves from meta `state` to the newest journal
    (format 2 wrote none for commits that overwrote nothing)."""
    legacy = txn.get(b"state", db=meta)
    if legacy is not None:
        if txn.get(JOURNAL + legacy, db=history) is None:
            txn.put(JOURNAL + legacy, _EMPTY_JOURNAL, db=history)
        txn.delete(b"state", db=meta)
    txn.put(b"format", _pack_state(FORMAT_VERSION), db=meta)


def _mark_at(txn: lmdb.Transaction, meta, state: int) -> bytes:
    """``meta[MARK + S]`` of the latest S <= ``state``: object ids at or above it did not
    exist at ``state``.  Marks are written only by commits that moved the next object id,
    so the latest one at or before a state holds for it; before any mark, no id existed."""
    cur = txn.cursor(db=meta)
    # Keys after the marks exist (`state`, `uuid`), so set_range lands past them.
    if cur.set_range(MARK + _pack_state(state + 1)) and cur.prev():
        key = cur.key()
        if len(key) == len(MARK) + 8 and key.startswith(MARK):
            return cur.value()
    return _pack_state(1)


def _prefix_end(prefix: bytes) -> Optional[bytes]:
    """Smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


class StorageView:
    """The read interface of :class:`Storage`, answering as of a past state.

    The value of key K at state S is the first history entry of K with a state above S,
    else the live value if it was written at or before S, else absent.  Reads run in
    the live storage's short read transaction (renewed at every commit/refresh), so a
    view never pins an LMDB snapshot for its whole life.
    """

    readonly = True

    def __init__(self, storage: Storage, state: int) -> None:
        self.base = storage
        self._state = state
        self.prefix_uuid = storage.prefix_uuid
        self.path = f"{storage.path}@{state}"

    @property
    def state(self) -> int:
        return self._state

    def meta_get(self, key: bytes) -> Optional[bytes]:
        if key == b"state":
            return _pack_state(self._state)
        return self.base.meta_get(key)

    def refresh(self) -> bool:
        return False

    def get(self, db: str, key: bytes) -> Optional[bytes]:
        found = self.get_versioned(db, key)
        return None if found is None else found[1]

    def get_versioned(self, db: str, key: bytes) -> Optional[Tuple[int, bytes]]:
        base = self.base
        old = base.history_scan(db, key, self._state)
        if old is not None:
            # The value replaced at old[0]; if it was itself written after our state, the
            # key was created after it (creation writes no history): absent.
            raw = old[1]
            written = _unpack_state(raw)[0]
            return (written, raw[8:]) if written <= self._state else None
        live = base.get_versioned(db, key)
        if live is None or live[0] > self._state:
            return None
        return live

    def scan(self, db: str, prefix: bytes, start: Optional[bytes] = None,
             stop: Optional[bytes] = None, reverse: bool = False) -> Iterator[Tuple[bytes, bytes]]:
        state = self._state
        out: Dict[bytes, Optional[bytes]] = {}
        for key, wstate, payload in self.base.scan_versioned(db, prefix, start, stop):
            out[key] = payload if wstate <= state else None
        seen_old = set()
        for key, hstate, raw in self.base.history_range(db, prefix):
            if hstate <= state or key in seen_old:
                continue
            if (start is not None and key < start) or (stop is not None and key >= stop):
                continue
            seen_old.add(key)   # entries of one key come in state order: the first one wins
            out[key] = raw[8:] if _unpack_state(raw)[0] <= state else None
        keys = sorted((k for k, v in out.items() if v is not None), reverse=reverse)
        for key in keys:
            yield key, out[key]

    def dup_values(self, db: str, key: bytes) -> bytes:
        return b"".join(self.dup_list(db, key))

    def dup_ids(self, db: str, key: bytes) -> IdSet:
        return IdSet.from_be_bytes(self.dup_values(db, key))

    def _id_floor(self) -> bytes:
        """Object ids at or above this did not exist at the view's state."""
        floor = getattr(self, "_floor", None)
        if floor is None:
            base = self.base
            floor = _mark_at(base._rtxn, base._dbs["meta"], self._state)
            self._floor = floor
        return floor

    def _membership_changes(self, db: str, key: bytes) -> Dict[bytes, bool]:
        """For each member changed after the view's state: was it a member at that state?"""
        first: Dict[bytes, bool] = {}
        for hkey, hstate, raw in self.base.history_range(db, key):
            if hkey != key or hstate <= self._state:
                continue
            added, removed = msgpack.unpackb(raw)
            for value in added:
                first.setdefault(value, False)   # added later: absent before
            for value in removed:
                first.setdefault(value, True)    # removed later: present before
        return first

    def dup_list(self, db: str, key: bytes) -> List[bytes]:
        floor = self._id_floor()
        if db == "obj_tags" and key[:8] >= floor:
            return []
        members = set(self.base.dup_list(db, key))
        for value, present in self._membership_changes(db, key).items():
            if present:
                members.add(value)
            else:
                members.discard(value)
        if db == "tags":
            members = {m for m in members if m < floor}
        return sorted(members)

    def dup_count(self, db: str, key: bytes) -> int:
        return len(self.dup_list(db, key))

    def dup_contains(self, db: str, key: bytes, value: bytes) -> bool:
        if (value if db == "tags" else key[:8]) >= self._id_floor():
            return False
        past = self._membership_changes(db, key).get(value)
        if past is not None:
            return past
        return self.base.dup_contains(db, key, value)

    def journal(self, state: int) -> List[Tuple[int, bytes]]:
        return self.base.journal(state)

    def close(self) -> None:
        """Views own no LMDB resources."""
