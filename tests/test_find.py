"""Query objects (API.md §6, Tier 2 split_by/filter): laziness, len/bool, slicing,
indexing, ordering, prefixes, read-your-writes, safe iteration."""

import gc

import pytest

import dbzero as db0

from conftest import run_python


@db0.memo(id="find.Item")
class Item:
    def __init__(self, n):
        self.n = n


@db0.memo(id="find.Special")
class Special(Item):
    pass


@db0.memo(id="find.Bare", no_default_tags=True)
class Bare:
    def __init__(self, n):
        self.n = n


@db0.memo(id="find.Remote", prefix="remote-data")
class Remote:
    def __init__(self, n):
        self.n = n


def ns(q):
    return [o.n for o in q]


@pytest.fixture
def items(db):
    objs = [Item(i) for i in range(10)]
    for o in objs:
        db0.tags(o).add("even" if o.n % 2 == 0 else "odd")
        if o.n % 3 == 0:
            db0.tags(o).add("three")
    return objs


def test_order_len_bool_reiterable(items):
    q = db0.find(Item, "even")
    assert ns(q) == [0, 2, 4, 6, 8] and ns(q) == [0, 2, 4, 6, 8]
    assert len(q) == 5 and bool(q) and not db0.find("none")
    assert ns(db0.find(Item)) == list(range(10))     # ascending object id = creation order
    db0.commit()
    assert ns(q) == [0, 2, 4, 6, 8] and len(q) == 5


def test_slicing_and_indexing(items):
    q = db0.find(Item)
    assert ns(q[2:5]) == [2, 3, 4]
    assert ns(q[::3]) == [0, 3, 6, 9]
    assert ns(q[-2:]) == [8, 9]
    assert ns(q[::-4]) == [9, 5, 1]
    assert len(q[1:4]) == 3 and isinstance(q[1:4], type(q[::2]))
    assert ns(q[2:8][1:3]) == [3, 4]
    assert q[0].n == 0 and q[-1].n == 9 and q[3] is items[3]
    with pytest.raises(IndexError):
        q[10]
    with pytest.raises(TypeError):
        q["x"]
    # slices are queries too: usable as criteria
    assert ns(db0.find(q[0:4], "even")) == [0, 2]


def test_read_your_writes_and_laziness(items):
    q = db0.find("even", "three")
    assert ns(q) == [0, 6]
    db0.tags(items[2]).add("three")
    assert ns(q) == [0, 2, 6]                 # queries are re-evaluated on use
    new = Item(100)
    db0.tags(new).add("even", "three")
    assert ns(db0.find("even", "three")) == [0, 2, 6, 100]
    db0.commit()
    db0.tags(items[0]).remove("three")
    assert ns(q) == [2, 6, 100]


def test_iteration_is_safe_while_tags_change(items):
    seen = []
    for obj in db0.find("even"):
        seen.append(obj.n)
        db0.tags(obj).remove("even")
        db0.tags(Item(obj.n + 1000)).add("even")
    assert seen == [0, 2, 4, 6, 8]
    assert ns(db0.find("even")) == [1000, 1002, 1004, 1006, 1008]


def test_nested_criteria(items):
    assert ns(db0.find(["three", ("even", db0.no("three"))])) == [0, 2, 3, 4, 6, 8, 9]
    assert ns(db0.find("even", db0.no(["three", items[4]]))) == [2, 8]
    assert ns(db0.find(Item, db0.no(db0.find("odd")))) == [0, 2, 4, 6, 8]
    assert ns(db0.find(items[1], "odd")) == [1]
    assert ns(db0.find([items[1], items[2]])) == [1, 2]
    assert ns(db0.find(("even", "odd"))) == []
    assert ns(db0.find([])) == [] and ns(db0.find()) == [] and ns(db0.find(())) == []
    assert ns(db0.find(Item, ["three", db0.no("even")])) == [0, 1, 3, 5, 6, 7, 9]
    with pytest.raises(db0.Error, match="Negated query components"):
        db0.find(["even", db0.no("three")])
    with pytest.raises(db0.Error, match="type as a query"):
        db0.find(["even", Item])
    with pytest.raises(db0.Error, match="type as a query"):
        db0.find("even", db0.no(Item))
    with pytest.raises(db0.Error, match="int as a query"):
        db0.find("even", 3)
    with pytest.raises(db0.Error, match="float as a query"):
        db0.find(1.5)
    assert list(db0.find(int)) == []          # non-memo class: empty


def test_class_criteria(db):
    a, b = Item(1), Special(2)
    db0.tags(a, b).add("t")
    assert ns(db0.find(Item)) == [1, 2] and ns(db0.find(Special)) == [2]
    assert ns(db0.find(Special, "t")) == [2]
    assert type(db0.find(Special)[0]) is Special
    bare = Bare(3)
    db0.tags(bare).add("t")
    assert list(db0.find(Bare)) == []
    assert ns(db0.find(Bare, "t")) == [3]
    assert db0.getrefcount(Item) == 2 and db0.getrefcount(Special) == 1


def test_classes_of_ghosts_in_fresh_process(db, root):
    for i in range(5):
        db0.tags(Item(i), Special(10 + i)).add("keep")
    db0.tags(Bare(99)).add("keep")
    special = Special(50)
    db0.tags(special).add("keep")
    db0.tags(special).remove(db0.as_tag(Special))     # class tags edited by hand
    db0.close()
    out = run_python(f"""
        import dbzero as db0
        @db0.memo(id="find.Item")
        class Item:
            pass
        @db0.memo(id="find.Special")
        class Special(Item):
            pass
        db0.init({root!r}, prefix="test")
        print(sorted((type(o).__name__, o.n) for o in db0.find("keep")))
        print([o.n for o in db0.find(Special)], len(db0.find(Item)))
    """)
    lines = out.stdout.strip().splitlines()
    got = eval(lines[0])
    assert ("Special", 50) in got and ("Item", 0) in got and ("Special", 10) in got
    assert ("Bare", 99) in got and len(got) == 12
    assert lines[1] == "[10, 11, 12, 13, 14] 11"


def test_prefix_resolution(db):
    r = Remote(1)
    db0.tags(r).add("x")
    assert db0.get_current_prefix().name == "test"
    assert ns(db0.find(Remote)) == [1]
    assert list(db0.find("x")) == []
    assert ns(db0.find("x", prefix="remote-data")) == [1]
    q = db0.find("x", prefix="remote-data")
    assert db0.get_prefix_of(q).name == "remote-data"
    assert ns(db0.find(q)) == [1]             # the prefix of a query criterion
    with pytest.raises(RuntimeError, match="nope"):
        db0.find("x", prefix="nope")


def test_filter(items):
    q = db0.filter(lambda o: o.n > 5, db0.find(Item, "even"))
    assert ns(q) == [6, 8] and len(q) == 2
    assert ns(db0.find(q, "three")) == [6]
    assert ns(q[1:]) == [8]

    def boom(o):
        raise KeyError("inner")
    with pytest.raises(KeyError, match="inner"):
        list(db0.filter(boom, db0.find(Item)))
    with pytest.raises(RuntimeError, match="Invalid filter object"):
        db0.filter(5, db0.find(Item))
    with pytest.raises(RuntimeError, match="Invalid query object"):
        db0.filter(bool, [1, 2])


def test_split_by(items):
    Kind = db0.enum("FindKind", ["A", "B"])
    db0.tags(items[0], items[1]).add(Kind.A)
    db0.tags(items[1], items[2]).add(Kind.B)
    q = db0.split_by([Kind.A, Kind.B], db0.find(Item))
    assert [(o.n, str(t)) for o, t in q] == [(0, "A"), (1, "B"), (2, "B")]
    assert len(q) == 3
    q2 = db0.split_by([Kind.A, Kind.B], db0.find(Item), exclusive=False)
    assert [(o.n, str(t)) for o, t in q2] == [(0, "A"), (1, "A"), (1, "B"), (2, "B")]
    assert len(q2) == 4
    assert [(o.n, t) for o, t in db0.split_by(["three", "odd"], db0.find(Item, "even"))] == [(0, "three"), (6, "three")]
    assert [(o.n, str(t)) for o, t in db0.find(q, "even")] == [(0, "A"), (2, "B")]
    assert list(db0.split_by([], db0.find(Item))) == []
    with pytest.raises(RuntimeError, match="Invalid query object"):
        db0.split_by(["a"], [1])


def test_closed_prefix_query(db):
    Item(1)
    q = db0.find(Item)
    db0.close("test")
    with pytest.raises(RuntimeError):
        list(q)


def test_snapshot_find(db):
    a = Item(1)
    db0.tags(a).add("t")
    db0.commit()
    b = Item(2)
    db0.tags(b).add("t")
    db0.tags(a).remove("t")
    db0.commit()
    with db0.snapshot(db0.get_state_num(finalized=True) - 1) as snap:
        assert ns(snap.find("t")) == [1]
        assert ns(db0.find("t")) == [1]
    assert ns(db0.find("t")) == [2]
