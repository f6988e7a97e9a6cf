"""db0.tuple and db0.bytearray: behave like tuple / bytearray, persist, hash via db0.hash."""

import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import dbzero as db0
from dbzero_ext import chunks

from conftest import run_python


@db0.memo(singleton=True, id="tests.tb.Holder")
class Holder:
    def __init__(self):
        self.t = ()
        self.b = None


@db0.memo(id="tests.tb.Item")
class Item:
    def __init__(self, name):
        self.name = name


def reopen(root):
    db0.close()
    db0.init(root, prefix="test", autocommit=False)
    return Holder()


# -- Tuple ---------------------------------------------------------------------------------------

def test_tuple_basics(db):
    t = db0.tuple((1, "x", None, 1))
    assert type(t).__name__ == "Tuple" and not isinstance(t, tuple) and not db0.is_memo(t)
    assert t == (1, "x", None, 1) and (1, "x", None, 1) == t
    assert t != [1, "x", None, 1] and not (t == [1, "x", None, 1])
    assert len(t) == 4 and t[1] == "x" and t[-1] == 1
    assert t[1:3] == ("x", None) and type(t[1:3]) is tuple and t[::-1] == (1, None, "x", 1)
    assert t.count(1) == 2 and t.index(None) == 2 and "x" in t and 5 not in t
    a, b, c, d = t
    assert (a, b, c, d) == (1, "x", None, 1)
    assert repr(db0.tuple((1,))) == "(1,)" and repr(db0.tuple()) == "()"
    assert t < (2,) and t > (1,) and t <= (1, "x", None, 1)
    assert type(t + (5,)).__name__ == "Tuple" and t + (5,) == (1, "x", None, 1, 5)
    with pytest.raises(IndexError, match="tuple index out of range"):
        t[4]
    with pytest.raises(ValueError):
        t.index("missing")
    with pytest.raises(TypeError):
        hash(t)
    with pytest.raises(TypeError):
        t[0] = 2
    with pytest.raises(AttributeError):
        t.append(1)
    assert db0.tuple("ab") == ("a", "b") and db0.tuple(range(3)) == (0, 1, 2)


def test_tuple_conversion_and_persistence(db, root):
    h = Holder()
    it = Item("i")
    h.t = (1, (2, [3]), it, "s")
    assert type(h.t).__name__ == "Tuple" and type(h.t[1]).__name__ == "Tuple"
    assert type(h.t[1][1]).__name__ == "List"
    assert db0.getrefcount(it) == 1 and h.t[2] is it
    h = reopen(root)
    assert h.t[0] == 1 and h.t[1][0] == 2 and h.t[1][1] == [3] and h.t[2].name == "i"
    big = tuple(range(3000))
    h.t = big
    h = reopen(root)
    assert h.t == big and h.t[1500:1503] == (1500, 1501, 1502)


def test_db0_hash(db):
    assert db0.hash(db0.tuple((1, "a"))) == db0.hash((1, "a"))
    assert db0.hash(5) == 5 and db0.hash(0) == 0
    assert db0.hash("x") == db0.hash(b"x")
    assert db0.hash(1) == db0.hash(1.0) == db0.hash(True)
    assert db0.hash(-3) == db0.hash(-3)
    assert db0.hash(db0.list([1, 2])) == db0.hash(db0.tuple([1, 2]))
    assert db0.hash(db0.bytearray(b"ab")) == db0.hash(b"ab")
    assert db0.hash(db0.set([1, 2])) == db0.hash(db0.set([2, 1]))
    it = Item("h")
    assert db0.hash(it) == db0.hash(it) and db0.hash(it) != db0.hash(Item("g"))
    with pytest.raises(TypeError, match="Type unsupported by dbzero: frozenset"):
        db0.hash(frozenset())
    with pytest.raises(RuntimeError):
        db0.hash(object())


def test_db0_hash_stable_across_processes(db):
    values = ["x", b"y", 12345, (1, "a", (None, 2.5)), -7, 2**70]
    mine = [db0.hash(v) for v in values]
    out = run_python(f"""
        import dbzero as db0
        print([db0.hash(v) for v in {values!r}])
    """)
    assert out.stdout.strip() == repr(mine)


class TupleMachine(RuleBasedStateMachine):
    """Construction + reads of Tuples (immutable), across commits and restarts."""

    items = st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()), max_size=30)

    def __init__(self):
        super().__init__()
        self.old = chunks.set_tuning(list_chunk=3)
        self.root = tempfile.mkdtemp(prefix="db0-tuple-")
        db0.init(self.root, prefix="test", autocommit=False)
        self.h = Holder()
        self.model = ()

    @initialize(xs=items)
    def start(self, xs):
        self.h.t = tuple(xs)
        self.model = tuple(xs)

    @rule(xs=items)
    def replace(self, xs):
        self.h.t = db0.tuple(xs)
        self.model = tuple(xs)

    @rule(a=st.integers(-35, 35) | st.none(), b=st.integers(-35, 35) | st.none(),
          c=st.sampled_from([None, 1, 2, -1, -3]))
    def slice(self, a, b, c):
        assert self.h.t[a:b:c] == self.model[a:b:c]

    @rule(i=st.integers(-35, 35))
    def index(self, i):
        if -len(self.model) <= i < len(self.model):
            assert self.h.t[i] == self.model[i]
        else:
            with pytest.raises(IndexError):
                self.h.t[i]

    @rule(v=st.integers(-3, 3))
    def count(self, v):
        assert self.h.t.count(v) == self.model.count(v)
        assert (v in self.h.t) == (v in self.model)

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
        assert self.h.t == self.model and tuple(self.h.t) == self.model

    def teardown(self):
        db0.close()
        shutil.rmtree(self.root, ignore_errors=True)
        chunks.set_tuning(**self.old)


TestTupleMachine = TupleMachine.TestCase
TestTupleMachine.settings = settings(max_examples=30, stateful_step_count=20, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


# -- ByteArray -----------------------------------------------------------------------------------

def test_bytearray_basics(db):
    b = db0.bytearray(b"hello")
    assert type(b).__name__ == "ByteArray" and not isinstance(b, bytearray)
    assert b == b"hello" and b == bytearray(b"hello") and b"hello" == b and b != b"x"
    assert bytes(b) == b"hello" and memoryview(bytes(b)).tobytes() == b"hello"
    assert len(b) == 5 and b[0] == 104 and b[-1] == 111 and list(b) == list(b"hello")
    assert b[1:3] == b"el" and type(b[1:3]) is bytes and b[::-1] == b"olleh"
    assert db0.bytearray() == b"" and db0.bytearray([1, 2, 255]) == b"\x01\x02\xff"
    assert db0.bytearray(3) == b"\x00\x00\x00"
    assert db0.bytearray("żółw", "utf-8") == "żółw".encode()
    assert 104 in b and b"ell" in b and b"xyz" not in b
    b[0] = 72
    b.append(33)
    b.extend(b"!!")
    assert b == b"Hello!!!"
    assert b.find(b"l") == 2 and b.decode() == "Hello!!!" and b.count(b"!") == 3
    assert b.startswith(b"He") and b.split(b"l") == [b"He", b"", b"o!!!"]
    up = b.upper()
    assert type(up).__name__ == "ByteArray" and up == b"HELLO!!!" and b == b"Hello!!!"
    assert b.replace(b"!", b"?") == b"Hello???"
    assert b + b"x" == b"Hello!!!x" and type(b + b"x").__name__ == "ByteArray"
    assert b.hex() == b"Hello!!!".hex()
    with pytest.raises(ValueError):
        b[0] = 256
    with pytest.raises(ValueError):
        b.append(-1)
    with pytest.raises(TypeError):
        b.append("a")
    with pytest.raises(IndexError, match="bytearray index out of range"):
        b[100]
    with pytest.raises(TypeError):
        hash(b)
    with pytest.raises(TypeError):
        db0.bytearray("text")
    assert b == b"Hello!!!"
    del b[0:2]
    b[0:1] = b"LL"
    b.insert(0, 0)
    assert b == b"\x00LLlo!!!"
    assert b.pop() == 33 and b.pop(0) == 0
    assert repr(db0.bytearray(b"a")) == "ByteArray(b'a')"


def test_bytearray_persistence_large(db, root):
    data = bytes(range(256)) * 100
    h = Holder()
    h.b = db0.bytearray(data)
    h = reopen(root)
    assert bytes(h.b) == data and len(h.b) == len(data)
    h.b[12345] = 7
    h.b.extend(b"tail")
    h = reopen(root)
    expected = bytearray(data)
    expected[12345] = 7
    expected += b"tail"
    assert h.b == expected
    out = run_python(f"""
        import dbzero as db0
        db0.init({root!r}, prefix="test", read_write=False)
        @db0.memo(singleton=True, id="tests.tb.Holder")
        class Holder:
            pass
        b = db0.fetch(Holder).b
        print(len(b), b[12345], bytes(b[-4:]))
    """)
    assert out.stdout.strip() == f"{len(expected)} 7 b'tail'"


class ByteArrayMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.old = chunks.set_tuning(bytes_chunk=4)
        self.root = tempfile.mkdtemp(prefix="db0-bytes-")
        db0.init(self.root, prefix="test", autocommit=False)
        self.h = Holder()
        self.model = bytearray()

    @initialize(data=st.binary(max_size=20))
    def start(self, data):
        self.h.b = db0.bytearray(data)
        self.model = bytearray(data)

    @rule(x=st.integers(0, 255))
    def append(self, x):
        self.h.b.append(x)
        self.model.append(x)

    @rule(data=st.binary(max_size=10))
    def extend(self, data):
        self.h.b.extend(data)
        self.model.extend(data)

    @rule(i=st.integers(-25, 25), x=st.integers(0, 255))
    def setitem(self, i, x):
        if -len(self.model) <= i < len(self.model):
            self.h.b[i] = x
            self.model[i] = x

    @rule(a=st.integers(-25, 25) | st.none(), b=st.integers(-25, 25) | st.none(),
          data=st.binary(max_size=6))
    def setslice(self, a, b, data):
        self.h.b[a:b] = data
        self.model[a:b] = data

    @rule(a=st.integers(-25, 25) | st.none(), b=st.integers(-25, 25) | st.none(),
          c=st.sampled_from([None, 2, -1]))
    def delslice(self, a, b, c):
        del self.h.b[a:b:c]
        del self.model[a:b:c]

    @rule(i=st.integers(-25, 25), x=st.integers(0, 255))
    def insert(self, i, x):
        self.h.b.insert(i, x)
        self.model.insert(i, x)

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
        assert bytes(self.h.b) == bytes(self.model) and len(self.h.b) == len(self.model)

    def teardown(self):
        db0.close()
        shutil.rmtree(self.root, ignore_errors=True)
        chunks.set_tuning(**self.old)


TestByteArrayMachine = ByteArrayMachine.TestCase
TestByteArrayMachine.settings = settings(max_examples=80, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
