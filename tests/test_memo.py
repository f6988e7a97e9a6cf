"""Memo classes: decorator forms, attributes, inheritance, dataclasses, __init__ semantics."""

import dataclasses
import gc

import pytest

import dbzero as db0


@db0.memo
class Person:
    def __init__(self, name, age=0):
        self.name = name
        self.age = age

    def greet(self):
        return f"hi {self.name}"

    @property
    def label(self):
        return f"{self.name}({self.age})"


@db0.memo()
class Empty:
    pass


@db0.memo(singleton=True)
class Root:
    def __init__(self, title):
        self.title = title


@db0.memo
class Employee(Person):
    def __init__(self, name, company):
        super().__init__(name, 30)
        self.company = company


class PlainBase:
    def shout(self):
        return self.name.upper()


@db0.memo
class Mixed(PlainBase):
    def __init__(self, name):
        self.name = name


@db0.memo
@dataclasses.dataclass
class Point:
    x: int
    y: int = 5
    tags: list = dataclasses.field(default_factory=list)


@db0.memo
class Failing:
    def __init__(self, fail):
        self.before = 1
        if fail:
            raise ValueError("boom")


def test_class_shape(db):
    p = Person("Ann", 3)
    assert type(p) is Person and isinstance(p, Person) and isinstance(p, db0.MemoBase)
    assert Person.__name__ == "Person"
    assert p.greet() == "hi Ann" and p.label == "Ann(3)"
    assert db0.is_memo(p) and db0.is_memo(Person) and not db0.is_memo(PlainBase) and not db0.is_memo(3)


def test_unknown_decorator_keyword():
    with pytest.raises(TypeError, match="invalid keyword"):
        db0.memo(immutable=True)


def test_attributes_dynamic_and_deleted(db):
    p = Person("Ann")
    p.address = "Main St"
    assert p.address == "Main St"
    p.age += 1
    assert p.age == 1
    del p.address
    assert not hasattr(p, "address")
    assert getattr(p, "address", "dflt") == "dflt"
    with pytest.raises(AttributeError):
        p.nope
    with pytest.raises(AttributeError, match="Attribute not found: nope"):
        del p.nope
    assert sorted(vars(p)) == ["age", "name"]
    assert "name" in dir(p)


def test_fields_persist_across_reopen(db, root):
    p = Person("Ann", 41)
    Root("r").member = p  # reachable from a root, so close() keeps it
    p.extra = "x"
    uid = db0.uuid(p)
    del p.extra
    p.late = 5
    db0.commit()
    db0.close()
    db0.init(root, prefix="test")
    q = db0.fetch(uid)
    assert (q.name, q.age, q.late) == ("Ann", 41, 5)
    assert not hasattr(q, "extra")
    assert sorted(vars(q)) == ["age", "late", "name"]


def test_private_names(db):
    @db0.memo
    class Secretive:
        def __init__(self):
            self._a = 1
            self.__b = 2

        def b(self):
            return self.__b

    s = Secretive()
    assert s._a == 1 and s.b() == 2


def test_property_setter_runs(db):
    @db0.memo
    class Temp:
        def __init__(self):
            self._c = 0

        @property
        def celsius(self):
            return self._c

        @celsius.setter
        def celsius(self, v):
            self._c = v

    t = Temp()
    t.celsius = 21
    assert t._c == 21 and t.celsius == 21


def test_singleton(db, root):
    r = Root("first")
    assert Root("ignored") is r
    assert r.title == "first"
    assert db0.fetch(Root) is r
    assert db0.exists(Root) and db0.is_singleton(r) and not db0.is_singleton(Person("x"))
    db0.commit()
    db0.close()
    db0.init(root, prefix="test")
    r2 = Root("again")
    assert r2.title == "first" and db0.fetch(Root) is r2


def test_singleton_per_prefix(db):
    a = Root("in-test")
    db0.open("other")
    b = Root("in-other")
    assert a is not b and b.title == "in-other"
    assert db0.fetch(Root, prefix="test").title == "in-test"
    assert db0.exists(Root, prefix="other")


def test_fetch_singleton_errors(db):
    with pytest.raises(db0.ClassNotFoundError, match="Class not found"):
        db0.fetch(Root)
    assert not db0.exists(Root)
    Person("x")
    with pytest.raises(RuntimeError, match="Not a dbzero singleton type"):
        db0.fetch(Person)
    with pytest.raises(TypeError):
        db0.is_singleton(Person)


def test_inheritance(db):
    e = Employee("Eve", "ACME")
    assert (e.name, e.age, e.company) == ("Eve", 30, "ACME")
    assert isinstance(e, Person)
    m = Mixed("mo")
    assert m.shout() == "MO"


def test_plain_subclass_of_memo_class_is_rejected(db):
    class Plain(Person):
        pass

    with pytest.raises(TypeError, match="not decorated"):
        Plain("x")


def test_dataclass(db):
    p = Point(1)
    assert (p.x, p.y) == (1, 5)
    p.tags.append("a")
    assert list(p.tags) == ["a"]
    assert p == p and repr(p).startswith("Point(x=1, y=5")
    q = Point(1)
    q.tags.append("a")
    assert p == q  # dataclass __eq__ is honoured (field comparison)
    assert hash(p) != hash(q)  # identity hash


def test_failing_init_creates_nothing(db):
    before = len(list(db0.find(Failing))) if hasattr(db0, "find") else 0
    with pytest.raises(ValueError):
        Failing(True)
    gc.collect()
    db0.commit()
    if hasattr(db0, "find"):
        assert len(list(db0.find(Failing))) == before
    ok = Failing(False)
    assert ok.before == 1


def test_wrong_constructor_arguments(db):
    with pytest.raises(TypeError):
        Person()
    with pytest.raises(TypeError):
        Empty(1)


@db0.memo
class Wide:
    def __init__(self, *values, scale=1):
        self.values = [v * scale for v in values]


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 20])
def test_constructor_argument_counts(db, count):
    args = list(range(count))
    assert list(Wide(*args).values) == args
    assert list(Wide(*args, scale=2).values) == [2 * a for a in args]
    with pytest.raises(TypeError, match="unexpected keyword"):
        Person("x", *args[:1], colour="red")
    with pytest.raises(TypeError, match="positional"):
        Person("x", 1, *args, "extra")


def test_default_equality_and_hash_are_identity(db):
    a, b = Person("x"), Person("x")
    assert a != b and a == a
    assert hash(a) == hash(a) and hash(a) != hash(b)
    with pytest.raises(TypeError):
        a < b


def test_repr_and_pickle(db):
    p = Person("x")
    assert repr(p).startswith("<") and db0.uuid(p) in repr(p)
    import copy
    import pickle
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(p)
    with pytest.raises(TypeError):
        copy.copy(p)


def test_uuid_inside_init(db):
    seen = {}

    @db0.memo
    class SelfAware:
        def __init__(self):
            seen["uuid"] = db0.uuid(self)
            self.me = db0.materialized(self)

    s = SelfAware()
    assert seen["uuid"] == db0.uuid(s)
    assert s.me is s
    assert db0.materialized(s) is s


def test_explicit_type_id_survives_rename(root, fresh):
    fresh("""
        import dbzero as db0
        @db0.memo(id="stable-thing")
        class OldName:
            def __init__(self): self.v = 7
        db0.init(%r, prefix="p")
        print(db0.uuid(OldName()))
        o = OldName.__new__  # keep
    """ % root)
    out = fresh("""
        import dbzero as db0
        @db0.memo(id="stable-thing", singleton=True)
        class Keeper:
            def __init__(self): pass
        @db0.memo(id="stable-thing")
        class NewName:
            def __init__(self): self.v = 0
        db0.init(%r, prefix="p")
    """ % root)
    assert out.returncode == 0


def test_unknown_class_reads_as_memobase(root, fresh):
    out = fresh("""
        import dbzero as db0
        @db0.memo(singleton=True)
        class Holder:
            def __init__(self): self.child = None
        @db0.memo
        class Secret:
            def __init__(self): self.code = 42; self.name = "s"
        db0.init(%r, prefix="p")
        h = Holder(); h.child = Secret()
        print(db0.uuid(h.child))
        db0.close()
    """ % root)
    uid = out.stdout.strip()
    db0.init(root, prefix="p")
    obj = db0.fetch(uid)
    assert isinstance(obj, db0.MemoBase)
    assert obj.code == 42 and obj.name == "s"
    assert sorted(vars(obj)) == ["code", "name"]


def test_set_prefix(db):
    @db0.memo
    class Routed:
        def __init__(self, where):
            db0.set_prefix(self, where)
            self.v = 1

    r = Routed("elsewhere")
    assert db0.get_prefix_of(r).name == "elsewhere"
    assert db0.get_current_prefix().name == "test"

    @db0.memo
    class Late:
        def __init__(self):
            self.v = 1
            db0.set_prefix(self, "x")

    with pytest.raises(RuntimeError, match="set_prefix failed"):
        Late()


def test_class_prefix(db, root):
    @db0.memo(prefix="/my-org/app/data")
    class Note:
        def __init__(self, text):
            self.text = text

    n = Note("hello")
    assert db0.get_prefix_of(n).name == "my-org/app/data"
    assert db0.get_prefix_of(Note).name == "my-org/app/data"
    assert db0.get_current_prefix().name == "test"
    db0.commit()
    import os
    assert os.path.exists(os.path.join(root, "my-org", "app", "data.db0"))


def test_stored_classes_and_functions(db):
    p = Person("x")
    p.kind = int
    p.cls = Person
    p.fn = _module_function
    assert p.kind is int and p.cls is Person and p.fn(2) == 4
    with pytest.raises(AttributeError):
        p.bad = lambda: 1
    with pytest.raises(AttributeError):
        p.bad = len
    assert not hasattr(p, "bad")


def _module_function(x):
    return x * 2


def test_many_attributes_and_layout_growth(db, root):
    objs = []
    for i in range(50):
        p = Person(f"n{i}")
        setattr(p, f"f{i}", i)
        objs.append(db0.uuid(p))
        setattr(Root("r"), f"k{i}", p)
    db0.commit()
    db0.close()
    db0.init(root, prefix="test")
    for i, uid in enumerate(objs):
        p = db0.fetch(uid)
        assert getattr(p, f"f{i}") == i and p.name == f"n{i}"
        assert not hasattr(p, f"f{i + 1}")
