"""The LMDB storage layer: batches, duplicate sets, history, map growth, format checks."""

import os
import struct

import lmdb
import pytest

from dbzero import errors, storage
from dbzero.storage import Storage, StorageView, WriteBatch

oid = struct.Struct(">Q").pack


@pytest.fixture
def st(tmp_path):
    s = Storage(str(tmp_path / "p.db0"), readonly=False)
    yield s
    s.close()


def test_put_get_and_state(st):
    assert st.state == 1
    b = WriteBatch()
    b.put("objects", oid(1), b"one", fresh=True)
    assert st.commit(b) == 2
    assert st.get("objects", oid(1)) == b"one" and st.get_versioned("objects", oid(1)) == (2, b"one")
    b = WriteBatch()
    b.put("objects", oid(1), b"uno")
    st.commit(b)
    assert st.get("objects", oid(1)) == b"uno"
    assert st.history_scan("objects", oid(1), 2) == (3, struct.pack(">Q", 2) + b"one")
    assert st.journal(3) == [(2, oid(1))]
    b = WriteBatch()
    b.delete("objects", oid(1))
    st.commit(b)
    assert st.get("objects", oid(1)) is None
    view = StorageView(st, 3)
    assert view.get("objects", oid(1)) == b"uno"
    assert StorageView(st, 2).get("objects", oid(1)) == b"one"
    assert StorageView(st, 1).get("objects", oid(1)) is None


def test_duplicate_sets_keep_every_member(st):
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(11)  # ids 1..10 allocated by this commit (0 is never an id)
    for i in range(1, 11):
        b.dup("tags", b"Ctag", oid(i), True)
    b.dup("tags", b"Ctag", oid(3), True)  # adding twice is one member
    st.commit(b)
    assert st.dup_count("tags", b"Ctag") == 10
    assert st.dup_values("tags", b"Ctag") == b"".join(oid(i) for i in range(1, 11))
    b = WriteBatch()
    b.dup("tags", b"Ctag", oid(4), False)
    st.commit(b)
    assert not st.dup_contains("tags", b"Ctag", oid(4))
    assert StorageView(st, 2).dup_contains("tags", b"Ctag", oid(4))
    assert StorageView(st, 2).dup_count("tags", b"Ctag") == 10
    assert StorageView(st, 1).dup_count("tags", b"Ctag") == 0


def test_scan_range_reverse_and_view(st):
    b = WriteBatch()
    for i in range(5):
        b.put("chunks", oid(7) + bytes([i]), bytes([i]), fresh=True)
    b.put("chunks", oid(8) + b"\x00", b"other", fresh=True)
    st.commit(b)
    keys = [k for k, _ in st.scan("chunks", oid(7))]
    assert keys == [oid(7) + bytes([i]) for i in range(5)]
    assert [k for k, _ in st.scan("chunks", oid(7), reverse=True)] == keys[::-1]
    assert [k for k, _ in st.scan("chunks", oid(7), start=keys[1], stop=keys[3])] == keys[1:3]
    b = WriteBatch()
    b.delete("chunks", keys[0])
    b.put("chunks", keys[1], b"new")
    st.commit(b)
    old = dict(StorageView(st, 2).scan("chunks", oid(7)))
    assert old == {k: bytes([i]) for i, k in enumerate(keys)}
    assert dict(StorageView(st, 3).scan("chunks", oid(7)))[keys[1]] == b"new"


def test_map_grows_inside_the_library(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "INITIAL_MAP_SIZE", 1 << 20)
    s = Storage(str(tmp_path / "small.db0"), readonly=False)
    try:
        for round_ in range(8):
            b = WriteBatch()
            for i in range(200):
                b.put("objects", oid(round_ * 1000 + i), os.urandom(2000), fresh=True)
            s.commit(b)
        assert s.stat()["objects_entries"] == 1600
    finally:
        s.close()


def test_one_environment_per_file_per_process(st):
    with pytest.raises(errors.StorageError, match="already open"):
        Storage(st.path, readonly=True)


def test_unknown_format_version_is_refused(tmp_path):
    path = str(tmp_path / "v.db0")
    Storage(path, readonly=False).close()
    env = lmdb.open(path, subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", struct.pack(">Q", 99), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(errors.FormatError, match="unsupported format version 99"):
        Storage(path, readonly=False)


def test_not_a_dbzero_file(tmp_path):
    path = str(tmp_path / "foreign.db0")
    env = lmdb.open(path, subdir=False)
    env.close()
    with pytest.raises(errors.FormatError):
        Storage(path, readonly=True)


def test_missing_file_read_only(tmp_path):
    with pytest.raises(errors.PrefixNotFoundError):
        Storage(str(tmp_path / "none.db0"), readonly=True)


def test_compaction_removes_history(st):
    for v in range(5):
        b = WriteBatch()
        b.meta[b"next_oid"] = oid(5)
        b.put("objects", oid(1), bytes([v]), fresh=v == 0)
        b.dup("tags", b"t", oid(v), True)
        st.commit(b)
    assert st.compact(4) > 0
    assert st.history_floor == 4
    assert StorageView(st, 4).get("objects", oid(1)) == bytes([2])
    assert all(st.journal(state) == [] for state in range(1, 5))
    assert st.journal(6) != []


def _meta_keys(st):
    with st._env.begin() as txn:
        return [key for key, _ in txn.cursor(db=st._dbs["meta"])]


def test_id_marks_only_when_the_next_id_moves(st):
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(11)
    for i in range(1, 11):
        b.dup("tags", b"Ctag", oid(i), True)
    assert st.commit(b) == 2
    for v in range(3):      # states 3-5 create nothing: no mark, no next_oid rewrite
        b = WriteBatch()
        b.meta[b"next_oid"] = oid(11)
        b.put("objects", oid(1), bytes([v]), fresh=v == 0)
        st.commit(b)
    assert [k for k in _meta_keys(st) if k.startswith(storage.MARK)] == [storage.MARK + oid(2)]
    # The mark of state 2 holds for 3-5; ids 11.. did not exist at any of them.
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(13)
    b.dup("tags", b"Ctag", oid(11), True)
    b.dup("tags", b"Ctag", oid(12), True)
    assert st.commit(b) == 6
    for state in (3, 5):
        assert StorageView(st, state).dup_count("tags", b"Ctag") == 10
        assert not StorageView(st, state).dup_contains("tags", b"Ctag", oid(11))
    assert StorageView(st, 6).dup_count("tags", b"Ctag") == 12
    assert StorageView(st, 1).dup_count("tags", b"Ctag") == 0


def test_ids_reserved_between_commits_get_a_mark(st):
    # Shared writers reserve ids outside commits (allocate_ids) and leave next_oid out of
    # the batch: the commit that uses them must still mark them as existing.
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(3)
    b.dup("tags", b"Ctag", oid(1), True)
    assert st.commit(b) == 2
    assert st.allocate_ids(10) == 3
    b = WriteBatch()
    b.dup("tags", b"Ctag", oid(3), True)
    assert st.commit(b) == 3
    assert StorageView(st, 3).dup_contains("tags", b"Ctag", oid(3))
    assert not StorageView(st, 2).dup_contains("tags", b"Ctag", oid(3))


def _set_format(path, version):
    env = lmdb.open(path, subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", struct.pack(">Q", version), db=env.open_db(b"meta", txn=txn))
    env.close()


def test_format_2_is_read_and_upgraded(tmp_path):
    # Format 2 kept the state in meta `state`, wrote no journal for commits that
    # overwrote nothing, and a mark at every state (read by the latest-mark rule alike).
    path = str(tmp_path / "v2.db0")
    s = Storage(path, readonly=False)
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(2)
    b.dup("tags", b"Ctag", oid(1), True)
    s.commit(b)
    s.close()
    env = lmdb.open(path, subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        meta, history = env.open_db(b"meta", txn=txn), env.open_db(b"history", txn=txn)
        assert txn.delete(storage.JOURNAL + oid(2), db=history)
        txn.put(b"state", oid(2), db=meta)
        txn.put(b"format", oid(2), db=meta)
    env.close()
    s = Storage(path, readonly=True)
    assert s.state == 2 and s.meta_get(b"format") == oid(2)
    assert StorageView(s, 2).dup_contains("tags", b"Ctag", oid(1))
    s.close()
    s = Storage(path, readonly=False)
    assert s.meta_get(b"format") == oid(storage.FORMAT_VERSION)
    assert s.meta_get(b"state") is None and s.state == 2 and s.journal(2) == []
    assert s.commit(WriteBatch()) == 3
    s.close()


def test_every_commit_writes_its_journal(st):
    # The newest journal key is the state number: commits that overwrite nothing and
    # compaction up to the current state keep it.
    b = WriteBatch()
    b.put("objects", oid(1), b"one", fresh=True)
    assert st.commit(b) == 2
    assert st.meta_get(b"state") is None
    with st._env.begin() as txn:
        assert txn.get(storage.JOURNAL + oid(2), db=st._dbs["history"]) is not None
    b = WriteBatch()
    b.put("objects", oid(1), b"two")
    assert st.commit(b) == 3
    st.compact(3)
    assert st.history_floor == 3 and st.state == 3
    assert st.commit(WriteBatch()) == 4
    assert StorageView(st, 3).get("objects", oid(1)) == b"two"


def test_new_records_and_members_out_of_append_order(st):
    """New ids usually sort after everything stored (and go in with MDB_APPEND); ids handed
    out in blocks to shared writers may not, and must still land."""
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(100)
    b.fresh_objects = [(oid(90), b"ninety")]
    b.dup_set("tags", [(b"Ctag", oid(90))], [])
    st.commit(b)
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(101)
    b.fresh_objects = [(oid(5), b"five"), (oid(6), b"six")]      # below the last key
    b.dup_set("tags", [(b"Btag", oid(5)), (b"Ctag", oid(5)), (b"Ctag", oid(6))], [])
    st.commit(b)
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(102)
    b.fresh_objects = [(oid(101), b"last")]                          # past it: appended
    b.dup_set("tags", [(b"Ctag", oid(101))], [])
    st.commit(b)
    assert [st.get("objects", oid(i)) for i in (5, 6, 90, 101)] == [b"five", b"six", b"ninety", b"last"]
    assert st.dup_values("tags", b"Ctag") == b"".join(oid(i) for i in (5, 6, 90, 101))
    assert st.dup_values("tags", b"Btag") == oid(5)
    assert StorageView(st, 2).dup_values("tags", b"Ctag") == oid(90)


def test_fresh_records_packed_for_another_state_are_rewritten(st):
    """Records are packed with the header of the state the writer expects; if another
    writer committed first, the commit re-heads them instead of storing a wrong state."""
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(10)
    b.fresh_objects = [(oid(1), storage._pack_state(st.state + 1) + b"one")]
    b.fresh_header = st.next_header()
    assert st.commit(b) == 2
    assert st.get_versioned("objects", oid(1)) == (2, b"one")
    b = WriteBatch()
    b.meta[b"next_oid"] = oid(11)
    b.fresh_objects = [(oid(2), storage._pack_state(7) + b"two")]
    b.fresh_header = storage._pack_state(7)         # a stale guess
    assert st.commit(b) == 3
    assert st.get_versioned("objects", oid(2)) == (3, b"two")


def test_memo_commits_use_the_packed_headers(tmp_path, monkeypatch):
    import dbzero as db0

    @db0.memo(id="tests.storage.Fresh")
    class Fresh:
        def __init__(self, n):
            self.n = n

    db0.init(str(tmp_path), prefix="p", autocommit=False)
    try:
        def refuse(*_args):
            raise AssertionError("fresh records re-headed although the state was right")
        monkeypatch.setattr(storage, "with_header", refuse)
        for round_ in range(3):
            objs = [Fresh(i) for i in range(5)]
            db0.commit()
        db0.clear_cache()
        assert [o.n for o in objs] == list(range(5))      # reloaded from the records
    finally:
        db0.close()
