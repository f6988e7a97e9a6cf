"""db0.load / db0.load_all: deep conversion of memo objects and collections to plain Python."""

from datetime import date

import pytest

import dbzero as db0


@db0.memo(id="tests.load.Person")
class Person:
    def __init__(self, name, age):
        self.name = name
        self.age = age


@db0.memo(id="tests.load.Custom")
class Custom:
    def __init__(self, value):
        self.value = value
        self.secret = "hidden"

    def __load__(self, **kwargs):
        return {"value": self.value, "kw": kwargs, "friend": getattr(self, "friend", None)}


Color = db0.enum("TestLoadColor", ["RED", "GREEN"])


def test_scalars_and_plain_containers(db):
    for v in (1, "s", None, 2.5, b"x", True):
        assert db0.load(v) == v
    assert db0.load([1, (2, {3: {4}})]) == [1, (2, {3: {4}})]
    assert db0.load(Color.RED) == "RED"
    assert db0.load([Color.GREEN]) == ["GREEN"]


def test_collections(db):
    assert db0.load(db0.list([1, [2, 3]])) == [1, [2, 3]]
    assert type(db0.load(db0.list([1, [2]]))[1]) is list
    assert db0.load(db0.tuple((1, (2,)))) == (1, (2,))
    assert type(db0.load(db0.tuple((1, (2,))))[1]) is tuple
    d = db0.load(db0.dict({"a": [1], "b": {"c": (1,)}, Color.RED: 1}))
    assert d == {"a": [1], "b": {"c": (1,)}, "RED": 1} and type(d["b"]) is dict
    s = db0.load(db0.set([1, 2, (3, 4)]))
    assert s == {1, 2, (3, 4)} and type(s) is set
    assert db0.load(db0.bytearray(b"ab")) == b"ab"


def test_memo_objects(db):
    p = Person("Ann", 30)
    p.tags = ["a", "b"]
    p.born = date(1996, 1, 1)
    p.friend = Person("Bob", 31)
    p.color = Color.GREEN
    loaded = db0.load(p)
    assert loaded == {"name": "Ann", "age": 30, "tags": ["a", "b"], "born": date(1996, 1, 1),
                      "friend": {"name": "Bob", "age": 31}, "color": "GREEN"}
    assert db0.load(p, exclude=["friend", "tags"]) == {"name": "Ann", "age": 30,
                                                       "born": date(1996, 1, 1), "color": "GREEN"}
    assert db0.load([p.friend]) == [{"name": "Bob", "age": 31}]
    assert db0.load(db0.list([p.friend])) == [{"name": "Bob", "age": 31}]


def test_custom_load(db):
    c = Custom(5)
    c.friend = Person("F", 1)
    assert db0.load(c) == {"value": 5, "kw": {}, "friend": {"name": "F", "age": 1}}
    assert db0.load(c, mode="x") == {"value": 5, "kw": {"mode": "x"},
                                     "friend": {"name": "F", "age": 1}}
    with pytest.raises(AttributeError, match="Cannot exclude values when __load__ is implemented"):
        db0.load(c, exclude=["value"])
    # load_all ignores __load__ of the top-level object only
    all_fields = db0.load_all(c)
    assert all_fields == {"value": 5, "secret": "hidden", "friend": {"name": "F", "age": 1}}
    assert db0.load_all(c, exclude=["secret"]) == {"value": 5, "friend": {"name": "F", "age": 1}}
    holder = Person("H", 2)
    holder.custom = c
    assert db0.load_all(holder)["custom"] == {"value": 5, "kw": {}, "friend": {"name": "F", "age": 1}}
    assert db0.load(holder, flag=1)["custom"]["kw"] == {"flag": 1}


def test_cycles_raise(db):
    a, b = Person("a", 1), Person("b", 2)
    a.other = b
    b.other = a
    with pytest.raises(RecursionError, match="Recursive loading detected"):
        db0.load(a)
    l = db0.list([1])
    a.l = l
    l.append(a)
    with pytest.raises(RecursionError, match="Recursive loading detected"):
        db0.load(l)


def test_shared_object_is_not_a_cycle(db):
    shared = Person("s", 1)
    p = Person("p", 2)
    p.x = shared
    p.y = [shared, shared]
    loaded = db0.load(p)
    assert loaded["x"] == loaded["y"][0] == loaded["y"][1] == {"name": "s", "age": 1}


def test_memo_keys_and_members_stay_objects(db):
    p = Person("k", 1)
    d = db0.dict({p: "v"})
    loaded = db0.load(d)
    assert list(loaded) == [p] and loaded[p] == "v"
    assert db0.load(db0.set([p])) == {p}


def test_index_and_query_are_not_loadable(db):
    ix = db0.index()
    with pytest.raises(RuntimeError, match="__load__ not implemented for type"):
        db0.load(ix)
    with pytest.raises(RuntimeError, match="__load__ not implemented for type"):
        db0.load(db0.find(Person))
