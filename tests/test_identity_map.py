"""The identity map of memo proxies (memo.ProxyMap) and their garbage-collector tracking.

Proxies are held by borrowed pointer and remove their own entry when they are
deallocated; proxies whose fields are all atomic values are not tracked by Python's
cyclic collector until a field may refer to another container.
"""

import gc
import weakref

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import dbzero as db0
from dbzero import workspace


@db0.memo
class Node:
    def __init__(self, value):
        self.value = value


def current_prefix():
    return workspace.current().current_prefix()


def test_a_dropped_proxy_leaves_the_identity_map(db):
    px = current_prefix()
    before = px.proxy_count()
    nodes = [Node(i) for i in range(5000)]
    db0.commit()
    uuids = [db0.uuid(n) for n in nodes]
    assert px.proxy_count() == before + 5000
    del nodes
    assert px.proxy_count() <= before
    again = [db0.fetch(u) for u in uuids[:100]]
    assert [n.value for n in again] == list(range(100))
    assert db0.fetch(uuids[7]) is again[7]
    assert px.cached(again[7]._oid) is again[7]


def test_the_map_survives_growth_and_churn(db):
    """Many rounds of create, hold some, drop the rest: removed entries are reused and
    the table is rebuilt without losing a live proxy."""
    px = current_prefix()
    held = []
    for round_ in range(20):
        batch = [Node(round_ * 1000 + i) for i in range(1000)]
        held.extend(batch[::10])
        del batch
        db0.commit()
    for node in held:
        assert px.cached(node._oid) is node
    assert px.proxy_count() == len(held)


def test_scalar_objects_are_not_tracked_by_the_collector(db):
    node = Node(1)
    node.name = "n"
    assert not gc.is_tracked(node)
    db0.tags(node).add("keep")      # (tags hold no Python references to it)
    db0.commit()
    uid = db0.uuid(node)
    del node
    db0.close()
    db0.init(db, prefix="test", autocommit=False)
    loaded = db0.fetch(uid)
    assert loaded.name == "n"
    assert not gc.is_tracked(loaded)


def test_a_field_referring_to_an_object_makes_it_tracked(db):
    a, b = Node(1), Node(2)
    a.other = b
    assert gc.is_tracked(a)
    assert not gc.is_tracked(b)
    c = Node(3)
    c.items = [1, 2]
    assert gc.is_tracked(c)


def test_loaded_objects_with_references_are_tracked(db):
    a = Node(1)
    a.other = Node(2)
    db0.tags(a).add("root")
    db0.commit()
    uid = db0.uuid(a)
    del a
    db0.close()
    db0.init(db, prefix="test", autocommit=False)
    loaded = db0.fetch(uid)
    assert loaded.value == 1
    assert gc.is_tracked(loaded)


def test_cycles_of_memo_objects_are_collected(db):
    a, b = Node(1), Node(2)
    a.other, b.other = b, a
    db0.tags(a).add("keep")
    db0.commit()
    refs = [weakref.ref(a), weakref.ref(b)]
    del a, b
    gc.collect()
    assert [r() for r in refs] == [None, None]
    (found,) = db0.find("keep")
    assert found.other.other is found


def test_a_rolled_back_reference_keeps_the_object_tracked(db):
    a = Node(1)
    db0.commit()
    with db0.atomic() as txn:
        a.other = Node(2)
        txn.cancel()
    assert not hasattr(a, "other")
    b = Node(2)
    b.other = a
    db0.commit()
    assert gc.is_tracked(b)


class ProxyMapModel(RuleBasedStateMachine):
    """Proxies held or dropped at random, across commits: the map returns exactly the
    held proxies, and a fetch of a dropped one makes a new proxy with the same fields."""

    @initialize()
    def start(self):
        db0.init(self.root, prefix="test", autocommit=False)
        self.px = current_prefix()
        self.held = {}          # uuid -> proxy
        self.values = {}        # uuid -> value

    def teardown(self):
        self.held.clear()
        db0.close()

    @rule(n=st.integers(1, 50))
    def create(self, n):
        for i in range(n):
            node = Node(len(self.values))
            db0.tags(node).add("all")
            uid = db0.uuid(node)
            self.held[uid] = node
            self.values[uid] = node.value

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def drop(self, data):
        uid = data.draw(st.sampled_from(sorted(self.held)))
        del self.held[uid]

    @rule()
    def commit(self):
        db0.commit()

    @precondition(lambda self: self.values)
    @rule(data=st.data())
    def fetch(self, data):
        uid = data.draw(st.sampled_from(sorted(self.values)))
        obj = db0.fetch(uid)
        if uid in self.held:
            assert obj is self.held[uid]
        assert obj.value == self.values[uid]
        if data.draw(st.booleans()):
            self.held[uid] = obj

    @invariant()
    def map_holds_exactly_the_live_proxies(self):
        if not hasattr(self, "px"):
            return
        for uid, obj in self.held.items():
            assert self.px.cached(obj._oid) is obj
        assert self.px.proxy_count() >= len(self.held)


def test_proxy_map_model(tmp_path):
    counter = [0]

    class Machine(ProxyMapModel):
        def __init__(self):
            super().__init__()
            counter[0] += 1
            self.root = str(tmp_path / f"db{counter[0]}")

    Machine.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
    Machine.TestCase().runTest()
