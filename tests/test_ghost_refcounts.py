"""References taken to objects that are not loaded (ghosts): the increment waits on the
proxy and the commit patches it into the stored record, without decoding it."""

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dbzero as db0
from dbzero import workspace
from dbzero.prefix import F_GHOST, F_RCDELTA
from dbzero_ext.core import add_to_refcounts, read_record


@db0.memo(id="ghostrc.Doc")
class Doc:
    def __init__(self, i):
        self.i = i
        self.name = f"doc{i}"


@db0.memo(id="ghostrc.Holder")
class Holder:
    def __init__(self, value=None):
        self.value = value


def _prefix():
    return workspace.current().current_prefix()


def _stored(px, obj):
    """(write state, decoded record) of ``obj`` as committed."""
    found = px.storage.get_versioned("objects", obj._oid.to_bytes(8, "big"))
    return found[0], msgpack.unpackb(found[1], strict_map_key=False)


def _ghosts(n):
    """``n`` committed Docs, handed back as ghosts (nothing of them decoded)."""
    made = [Doc(i) for i in range(n)]
    db0.commit()
    del made        # the proxies die (count 0 objects are collected at the next commit)
    docs = sorted(db0.find(Doc), key=lambda d: d._oid)
    assert len(docs) == n and all(d._flags & F_GHOST for d in docs)
    return docs


def test_adding_ghosts_to_an_index_neither_loads_them_nor_writes_history(db):
    docs = _ghosts(50)
    px = _prefix()
    before = {d._oid: _stored(px, d) for d in docs}
    ix = db0.index()
    keep = Holder(ix)  # noqa: F841 (unheld objects of count 0 are collected)
    for k, d in enumerate(docs):
        ix.add(k, d)
    assert all(d._flags & F_GHOST and d._flags & F_RCDELTA and d._rc == 1 for d in docs)
    db0.commit()
    state = db0.get_state_num(finalized=True)
    journal = {key for _db, key in px.storage.journal(state)}
    for d in docs:
        assert d._flags & F_GHOST and not d._flags & F_RCDELTA and d._rc == 0
        wstate, record = _stored(px, d)
        old_wstate, old_record = before[d._oid]
        assert wstate == old_wstate                         # write state kept
        assert record == [old_record[0], old_record[1] + 1] + old_record[2:]
        assert d._oid.to_bytes(8, "big") not in journal
    assert [db0.getrefcount(d) for d in docs] == [1] * 50
    assert [(d.i, d.name) for d in docs] == [(i, f"doc{i}") for i in range(50)]


def test_a_load_before_the_commit_counts_the_pending_increments_once(db):
    docs = _ghosts(3)
    ix = db0.index()
    keep = Holder(ix)  # noqa: F841 (unheld objects of count 0 are collected)
    for d in docs:
        ix.add("a", d)
        ix.add("b", d)
    assert docs[0]._rc == 2 and docs[0]._flags & F_GHOST
    assert docs[0].i == 0                                   # loads it
    assert not docs[0]._flags & (F_GHOST | F_RCDELTA)
    assert db0.getrefcount(docs[0]) == 2
    ix.add("c", docs[0])                                    # loaded: the ordinary path
    db0.commit()
    uids = [db0.uuid(d) for d in docs]
    del docs, d
    assert [db0.getrefcount(db0.fetch(u)) for u in uids] == [3, 2, 2]


def test_releasing_a_ghost_with_pending_increments(db):
    docs = _ghosts(2)
    ix = db0.index()
    keep = Holder(ix)  # noqa: F841 (unheld objects of count 0 are collected)
    for d in docs:
        ix.add(1, d)
    ix.remove(1, docs[0])
    assert not docs[0]._flags & F_GHOST and db0.getrefcount(docs[0]) == 0
    uid0, uid1 = db0.uuid(docs[0]), db0.uuid(docs[1])
    del docs, d
    db0.commit()        # unreferenced and not held: collected
    with pytest.raises(db0.ReferenceError):
        db0.fetch(uid0)
    assert db0.getrefcount(db0.fetch(uid1)) == 1


def test_ghost_of_an_evicted_object_does_not_count_its_last_loaded_count(db):
    doc = Doc(0)
    keep = [Holder(doc)]
    db0.commit()
    assert db0.getrefcount(doc) == 1
    px = _prefix()
    px.invalidate([doc._oid], True, None)       # back to a ghost, _rc as last loaded
    assert doc._flags & F_GHOST and doc._rc == 1
    keep.append(Holder(doc))
    assert doc._flags & F_RCDELTA and doc._rc == 1
    db0.commit()
    assert _stored(px, doc)[1][1] == 2
    assert db0.getrefcount(doc) == 2


def test_atomic_rollback_drops_pending_increments(db):
    docs = _ghosts(2)
    px = _prefix()
    ix = db0.index()
    keep = Holder(ix)  # noqa: F841 (unheld objects of count 0 are collected)
    db0.commit()
    with pytest.raises(KeyError):
        with db0.atomic():
            ix.add(1, docs[0])
            assert docs[0]._flags & F_RCDELTA
            raise KeyError
    assert docs[0]._flags & F_GHOST and not docs[0]._flags & F_RCDELTA
    ix.add(2, docs[1])
    db0.commit()
    assert _stored(px, docs[0])[1][1] == 0 and _stored(px, docs[1])[1][1] == 1
    assert len(ix) == 1


def test_commit_across_prefixes_writes_the_increments_with_history(db):
    docs = _ghosts(2)
    px = _prefix()
    written = _stored(px, docs[0])[0]
    ix = db0.index()
    keep = Holder(ix)  # noqa: F841 (unheld objects of count 0 are collected)
    db0.commit()
    ix.add(1, docs[0])
    db0.open("other")
    other = Holder(5)  # noqa: F841 (a second prefix with changes: both commit together)
    db0.commit()
    state = px.storage.state
    assert (2, docs[0]._oid.to_bytes(8, "big")) in px.storage.journal(state)
    assert _stored(px, docs[0])[0] == state > written
    assert db0.getrefcount(docs[0]) == 1 and db0.getrefcount(docs[1]) == 0


def test_snapshot_before_the_increments_reads_the_same_fields(db):
    docs = _ghosts(3)
    before = db0.get_state_num(finalized=True)
    ix = db0.index()
    keep = Holder(ix)  # noqa: F841 (unheld objects of count 0 are collected)
    for d in docs:
        ix.add(d._oid, d)
    db0.commit()
    with db0.snapshot(before) as snap:
        assert sorted(o.i for o in snap.find(Doc)) == [0, 1, 2]


# -- the record patch -------------------------------------------------------------------

_INT = st.one_of(st.integers(-40, 300), st.integers(-2**40, 2**40), st.sampled_from(
    [0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, -32, -33, -128, -129,
     -32768, -32769, -2**31, -2**31 - 1]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(16, 70000), _INT, _INT,
       st.lists(st.one_of(st.integers(-2**63, 2**64 - 1), st.text(max_size=40), st.binary(max_size=300),
                          st.floats(allow_nan=False), st.none()), max_size=20),
       st.binary(min_size=8, max_size=8))
def test_patched_record_is_the_record_msgpack_writes(class_id, rc, delta, slots, header):
    # Int sizes change with the count (fixint, 8, 16, 32, 64 bits): the bytes around it
    # must be kept exactly, and the result must be what packing the new count gives.
    rc_new = rc + delta
    if not -2**63 <= rc_new < 2**63:
        return
    old = header + msgpack.packb([class_id, rc] + slots)
    (key, new), = add_to_refcounts([(b"k", old)], [(b"k", delta)])
    assert key == b"k"
    assert new == header + msgpack.packb([class_id, rc_new] + slots)
    assert read_record(new, 8, None)[1] == rc_new


def test_patch_skips_keys_without_a_stored_record():
    old = b"\0" * 8 + msgpack.packb([20, 1, "x"])
    out = add_to_refcounts([(b"b", old)], [(b"a", 1), (b"b", 2), (b"c", 3)])
    assert out == [(b"b", b"\0" * 8 + msgpack.packb([20, 3, "x"]))]


# -- model ------------------------------------------------------------------------------

_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 4), st.integers(0, 2)),
    st.tuples(st.just("remove"), st.integers(0, 4), st.integers(0, 2)),
    st.tuples(st.just("hold"), st.integers(0, 4)),
    st.tuples(st.just("load"), st.integers(0, 4)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("regather")),
), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(_OPS)
def test_model_counts_through_ghosts_loads_and_commits(tmp_path_factory, ops):
    root = str(tmp_path_factory.mktemp("model"))
    db0.init(root, prefix="model", autocommit=False)
    try:
        docs = [Doc(i) for i in range(5)]
        uids = [db0.uuid(d) for d in docs]
        ix = db0.index()
        keep = Holder(ix)
        holders = Holder([])
        db0.commit()
        docs = None
        docs = sorted(db0.find(Doc), key=lambda d: d._oid)
        assert len(docs) == 5
        pairs, held = set(), [0] * 5

        def expected(i):
            return sum(1 for _k, j in pairs if j == i) + held[i]

        for op in ops:
            if op[0] == "add":
                ix.add(op[2], docs[op[1]])
                pairs.add((op[2], op[1]))
            elif op[0] == "remove":
                if (op[2], op[1]) in pairs:
                    ix.remove(op[2], docs[op[1]])
                    pairs.discard((op[2], op[1]))
            elif op[0] == "hold":
                holders.value.append(docs[op[1]])
                held[op[1]] += 1
            elif op[0] == "load":
                assert docs[op[1]].i == op[1]
                assert db0.getrefcount(docs[op[1]]) == expected(op[1])
            elif op[0] == "commit":
                db0.commit()
            else:
                # Fresh ghosts for the committed state (the old proxies are let go).
                db0.commit()
                docs = None
                docs = sorted(db0.find(Doc), key=lambda d: d._oid)
        db0.commit()
        docs = None
        px = _prefix()
        for i, uid in enumerate(uids):
            obj = db0.fetch(uid)
            assert db0.getrefcount(obj) == expected(i)
            assert _stored(px, obj)[1][1] == expected(i)
        assert keep.value is ix
    finally:
        db0.close()


def test_failed_commit_across_prefixes_drops_pending_increments(db, monkeypatch):
    """A commit of several prefixes that fails before its decision drops the pending
    increments of the prefix it had not reached yet (rollback_pending); nothing of them
    is written afterwards."""
    from dbzero import coordinator
    db0.open("zz-ghosts")                       # sorted after "test": committed second
    docs = _ghosts(2)
    px = _prefix()
    ix = db0.index()
    keep = Holder(ix)  # noqa: F841 (unheld objects of count 0 are collected)
    db0.commit()
    ix.add(1, docs[0])
    assert docs[0]._flags & F_RCDELTA
    db0.open("test")                            # the other prefix, with a change
    other = Holder(1)
    assert other._px is not px and other._px.name < px.name

    def fail(point):
        if point == "prepared-1":
            raise OSError("disk on fire")

    monkeypatch.setattr(coordinator, "_kill_point", fail)
    with pytest.raises(OSError):
        db0.commit()
    monkeypatch.undo()
    assert not docs[0]._flags & F_RCDELTA
    assert len(ix) == 0 and db0.getrefcount(docs[0]) == 0
    written = _stored(px, docs[0])
    db0.commit()
    assert _stored(px, docs[0]) == written and written[1][1] == 0
