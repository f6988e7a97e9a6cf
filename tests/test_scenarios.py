"""End-to-end scenarios S1, S2, S8, S13 and S14 of the conformance examples."""

import datetime as dt
import decimal
import enum
import gc
import os
import textwrap

import pytest

import dbzero as db0
from conftest import run_python

APP = textwrap.dedent("""
    import sys, dbzero as db0

    @db0.memo(singleton=True, id="s1.AppRoot")
    class AppRoot:
        def __init__(self, title, members):
            self.title, self.members, self.visits = title, members, 0
        def visit(self):
            self.visits += 1
            return self.visits

    db0.init(sys.argv[1], prefix="app")
    r = AppRoot("Club", ["ann", "bob"])
    n = r.visit()
    print(r.title, list(r.members), type(r.members).__name__, n, AppRoot("other", []) is r)
    db0.close()
""")


def test_s1_singleton_root_survives_restarts(root):
    for k in (1, 2, 3):
        out = run_python(APP, root).stdout.strip()
        assert out == f"Club ['ann', 'bob'] List {k} True"


def test_s2_values_survive_a_restart(root):
    run_python(f"""
        import datetime as dt, decimal, dbzero as db0
        @db0.memo(id="s2.Person")
        class Person:
            def __init__(self, name, age):
                self.name = name
                self.age = age
        db0.init({root!r}, prefix="people")
        p = Person("Alice", 30)
        db0.tags(p).add("keep")
        p.age += 1
        p.nick = "Al"
        p.tmp = 1
        del p.tmp
        src = ["py", "c"]
        p.skills = src
        src.append("rust")
        p.skills.append("go")
        p.contact = {{"email": "a@x", "tags": ("x", 1)}}
        p.dates = {{dt.date(2026, 1, 12), dt.date(2026, 1, 13)}}
        p.born = dt.datetime(1995, 5, 17, 8, 30, tzinfo=dt.timezone.utc)
        p.balance = decimal.Decimal("12.50")
        p.raw = b"\\x00\\xff"
        p.flag = True
        p.nothing = None
        p.ratio = 0.25
        p.friend = Person("Bob", 29)
        db0.close()
    """)

    @db0.memo(id="s2.Person")
    class Person:
        pass

    db0.init(root, prefix="people", read_write=False)
    (p,) = list(db0.find("keep"))
    assert (p.name, p.age, p.nick) == ("Alice", 31, "Al")
    assert not hasattr(p, "tmp")
    assert type(p.skills).__name__ == "List" and p.skills == ["py", "c", "go"]
    assert type(p.contact).__name__ == "Dict" and type(p.contact["tags"]).__name__ == "Tuple"
    assert p.contact["tags"] == ("x", 1)
    assert type(p.dates).__name__ == "Set" and dt.date(2026, 1, 13) in p.dates
    assert p.born == dt.datetime(1995, 5, 17, 8, 30, tzinfo=dt.timezone.utc) and p.born.utcoffset() == dt.timedelta(0)
    assert p.balance == decimal.Decimal("12.50") and str(p.balance) == "12.50"
    assert (p.raw, p.flag, p.nothing, p.ratio) == (b"\x00\xff", True, None, 0.25)
    assert p.friend.name == "Bob"
    assert sorted(vars(p)) == sorted(["name", "age", "nick", "skills", "contact", "dates", "born",
                                      "balance", "raw", "flag", "nothing", "ratio", "friend"])


class PyEnum(enum.Enum):
    A = 1


@pytest.mark.parametrize("bad", [bytearray(b"x"), 1 + 2j, frozenset([1]), PyEnum.A, object()])
def test_s2_part2_rejected_without_side_effects(db, bad):
    @db0.memo
    class P:
        pass

    p = P()
    with pytest.raises(AttributeError, match="Unsupported attribute type"):
        p.bad = bad
    assert not hasattr(p, "bad")


def test_s2_part2_list_constructor(db):
    with pytest.raises(RuntimeError, match="Type unsupported by dbzero: object"):
        db0.list([object()])


@db0.memo(id="s8.Item")
class Item:
    def __init__(self, ref=None):
        self.ref = ref


def test_s8_reachability_gc(db):
    lonely = Item()
    tagged = Item()
    db0.tags(tagged).add("t")
    child = Item()
    parent = Item(child)
    inlist = Item()
    holder = Item([inlist])
    a, b = Item(), Item()
    a.ref, b.ref = b, a
    assert (db0.getrefcount(lonely), db0.getrefcount(tagged), db0.getrefcount(child)) == (0, 1, 1)
    uids = {name: db0.uuid(obj) for name, obj in
            dict(lonely=lonely, tagged=tagged, child=child, inlist=inlist, a=a, b=b).items()}
    keep = db0.tags(parent, holder).add("root")  # keep parent and holder reachable
    del lonely, tagged, child, inlist, a, b, keep
    gc.collect()
    assert db0.exists(uids["lonely"])  # before the commit
    db0.commit()
    alive = {name: db0.exists(uid) for name, uid in uids.items()}
    assert alive == dict(lonely=False, tagged=True, child=True, inlist=True, a=True, b=True)
    parent.ref = None
    db0.commit()
    assert not db0.exists(uids["child"])
    db0.tags(db0.fetch(uids["tagged"])).remove("t")
    gc.collect()
    db0.commit()
    assert not db0.exists(uids["tagged"])
    holder.ref.pop()  # pop() releases the reference too (0.7.0 leaked it)
    gc.collect()
    db0.commit()
    assert not db0.exists(uids["inlist"])
    with pytest.raises(db0.ReferenceError):
        db0.fetch(uids["lonely"])
    x = Item()
    y = Item(x)
    db0.tags(y).add("root")
    with pytest.raises(RuntimeError, match="Cannot delete a memo object with references"):
        db0.delete(x)


def test_s13_read_only_mode_errors(root):
    db0.init(root, prefix="docs")

    @db0.memo(id="s13.Doc")
    class Doc:
        def __init__(self, t):
            self.t = t

    d = Doc("a")
    db0.tags(d).add("d")
    db0.close()
    db0.init(root, prefix="docs", read_write=False)
    (d,) = list(db0.find("d"))
    with pytest.raises(AttributeError, match="Cannot modify read-only prefix: docs"):
        d.t = "b"
    with pytest.raises(RuntimeError, match="cannot add tags to read-only object"):
        db0.tags(d).add("x")
    with pytest.raises(RuntimeError, match="Cannot modify read-only prefix: docs"):
        db0.list([1])
    db0.commit()
    assert db0.get_state_num() == db0.get_state_num(finalized=True) == 2
    with pytest.raises(RuntimeError):
        Doc("new")
    assert d.t == "a"


def test_s14_collections_like_python(db, root):
    @db0.memo(singleton=True, id="s14.Box")
    class Box:
        pass

    b = Box()
    b.nums = [10, 20, 30, 40]
    b.conf = {"z": 1, "a": 2, "m": 3}
    b.uniq = {3, 1, 2}
    b.pair = (1, "x")
    assert [type(x).__name__ for x in (b.nums, b.conf, b.uniq, b.pair)] == ["List", "Dict", "Set", "Tuple"]
    assert not isinstance(b.nums, list) and not isinstance(b.conf, dict)
    assert b.nums == [10, 20, 30, 40] and b.conf == {"z": 1, "a": 2, "m": 3}
    assert b.uniq == {1, 2, 3} and b.pair == (1, "x") and b.pair != [1, "x"]
    assert b.nums[1:3] == [20, 30] and type(b.nums[1:3]) is list
    assert type(b.nums + [50]).__name__ == "List"
    del b.nums[0]
    assert b.nums == [20, 30, 40]
    b.nums.remove(20)
    assert b.nums == [30, 40]
    with pytest.raises(ValueError):
        b.nums.remove(999)
    with pytest.raises(KeyError):
        del b.conf["nope"]
    b.conf[-1] = "x"
    b.nums.insert(0, 5)
    b.nums.sort(reverse=True)
    assert b.nums == [40, 30, 5]
    assert list(b.conf) == ["z", "a", "m", -1]  # insertion order, like dict
    db0.commit()
    db0.close()
    db0.init(root, prefix="test")
    b = db0.fetch(Box)
    assert b.nums == [40, 30, 5] and b.conf == {"z": 1, "a": 2, "m": 3, -1: "x"}
    assert b.uniq == {1, 2, 3} and b.pair == (1, "x")
