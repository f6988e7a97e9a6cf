"""db0.dict: dict semantics (insertion order included), key types, persistence, references."""

import gc
import shutil
import tempfile
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import dbzero as db0
from dbzero_ext import chunks

from conftest import run_python


@db0.memo(singleton=True, id="tests.dict.Holder")
class Holder:
    def __init__(self):
        self.d = {}


@db0.memo(id="tests.dict.Item")
class Item:
    def __init__(self, name):
        self.name = name


Color = db0.enum("TestDictColor", ["RED", "GREEN"])


@pytest.fixture
def tiny_chunks():
    old = chunks.set_tuning(bucket_load=2, order_chunk=4)
    try:
        yield
    finally:
        chunks.set_tuning(**old)


def reopen(root):
    db0.close()
    db0.init(root, prefix="test", autocommit=False)
    return Holder()


def test_type_and_construction(db):
    d = db0.dict({"z": 1, "a": 2}, m=3)
    assert type(d).__name__ == "Dict" and not isinstance(d, dict)
    assert not db0.is_memo(d)
    assert d == {"z": 1, "a": 2, "m": 3} and {"z": 1, "a": 2, "m": 3} == d
    assert list(d) == ["z", "a", "m"]  # insertion order, like dict
    assert db0.dict([("a", 1), ("b", 2)]) == {"a": 1, "b": 2}
    assert db0.dict() == {} and not db0.dict()
    assert dict(d) == {"z": 1, "a": 2, "m": 3}
    assert repr(d) == "{'z': 1, 'a': 2, 'm': 3}"
    with pytest.raises(TypeError):
        hash(d)
    with pytest.raises(ValueError):
        db0.dict([("a", 1, 2)])
    with pytest.raises(TypeError):
        db0.dict([1])
    assert db0.Dict.fromkeys("ab", 0) == {"a": 0, "b": 0}


def test_full_api_against_dict(db, tiny_chunks):
    model = {}
    d = db0.dict()
    for i in range(30):
        model[i] = str(i)
        d[i] = str(i)
    assert d == model and list(d.items()) == list(model.items())
    for k in (3, 7, 0, 29):
        assert d.pop(k) == model.pop(k)
    assert d.pop("missing", "dflt") == "dflt"
    with pytest.raises(KeyError):
        d.pop("missing")
    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(KeyError):
        del d["missing"]
    assert d.get("missing") is None and d.get("missing", 5) == 5
    assert d.setdefault(100, "x") == model.setdefault(100, "x")
    assert d.setdefault(100, "y") == model.setdefault(100, "y")
    assert d.popitem() == model.popitem()
    assert d.popitem() == model.popitem()
    d.update({1: "one"}, extra="e")
    model.update({1: "one"}, extra="e")
    d.update([(2, "two")])
    model.update([(2, "two")])
    assert list(d.keys()) == list(model.keys())
    assert list(d.values()) == list(model.values())
    assert list(d.items()) == list(model.items())
    assert len(d.keys()) == len(model) and 1 in d.keys() and (1, "one") in d.items()
    assert "one" in d.values() and (1, "uno") not in d.items()
    assert list(reversed(d)) == list(reversed(model))
    assert repr(d.keys()) == repr(model.keys())
    assert d.keys() & {1, 2, 999} == {1, 2}
    c = d.copy()
    assert type(c).__name__ == "Dict" and c == d and c is not d
    c["new"] = 1
    assert "new" not in d
    merged = d | {"m": 1}
    assert type(merged).__name__ == "Dict" and merged == model | {"m": 1}
    assert ({"m": 1} | d) == ({"m": 1} | model)
    d |= {"n": 2}
    model |= {"n": 2}
    assert d == model
    d.clear()
    model.clear()
    assert d == {} and len(d) == 0
    d["again"] = 1
    assert list(d.items()) == [("again", 1)]


def test_key_types(db, root):
    h = Holder()
    it = Item("k")
    keys = [-1, 0, 2**63, -2**70, 1.5, "s", b"b", None, (1, "a", (2, None)), (-5,),
            date(2026, 1, 12), datetime(2026, 1, 1, tzinfo=timezone.utc), Decimal("1.25"),
            Color.RED, it, True]
    d = h.d
    for i, k in enumerate(keys):
        d[k] = i
    assert len(d) == len(keys)
    for i, k in enumerate(keys):
        assert d[k] == i
    assert d[1] == d[1.0] == d[True] == len(keys) - 1   # 1 == 1.0 == True
    assert d[0.0] == d[False] == 1                      # 0 == 0.0 == False
    assert it in d and Item("other") not in d
    h = reopen(root)
    d = h.d
    restored = list(d.keys())
    assert restored[:-2] == keys[:-2]
    assert [type(k) for k in restored[:-2]] == [type(k) for k in keys[:-2]]
    assert restored[-1] is True
    memo_key = restored[-2]
    assert type(memo_key).__name__ == "Item" and memo_key.name == "k"
    assert d[memo_key] == keys.index(it)
    assert d[Color.RED] == keys.index(Color.RED)
    assert d[(1, "a", (2, None))] == keys.index((1, "a", (2, None)))


def test_equal_keys_keep_first_key_last_value(db):
    d = db0.dict()
    d[1] = "a"
    d[1.0] = "b"
    d[True] = "c"
    assert len(d) == 1 and d == {1: "c"}
    k = list(d)[0]
    assert type(k) is int and k == 1          # Python keeps the first key object
    py = {1: "a"}
    py[1.0] = "b"
    py[True] = "c"
    assert list(d.items()) == list(py.items())


def test_unhashable_and_unsupported_keys(db):
    d = db0.dict({"a": 1})
    with pytest.raises(TypeError, match="unhashable type: 'list'"):
        d[[1]] = 2
    with pytest.raises(TypeError, match="unhashable type: 'list'"):
        d[[1]]
    with pytest.raises(TypeError, match="unhashable type: 'list'"):
        [1] in d
    with pytest.raises(TypeError, match="unhashable type: 'dict'"):
        d[(1, {})] = 2
    with pytest.raises(TypeError, match="unhashable type"):
        d[db0.list()] = 1
    with pytest.raises(TypeError, match="Type unsupported by dbzero: frozenset"):
        d[frozenset([1])] = 1
    assert frozenset([1]) not in d and d.get(frozenset()) is None
    with pytest.raises(TypeError, match="Type unsupported by dbzero"):
        d["x"] = object()
    with pytest.raises(TypeError):
        d.update({"y": 1, "z": 1 + 2j})
    with pytest.raises(TypeError):
        d.update([("y", 1), ([2], 3)])
    with pytest.raises(TypeError):
        db0.dict({"ok": 1, "bad": object()})
    assert d == {"a": 1}


def test_memo_values_refcounts(db):
    h = Holder()
    it = Item("v")
    uid = db0.uuid(it)
    h.d["x"] = it
    assert db0.getrefcount(it) == 1 and h.d["x"] is it
    h.d["x"] = "replaced"
    assert db0.getrefcount(it) == 0
    h.d["y"] = it
    h.d[it] = "as key"
    assert db0.getrefcount(it) == 2
    del h.d["y"]
    assert h.d.pop(it) == "as key"
    assert db0.getrefcount(it) == 0
    h.d["z"] = it
    h.d.clear()
    assert db0.getrefcount(it) == 0
    h.d["w"] = it
    assert h.d.popitem() == ("w", it)
    assert db0.getrefcount(it) == 0
    del it
    gc.collect()
    db0.commit()
    assert not db0.exists(uid)


def test_nested_and_setdefault_idiom(db, root):
    h = Holder()
    h.d.setdefault("list", []).append(1)
    h.d.setdefault("list", []).append(2)
    h.d["inner"] = {"a": {"b": [1, 2]}}
    h = reopen(root)
    assert h.d["list"] == [1, 2]
    assert h.d["inner"]["a"]["b"] == [1, 2]
    assert type(h.d["inner"]["a"]).__name__ == "Dict"


def test_many_items_persist(db, root, tiny_chunks):
    h = Holder()
    model = {}
    for i in range(300):
        h.d[f"k{i}"] = i
        model[f"k{i}"] = i
    for i in range(0, 300, 3):
        del h.d[f"k{i}"]
        del model[f"k{i}"]
    stats = h.d._db0_stats()
    assert stats["buckets"] > 50
    h = reopen(root)
    assert list(h.d.items()) == list(model.items())
    for i in range(300, 320):
        h.d[f"k{i}"] = i
        model[f"k{i}"] = i
    h = reopen(root)
    assert list(h.d.items()) == list(model.items())


def test_lookup_is_one_point_read(db):
    h = Holder()
    for i in range(5000):
        h.d[i] = i
    db0.commit()
    from dbzero.cache import chunk_cache
    db0.clear_cache()
    h = Holder()
    d = h.d
    storage = d._px.storage
    calls = []
    real_get, real_scan = storage.get, storage.scan
    storage.get = lambda *a: calls.append(("get",) + a[:1]) or real_get(*a)
    storage.scan = lambda *a, **k: calls.append(("scan",) + a[:1]) or real_scan(*a, **k)
    try:
        d._db0_invalidate()  # force the header to be read again as well
        len(d)
        calls.clear()
        assert 4321 in d
        assert calls == [("get", "chunks")]
        calls.clear()
        assert d[1234] == 1234
        assert [c[0] for c in calls] == ["get"]
    finally:
        del storage.get, storage.scan
    assert chunk_cache.size > 0


def test_iteration_changed_size_raises(db):
    d = db0.dict({1: 1, 2: 2})
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        for k in d:
            d[k + 10] = 0


def test_fresh_process(db, root):
    h = Holder()
    h.d = {"z": 1, "a": [1, 2], -7: None, (1, 2): "t"}
    db0.close()
    out = run_python(f"""
        import dbzero as db0
        db0.init({root!r}, prefix="test", read_write=False)
        @db0.memo(singleton=True, id="tests.dict.Holder")
        class Holder:
            pass
        d = db0.fetch(Holder).d
        print(type(d).__name__, list(d.items()))
    """)
    assert out.stdout.strip() == "Dict [('z', 1), ('a', [1, 2]), (-7, None), ((1, 2), 't')]"


class DictMachine(RuleBasedStateMachine):
    keys = st.one_of(st.integers(-20, 20), st.text(max_size=2), st.none(),
                     st.tuples(st.integers(-2, 2), st.text(max_size=1)),
                     st.integers(min_value=2**63, max_value=2**63 + 3))
    values = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats(allow_nan=False))

    def __init__(self):
        super().__init__()
        self.old = chunks.set_tuning(bucket_load=2, order_chunk=3)
        self.root = tempfile.mkdtemp(prefix="db0-dict-")
        db0.init(self.root, prefix="test", autocommit=False)
        self.h = Holder()
        self.model = {}

    @initialize(items=st.dictionaries(keys, values, max_size=10))
    def start(self, items):
        self.h.d = items
        self.model = dict(items)

    @rule(k=keys, v=values)
    def set(self, k, v):
        self.h.d[k] = v
        self.model[k] = v

    @rule(k=keys)
    def delete(self, k):
        if k in self.model:
            del self.model[k]
            del self.h.d[k]
        else:
            with pytest.raises(KeyError):
                del self.h.d[k]

    @rule(k=keys, v=values)
    def setdefault(self, k, v):
        assert self.h.d.setdefault(k, v) == self.model.setdefault(k, v)

    @rule(k=keys)
    def pop(self, k):
        assert self.h.d.pop(k, "-") == self.model.pop(k, "-")

    @precondition(lambda self: self.model)
    @rule()
    def popitem(self):
        assert self.h.d.popitem() == self.model.popitem()

    @rule(items=st.dictionaries(keys, values, max_size=6))
    def update(self, items):
        self.h.d.update(items)
        self.model.update(items)

    @rule()
    def clear(self):
        self.h.d.clear()
        self.model.clear()

    @rule(k=keys)
    def get(self, k):
        assert self.h.d.get(k, "-") == self.model.get(k, "-")
        assert (k in self.h.d) == (k in self.model)

    @rule()
    def commit(self):
        db0.commit()

    @rule()
    def reopen(self):
        db0.close()
        db0.init(self.root, prefix="test", autocommit=False)
        self.h = Holder()

    @invariant()
    def same(self):
        d = self.h.d
        assert len(d) == len(self.model)
        assert list(d.items()) == list(self.model.items())

    def teardown(self):
        db0.close()
        shutil.rmtree(self.root, ignore_errors=True)
        chunks.set_tuning(**self.old)


TestDictMachine = DictMachine.TestCase
TestDictMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


def test_unreferenced_dict_and_set_are_collected(db):
    from dbzero.prefix import pack_oid
    h = Holder()
    it = Item("in dict")
    uid = db0.uuid(it)
    h.d = {i: str(i) for i in range(200)}
    h.d["item"] = it
    h.s = set(range(100))
    del it
    db0.commit()
    px = h.d._px
    oids = [h.d._oid, h.s._oid]
    assert all(list(px.storage.scan("chunks", pack_oid(o))) for o in oids)
    h.d = None
    h.s = None
    gc.collect()
    db0.commit()
    for o in oids:
        assert list(px.storage.scan("chunks", pack_oid(o))) == []
        assert px.storage.get("objects", pack_oid(o)) is None
    assert not db0.exists(uid)


def test_memo_keys_and_values_after_reopen(db, root):
    h = Holder()
    a, b = Item("a"), Item("b")
    h.d = {a: b, "x": a}
    h = reopen(root)
    (k1, v1), (k2, v2) = h.d.items()
    assert k1.name == "a" and v1.name == "b" and k2 == "x" and v2 is k1
    assert db0.getrefcount(k1) == 2 and db0.getrefcount(v1) == 1
    del h.d[k1]
    assert db0.getrefcount(k1) == 1 and db0.getrefcount(v1) == 0
