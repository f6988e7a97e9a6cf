"""uuid / fetch / exists / delete / refcounts / weak references (API.md §5, §12)."""

import gc

import pytest
from hypothesis import given, settings, strategies as st

from dbzero_ext.codec import decode_uuid

import dbzero as db0
from dbzero import workspace


@db0.memo
class Item:
    def __init__(self, ref=None):
        self.ref = ref


@db0.memo(singleton=True)
class Root:
    def __init__(self):
        self.items = None


def test_uuid_shape_and_stability(db, root):
    it = Item()
    Root().keep = it
    uid = db0.uuid(it)
    assert len(uid) == 24 and uid.isupper() and uid.isalnum()
    assert db0.uuid(it) == uid
    db0.commit()
    db0.close()
    db0.init(root, prefix="test")
    assert db0.uuid(db0.fetch(uid)) == uid


def test_uuid_of_non_memo(db):
    for bad in (1, "x", Item, None):
        with pytest.raises(RuntimeError, match="Unable to generate UUID"):
            db0.uuid(bad)


def test_fetch_identity_and_errors(db):
    it = Item()
    uid = db0.uuid(it)
    assert db0.fetch(uid) is it
    assert db0.fetch(uid, Item) is it
    with pytest.raises(RuntimeError, match="Object type mismatch"):
        db0.fetch(uid, Root)
    for bad in ("", "short", uid.lower(), "!" * 24):
        with pytest.raises(RuntimeError, match="Invalid UUID"):
            db0.fetch(bad)
        assert not db0.exists(bad)
    with pytest.raises(RuntimeError, match="Invalid argument type"):
        db0.fetch(3.5)
    with pytest.raises(RuntimeError, match="Invalid argument type"):
        db0.exists(3.5)
    other_prefix = "A" * 11 + uid[11:]
    with pytest.raises(RuntimeError, match="not found"):
        db0.fetch(other_prefix)
    assert db0.exists(uid) and db0.exists(uid, Item) and not db0.exists(uid, Root)


def test_fetch_from_another_prefix_auto_opens_read_only(root):
    db0.init(root, prefix="a")
    it = Item()
    Root().keep = it
    uid = db0.uuid(it)
    db0.close()
    db0.init(root, prefix="b")
    assert db0.fetch(uid).ref is None
    assert [p.name for p in db0.get_mutable_prefixes()] == ["b"]
    assert db0.get_current_prefix().name == "b"


def test_refcounts_and_reachability_gc(db):
    lonely = Item()
    lonely_uid = db0.uuid(lonely)
    child = Item()
    parent = Item(child)
    Root().parent = parent
    assert db0.getrefcount(lonely) == 0 and db0.getrefcount(child) == 1
    a, b = Item(), Item()
    a.ref, b.ref = b, a  # a cycle with no outside reference is never collected
    cycle = [db0.uuid(a), db0.uuid(b)]
    child_uid = db0.uuid(child)
    del lonely, child, a, b
    gc.collect()
    assert db0.exists(lonely_uid)  # deletion takes effect at the next commit
    db0.commit()
    assert not db0.exists(lonely_uid)
    assert db0.exists(child_uid) and all(db0.exists(u) for u in cycle)
    with pytest.raises(db0.ReferenceError):
        db0.fetch(lonely_uid)
    parent.ref = None
    db0.commit()
    assert not db0.exists(child_uid)


def test_overwritten_reference_releases(db):
    r = Root()
    r.slot = Item()
    first = db0.uuid(r.slot)
    r.slot = Item()
    db0.commit()
    assert not db0.exists(first)
    del r.slot
    gc.collect()
    db0.commit()
    assert db0.getrefcount(r) == 0  # singleton: never collected


def test_delete(db):
    x = Item()
    y = Item(x)
    Root().y = y
    with pytest.raises(RuntimeError, match="Cannot delete a memo object with references"):
        db0.delete(x)
    db0.delete(5)  # non-memo: ignored
    z = Item()
    uid = db0.uuid(z)
    db0.delete(z)
    with pytest.raises(db0.ReferenceError, match="Memo instance expired"):
        z.ref
    with pytest.raises(db0.ReferenceError):
        z.ref = 1
    assert not db0.exists(uid)
    db0.commit()
    assert not db0.exists(uid)


def test_delete_singleton(db):
    r = Root()
    db0.delete(r)
    assert not db0.exists(Root)
    assert Root() is not r


def test_getrefcount_errors(db):
    with pytest.raises(RuntimeError, match="Unable to retrieve ref count for type: int"):
        db0.getrefcount(1)


def test_weak_proxy(db):
    target = Item()
    holder = Item()
    Root().holder = holder
    holder.ref = db0.weak_proxy(target)
    assert holder.ref is target and db0.getrefcount(target) == 0
    assert not db0.expired(holder.ref)
    uid = db0.uuid(target)
    del target
    gc.collect()
    db0.commit()
    assert not db0.exists(uid)
    assert db0.expired(holder.ref)
    with pytest.raises(db0.ReferenceError, match="Memo instance expired"):
        holder.ref.ref
    with pytest.raises(TypeError):
        db0.weak_proxy(5)


def test_cross_prefix_references_are_weak(root):
    db0.init(root, prefix="main", autocommit=False)

    @db0.memo(prefix="data")
    class Note:
        def __init__(self, text):
            self.text = text

    n = Note("hello")
    d = Item()
    Root().d = d
    d.ref = n
    assert d.ref is n and db0.getrefcount(n) == 0
    uid = db0.uuid(n)
    del n
    gc.collect()
    db0.commit()
    assert not db0.exists(uid)
    assert db0.expired(d.ref)
    with pytest.raises(db0.ReferenceError):
        d.ref.text


def test_readers_do_not_watch_unreferenced_objects(root):
    # A read-only prefix never collects: loading count-0 objects must not build up
    # collector state (a long-running reader would grow without bound).
    db0.init(root, prefix="test", autocommit=False)
    uids = []
    for i in range(50):
        it = Item()
        db0.tags(it).add("kept")
        uids.append(db0.uuid(it))
    db0.commit()
    db0.close()
    db0.init(root)
    db0.open("test", "r")
    for uid in uids:
        assert db0.fetch(uid).ref is None
    gc.collect()
    px = db0.fetch(uids[0])._px
    assert not px.zero_rc and not px.gc_candidates


def test_tagged_objects_are_not_rewatched_and_untagging_collects(db):
    uids = []
    for i in range(20):
        it = Item()
        db0.tags(it).add("kept")
        uids.append(db0.uuid(it))
    del it
    db0.commit()
    db0.clear_cache()
    gc.collect()
    for uid in uids:
        assert db0.fetch(uid).ref is None        # loaded with count 0, dropped again
    gc.collect()
    db0.commit()
    px = workspace.current().current_prefix()
    assert not px.zero_rc and not px.gc_candidates      # tags keep them: nothing to watch
    assert all(db0.exists(u) for u in uids)
    for uid in uids[:5]:
        db0.tags(db0.fetch(uid)).remove("kept")
    gc.collect()
    db0.commit()
    assert [db0.exists(u) for u in uids] == [False] * 5 + [True] * 15


@pytest.fixture(scope="module")
def module_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("uuids") / "db")


@given(text=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567az01é€", min_size=22, max_size=26))
@settings(max_examples=300, deadline=None)
def test_fetch_parses_uuids_like_the_codec(module_root, text):
    """db0.fetch's allocation-free uuid parser accepts exactly what codec.decode_uuid
    accepts, and finds the same object."""
    db0.init(module_root, prefix="test", autocommit=False)
    try:
        it = Item()
        uid = db0.uuid(it)
        assert db0.fetch(uid) is it
        try:
            prefix_uuid, oid = decode_uuid(text)
        except ValueError:
            with pytest.raises(db0.InvalidUUIDError):
                db0.fetch(text)
            return
        if text == uid:
            assert db0.fetch(text) is it
        else:
            with pytest.raises((db0.PrefixNotFoundError, db0.ReferenceError)):
                db0.fetch(text)
    finally:
        db0.close()
