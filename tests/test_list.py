"""db0.list: Python list semantics, persistence, references, chunking and bounded memory.

The model for every check is a plain Python list.  Tiny chunks (set_tuning) make small
hypothesis examples cross chunk boundaries, split and merge chunks.
"""

import gc
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import dbzero as db0
from dbzero_ext import chunks

from conftest import run_python


@db0.memo(singleton=True, id="tests.list.Holder")
class Holder:
    def __init__(self):
        self.l = []


@db0.memo(id="tests.list.Item")
class Item:
    def __init__(self, name):
        self.name = name


@db0.memo(id="tests.list.Person")
class Person:
    def __init__(self, name, age):
        self.name = name
        self.age = age


@pytest.fixture
def tiny_chunks():
    old = chunks.set_tuning(list_chunk=4, bytes_chunk=4, bucket_load=2, order_chunk=4, dir_chunk=3)
    try:
        yield
    finally:
        chunks.set_tuning(**old)


def reopen(root):
    db0.close()
    db0.init(root, prefix="test", autocommit=False)
    return Holder()


# -- construction and basic reads -------------------------------------------------------------

def test_type_and_construction(db):
    l = db0.list([1, 2, 3])
    assert type(l).__name__ == "List"
    assert not isinstance(l, list)
    assert isinstance(l, db0.List) and isinstance(l, db0.list)
    assert not db0.is_memo(l)
    assert l == [1, 2, 3] and [1, 2, 3] == l
    assert db0.list() == [] and len(db0.list()) == 0 and not db0.list()
    assert db0.list("abc") == ["a", "b", "c"]
    assert db0.list(range(5)) == [0, 1, 2, 3, 4]
    assert db0.list(x * 2 for x in range(3)) == [0, 2, 4]
    with pytest.raises(TypeError):
        db0.list(None)
    with pytest.raises(TypeError):
        hash(l)


def test_values_round_trip(db, root):
    from datetime import date, datetime, timezone
    from decimal import Decimal
    values = [None, True, False, 0, -1, 2**63 - 1, -2**63, 2**70, -2**70, 1.5, float("inf"),
              "", "a\x00b", "żółw", b"", b"\x00\xff", date(2026, 1, 12),
              datetime(2026, 1, 12, 8, 30, tzinfo=timezone.utc), Decimal("12.50")]
    h = Holder()
    h.l = values
    assert h.l == values
    h = reopen(root)
    assert list(h.l) == values
    assert [type(x) for x in h.l] == [type(x) for x in values]


def test_indexing_and_errors(db):
    l = db0.list(range(10))
    assert l[0] == 0 and l[-1] == 9 and l[-10] == 0
    with pytest.raises(IndexError, match="list index out of range"):
        l[10]
    with pytest.raises(IndexError, match="list index out of range"):
        l[-11]
    with pytest.raises(IndexError, match="list assignment index out of range"):
        l[10] = 1
    with pytest.raises(IndexError, match="list assignment index out of range"):
        del l[10]
    with pytest.raises(TypeError, match="list indices must be integers or slices, not str"):
        l["a"]
    with pytest.raises(IndexError, match="pop from empty list"):
        db0.list().pop()
    with pytest.raises(IndexError, match="pop index out of range"):
        l.pop(10)
    with pytest.raises(ValueError, match="not in list"):
        l.remove(99)
    with pytest.raises(ValueError, match="99 is not in list"):
        l.index(99)
    assert l == list(range(10))


def test_slices(db):
    model = list(range(20))
    l = db0.list(model)
    for sl in [slice(None), slice(2, 8), slice(None, None, 2), slice(None, None, -1),
               slice(-5, None), slice(15, 3, -3), slice(100, 200), slice(3, 3)]:
        got = l[sl]
        assert type(got) is list
        assert got == model[sl]


def test_full_api_against_list(db, tiny_chunks):
    model = list(range(10))
    l = db0.list(model)

    def check():
        assert list(l) == model and len(l) == len(model)

    for op in [
        lambda x: x.append(10), lambda x: x.extend([11, 12]), lambda x: x.insert(0, -1),
        lambda x: x.insert(-2, 99), lambda x: x.insert(100, 100), lambda x: x.insert(-100, -100),
        lambda x: x.pop(), lambda x: x.pop(0), lambda x: x.pop(3), lambda x: x.pop(-2),
        lambda x: x.remove(99), lambda x: x.__setitem__(2, "two"), lambda x: x.__delitem__(1),
        lambda x: x.__setitem__(slice(1, 3), ["a", "b", "c", "d"]),
        lambda x: x.__setitem__(slice(None, None, 2), list(range(len(x[::2])))),
        lambda x: x.__delitem__(slice(None, None, 3)), lambda x: x.__delitem__(slice(5, 2, -1)),
        lambda x: x.reverse(), lambda x: x.sort(key=str), lambda x: x.sort(key=str, reverse=True),
        lambda x: x.__iadd__([7, 8]), lambda x: x.__imul__(2), lambda x: x.__setitem__(slice(2, 2), [5]),
        lambda x: x.__setitem__(slice(0, len(x)), []), lambda x: x.extend(range(9)),
        lambda x: x.clear(), lambda x: x.extend("xyz"),
    ]:
        r1 = op(model)
        r2 = op(l)
        if r1 is not model:
            assert r1 == r2 or (r1 is None and r2 is None) or r2 is l
        check()
    assert l.count("x") == 1 and l.index("y") == 1
    assert "z" in l and "q" not in l
    assert list(reversed(l)) == list(reversed(model))


def test_copy_add_mul_compare(db):
    l = db0.list([1, 2, 3])
    c = l.copy()
    assert type(c).__name__ == "List" and c == l and c is not l
    c.append(4)
    assert l == [1, 2, 3]
    s = l + [9]
    assert type(s).__name__ == "List" and s == [1, 2, 3, 9]
    assert l + l == [1, 2, 3, 1, 2, 3]
    assert l * 2 == [1, 2, 3] * 2 and 2 * l == [1, 2, 3] * 2
    assert type(l * 2).__name__ == "List"
    assert l < [1, 2, 4] and l <= [1, 2, 3] and l > [1, 2] and l >= [1, 2, 3]
    assert l != [1, 2] and l != (1, 2, 3) and not (l == (1, 2, 3))
    assert repr(l) == "[1, 2, 3]" and str(db0.list()) == "[]"
    l += [4]
    assert l == [1, 2, 3, 4]
    l *= 2
    assert l == [1, 2, 3, 4] * 2
    assert l.count(4) == 2 and l.index(4, 4) == 7
    l.extend(l)
    assert len(l) == 16
    l[:] = l
    assert len(l) == 16


def test_iteration_sees_changes_like_list(db, tiny_chunks):
    l = db0.list(range(6))
    out = []
    for x in l:
        out.append(x)
        if x == 2:
            l.append(6)
    assert out == list(range(7))
    it = iter(l)
    assert next(it) == 0
    del l[0]
    assert next(it) == 2  # index-based, exactly like a list iterator


# -- persistence --------------------------------------------------------------------------------

def test_memo_attribute_conversion_and_identity(db, root):
    src = ["py", "c"]
    h = Holder()
    h.skills = src
    src.append("rust")
    assert h.skills == ["py", "c"]
    assert h.skills is h.skills
    h.skills.append("go")
    h.nested = [[1, [2, 3]], {"a": (1, 2)}, {4, 5}]
    assert type(h.nested[0]).__name__ == "List"
    assert type(h.nested[0][1]).__name__ == "List"
    assert type(h.nested[1]).__name__ == "Dict"
    assert type(h.nested[1]["a"]).__name__ == "Tuple"
    assert type(h.nested[2]).__name__ == "Set"
    h = reopen(root)
    assert h.skills == ["py", "c", "go"]
    assert h.nested[0][1] == [2, 3] and h.nested[1]["a"] == (1, 2) and h.nested[2] == {4, 5}


def test_shared_list_between_two_objects(db, root):
    shared = db0.list([1])
    a, b = Item("a"), Item("b")
    a.l = shared
    b.l = shared
    h = Holder()
    h.l = [a, b]
    assert db0.getrefcount(shared) == 2
    a.l.append(2)
    assert b.l == [1, 2] and a.l is b.l
    h = reopen(root)
    a, b = h.l
    assert a.l is b.l and b.l == [1, 2]
    b.l.append(3)
    assert a.l == [1, 2, 3]


def test_commit_and_reopen_many_sizes(db, root, tiny_chunks):
    h = Holder()
    for n in (0, 1, 2, 3, 4, 5, 9, 17, 100):
        h.l = list(range(n))
        db0.commit()
        h = reopen(root)
        assert list(h.l) == list(range(n))
        h.l.insert(n // 2, "mid")
        del h.l[0:1]
        h = reopen(root)
        expected = list(range(n))
        expected.insert(n // 2, "mid")
        del expected[0:1]
        assert list(h.l) == expected


def test_directory_chunks(db, root, tiny_chunks):
    from dbzero.prefix import pack_oid
    h = Holder()
    h.l = list(range(200))          # 50 chunks of 4, directory in 17 chunks of 3 entries
    db0.commit()
    stats = h.l._db0_stats()
    assert stats["chunks"] == 50 and stats["dir_chunks"] == 17
    px, oid = h.l._px, h.l._oid
    def dir_keys_now():
        storage = h.l._px.storage
        return [k for k, _ in storage.scan("chunks", pack_oid(oid) + b"d") if len(k) == 13]

    dir_keys = dir_keys_now()
    assert len(dir_keys) == 17
    versions = {k: px.storage.get_versioned("chunks", k)[0] for k in dir_keys}
    h.l.append(200)                 # touches the last directory chunk only
    h.l[5] = "five"                 # no directory change at all
    db0.commit()
    changed = [k for k in dir_keys if px.storage.get_versioned("chunks", k)[0] != versions[k]]
    assert changed == [dir_keys[-1]]
    h = reopen(root)
    expected = list(range(201))
    expected[5] = "five"
    assert list(h.l) == expected
    del h.l[8:]                     # shrinks back to a directory inside the header
    db0.commit()
    assert dir_keys_now() == []
    h = reopen(root)
    assert list(h.l) == expected[:8] and h.l._db0_stats()["dir_chunks"] == 0


def test_two_item_list_is_one_chunk(db):
    h = Holder()
    h.l = [1, 2]
    db0.commit()
    px = h.l._px
    from dbzero.prefix import pack_oid
    keys = [k for k, _ in px.storage.scan("chunks", pack_oid(h.l._oid))]
    assert len(keys) == 1


def test_fresh_process_reads_back(db, root):
    h = Holder()
    h.l = list(range(2000)) + ["end", None, 1.5]
    db0.close()
    out = run_python(f"""
        import dbzero as db0
        @db0.memo(singleton=True, id="tests.list.Holder")
        class Holder:
            def __init__(self):
                self.l = []
        db0.init({root!r}, prefix="test", read_write=False)
        l = db0.fetch(Holder).l
        print(type(l).__name__, len(l), l[0], l[1999], l[-3:], sum(x for x in l if type(x) is int))
    """)
    assert out.stdout.split("\n")[0] == f"List 2003 0 1999 ['end', None, 1.5] {sum(range(2000))}"


# -- references and garbage collection ------------------------------------------------------------

@pytest.mark.parametrize("how", ["pop", "pop_index", "del", "remove", "clear", "slice_del",
                                 "setitem", "slice_set"])
def test_refcount_released_on_removal(db, how):
    h = Holder()
    h.l = [0, 1]
    item = Item("x")
    uid = db0.uuid(item)
    assert db0.getrefcount(item) == 0
    h.l.append(item)
    assert db0.getrefcount(item) == 1
    assert h.l[2] is item
    if how == "pop":
        assert h.l.pop() is item
    elif how == "pop_index":
        assert h.l.pop(2) is item
    elif how == "del":
        del h.l[2]
    elif how == "remove":
        h.l.remove(item)
    elif how == "clear":
        h.l.clear()
    elif how == "slice_del":
        del h.l[1:]
    elif how == "setitem":
        h.l[2] = "replaced"
    elif how == "slice_set":
        h.l[1:3] = ["a", "b", "c"]
    assert db0.getrefcount(item) == 0
    assert item not in h.l
    del item
    gc.collect()
    assert db0.exists(uid)      # deletion takes effect at the next commit
    db0.commit()
    assert not db0.exists(uid)


def test_referenced_object_survives_and_list_after_restart(db, root):
    h = Holder()
    h.l = [Item("a"), Item("b")]
    uids = [db0.uuid(x) for x in h.l]
    gc.collect()
    db0.commit()
    assert all(db0.exists(u) for u in uids)
    h = reopen(root)
    assert [x.name for x in h.l] == ["a", "b"]
    assert db0.getrefcount(h.l[0]) == 1
    h.l.pop(0)
    db0.commit()
    assert not db0.exists(uids[0]) and db0.exists(uids[1])


def test_unreferenced_list_is_collected_with_its_chunks(db, tiny_chunks):
    from dbzero.prefix import pack_oid
    h = Holder()
    h.l = list(range(50))
    inner = Item("inner")
    uid = db0.uuid(inner)
    h.l.append(inner)
    del inner
    db0.commit()
    px, oid = h.l._px, h.l._oid
    assert len(list(px.storage.scan("chunks", pack_oid(oid)))) > 5
    h.l = None           # the list loses its only reference
    gc.collect()
    db0.commit()
    assert list(px.storage.scan("chunks", pack_oid(oid))) == []
    assert px.storage.get("objects", pack_oid(oid)) is None
    assert not db0.exists(uid)  # released by the deleted list


def test_temporary_list_held_by_python_survives_commit(db):
    l = db0.list([1, 2])
    db0.commit()
    assert l == [1, 2]
    l.append(3)
    db0.commit()
    assert l == [1, 2, 3]


def test_nested_list_released_recursively(db):
    h = Holder()
    it = Item("deep")
    uid = db0.uuid(it)
    h.l = [[[it]]]
    del it
    db0.commit()
    assert db0.exists(uid)
    h.l = []
    gc.collect()
    db0.commit()
    assert not db0.exists(uid)


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [object(), frozenset([1]), 1 + 2j, bytearray(b"x"), range(3)])
def test_unsupported_values_rejected_without_change(db, bad):
    with pytest.raises(TypeError, match="Type unsupported by dbzero"):
        db0.list([1, bad])
    with pytest.raises(RuntimeError, match="Type unsupported by dbzero"):
        db0.list([bad])
    l = db0.list([1, 2])
    for op in (lambda: l.append(bad), lambda: l.extend([3, bad]), lambda: l.insert(0, bad),
               lambda: l.__setitem__(0, bad), lambda: l.__setitem__(slice(0, 1), [9, bad]),
               lambda: l.append([1, [2, bad]])):
        with pytest.raises(TypeError):
            op()
        assert l == [1, 2]


def test_failed_extend_releases_adopted_items(db):
    item = Item("x")
    l = db0.list()
    with pytest.raises(TypeError):
        l.extend([item, object()])
    assert db0.getrefcount(item) == 0 and l == []


def test_closed_and_readonly(db, root):
    h = Holder()
    l = h.l
    l.append(1)
    db0.close()
    with pytest.raises(RuntimeError, match="Object is no longer accessible"):
        len(l)
    db0.init(root, prefix="test", read_write=False)
    l = db0.fetch(Holder).l
    assert l == [1]
    with pytest.raises(db0.ReadOnlyError, match="Cannot modify read-only prefix: test"):
        l.append(2)
    with pytest.raises(RuntimeError, match="Cannot modify read-only prefix"):
        db0.list([1])


# -- the product README ------------------------------------------------------------------------

def test_readme_collections_example(db, root, capsys):
    from datetime import date

    person = Person("John", 25)
    person.appointment_dates = {date(2026, 1, 12), date(2026, 1, 13), date(2026, 1, 14)}
    person.skills = ["Python", "C++", "Docker"]
    person.contact_info = {
        "email": "john@example.com",
        "phone": "+1-555-0100",
        "linkedin": "linkedin.com/in/john"
    }
    assert (date(2026, 1, 13) in person.appointment_dates) is True
    person.skills.append("Kubernetes")
    print(person.skills)
    person.contact_info["github"] = "github.com/john"
    assert person.contact_info["email"] == "john@example.com"
    assert capsys.readouterr().out == "['Python', 'C++', 'Docker', 'Kubernetes']\n"
    Holder().person = person
    uid = db0.uuid(person)
    db0.close()
    out = run_python(f"""
        from datetime import date
        import dbzero as db0
        db0.init({root!r}, prefix="test", read_write=False)
        p = db0.fetch({uid!r})
        print(sorted(p.appointment_dates))
        print(p.skills)
        print(dict(p.contact_info))
        print(date(2026, 1, 13) in p.appointment_dates, p.contact_info["email"])
    """)
    assert out.stdout.splitlines() == [
        "[datetime.date(2026, 1, 12), datetime.date(2026, 1, 13), datetime.date(2026, 1, 14)]",
        "['Python', 'C++', 'Docker', 'Kubernetes']",
        "{'email': 'john@example.com', 'phone': '+1-555-0100', 'linkedin': 'linkedin.com/in/john', "
        "'github': 'github.com/john'}",
        "True john@example.com",
    ]


# -- stateful model test ------------------------------------------------------------------------

values = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans(),
                   st.integers(min_value=2**64, max_value=2**66))


class ListMachine(RuleBasedStateMachine):
    """Random list operations on a db0.list and a Python list, compared after every step."""

    def __init__(self):
        super().__init__()
        self.old = chunks.set_tuning(list_chunk=3, dir_chunk=2)
        self.root = tempfile.mkdtemp(prefix="db0-list-")
        db0.init(self.root, prefix="test", autocommit=False)
        self.h = Holder()
        self.model = []

    @property
    def l(self):
        return self.h.l

    @initialize(items=st.lists(values, max_size=12))
    def start(self, items):
        self.h.l = items
        self.model = list(items)

    @rule(v=values)
    def append(self, v):
        self.l.append(v)
        self.model.append(v)

    @rule(vs=st.lists(values, max_size=8))
    def extend(self, vs):
        self.l.extend(vs)
        self.model.extend(vs)

    @rule(i=st.integers(-15, 15), v=values)
    def insert(self, i, v):
        self.l.insert(i, v)
        self.model.insert(i, v)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def pop(self, data):
        i = data.draw(st.integers(-len(self.model), len(self.model) - 1))
        assert self.l.pop(i) == self.model.pop(i)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), v=values)
    def setitem(self, data, v):
        i = data.draw(st.integers(-len(self.model), len(self.model) - 1))
        self.l[i] = v
        self.model[i] = v

    @rule(a=st.integers(-15, 15) | st.none(), b=st.integers(-15, 15) | st.none(),
          step=st.sampled_from([None, 1, 2, -1, -2, 3]))
    def delslice(self, a, b, step):
        del self.l[a:b:step]
        del self.model[a:b:step]

    @rule(a=st.integers(-15, 15) | st.none(), b=st.integers(-15, 15) | st.none(),
          vs=st.lists(values, max_size=7))
    def setslice(self, a, b, vs):
        self.l[a:b] = vs
        self.model[a:b] = vs

    @rule(a=st.integers(-15, 15) | st.none(), b=st.integers(-15, 15) | st.none(),
          step=st.sampled_from([2, -1, 3]), data=st.data())
    def set_extended_slice(self, a, b, step, data):
        n = len(self.model[a:b:step])
        vs = data.draw(st.lists(values, min_size=n, max_size=n))
        self.l[a:b:step] = vs
        self.model[a:b:step] = vs

    @rule(v=values)
    def remove(self, v):
        if v in self.model:
            self.model.remove(v)
            self.l.remove(v)
        else:
            with pytest.raises(ValueError):
                self.l.remove(v)

    @rule()
    def reverse(self):
        self.l.reverse()
        self.model.reverse()

    @rule()
    def sort(self):
        self.l.sort(key=repr)
        self.model.sort(key=repr)

    @rule()
    def clear(self):
        self.l.clear()
        self.model.clear()

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
        assert len(self.l) == len(self.model)
        assert list(self.l) == self.model
        if self.model:
            assert self.l[-1] == self.model[-1] and self.l[len(self.model) // 2] == self.model[len(self.model) // 2]

    def teardown(self):
        db0.close()
        shutil.rmtree(self.root, ignore_errors=True)
        chunks.set_tuning(**self.old)


TestListMachine = ListMachine.TestCase
TestListMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


# -- scale ---------------------------------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_bounded_memory_two_million_ints(db):
    cache = 8 << 20
    db0.set_cache_size(cache)
    try:
        gc.collect()
        base = _rss()
        h = Holder()
        l = h.l
        n = 2_000_000
        step = 100_000
        for start in range(0, n, step):
            l.extend(range(start, start + step))
            db0.commit()
        peak_build = _rss() - base
        total = 0
        count = 0
        for x in l:
            total += x
            count += 1
        assert count == n and total == n * (n - 1) // 2
        assert l[n // 2] == n // 2 and l[-1] == n - 1
        grown = _rss() - base
        from dbzero.cache import chunk_cache
        assert chunk_cache.size <= cache
        assert grown < cache + (40 << 20), (grown, peak_build)
    finally:
        db0.set_cache_size(2 << 30)


# -- snapshots and other processes ---------------------------------------------------------------

def test_snapshot_sees_old_list_and_dict(db):
    item = Item("snap")
    item.l = list(range(10))
    item.d = {"a": 1}
    db0.commit()
    uid = db0.uuid(item)
    with db0.snapshot() as snap:
        item.l.append(10)
        item.l[0] = "changed"
        item.d["b"] = 2
        db0.commit()
        old = snap.fetch(uid)
        assert old.l == list(range(10)) and old.d == {"a": 1}
        assert old.l is not item.l
        with pytest.raises(AttributeError, match="Cannot modify read-only prefix"):
            old.l.append(1)
    assert item.l == ["changed"] + list(range(1, 11)) and item.d == {"a": 1, "b": 2}


def test_reader_process_follows_writer(db, root, tiny_chunks):
    import subprocess
    import sys
    import textwrap
    from conftest import REPO_ROOT
    h = Holder()
    h.l = list(range(20))
    h.d = {"k": 0}
    db0.commit()
    code = textwrap.dedent(f"""
        import sys
        import dbzero as db0
        @db0.memo(singleton=True, id="tests.list.Holder")
        class Holder:
            pass
        db0.init({root!r}, prefix="test", read_write=False, autocommit=False)
        h = db0.fetch(Holder)
        l, d = h.l, h.d
        state = db0.get_state_num("test")
        print(len(l), l[5], sum(l), d["k"], flush=True)
        sys.stdin.readline()
        assert db0.wait("test", state + 1, 10000)
        print(len(l), l[5], sum(l), d["k"], list(l)[-1], flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline().split()
        assert first == ["20", "5", str(sum(range(20))), "0"]
        h.l[5] = 500
        h.l.extend(range(20, 40))
        h.d["k"] = 1
        db0.commit()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        second = proc.stdout.readline().split()
        expected_sum = sum(range(40)) - 5 + 500
        assert second == ["40", "500", str(expected_sum), "1", "39"], proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


# -- atomic blocks --------------------------------------------------------------------------------

def test_atomic_rollback_restores_collections(db, tiny_chunks):
    h = Holder()
    h.l = list(range(10))
    h.d = {"a": 1}
    h.s = {1, 2}
    h.b = db0.bytearray(b"abc")
    item = Item("kept")
    h.l.append(item)
    db0.commit()
    h.l.append("uncommitted")       # pending (dirty) state before the block is kept
    before = (list(h.l), dict(h.d), set(h.s), bytes(h.b))
    with pytest.raises(ValueError):
        with db0.atomic():
            h.l.extend(range(100))
            h.l.insert(0, "first")
            del h.l[3:7]
            h.l.pop()
            h.l.remove(item)
            h.d["b"] = [1, 2]
            del h.d["a"]
            h.s.add(3)
            h.s.discard(1)
            h.b.extend(b"defgh")
            h.b[0] = 0
            created = db0.list([1, 2])
            h.created = created
            raise ValueError("boom")
    assert (list(h.l), dict(h.d), set(h.s), bytes(h.b)) == before
    assert db0.getrefcount(item) == 1
    assert not hasattr(h, "created")
    with pytest.raises(db0.ReferenceError):
        len(created)
    db0.commit()
    h2 = reopen(db)
    assert list(h2.l)[:10] == before[0][:10] and h2.l[-1] == "uncommitted"
    assert dict(h2.d) == before[1] and set(h2.s) == before[2] and bytes(h2.b) == before[3]


def test_atomic_success_and_nested(db):
    h = Holder()
    h.l = [1]
    with db0.atomic():
        h.l.append(2)
        with pytest.raises(KeyError):
            with db0.atomic():
                h.l.append(3)
                raise KeyError("inner")
        h.l.append(4)
    assert h.l == [1, 2, 4]
    with db0.atomic() as tx:
        h.l.append(5)
        tx.cancel()
    assert h.l == [1, 2, 4]


def test_concurrent_writers_readers_and_autocommit(tmp_path, tiny_chunks):
    import threading
    root = str(tmp_path / "db")
    db0.init(root, prefix="test", autocommit=True, autocommit_interval=1)
    try:
        h = Holder()
        h.l = []
        h.d = {}
        l, d = h.l, h.d
        errors = []
        stop = threading.Event()

        def writer(tag):
            try:
                for i in range(1500):
                    l.append(f"{tag}{i}")
                    d[f"{tag}{i % 50}"] = i
                    if i % 7 == 0:
                        l.insert(len(l) // 2, "mid")
                    if i % 11 == 0 and len(l) > 5:
                        del l[1]
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def reader():
            try:
                while not stop.is_set():
                    n = 0
                    for _ in l:
                        n += 1
                    for _k, _v in list(d.items()):
                        pass
                    if len(l):
                        l[len(l) // 3]
            except RuntimeError as exc:
                if "changed size during iteration" not in str(exc):
                    errors.append(exc)
            except Exception as exc:  # pragma: no cover
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in "ab"]
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads + readers:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        for t in readers:
            t.join()
        assert errors == []
        snapshot = list(l)
        assert sorted(x for x in snapshot if x != "mid") == sorted(
            x for x in (f"{t}{i}" for t in "ab" for i in range(1500)) if x in set(snapshot))
        assert len(d) == 100
        db0.commit()
    finally:
        db0.close()
    db0.init(root, prefix="test", autocommit=False)
    h = Holder()
    assert list(h.l) == snapshot and len(h.d) == 100
