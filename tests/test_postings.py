"""Tests for dbzero_ext.postings (IdSet and posting-list set algebra).

Every operation is checked against a Python ``set`` / ``sorted`` list model.
"""
import bisect
import pickle
import random
import struct
import threading

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dbzero_ext import postings as P
from dbzero_ext.postings import IdSet

U64_MAX = 2**64 - 1

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
BIG_SETTINGS = settings(max_examples=60, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])

# Ids cluster in a few narrow bands (so random sets overlap) plus the full
# 64-bit range, including both extremes.
ids = st.one_of(
    st.integers(0, 64),
    st.integers(2**32 - 32, 2**32 + 32),
    st.integers(U64_MAX - 64, U64_MAX),
    st.integers(0, U64_MAX),
)
id_lists = st.lists(ids, max_size=120)


def be(values):
    return b"".join(struct.pack(">Q", v) for v in values)


def model(values):
    return sorted(set(values))


@st.composite
def set_pairs(draw):
    """Two id lists in one of several relationships."""
    kind = draw(st.sampled_from(
        ["random", "identical", "disjoint", "subset", "empty", "overlap"]))
    a = draw(id_lists)
    if kind == "random":
        b = draw(id_lists)
    elif kind == "identical":
        b = list(a)
    elif kind == "disjoint":
        b = [x for x in draw(id_lists) if x not in set(a)]
    elif kind == "subset":
        b = draw(st.lists(st.sampled_from(a), max_size=len(a))) if a else []
    elif kind == "empty":
        b = []
    else:
        b = list(a[: len(a) // 2]) + draw(id_lists)
    if draw(st.booleans()):
        a, b = b, a
    return a, b


@st.composite
def sized_sets(draw, count=2):
    """Random sets of widely different sizes (up to a few thousand ids) drawn
    from one of several universes, to exercise both the 4-chain merges and
    galloping (size ratio > 16), with random overlap."""
    seed = draw(st.integers(0, 2**32 - 1))
    rnd = random.Random(seed)
    universe = draw(st.sampled_from([100, 3000, 10**6, 2**64]))
    base = draw(st.sampled_from([0, 0, 2**63, 2**64 - universe]))
    out = []
    for _ in range(count):
        n = draw(st.sampled_from([0, 1, 3, 20, 150, 700, 2500, 6000]))
        n = min(n, universe)
        if universe == 2**64:
            vals = {rnd.getrandbits(64) for _ in range(n)}
        else:
            vals = {base + x for x in rnd.sample(range(universe), n)}
        out.append(sorted(vals))
    # sometimes make the smaller set mostly a subset of the larger one
    if count >= 2 and draw(st.booleans()) and out[0] and out[1]:
        big = max(out[:2], key=len)
        extra = rnd.sample(big, min(len(big), len(out[1]) // 2 + 1))
        out[1] = sorted(set(out[1]) | set(extra))
    return out


def check_ops(a, b):
    sa, sb = set(a), set(b)
    A, B = IdSet.from_iterable(a), IdSet.from_iterable(b)
    assert P.intersect(A, B).to_list() == sorted(sa & sb)
    assert P.union(A, B).to_list() == sorted(sa | sb)
    assert P.difference(A, B).to_list() == sorted(sa - sb)
    assert P.difference(B, A).to_list() == sorted(sb - sa)
    assert P.count_intersect(A, B) == len(sa & sb)
    assert P.count_union(A, B) == len(sa | sb)
    assert P.count_difference(A, B) == len(sa - sb)
    assert P.count_difference(B, A) == len(sb - sa)
    assert (A & B).to_list() == sorted(sa & sb)
    assert (A | B).to_list() == sorted(sa | sb)
    assert (A - B).to_list() == sorted(sa - sb)


# ---------------------------------------------------------------------------
# construction and sequence behaviour
# ---------------------------------------------------------------------------

@SETTINGS
@given(id_lists)
def test_from_iterable_matches_sorted_set(values):
    s = IdSet.from_iterable(values)
    m = model(values)
    assert len(s) == len(m)
    assert list(s) == m
    assert s.to_list() == m
    assert list(reversed(s)) == m[::-1]
    assert bool(s) == bool(m)
    assert IdSet(values) == s
    assert IdSet.from_iterable(iter(values)) == s       # generic iterables
    assert IdSet.from_iterable(tuple(values)) == s


@SETTINGS
@given(st.lists(st.integers(0, U64_MAX), max_size=400))
def test_be_bytes_round_trip(values):
    m = model(values)
    buf = be(m)
    s = IdSet.from_be_bytes(buf)
    assert s.to_list() == m
    assert s.to_be_bytes() == buf
    assert IdSet.from_be_bytes(bytearray(buf)) == s
    assert IdSet.from_be_bytes(memoryview(buf)) == s
    assert [struct.unpack(">Q", buf[i:i + 8])[0] for i in range(0, len(buf), 8)] == m


@SETTINGS
@given(id_lists)
def test_from_be_bytes_unsorted_input_is_normalised(values):
    assert IdSet.from_be_bytes(be(values)).to_list() == model(values)


@pytest.mark.parametrize("n", [1, 7, 9, 15, 17, 801])
def test_from_be_bytes_bad_length(n):
    with pytest.raises(ValueError):
        IdSet.from_be_bytes(b"\x00" * n)
    with pytest.raises(ValueError):
        P.merge_sorted_be([b"\x00" * 8, b"\x00" * n])


def test_from_be_bytes_empty_and_type_errors():
    assert IdSet.from_be_bytes(b"") == IdSet.empty()
    assert len(IdSet.from_be_bytes(b"")) == 0
    with pytest.raises(TypeError):
        IdSet.from_be_bytes("not a buffer")


@SETTINGS
@given(id_lists, st.binary(min_size=0, max_size=9), st.binary(max_size=3))
def test_from_be_records(values, prefix, suffix):
    m = model(values)
    buf = b"".join(prefix + struct.pack(">Q", v) + suffix for v in m)
    rec = len(prefix) + 8 + len(suffix)
    assert IdSet.from_be_records(buf, rec, len(prefix)).to_list() == m
    if buf:
        with pytest.raises(ValueError):
            IdSet.from_be_records(buf + b"x", rec, len(prefix))
    with pytest.raises(ValueError):
        IdSet.from_be_records(buf, rec, rec - 7)
    with pytest.raises(ValueError):
        IdSet.from_be_records(buf, 7, 0)


def test_from_iterable_rejects_bad_ids():
    with pytest.raises(OverflowError):
        IdSet.from_iterable([1, -1])
    with pytest.raises(OverflowError):
        IdSet.from_iterable([2**64])
    with pytest.raises(TypeError):
        IdSet.from_iterable([1, "2"])
    with pytest.raises(TypeError):
        IdSet.from_iterable([1.0])


def test_empty():
    e = IdSet.empty()
    assert len(e) == 0 and list(e) == [] and list(reversed(e)) == []
    assert e == IdSet() == IdSet([]) == IdSet.from_iterable([])
    assert e.to_be_bytes() == b""
    assert 0 not in e
    assert e.rank(5) == 0
    assert e[0:10] == e
    with pytest.raises(IndexError):
        e[0]
    with pytest.raises(ValueError):
        e.min()
    with pytest.raises(ValueError):
        e.max()
    assert repr(e) == "IdSet([])"


def test_immutable():
    s = IdSet([3, 1, 2])
    with pytest.raises(TypeError):
        s.__init__([5])
    with pytest.raises(TypeError):
        IdSet.empty().__init__([5])
    assert s.to_list() == [1, 2, 3] and len(IdSet.empty()) == 0
    with pytest.raises(TypeError):
        s[0] = 1


@SETTINGS
@given(id_lists, st.data())
def test_indexing_and_slicing(values, data):
    m = model(values)
    s = IdSet.from_iterable(values)
    n = len(m)
    for i in range(-n - 2, n + 2):
        if -n <= i < n:
            assert s[i] == m[i]
        else:
            with pytest.raises(IndexError):
                s[i]
    with pytest.raises(IndexError):
        s[2**70]
    with pytest.raises(TypeError):
        s["0"]
    for _ in range(5):
        sl = data.draw(st.slices(n + 3))
        got = s[sl]
        assert isinstance(got, IdSet)
        # an IdSet is always ascending: a slice is the selected subset
        assert got.to_list() == sorted(m[sl])
    if m:
        assert s.min() == m[0] and s.max() == m[-1]


@SETTINGS
@given(id_lists, st.lists(st.one_of(ids, st.integers(-5, -1),
                                    st.integers(2**64, 2**64 + 5)), max_size=30))
def test_contains_and_rank(values, probes):
    m = model(values)
    sm = set(m)
    s = IdSet.from_iterable(values)
    for p in probes + m:
        assert (p in s) == (p in sm)
        assert s.rank(p) == bisect.bisect_left(m, p)
    assert "1" not in s and None not in s and 1.5 not in s
    with pytest.raises(TypeError):
        s.rank("1")


@SETTINGS
@given(set_pairs())
def test_equality_hash_pickle_repr(pair):
    a, b = pair
    A, B = IdSet.from_iterable(a), IdSet.from_iterable(b)
    assert (A == B) == (set(a) == set(b))
    assert (A != B) == (set(a) != set(b))
    if A == B:
        assert hash(A) == hash(B)
    assert A != model(a) and not (A == model(a))   # never equal to a list
    assert pickle.loads(pickle.dumps(A)) == A
    r = repr(A)
    assert r.startswith("IdSet([")
    if len(A) <= 12:
        assert eval(r, {"IdSet": IdSet}) == A
    else:
        assert "len=%d" % len(A) in r


def test_iterators():
    s = IdSet(range(0, 100, 3))
    it = iter(s)
    assert iter(it) is it
    assert it.__length_hint__() == len(s)
    next(it)
    assert it.__length_hint__() == len(s) - 1
    assert list(it) == list(range(3, 100, 3))
    assert list(it) == []
    r = reversed(s)
    assert r.__length_hint__() == len(s)
    assert list(r) == list(range(99, -1, -3))


# ---------------------------------------------------------------------------
# set algebra
# ---------------------------------------------------------------------------

@SETTINGS
@given(set_pairs())
def test_set_algebra_small(pair):
    check_ops(*pair)


@BIG_SETTINGS
@given(sized_sets())
def test_set_algebra_sized(sets):
    # large (4-chain merge path) and very skewed (galloping) inputs
    check_ops(*sets)


def test_set_algebra_edge_shapes():
    big = list(range(0, 200000, 2))
    cases = [
        (big, big),                                   # identical
        (big, [x + 1 for x in big]),                  # interleaved, disjoint
        (big, list(range(400000, 500000))),           # disjoint ranges
        (list(range(400000, 500000)), big),
        (big, [0, 199998, 10**6]),                    # extremes, gallop
        ([U64_MAX - 1, U64_MAX], [0, U64_MAX]),
        (big, big[::7]),                              # subset, ratio 7
        (big, big[::40]),                             # subset, gallop
        (big[:50000], big),                           # prefix
        (big[-1000:], big),                           # suffix
        ([5], big), (big, [5]), ([], big), (big, []), ([], []),
    ]
    for a, b in cases:
        check_ops(a, b)


def test_identity_shortcuts_return_equal_results():
    A = IdSet(range(1000))
    assert P.intersect(A, A) == A
    assert P.union(A, A) == A
    assert P.difference(A, A) == IdSet.empty()
    assert P.count_intersect(A, A) == 1000
    assert P.count_union(A, A) == 1000
    assert P.count_difference(A, A) == 0


def test_type_errors():
    A = IdSet([1])
    for f in (P.intersect, P.union, P.difference, P.count_intersect,
              P.count_union, P.count_difference):
        with pytest.raises(TypeError):
            f(A, {1})
        with pytest.raises(TypeError):
            f(None, A)
    with pytest.raises(TypeError):
        A & {1}
    with pytest.raises(TypeError):
        P.union_many([A, [1]])
    with pytest.raises(ValueError):
        P.intersect_many([])


@SETTINGS
@given(st.lists(id_lists, min_size=1, max_size=7))
def test_many_small(lists):
    sets = [IdSet.from_iterable(x) for x in lists]
    want_i = set(lists[0]).intersection(*map(set, lists[1:]))
    want_u = set().union(*map(set, lists))
    assert P.intersect_many(sets).to_list() == sorted(want_i)
    assert P.intersect_many(iter(sets)).to_list() == sorted(want_i)
    assert P.union_many(sets).to_list() == sorted(want_u)
    assert P.union_many(iter(sets)).to_list() == sorted(want_u)
    assert P.merge_sorted_be([be(model(x)) for x in lists]).to_list() == sorted(want_u)
    # LMDB-style buffers of different kinds
    assert P.merge_sorted_be(
        [memoryview(be(model(x))) for x in lists]).to_list() == sorted(want_u)


@BIG_SETTINGS
@given(sized_sets(count=5), st.integers(1, 5))
def test_many_sized(lists, k):
    lists = lists[:k]
    # add a shared core so the many-way intersection is not trivially empty
    core = sorted(set(lists[0][::3]))
    lists = [sorted(set(x) | set(core)) for x in lists]
    sets = [IdSet.from_iterable(x) for x in lists]
    want_i = set(lists[0]).intersection(*map(set, lists[1:]))
    want_u = set().union(*map(set, lists))
    assert P.intersect_many(sets).to_list() == sorted(want_i)
    assert P.union_many(sets).to_list() == sorted(want_u)
    assert P.merge_sorted_be([be(x) for x in lists]).to_list() == sorted(want_u)


def test_intersect_many_large_overlapping():
    # large running intersections: exercises the in-place (aliased) 4-chain
    # merge and galloping inside intersect_many
    rnd = random.Random(5)
    core = rnd.sample(range(10**6), 5000)
    lists = [core + rnd.sample(range(10**6), n)
             for n in (3000, 8000, 20000, 100000, 100)]
    sets = [IdSet(x) for x in lists]
    for k in range(2, len(lists) + 1):
        want = sorted(set(lists[0]).intersection(*map(set, lists[1:k])))
        assert P.intersect_many(sets[:k]).to_list() == want
        assert P.intersect_many(sets[:k][::-1]).to_list() == want


def test_union_many_many_inputs():
    rnd = random.Random(7)
    lists = [rnd.sample(range(50000), rnd.choice([0, 1, 10, 100, 1000]))
             for _ in range(300)]
    sets = [IdSet(x) for x in lists]
    assert P.union_many(sets).to_list() == sorted(set().union(*map(set, lists)))
    assert P.union_many([]) == IdSet.empty()
    assert P.union_many([IdSet(), IdSet()]) == IdSet.empty()
    assert P.merge_sorted_be([]) == IdSet.empty()


def test_operations_release_gil_safely():
    # big operations run without the GIL; hammer them from two threads
    rnd = random.Random(3)
    a = IdSet(rnd.sample(range(10**7), 100000))
    b = IdSet(rnd.sample(range(10**7), 100000))
    want = (sorted(set(a) & set(b)), sorted(set(a) | set(b)), sorted(set(a) - set(b)))
    errors = []

    def work():
        try:
            for _ in range(20):
                got = (P.intersect(a, b).to_list(), P.union(a, b).to_list(),
                       P.difference(a, b).to_list())
                assert got == want
                assert IdSet.from_be_bytes(a.to_be_bytes()) == a
        except BaseException as exc:        # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------------
# real LMDB
# ---------------------------------------------------------------------------

def test_lmdb_dupfixed_round_trip(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    rnd = random.Random(11)
    ids_ = list({rnd.getrandbits(64) for _ in range(3000)} | {0, U64_MAX})
    rnd.shuffle(ids_)
    other = [rnd.getrandbits(64) for _ in range(50)]
    env = lmdb.Environment(str(tmp_path / "db"), max_dbs=4, map_size=64 << 20)
    try:
        db = env.open_db(b"tags", dupsort=True, dupfixed=True)
        with env.begin(write=True, db=db) as txn:
            for v in ids_:                       # random insertion order
                txn.put(b"tag:red", struct.pack(">Q", v), dupdata=True)
            for v in other:                      # neighbouring keys
                txn.put(b"tag:blue", struct.pack(">Q", v))
                txn.put(b"tag:zzz", struct.pack(">Q", v))
        with env.begin(db=db) as txn:
            cur = txn.cursor()
            # one call, one contiguous buffer of key+value records
            mv = cur.getmulti([b"tag:red"], True, 8, True)
            got = IdSet.from_be_records(mv, len(b"tag:red") + 8, len(b"tag:red"))
            assert got.to_list() == sorted(ids_)
            assert P.read_postings(cur, b"tag:red") == got
            assert P.read_postings(cur, b"tag:blue").to_list() == sorted(set(other))
            assert P.read_postings(cur, b"tag:missing") == IdSet.empty()
            # values-only buffer via the dup iterator, for from_be_bytes
            assert cur.set_key(b"tag:red")
            buf = b"".join(cur.iternext_dup(keys=False))
            assert IdSet.from_be_bytes(buf) == got
            assert got.to_be_bytes() == buf
            both = P.merge_sorted_be(
                [buf, P.read_postings(cur, b"tag:blue").to_be_bytes()])
            assert both.to_list() == sorted(set(ids_) | set(other))
    finally:
        env.close()
