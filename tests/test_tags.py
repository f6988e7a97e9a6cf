"""Tags (API.md §6, scenario S3): the tag manager, tag keys, references, and a model-based
check of find() over random tag histories."""

import gc
import random
import shutil
import tempfile

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dbzero as db0

from conftest import run_python


@db0.memo(id="tags.Employee")
class Employee:
    def __init__(self, name):
        self.name = name


@db0.memo(id="tags.Team")
class Team:
    def __init__(self, name):
        self.name = name


@db0.memo(id="tags.Person")
class Person:
    def __init__(self, name, age):
        self.name = name
        self.age = age


@db0.memo(id="tags.Manager")
class Manager(Employee):
    pass


@db0.memo(id="tags.Plain", no_default_tags=True)
class Plain:
    def __init__(self, name):
        self.name = name


def names(q):
    return sorted(o.name for o in q)


# -- S3 ------------------------------------------------------------------------------------------

def test_s3_tags_and_find(db):
    sue, mike, tom = Employee("sue"), Employee("mike"), Employee("tom")
    core = Team("core")
    db0.tags(sue).add("staff", "manager")
    db0.tags(mike).add(["staff", "dev"])
    db0.tags(tom).add("dev")
    db0.tags(core).add("staff")
    db0.tags(sue, mike).add(db0.as_tag(core))

    assert names(db0.find(Employee)) == ["mike", "sue", "tom"]
    assert names(db0.find(Employee, "staff")) == ["mike", "sue"]
    assert names(db0.find(["manager", "dev"])) == ["mike", "sue", "tom"]
    assert names(db0.find(("staff", "dev"))) == ["mike"]
    assert names(db0.find("staff", db0.no("manager"))) == ["core", "mike"]
    assert names(db0.find(db0.as_tag(core))) == ["mike", "sue"]
    assert names(db0.find(core)) == ["core"]
    assert list(db0.find("nobody")) == []
    assert len(db0.find("staff")) == 3

    db0.tags(mike).remove("dev")
    db0.tags(mike).remove("never-added")
    assert names(db0.find("dev")) == ["tom"]

    with pytest.raises(RuntimeError, match="Negated query components are not supported without positive components"):
        db0.find(db0.no("dev"))
    with pytest.raises(RuntimeError, match="Unable to interpret object of type: type as a query"):
        db0.find("staff", Employee)
    with pytest.raises(RuntimeError, match="Unable to interpret object of type: int as a tag"):
        db0.tags(sue).add(5)

    # the same after a commit (committed postings instead of pending ones)
    db0.commit()
    assert names(db0.find(Employee, "staff")) == ["mike", "sue"]
    assert names(db0.find("staff", db0.no("manager"))) == ["core", "mike"]
    assert names(db0.find(db0.as_tag(core))) == ["mike", "sue"]
    assert names(db0.find("dev")) == ["tom"]


def test_readme_queries_and_tags(db):
    person = Person("Susan", 31)
    db0.tags(person).add("employee", "manager")
    person = Person("Michael", 29)
    db0.tags(person).add("employee", "developer")
    result = db0.find(Person)
    employees = db0.find(Person, "employee")
    staff = db0.find(["manager", "developer"])
    non_managers = db0.find("employee", db0.no("manager"))
    assert names(result) == ["Michael", "Susan"]
    assert names(employees) == ["Michael", "Susan"]
    assert names(staff) == ["Michael", "Susan"]
    assert names(non_managers) == ["Michael"]


# -- the manager -----------------------------------------------------------------------------------

def test_tag_forms_and_errors(db):
    Color = db0.enum("TagColor", ["RED", "GREEN"])
    e, t = Employee("e"), Team("t")
    db0.tags(e).add(Color.RED, "", ("x", ["y"]), iter(["z"]), t, db0.as_tag(Team))
    assert db0.tags(e).add("a") is None and db0.tags(e).remove("a") is None
    assert names(db0.find(Color.RED)) == ["e"]
    assert list(db0.find("RED")) == []
    assert names(db0.find("")) == names(db0.find("x")) == names(db0.find("y")) == ["e"]
    assert names(db0.find(db0.as_tag(t))) == ["e"]
    # a class tag makes the object show up under that class's default tag
    assert names(db0.find(Team)) == ["e", "t"]
    assert names(db0.find(db0.as_tag(Team))) == ["e", "t"]
    for bad in (5, None, 1.5, b"ab", [1], Team):
        with pytest.raises(RuntimeError, match="as a tag"):
            db0.tags(e).add(bad)
    with pytest.raises(db0.Error, match="Unable to interpret object of type: int as a tag"):
        db0.tags(e).add(3)
    for bad in (5, "x", None, [e]):
        with pytest.raises(db0.Error, match="All arguments must be dbzero memo objects or object queries"):
            db0.tags(bad)
    with pytest.raises(db0.Error, match="as a tag"):
        db0.as_tag(5)
    # a failed add changes nothing (tags are validated first)
    with pytest.raises(db0.Error):
        db0.tags(e).add("fresh", 5)
    assert list(db0.find("fresh")) == []


def test_membership_and_listing(db):
    Color = db0.enum("TagColor2", ["RED"])
    e, t = Employee("e"), Team("t")
    db0.tags(e).add("a", "b", Color.RED, t, "long" * 200)
    assert "a" in db0.tags(e) and Color.RED in db0.tags(e) and t in db0.tags(e)
    assert "zz" not in db0.tags(e) and db0.as_tag(Team) not in db0.tags(e)
    listed = list(db0.tags(e))
    assert set(x for x in listed if isinstance(x, str)) == {"a", "b", "long" * 200}
    assert Color.RED in listed and t in listed
    db0.commit()
    assert set(x for x in db0.tags(e) if isinstance(x, str)) == {"a", "b", "long" * 200}
    assert names(db0.find("long" * 200)) == ["e"]
    db0.tags(e).remove("a", Color.RED)
    assert "a" not in db0.tags(e)
    assert set(map(str, db0.tags(e))) >= {"b"}
    # managers of several objects: membership and listing mean "all of them"
    f = Employee("f")
    db0.tags(e, f).add("both")
    db0.tags(f).add("only-f")
    assert "both" in db0.tags(e, f) and "only-f" not in db0.tags(e, f)
    assert list(db0.tags(e, f)) == ["both"]


def test_tags_of_query_and_long_tags_after_restart(db, root):
    people = [Employee(f"p{i}") for i in range(5)]
    db0.tags(*people[:3]).add("group")
    db0.tags(db0.find("group")).add("via-query")
    assert names(db0.find("via-query")) == ["p0", "p1", "p2"]
    long_tag = "ü" * 400
    db0.tags(people[4]).add(long_tag)
    db0.close()
    out = run_python(f"""
        import dbzero as db0
        db0.init({root!r}, prefix="test")
        [obj] = db0.find({long_tag!r})
        print(obj.name, list(db0.tags(obj)) == [{long_tag!r}], len(db0.find("via-query")))
    """)
    assert out.stdout.split() == ["p4", "True", "3"]


def test_read_only_object(root):
    db0.init(root, prefix="ro", autocommit=False)
    e = Employee("x")
    db0.tags(e).add("k")
    db0.close()
    db0.init(root)
    db0.open("ro", "r")
    [e] = db0.find("k")
    with pytest.raises(RuntimeError, match="ObjectTagManager: cannot add tags to read-only object"):
        db0.tags(e).add("y")
    with pytest.raises(db0.ReadOnlyError):
        db0.tags(e).add("y")
    with pytest.raises(AttributeError):
        db0.tags(e).remove("k")
    assert "k" in db0.tags(e)


def test_cross_prefix_tags(db):
    a = Employee("a")
    db0.open("other")
    b = Team("b")
    db0.tags(a).add(db0.as_tag(b))      # tag object in "other", tagged object in "test"
    db0.tags(b).add("in-other")
    assert len(db0.find("in-other")) == 1
    assert list(db0.find(db0.as_tag(b))) == []           # current prefix is "other"
    assert names(db0.find(db0.as_tag(b), prefix="test")) == ["a"]
    assert names(db0.find(Employee, prefix="test")) == ["a"]
    assert db0.get_prefix_of(db0.find("x", prefix="test")).name == "test"


def test_dead_and_closed_objects(db):
    e = Employee("e")
    db0.tags(e).add("t")
    db0.tags(e).remove("t")
    db0.delete(e)
    with pytest.raises(db0.ReferenceError):
        db0.tags(e).add("t")
    f = Employee("f")
    db0.tags(f).add("keep")
    db0.close()
    with pytest.raises(RuntimeError):
        db0.tags(f).add("t")


# -- references -------------------------------------------------------------------------------------

def test_tags_are_references(db):
    e = Employee("e")
    assert db0.getrefcount(e) == 0
    db0.tags(e).add("a", "a", "b")
    assert db0.getrefcount(e) == 2
    db0.tags(e).add(db0.as_tag(Team))     # class tags are not references
    assert db0.getrefcount(e) == 2
    db0.tags(e).remove("a", "zz")
    assert db0.getrefcount(e) == 1
    assert db0.getrefcount(Employee) >= 1


def test_tagged_object_survives_untagged_dies(db):
    uid_t = db0.uuid(_make_tagged("kept"))
    uid_l = db0.uuid(Employee("lonely"))
    gc.collect()
    db0.commit()
    assert db0.exists(uid_t) and not db0.exists(uid_l)
    db0.close()
    db0.init(db, prefix="test", autocommit=False)
    [obj] = db0.find("kept")
    assert db0.uuid(obj) == uid_t
    db0.tags(obj).remove("kept")
    del obj
    gc.collect()
    assert db0.exists(uid_t)       # deletion takes effect at the next commit
    db0.commit()
    assert not db0.exists(uid_t)
    assert list(db0.find(Employee)) == []


def _make_tagged(tag):
    e = Employee(tag)
    db0.tags(e).add(tag)
    return e


def test_delete_tagged_object_fails_then_untagged_works(db):
    e = Employee("e")
    db0.tags(e).add("t")
    with pytest.raises(RuntimeError, match="Cannot delete a memo object with references"):
        db0.delete(e)
    db0.tags(e).remove("t")
    db0.delete(e)
    assert list(db0.find(Employee)) == []


def test_atomic_rolls_back_tags(db):
    e = Employee("e")
    db0.tags(e).add("open")
    db0.commit()
    with pytest.raises(ValueError):
        with db0.atomic():
            db0.tags(e).add("rush")
            db0.tags(e).remove("open")
            extra = Employee("extra")
            db0.tags(extra).add("open")
            raise ValueError
    assert names(db0.find("open")) == ["e"] and len(db0.find("rush")) == 0
    assert db0.getrefcount(e) == 1
    assert names(db0.find(Employee)) == ["e"]


# -- model-based --------------------------------------------------------------------------------------

TAGS = ["a", "b", "c", "d"]
CLASSES = [Employee, Manager, Team]


def _crit(depth):
    leaf = st.one_of(st.sampled_from(TAGS), st.integers(0, 7).map(lambda i: ("obj", i)),
                     st.integers(0, 7).map(lambda i: ("astag", i)))
    if depth == 0:
        return leaf
    sub = _crit(depth - 1)
    return st.one_of(
        leaf,
        st.lists(sub, max_size=3).map(lambda xs: ("or", xs)),
        st.lists(sub, max_size=3).map(lambda xs: ("and", xs)),
        sub.map(lambda x: ("not", x)),
    )


QUERY = st.tuples(st.sampled_from([None] + CLASSES), st.lists(_crit(2), max_size=3))
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 7), st.lists(st.sampled_from(TAGS + [("astag", 0), ("astag", 5)]), min_size=1, max_size=3)),
    st.tuples(st.just("remove"), st.integers(0, 7), st.lists(st.sampled_from(TAGS + [("astag", 0), ("astag", 5)]), min_size=1, max_size=3)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("query"), QUERY),
), max_size=25)


class Model:
    """Python model: object index -> set of tags (object tags as ("astag", i))."""

    def __init__(self, objs):
        self.objs = objs
        self.tags = {i: set() for i in range(len(objs))}

    def eval(self, crit, universe):
        if isinstance(crit, str):
            return {i for i, ts in self.tags.items() if crit in ts}
        kind = crit[0]
        if kind == "obj":
            return {crit[1]}
        if kind == "astag":
            return {i for i, ts in self.tags.items() if crit in ts}
        if kind == "not":
            return universe - self.eval(crit[1], universe)
        parts = [self.eval(c, universe) for c in crit[1]]
        if not parts:
            return set()
        if kind == "or":
            return set().union(*parts)
        return set.intersection(*parts)

    def find(self, cls, crits):
        """Expected indexes, or None when the query must be rejected (purely negative)."""
        universe = set(self.tags) | {-1}     # -1: a phantom object nothing is tagged with
        if cls is None and not crits:
            return set()
        result = set(universe)
        if cls is not None:
            result = {i for i, o in enumerate(self.objs) if isinstance(o, cls)}
        for crit in crits:
            result &= self.eval(crit, universe)
        if -1 in result:
            return None
        return result


def _to_db0(crit, objs):
    if isinstance(crit, str):
        return crit
    kind = crit[0]
    if kind == "obj":
        return objs[crit[1]]
    if kind == "astag":
        return db0.as_tag(objs[crit[1]])
    if kind == "not":
        return db0.no(_to_db0(crit[1], objs))
    items = [_to_db0(c, objs) for c in crit[1]]
    return items if kind == "or" else tuple(items)


def _tag_arg(tag, objs):
    return tag if isinstance(tag, str) else objs[tag[1]]


def _check_query(model, objs, cls, crits):
    expected = model.find(cls, crits)
    args = ([cls] if cls is not None else []) + [_to_db0(c, objs) for c in crits]
    if expected is None:
        with pytest.raises(db0.Error, match="Negated query components"):
            db0.find(*args)
        return
    q = db0.find(*args)
    got = list(q)
    assert [o._oid for o in got] == sorted(o._oid for o in got)      # ascending id order
    assert {objs.index(o) for o in got} == expected
    assert len(q) == len(expected) and bool(q) == bool(expected)


def _pool():
    return [Employee("e0"), Employee("e1"), Manager("m2"), Manager("m3"), Team("t4"),
            Team("t5"), Employee("e6"), Manager("m7")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.lists(QUERY, min_size=1, max_size=4))
def test_model_random_tags_and_queries(ops, final_queries):
    root = tempfile.mkdtemp()
    db0.init(root, prefix="model", autocommit=False)
    try:
        objs = _pool()
        model = Model(objs)
        for op in ops:
            if op[0] in ("add", "remove"):
                args = [_tag_arg(t, objs) for t in op[2]]
                mgr = db0.tags(objs[op[1]])
                if op[0] == "add":
                    mgr.add(*args)
                    model.tags[op[1]] |= set(op[2])
                else:
                    mgr.remove(*args)
                    model.tags[op[1]] -= set(op[2])
                for i, o in enumerate(objs):
                    assert db0.getrefcount(o) == len(model.tags[i])
            elif op[0] == "commit":
                db0.commit()
            else:
                _check_query(model, objs, *op[1])
        db0.commit()
        for query in final_queries:
            _check_query(model, objs, *query)
    finally:
        db0.close()
        shutil.rmtree(root, ignore_errors=True)


def test_model_final_state_in_fresh_process(db, root):
    rng = random.Random(7)
    objs = [Employee(f"e{i}") for i in range(30)] + [Team(f"t{i}") for i in range(10)]
    model = {i: set() for i in range(len(objs))}
    for step in range(400):
        i = rng.randrange(len(objs))
        tag = rng.choice(TAGS)
        if rng.random() < 0.6:
            db0.tags(objs[i]).add(tag)
            model[i].add(tag)
        else:
            db0.tags(objs[i]).remove(tag)
            model[i].discard(tag)
        if step % 97 == 0:
            db0.commit()
    queries = {
        "a": lambda t: "a" in t,
        ("a", "b"): lambda t: "a" in t and "b" in t,
        "or": lambda t: "c" in t or "d" in t,
        "not": lambda t: "a" in t and "b" not in t,
    }
    expected = {str(k): sorted(objs[i].name for i, t in model.items() if f(t)) for k, f in queries.items()}
    employees = sorted(objs[i].name for i, t in model.items() if t and i < 30)
    db0.close()
    out = run_python(f"""
        import dbzero as db0
        @db0.memo(id="tags.Employee")
        class Employee:
            pass
        db0.init({root!r}, prefix="test")
        names = lambda q: sorted(o.name for o in q)
        got = {{
            "a": names(db0.find("a")),
            "('a', 'b')": names(db0.find(("a", "b"))),
            "or": names(db0.find(["c", "d"])),
            "not": names(db0.find("a", db0.no("b"))),
        }}
        print(repr(got))
        print(repr(names(db0.find(Employee))))
    """)
    lines = out.stdout.strip().splitlines()
    assert eval(lines[0]) == expected
    # untagged objects were collected; tagged employees survive
    assert eval(lines[1]) == employees


# -- tags keep objects alive (format 2: not counted in the stored refcount) ---------------------------

LIFE_OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5), st.lists(st.sampled_from(TAGS), min_size=1, max_size=3)),
    st.tuples(st.just("remove"), st.integers(0, 5), st.lists(st.sampled_from(TAGS), min_size=1, max_size=3)),
    st.tuples(st.just("drop"), st.integers(0, 5)),
    st.tuples(st.just("hold"), st.integers(0, 5)),
    st.tuples(st.just("delete"), st.integers(0, 5)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("atomic"), st.integers(0, 5), st.sampled_from(TAGS)),
), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LIFE_OPS)
def test_model_tags_keep_objects_alive(ops):
    """An object survives while tagged, even with no Python reference; removing its last
    tag makes it collectable at the next commit; getrefcount counts its distinct tags."""
    root = tempfile.mkdtemp()
    db0.init(root, prefix="life", autocommit=False)
    try:
        objs = [Employee(f"e{i}") for i in range(6)]
        uids = [db0.uuid(o) for o in objs]
        held = dict(enumerate(objs))          # index -> proxy kept by the test
        del objs
        tags = {i: set() for i in held}       # the model
        alive = set(held)
        past = []                             # (snapshot, {index: tags}) after some commits

        def obj(i):
            if i not in held:
                held[i] = db0.fetch(uids[i])
            return held[i]

        def check():
            for i in range(len(uids)):
                assert db0.exists(uids[i]) == (i in alive), i
                if i in alive:
                    o = db0.fetch(uids[i])
                    assert db0.getrefcount(o) == len(tags[i])
                    assert sorted(db0.tags(o)) == sorted(tags[i])
                    del o
            for tag in TAGS:
                assert {o.name for o in db0.find(tag)} == {f"e{i}" for i in alive if tag in tags[i]}

        for op in ops:
            kind = op[0]
            if kind in ("add", "remove", "delete", "hold", "atomic") and op[1] not in alive:
                continue
            if kind == "add":
                db0.tags(obj(op[1])).add(op[2])
                tags[op[1]] |= set(op[2])
                assert db0.getrefcount(obj(op[1])) == len(tags[op[1]])
            elif kind == "remove":
                db0.tags(obj(op[1])).remove(*op[2])
                tags[op[1]] -= set(op[2])
                assert db0.getrefcount(obj(op[1])) == len(tags[op[1]])
            elif kind == "drop":
                held.pop(op[1], None)
            elif kind == "hold":
                obj(op[1])
            elif kind == "delete":
                if tags[op[1]]:
                    with pytest.raises(db0.ReferencedObjectError):
                        db0.delete(obj(op[1]))
                else:
                    db0.delete(obj(op[1]))
                    held.pop(op[1], None)
                    alive.discard(op[1])
            elif kind == "atomic":
                o = obj(op[1])
                with pytest.raises(ValueError):
                    with db0.atomic():
                        db0.tags(o).add(op[2])
                        db0.tags(o).remove(*TAGS)
                        raise ValueError
                assert db0.getrefcount(o) == len(tags[op[1]])
                del o
            elif kind == "commit":
                gc.collect()
                db0.commit()
                alive -= {i for i in alive if i not in held and not tags[i]}
                check()
                if len(past) < 3:
                    past.append((db0.snapshot(), {i: set(tags[i]) for i in alive}))
            else:
                held.clear()
                for snap, _ in past:
                    snap.close()
                past = []
                db0.close()                  # close releases every proxy
                alive = {i for i in alive if tags[i]}
                db0.init(root, prefix="life", autocommit=False)
                check()
        held.clear()
        gc.collect()
        db0.commit()
        alive = {i for i in alive if tags[i]}
        check()
        for snap, then in past:               # time travel sees the memberships of then
            for i, ts in then.items():
                o = snap.fetch(uids[i])
                assert sorted(db0.tags(o)) == sorted(ts)
                assert db0.getrefcount(o) == len(ts)
            for tag in TAGS:
                assert {o.name for o in snap.find(tag)} == {f"e{i}" for i, ts in then.items() if tag in ts}
            snap.close()
    finally:
        db0.close()
        shutil.rmtree(root, ignore_errors=True)


def test_tagging_does_not_rewrite_the_record(db):
    e = Employee("e")
    db0.commit()
    db0.tags(e).add("a", "b")
    db0.commit()
    assert db0.getrefcount(e) == 2
    storage = e._px.storage
    journal = [(db_id, bytes(key)) for db_id, key in storage.journal(storage.state)]
    assert (2, e._oid.to_bytes(8, "big")) not in journal     # the record was not rewritten
    assert (6, e._oid.to_bytes(8, "big")) in journal         # the membership changed


def test_readding_committed_tags_writes_no_history(db):
    objs = [Employee(f"e{i}") for i in range(50)]
    db0.commit()
    for o in objs:
        db0.tags(o).add(["a", "b"])
    db0.commit()
    s1 = db0.snapshot()
    for o in objs[::2]:
        db0.tags(o).add("a", "c")           # "a" is already there: only "c" changes
    db0.tags(objs[1]).remove("zz")          # absent: no change
    db0.commit()
    s2 = db0.snapshot()
    assert len(s1.find("a")) == 50 and len(s1.find("c")) == 0
    assert len(s2.find("a")) == 50 and len(s2.find("c")) == 25
    s1.close()
    s2.close()
    storage = objs[0]._px.storage
    keys = [(db_id, bytes(key)) for db_id, key in storage.journal(storage.state)]
    assert (5, b"sc") in keys and (5, b"sa") not in keys     # tag "a": no history record
    assert sum(1 for k in keys if k[0] == 6) == 25            # one per object that got "c"


def test_bulk_tagging_mixed_new_and_committed(db):
    old = [Employee(f"o{i}") for i in range(200)]
    db0.commit()
    s1 = db0.snapshot()
    new = [Employee(f"n{i}") for i in range(200)]
    for i, o in enumerate(old + new):
        db0.tags(o).add([f"t{i % 7}", "all"])
    db0.tags(old[3]).remove("all")
    db0.tags(new[3]).remove("all")
    db0.commit()
    assert len(db0.find("all")) == 398
    assert len(db0.find("t0")) == len([i for i in range(400) if i % 7 == 0])
    assert len(s1.find("all")) == 0 and len(s1.find(Employee)) == 200
    s1.close()
    assert db0.getrefcount(old[3]) == 1 and db0.getrefcount(new[0]) == 2


def test_hand_edited_class_tags(db, root):
    e, m, keep = Employee("e"), Manager("m"), Employee("keep")
    db0.tags(keep).add("keep")
    db0.commit()
    storage = e._px.storage
    assert storage.dup_list("obj_tags", e._oid.to_bytes(8, "big")) == []   # class tags: postings only
    db0.tags(e, m).add("live")
    before = db0.snapshot()
    db0.tags(e).remove(db0.as_tag(Employee))
    db0.tags(m).add(db0.as_tag(Team))
    assert db0.as_tag(Employee) not in db0.tags(e) and db0.as_tag(Employee) in db0.tags(m)
    db0.commit()
    assert names(db0.find(Employee)) == ["keep", "m"] and names(db0.find(Team)) == ["m"]
    assert sorted(db0.tags(m), key=str) == sorted([Team, "live"], key=str)
    assert names(before.find(Employee)) == ["e", "keep", "m"] and len(before.find(Team)) == 0
    before.close()
    uid_e, uid_m = db0.uuid(e), db0.uuid(m)
    del e, m
    db0.close()
    db0.init(root, prefix="test", autocommit=False)
    e, m = db0.fetch(uid_e), db0.fetch(uid_m)
    assert db0.as_tag(Employee) not in db0.tags(e) and db0.as_tag(Manager) in db0.tags(m)
    assert names(db0.find(Employee)) == ["keep", "m"]
    db0.tags(e).add(db0.as_tag(Employee))
    assert names(db0.find(Employee)) == ["e", "keep", "m"]
    db0.tags(e, m).remove("live")
    db0.delete(m)
    db0.delete(e)
    db0.commit()
    assert names(db0.find(Employee)) == ["keep"] and len(db0.find(Team)) == 0
    px = list(db0.find("keep"))[0]._px
    for cls in (Employee, Manager, Team):   # no posting of the deleted objects is left behind
        info = px.class_info(cls, create=False)
        ids = px.storage.dup_list("tags", b"C" + info.class_id.to_bytes(4, "big"))
        assert len(ids) == (1 if cls is Employee else 0)
    assert px.storage.dup_list("tags", b"X") == []


def test_class_tags_of_new_object_edited_in_same_commit(db):
    e = Employee("e")
    db0.tags(e).remove(db0.as_tag(Employee))
    db0.tags(e).add(db0.as_tag(Employee), db0.as_tag(Team))
    db0.commit()
    assert names(db0.find(Employee)) == ["e"] and names(db0.find(Team)) == ["e"]
    assert list(db0.tags(e)) == [Team]
    db0.tags(e).add("live")
    t = Team("t")
    db0.tags(t).add("x")
    db0.tags(t).remove(db0.as_tag(Team))
    db0.commit()
    assert names(db0.find(Team)) == ["e"] and names(db0.find("x")) == ["t"]


@pytest.mark.parametrize("n", [3000, 6000])
def test_blind_adds_mixed_with_existing_pairs(db, n):
    objs = [Employee(f"e{i}") for i in range(n)]
    db0.commit()
    for o in objs:
        db0.tags(o).add("a")
    db0.commit()
    s1 = db0.snapshot()
    for i, o in enumerate(objs):
        db0.tags(o).add(["a", "c"] if i % 997 == 0 else ["c"])   # a few pairs already present
    db0.commit()
    s2 = db0.snapshot()
    assert len(s1.find("c")) == 0 and len(s2.find("c")) == n and len(s2.find("a")) == n
    s1.close()
    s2.close()
    storage = objs[0]._px.storage
    journal = [(db_id, bytes(key)) for db_id, key in storage.journal(storage.state)]
    assert (5, b"sa") not in journal and (5, b"sc") in journal
    assert sum(1 for db_id, _ in journal if db_id == 6) == n
    raw = storage.history_scan("obj_tags", objs[0]._oid.to_bytes(8, "big"), storage.state - 1)
    assert raw is not None and msgpack.unpackb(raw[1]) == [[b"sc"], []]


def test_tagging_objects_past_the_last_tagged_one(db):
    # A run of obj_tags pairs that starts past the table's last key is appended; one that
    # starts below it goes through the checked path.  Both record the same history.
    objs = [Employee(f"e{i}") for i in range(100)]
    db0.commit()
    for o in objs[:50]:
        db0.tags(o).add("a")
    db0.commit()
    s1 = db0.snapshot()
    for o in objs[50:]:
        db0.tags(o).add(["b", "c"])
    db0.commit()
    storage = objs[0]._px.storage
    appended = storage.state
    s2 = db0.snapshot()
    for o in objs[::10]:
        db0.tags(o).add("b")
    db0.commit()
    assert len(s1.find("b")) == 0 and len(s2.find("b")) == 50 and len(db0.find("b")) == 55
    assert len(s2.find("a")) == 50 and len(s2.find("c")) == 50
    s1.close()
    s2.close()
    assert sorted(db0.tags(objs[60])) == ["b", "c"] and sorted(db0.tags(objs[0])) == ["a", "b"]
    journal = [(db_id, bytes(key)) for db_id, key in storage.journal(appended)]
    assert sum(1 for db_id, _ in journal if db_id == 6) == 50
    raw = storage.history_scan("obj_tags", objs[60]._oid.to_bytes(8, "big"), appended - 1)
    assert raw is not None and msgpack.unpackb(raw[1]) == [[b"sb", b"sc"], []]
    raw = storage.history_scan("obj_tags", objs[0]._oid.to_bytes(8, "big"), appended)
    assert raw is not None and msgpack.unpackb(raw[1]) == [[b"sb"], []]


def test_member_run_pairs():
    # The runs a flush hands to a bulk put make their (key, value) pairs one at a time and
    # refill a pair the consumer has let go; a pair still held is never changed.
    from dbzero_ext.tagstore import TagStore, join_journal, membership_history
    store = TagStore(None)
    for oid in range(1, 6):
        store.set(oid, b"sb", True)
        store.set(oid, b"sa", True)
    runs = {}

    class Batch:
        def dup_set(self, name, adds, removes):
            runs[name] = adds

    store.flush(Batch())
    ids = [oid.to_bytes(8, "big") for oid in range(1, 6)]
    by_tag = [(tag, oid) for tag in (b"sa", b"sb") for oid in ids]
    by_oid = [(oid, tag) for oid in ids for tag in (b"sa", b"sb")]
    assert list(runs["tags"]) == by_tag and list(runs["obj_tags"]) == by_oid
    it = iter(runs["tags"])
    assert [list(next(it)) for _ in by_tag] == [list(pair) for pair in by_tag]
    held = list(runs["obj_tags"])
    assert [list(pair) for pair in runs["obj_tags"]] == [list(pair) for pair in by_oid]
    assert held == by_oid
    # The history records of a run of adds, packed and made as they are read.
    state = (7).to_bytes(8, "big")
    records, journal, count = membership_history(6, state, runs["obj_tags"], [])
    expected = [(b"\x06" + oid + state, msgpack.packb([[b"sa", b"sb"], []])) for oid in ids]
    assert len(records) == count == 5 and list(records) == expected
    it = iter(records)
    assert [list(next(it)) for _ in expected] == [list(pair) for pair in expected]
    assert msgpack.unpackb(join_journal(msgpack.packb([]), [(journal, count)])) == [[6, oid] for oid in ids]
