"""db0.set: set semantics, algebra returning persistent Sets, persistence, references."""

import gc
import shutil
import tempfile
from datetime import date

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import dbzero as db0
from dbzero_ext import chunks

from conftest import run_python


@db0.memo(singleton=True, id="tests.set.Holder")
class Holder:
    def __init__(self):
        self.s = set()


@db0.memo(id="tests.set.Item")
class Item:
    def __init__(self, name):
        self.name = name


def reopen(root):
    db0.close()
    db0.init(root, prefix="test", autocommit=False)
    return Holder()


def test_type_and_basics(db):
    s = db0.set([3, 1, 2, 3])
    assert type(s).__name__ == "Set" and not isinstance(s, set) and not db0.is_memo(s)
    assert s == {1, 2, 3} and {1, 2, 3} == s and s == frozenset({1, 2, 3})
    assert len(s) == 3 and 2 in s and 5 not in s
    assert list(s) == [3, 1, 2]        # insertion order
    assert db0.set() == set() and not db0.set()
    assert repr(db0.set()) == "Set()" and repr(db0.set([1])) == "{1}"
    with pytest.raises(TypeError):
        hash(s)
    with pytest.raises(TypeError, match="unhashable type: 'list'"):
        s.add([1])
    with pytest.raises(TypeError, match="unhashable type: 'list'"):
        [1] in s
    with pytest.raises(TypeError, match="Type unsupported by dbzero"):
        s.add(frozenset())
    with pytest.raises(TypeError):
        s.update([4, object()])
    assert s == {1, 2, 3}


def test_single_item_api(db):
    s = db0.set([1, 2])
    s.add(2)
    s.add(3)
    assert s == {1, 2, 3}
    s.discard(9)
    s.discard(1)
    s.remove(2)
    with pytest.raises(KeyError):
        s.remove(2)
    assert s.pop() == 3
    with pytest.raises(KeyError):
        s.pop()
    s.add(1)
    s.add(1.0)
    s.add(True)
    assert len(s) == 1 and type(list(s)[0]) is int
    s.clear()
    assert len(s) == 0


def test_algebra(db):
    a, b = {1, 2, 3, 4}, {3, 4, 5}
    s = db0.set(a)
    for name in ("union", "intersection", "difference", "symmetric_difference"):
        r = getattr(s, name)(b)
        assert type(r).__name__ == "Set" and r == getattr(a, name)(b), name
    assert s.union([7], (8,)) == a.union([7], (8,))
    assert s.intersection([1, 2], {2}) == {2}
    assert (s | b) == a | b and (s & b) == a & b and (s - b) == a - b and (s ^ b) == a ^ b
    assert type(b | s).__name__ == "Set" and (b | s) == a | b
    assert (b - s) == b - a and (b & s) == a & b and (b ^ s) == a ^ b
    assert s.issubset(a | {9}) and s <= a and not s < a and s < a | {9}
    assert s.issuperset({1}) and s >= {1} and s > {1} and not s > a
    assert s.isdisjoint({9}) and not s.isdisjoint({1})
    assert s != b and not (s == b)
    for op, args in [("update", ([9], {10})), ("intersection_update", ({1, 2, 9, 10},)),
                     ("difference_update", ([1],)), ("symmetric_difference_update", ([2, 11],))]:
        getattr(s, op)(*args)
        getattr(a, op)(*args)
        assert s == a, op
    s |= {20}
    a |= {20}
    s &= {20, 10, 11}
    a &= {20, 10, 11}
    s -= {10}
    a -= {10}
    s ^= {11, 30}
    a ^= {11, 30}
    assert s == a
    c = s.copy()
    assert type(c).__name__ == "Set" and c == s and c is not s


def test_persistence_and_members(db, root):
    h = Holder()
    it = Item("m")
    h.s = {1, "a", date(2026, 1, 12), (1, 2), None, b"x"}
    h.s.add(it)
    assert db0.getrefcount(it) == 1
    h = reopen(root)
    assert date(2026, 1, 12) in h.s and (1, 2) in h.s and None in h.s and b"x" in h.s
    member = [x for x in h.s if type(x).__name__ == "Item"][0]
    assert member.name == "m" and member in h.s
    uid = db0.uuid(member)
    h.s.discard(member)
    assert db0.getrefcount(member) == 0
    del member, it
    gc.collect()
    db0.commit()
    assert not db0.exists(uid)


def test_fresh_process(db, root):
    Holder().s = {3, 1, 2, "x"}
    db0.close()
    out = run_python(f"""
        import dbzero as db0
        db0.init({root!r}, prefix="test", read_write=False)
        @db0.memo(singleton=True, id="tests.set.Holder")
        class Holder:
            pass
        s = db0.fetch(Holder).s
        print(type(s).__name__, sorted(map(str, s)), 3 in s, 4 in s)
    """)
    assert out.stdout.strip() == "Set ['1', '2', '3', 'x'] True False"


class SetMachine(RuleBasedStateMachine):
    items = st.one_of(st.integers(-30, 30), st.text(max_size=2), st.booleans(),
                      st.floats(-3, 3).filter(lambda f: f == f))

    def __init__(self):
        super().__init__()
        self.old = chunks.set_tuning(bucket_load=2, order_chunk=3)
        self.root = tempfile.mkdtemp(prefix="db0-set-")
        db0.init(self.root, prefix="test", autocommit=False)
        self.h = Holder()
        self.model = set()

    @initialize(xs=st.sets(items, max_size=10))
    def start(self, xs):
        self.h.s = xs
        self.model = set(xs)

    @rule(x=items)
    def add(self, x):
        self.h.s.add(x)
        self.model.add(x)

    @rule(x=items)
    def discard(self, x):
        self.h.s.discard(x)
        self.model.discard(x)

    @precondition(lambda self: self.model)
    @rule()
    def pop(self):
        x = self.h.s.pop()
        assert x in self.model
        self.model.remove(x)

    @rule(xs=st.lists(items, max_size=6),
          op=st.sampled_from(["update", "difference_update", "intersection_update",
                              "symmetric_difference_update"]))
    def bulk(self, xs, op):
        getattr(self.h.s, op)(xs)
        getattr(self.model, op)(xs)

    @rule(xs=st.sets(items, max_size=6), op=st.sampled_from(["__or__", "__and__", "__sub__", "__xor__"]))
    def algebra(self, xs, op):
        assert getattr(self.h.s, op)(xs) == getattr(self.model, op)(xs)

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
        s = self.h.s
        assert len(s) == len(self.model)
        assert s == self.model
        for x in list(self.model)[:3]:
            assert x in s

    def teardown(self):
        db0.close()
        shutil.rmtree(self.root, ignore_errors=True)
        chunks.set_tuning(**self.old)


TestSetMachine = SetMachine.TestCase
TestSetMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
