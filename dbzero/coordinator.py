"""Atomic commits across prefixes (presumed abort).  The protocol: docs/transactions.md.

When one commit (``db0.commit()``, an autocommit tick, ``db0.close()``) has changes in two or
more prefixes held with the exclusive writer lock, they are committed together:

1. **prepare** - each participant, in name order, commits its batch as usual plus the meta
   record ``prepared`` = {transaction id, its new state, the keys it wrote, the set
   memberships it added}.  The data is durable but not yet decided.
2. **decide** - the decision file ``<root>/.db0-tx/<txid>`` is written and fsync'ed, then
   its directory.  This is the commit point.
3. **finish** - each participant's ``prepared`` record is deleted (a meta-only LMDB write
   that makes no new state), then the decision file is removed.

Recovery happens when a prefix is opened read-write: a ``prepared`` record whose decision
file exists is simply cleared (committed); one without a decision file is rolled back as
a new state that restores every overwritten key from ``history``, deletes every key the
prepared state created and reverts its set-membership changes.  Presumed abort: no
decision file means "abort".

Shared-writer prefixes (``shared=True``) do not take part: each of them commits on its
own (see dbzero/sharing.py and docs/processes.md).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from typing import Any, Dict, List, Optional

import lmdb
import msgpack

from . import errors
from .storage import DUP_DBS, VERSIONED_DBS, Storage, WriteBatch

DECISION_DIR = ".db0-tx"
MARKER = b"prepared"
KILL_ENV = "DB0_TEST_KILL_AT"       # test hook: SIGKILL this process at a protocol point

_DB_NAMES = {v: k for k, v in list(VERSIONED_DBS.items()) + list(DUP_DBS.items())}


def _kill_point(point: str) -> None:
    """Tests set DB0_TEST_KILL_AT=<point> to die exactly there (prepared-1, prepared-2,
    decided, cleared-1, ...)."""
    target = os.environ.get(KILL_ENV)
    if target and target == point:
        os.kill(os.getpid(), signal.SIGKILL)


# -- committing ---------------------------------------------------------------------------------

def commit_all(ws, prefixes: List[Any]) -> None:
    """Commit the given prefixes: shared writers one by one, and every exclusive read-write
    prefix with changes atomically together (one plain commit if only one changed)."""
    exclusive = []
    for px in prefixes:
        if px.readonly or px.closed:
            continue
        if px.shared:
            px.commit()
        else:
            exclusive.append(px)
    changed = [px for px in exclusive if px.has_changes()]
    if len(changed) < 2:
        for px in changed:
            px.commit()
        return
    commit_together(ws, changed)


def commit_together(ws, prefixes: List[Any]) -> None:
    """Commit several exclusive prefixes all-or-nothing (also across a crash)."""
    txid = os.urandom(8).hex()
    prefixes = sorted(prefixes, key=lambda px: px.name)
    names = [px.name for px in prefixes]
    prepared: List[Any] = []
    decided = False
    try:
        for px in prefixes:
            storage = px.storage
            storage.commit_hook = lambda batch, _s=storage: _add_marker(_s, txid, names, batch)
            saved_in_place = getattr(px, "in_place_refcounts", None)
            if saved_in_place is not None:
                px.in_place_refcounts = False   # every change must have history to be undone
            try:
                made = px.commit()
            finally:
                storage.commit_hook = None
                if saved_in_place is not None:
                    px.in_place_refcounts = saved_in_place
            if made:
                prepared.append(px)
                _kill_point(f"prepared-{len(prepared)}")
        if len(prepared) >= 2:
            _write_decision(ws.root, txid, [px.name for px in prepared])
            decided = True
            _kill_point("decided")
        for i, px in enumerate(prepared):
            _clear_marker(px.storage)
            _kill_point(f"cleared-{i + 1}")
        if decided:
            _remove_decision(ws.root, txid)
    except BaseException:
        if not decided:
            _abort(prefixes, prepared)
        raise


def _add_marker(storage: Storage, txid: str, participants: List[str], batch: WriteBatch) -> None:
    # Keys rewritten in place (reference counts only) keep no history and cannot be undone;
    # commit_together turns that optimisation off, this only guards against deleting them.
    puts = [[name, key] for name, ops in batch.puts.items() for key, value in ops.items()
            if value is not None]
    puts += [["objects", key] for key, _value in getattr(batch, "fresh_objects", ())]
    adds = [[name, key, value] for name, key, value in batch.dup_adds()]
    batch.meta[MARKER] = msgpack.packb({"tx": txid, "state": storage.state + 1,
                                        "participants": participants, "puts": puts, "adds": adds})


def _abort(participants: List[Any], prepared: List[Any]) -> None:
    """The commit failed before the decision: neither prefix keeps the changes.

    Prepared participants are rolled back on disk now (their cached objects reload the
    old state); the others drop their pending changes.
    """
    from . import sharing
    for px in participants:
        try:
            if px in prepared:
                storage = px.storage
                before = storage.state
                rollback_prepared(storage)
                sharing.apply_journal(px, before, storage.state, include_dirty=True)
            else:
                sharing.rollback_pending(px)
        except Exception:
            continue        # recovery at the next read-write open finishes a prepared one


# -- decision files -------------------------------------------------------------------------------

def _decision_path(root: str, txid: str) -> str:
    return os.path.join(root, DECISION_DIR, txid)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_decision(root: str, txid: str, participants: List[str]) -> None:
    directory = os.path.join(root, DECISION_DIR)
    if not os.path.isdir(directory):
        os.makedirs(directory, exist_ok=True)
        _fsync_dir(root)
    path = _decision_path(root, txid)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(msgpack.packb({"tx": txid, "participants": participants, "time": time.time()}))
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
    _fsync_dir(directory)


def _remove_decision(root: str, txid: str) -> None:
    try:
        os.unlink(_decision_path(root, txid))
    except FileNotFoundError:
        pass


def _clear_marker(storage: Storage) -> None:
    """Delete the ``prepared`` record without making a new state."""
    env = storage._check_open()
    while True:
        try:
            with env.begin(write=True) as txn:
                txn.delete(MARKER, db=storage._dbs["meta"])
            return
        except lmdb.MapFullError:
            storage._grow()


def _read_marker(storage: Storage) -> Optional[Dict[str, Any]]:
    raw = storage.meta_get(MARKER)
    if not raw:
        return None
    return msgpack.unpackb(raw, raw=False)


# -- recovery ---------------------------------------------------------------------------------------

def rollback_prepared(storage: Storage) -> bool:
    """Undo the prepared (undecided) state of ``storage`` as a new state; True if done."""
    storage.refresh()
    marker = _read_marker(storage)
    if marker is None:
        return False
    state = marker["state"]
    if storage.state != state:
        raise errors.FormatError(f"{storage.path}: prepared state {state} of cross-prefix commit "
                                 f"{marker['tx']} is followed by state {storage.state}; "
                                 "cannot roll it back safely")
    journal = set((db_id, bytes(key)) for db_id, key in storage.journal(state))
    batch = WriteBatch()
    created_objects = set()
    for name, key in marker["puts"]:
        key = bytes(key)
        if (VERSIONED_DBS[name], key) in journal:
            continue
        batch.delete(name, key)             # created by the prepared state
        if name == "objects":
            created_objects.add(key)
    for db_id, key in sorted(journal):
        name = _DB_NAMES[db_id]
        found = storage.history_scan(name, key, state - 1)
        if found is None or found[0] != state:
            continue
        old = found[1]
        if name in VERSIONED_DBS:
            batch.put(name, key, old[8:])   # the value before the prepared state
        else:
            member, value = (key[:-8], key[-8:]) if name == "tags" else (key[:8], key[8:])
            batch.dup(name, member, value, add=old == b"\x01")
    for name, key, value in marker["adds"]:
        key, value = bytes(key), bytes(value)
        if (DUP_DBS[name], key + value) in journal:
            continue
        oid = value if name == "tags" else key[:8]
        if oid in created_objects:
            batch.dup(name, key, value, add=False)  # membership of an object created there
    batch.meta[MARKER] = b""
    Storage.commit(storage, batch)
    return True


def recover_on_open(ws, storage: Storage) -> None:
    """Finish or undo an interrupted cross-prefix commit found when opening read-write."""
    marker = _read_marker(storage)
    if marker is None:
        return
    if getattr(storage, "shared", False):
        _recover_shared(ws, storage)
        return
    _recover_exclusive(ws, storage, marker)


def _recover_exclusive(ws, storage: Storage, marker: Dict[str, Any]) -> None:
    if os.path.exists(_decision_path(ws.root, marker["tx"])):
        _clear_marker(storage)          # committed: the decision was made before the crash
        storage.refresh()
    else:
        rollback_prepared(storage)      # presumed abort


def _recover_shared(ws, storage: Storage, timeout: float = 5.0) -> None:
    """A shared writer found a marker: recovery needs the exclusive lock for a moment."""
    fd = storage._lock_fd
    deadline = time.monotonic() + timeout
    while True:
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            got = False
        if got:
            try:
                storage.refresh()
                marker = _read_marker(storage)
                if marker is not None:
                    _recover_exclusive(ws, storage, marker)
            finally:
                fcntl.flock(fd, fcntl.LOCK_SH)      # downgrade: nobody else holds the lock
            return
        _relock_shared(fd, deadline)
        storage.refresh()
        if _read_marker(storage) is None:
            return                      # another shared writer recovered it meanwhile
        if time.monotonic() >= deadline:
            raise errors.PrefixLockedError(f"{storage.path}: an interrupted cross-prefix commit needs "
                                           "recovery, but other processes hold the prefix open")
        time.sleep(0.005)


def _relock_shared(fd: int, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
        if time.monotonic() >= deadline:
            raise errors.PrefixLockedError(f"Failed to aquire lock of: {os.readlink(f'/proc/self/fd/{fd}')}")
        time.sleep(0.002)
