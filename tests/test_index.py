"""Range index (API.md §9, scenario S6): select/sort semantics, key types, references,
persistence, and model-based checks against a sorted Python model."""

import gc
import shutil
import tempfile
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dbzero as db0

from conftest import run_python


@db0.memo(id="ix.Event")
class Event:
    def __init__(self, eid, when):
        self.eid = eid
        self.when = when


@db0.memo(singleton=True, id="ix.Catalog")
class Catalog:
    def __init__(self):
        self.by_time = db0.index()


@db0.memo(id="ix.Holder")
class Holder:
    def __init__(self, ix=None):
        self.ix = ix


def ids(q):
    return [e.eid for e in q]


D = lambda *a: datetime(2026, *a)


# -- S6 -------------------------------------------------------------------------------------------

def test_s6_select_sort_nulls(db):
    ix = Catalog().by_time
    evs = {}
    for eid, when in [(100, D(1, 28)), (101, D(1, 30)), (102, D(1, 29)), (103, D(2, 1)), (104, None)]:
        evs[eid] = Event(eid, when)
        ix.add(when, evs[eid])
    for committed in (False, True):
        q = ix.select(D(1, 1), D(1, 31))
        assert set(ids(q)) == {100, 101, 102} and len(q) == 3
        assert ids(ix.sort(q)) == [100, 102, 101]
        assert ids(ix.sort(q, desc=True)) == [101, 102, 100]
        assert ids(ix.sort(ix.select(D(1, 28), D(1, 30)))) == [100, 102, 101]
        assert ids(ix.sort(ix.select(D(1, 29)))) == [102, 101, 103, 104]
        assert ids(ix.sort(ix.select(D(1, 29), null_first=True), null_first=True)) == [102, 101, 103]
        assert ids(ix.sort(ix.select(None, D(1, 29)))) == [100, 102]
        assert ids(ix.sort(ix.select())) == [100, 102, 101, 103, 104]
        assert ids(ix.sort(ix.select(), null_first=True)) == [104, 100, 102, 101, 103]
        assert ids(ix.sort(ix.select(), desc=True)) == [104, 103, 101, 102, 100]
        assert ids(ix.sort(ix.select(), desc=True, null_first=True)) == [103, 101, 102, 100, 104]
        assert ids(ix.select(D(1, 29), D(1, 28))) == []          # low > high
        assert ids(ix.select(5, 10)) == []                       # bounds of another type
        assert len(ix) == 5
        db0.commit()
    ix.remove(D(1, 30), evs[101])
    ix.remove(D(2000, 1, 1) if False else datetime(2000, 1, 1), evs[101])    # wrong key: ignored
    assert ids(ix.sort(ix.select())) == [100, 102, 103, 104] and len(ix) == 4
    with pytest.raises(RuntimeError, match="Expected a memo object"):
        ix.add(D(1, 1), "not memo")
    with pytest.raises(TypeError):
        ix.sort([evs[100]])
    with pytest.raises(TypeError):
        ix.add([1], evs[100])
    with pytest.raises(TypeError):
        ix.add(object(), evs[100])
    # str keys are supported (0.7.0 refused them) and sort after datetimes' type? no: by type
    ix.add("2026-01-01", evs[100])
    assert len(ix) == 5
    assert ids(ix.sort(ix.select(D(1, 29)))) == [102, 103, 104]      # open end stays in its type
    assert ids(ix.select("2026", "2027")) == [100]
    # an index select is a find criterion
    assert sorted(ids(db0.find(Event, ix.select(D(1, 29))))) == [102, 103, 104]


def test_readme_indexes(db, capsys):
    events = [
        Event(100, datetime(2026, 1, 28)),
        Event(101, datetime(2026, 1, 30)),
        Event(102, datetime(2026, 1, 29)),
        Event(103, datetime(2026, 2, 1)),
    ]
    event_index = db0.index()
    for event in events:
        event_index.add(event.when, event)
    query = event_index.select(datetime(2026, 1, 1), datetime(2026, 1, 31))
    query_sorted = event_index.sort(query)
    print([event.eid for event in query_sorted])
    assert capsys.readouterr().out == "[100, 102, 101]\n"


def test_str_float_and_mixed_keys(db):
    ix = db0.index()
    h = Holder(ix)
    words = ["pear", "apple", "Zebra", "", "äpfel", "apple pie", "a\x00b"]
    objs = [Event(i, w) for i, w in enumerate(words)]
    for o in objs:
        ix.add(o.when, o)
    assert [o.when for o in ix.sort(ix.select())] == sorted(words)
    assert [o.when for o in ix.select("apple", "pear")] == ["apple", "apple pie", "pear"]
    assert [o.when for o in ix.sort(ix.select(), desc=True)] == sorted(words, reverse=True)

    fx = db0.index()
    h.fx = fx
    vals = [2.5, -1, 0.0, 3, float("inf"), -0.5, 10**30, Decimal("2.25"), True, float("-inf")]
    fobjs = [Event(i, v) for i, v in enumerate(vals)]
    for o in fobjs:
        fx.add(o.when, o)
    assert [o.when for o in fx.sort(fx.select())] == sorted(vals)
    assert [o.when for o in fx.select(0, 3)] == [0.0, True, Decimal("2.25"), 2.5, 3]
    assert [o.when for o in fx.select(-0.75, 0.5)] == [-0.5, 0.0]
    assert [o.when for o in fx.select(None, -1)] == [float("-inf"), -1]
    # equal keys of different types are one key: (1, obj) and (1.0, obj) count once
    one = Event(99, 1)
    fx.add(1, one)
    fx.add(1.0, one)
    assert len(fx) == len(vals) + 1
    # mixed types sort by type first: numbers < str < bytes < date < datetime
    mx = db0.index()
    h.mx = mx
    mixed = [b"raw", "text", 5, date(2026, 1, 1), datetime(2026, 1, 1, 12), 1.5, None]
    mobjs = [Event(i, v) for i, v in enumerate(mixed)]
    for o in mobjs:
        mx.add(o.when, o)
    assert [o.eid for o in mx.sort(mx.select())] == [5, 2, 1, 0, 3, 4, 6]
    assert [o.eid for o in mx.select("a")] == [1, 6]            # str range + nulls


def test_time_keys_and_aware_datetimes(db):
    ix = db0.index()
    h = Holder(ix)
    utc = timezone.utc
    times = [time(3, 4), time(0, 0), time(23, 59, 59, 999999)]
    tobjs = [Event(i, t) for i, t in enumerate(times)]
    for o in tobjs:
        ix.add(o.when, o)
    assert [o.when for o in ix.sort(ix.select(time(0, 0), time(12)))] == [time(0, 0), time(3, 4)]
    ax = db0.index()
    h.ax = ax
    plus2 = timezone(timedelta(hours=2))
    aware = [datetime(2026, 1, 1, 12, tzinfo=utc), datetime(2026, 1, 1, 13, tzinfo=plus2),
             datetime(2026, 1, 1, 11, 30, tzinfo=utc)]
    aobjs = [Event(i, v) for i, v in enumerate(aware)]
    for o in aobjs:
        ax.add(o.when, o)
    assert [o.eid for o in ax.sort(ax.select())] == [1, 2, 0]      # by instant (13:00+02 = 11:00Z)


def test_pairs_and_multiple_keys(db):
    ix = db0.index()
    h = Holder(ix)
    a, b = Event(1, None), Event(2, None)
    ix.add(5, a)
    ix.add(5, a)
    ix.add(7, a)
    ix.add(6, b)
    assert len(ix) == 3
    assert ids(ix.select()) == [1, 2]                  # a once, at its first key
    assert ids(ix.select(6, 10)) == [2, 1]
    assert ids(ix.sort(db0.find(Event))) == [1, 2]
    assert ids(ix.sort(db0.find(Event), desc=True)) == [1, 2]    # a's largest key is 7
    ix.remove(5, a)
    ix.remove(5, a)
    ix.remove(9, a)
    assert len(ix) == 2 and ids(ix.sort(db0.find(Event))) == [2, 1]
    db0.commit()
    ix.clear()
    assert len(ix) == 0 and ids(ix.select()) == []
    ix.add(1, b)
    assert ids(ix.select()) == [2]
    db0.commit()
    assert ids(ix.select()) == [2] and len(ix) == 1


def test_sort_ties_and_stability(db):
    ix = db0.index()
    ix2 = db0.index()
    h = Holder(ix)
    h.ix2 = ix2
    objs = [Event(i, None) for i in range(8)]
    for o in objs:
        ix.add(o.eid % 2, o)          # two groups
        ix2.add(-o.eid, o)
    q = db0.find(Event)
    assert ids(ix.sort(q)) == [0, 2, 4, 6, 1, 3, 5, 7]
    assert ids(ix.sort(q, desc=True)) == [1, 3, 5, 7, 0, 2, 4, 6]
    # ix.sort(ix2.sort(q)): primarily by ix, ties in ix2's order
    assert ids(ix.sort(ix2.sort(q))) == [6, 4, 2, 0, 7, 5, 3, 1]
    assert ids(ix.sort(ix2.sort(q), desc=True)) == [7, 5, 3, 1, 6, 4, 2, 0]
    db0.commit()
    assert ids(ix.sort(ix2.sort(q))) == [6, 4, 2, 0, 7, 5, 3, 1]
    # objects not in the index are dropped; slices and filters sort too
    extra = Event(99, None)
    assert 99 not in ids(ix.sort(db0.find(Event)))
    assert ids(ix.sort(q[0:3])) == [0, 2, 1]
    assert ids(ix.sort(db0.filter(lambda e: e.eid > 4, q))) == [6, 5, 7]
    assert ids(ix.sort(ix.select(1, 1))) == [1, 3, 5, 7]
    assert ix.sort(q)[2].eid == 4


def test_index_refcounts_and_collection(db):
    ix = db0.index()
    Holder(ix)
    holder_uid = None
    e = Event(1, None)
    uid = db0.uuid(e)
    ix.add(1, e)
    ix.add(2, e)
    assert db0.getrefcount(e) == 2
    ix.add(2, e)
    assert db0.getrefcount(e) == 2
    del e
    gc.collect()
    db0.commit()
    assert db0.exists(uid)
    e = db0.fetch(uid)
    ix.remove(1, e)
    ix.remove(2, e)
    assert db0.getrefcount(e) == 0
    del e
    gc.collect()
    assert db0.exists(uid)
    db0.commit()
    assert not db0.exists(uid)


def test_unreachable_index_is_collected_with_its_references(db):
    e = Event(1, None)
    uid = db0.uuid(e)
    ix = db0.index()
    ix.add(1, e)
    del e, ix
    gc.collect()
    db0.commit()
    assert not db0.exists(uid)        # the index went, so its entry no longer holds e


def test_persistence_in_fresh_process(db, root):
    cat = Catalog()
    for i in range(50):
        cat.by_time.add(D(1, 1) + timedelta(hours=i) if i % 7 else None, Event(i, None))
    cat.by_time.remove(D(1, 1) + timedelta(hours=1), db0.find(Event)[1])
    db0.close()
    out = run_python(f"""
        import dbzero as db0
        from datetime import datetime
        @db0.memo(singleton=True, id="ix.Catalog")
        class Catalog:
            pass
        db0.init({root!r}, prefix="test")
        ix = db0.fetch(Catalog).by_time
        print(len(ix), [e.eid for e in ix.sort(ix.select(datetime(2026, 1, 1), datetime(2026, 1, 1, 5)))])
        print([e.eid for e in ix.select(None, None, null_first=True)][:8])
        print(db0.getrefcount(ix))
    """)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "49 [2, 3, 4, 5]"
    assert lines[1] == "[0, 7, 14, 21, 28, 35, 42, 49]"
    assert lines[2] == "1"


def test_read_only_and_closed(db, root):
    cat = Catalog()
    cat.by_time.add(1, Event(1, None))
    db0.close()
    db0.init(root)
    db0.open("test", "r")
    ix = db0.fetch(Catalog).by_time
    assert ids(ix.select()) == [1]
    with pytest.raises(db0.ReadOnlyError):
        ix.add(2, db0.find(Event)[0])
    with pytest.raises(RuntimeError):
        db0.index()
    db0.close()
    with pytest.raises(RuntimeError):
        len(ix)


def test_atomic_rollback_of_index(db):
    cat = Catalog()
    ix = cat.by_time
    e = Event(1, None)
    ix.add(1, e)
    db0.commit()
    with pytest.raises(ValueError):
        with db0.atomic():
            ix.add(2, e)
            ix.remove(1, e)
            ix.add(3, Event(2, None))
            raise ValueError
    assert len(ix) == 1 and ids(ix.select()) == [1] and db0.getrefcount(e) == 1
    assert ids(ix.select(1, 1)) == [1]


def test_cross_prefix_entries(db):
    ix = db0.index()
    Holder(ix)
    local = Event(1, None)
    db0.open("other")
    remote = Event(2, None)
    db0.tags(remote).add("keep")
    ix.add(5, remote)
    ix.add(6, local)
    assert db0.getrefcount(remote) == 1          # cross-prefix entries are weak
    assert ids(ix.select()) == [2, 1]
    assert ids(ix.sort(db0.find("keep"))) == [2]
    db0.commit()
    assert ids(ix.sort(ix.select(), desc=True)) == [1, 2]
    ix.remove(5, remote)
    assert ids(ix.select()) == [1]


# -- model-based --------------------------------------------------------------------------------------

NUM_KEYS = st.one_of(st.none(), st.integers(-5, 5), st.sampled_from([-2.5, -0.5, 0.5, 1.0, 2.5, 1e10]))
STR_KEYS = st.one_of(st.none(), st.sampled_from(["", "a", "ab", "b", "ba", "z", "é", "a b"]))
DT_KEYS = st.one_of(st.none(), st.integers(0, 6).map(lambda h: datetime(2026, 1, 1) + timedelta(hours=h)))


def _first_key(keys, desc):
    return max(keys) if desc else min(keys)


def model_select(pairs, lo, hi, null_first):
    in_range = {}
    nulls = set()
    for key, i in pairs:
        if key is None:
            nulls.add(i)
        elif (lo is None or key >= lo) and (hi is None or key <= hi):
            in_range.setdefault(i, []).append(key)
    if lo is not None or hi is not None:
        if not ((lo is None) if null_first else (hi is None)):
            nulls = set()
    keyed = sorted(in_range, key=lambda i: (min(in_range[i]), i))
    order = sorted(nulls) + keyed if null_first else keyed + sorted(nulls)
    out = []
    for i in order:
        if i not in out:
            out.append(i)
    return out


def model_sort(pairs, members, desc, null_first):
    """``members``: the query's objects in query order (ties keep that order)."""
    rank = {m: r for r, m in enumerate(members)}
    keys = {}
    nulls = set()
    for key, i in pairs:
        if i not in rank:
            continue
        if key is None:
            nulls.add(i)
        else:
            keys.setdefault(i, []).append(key)
    nulls_first = null_first if not desc else not null_first
    null_part = sorted((i for i in nulls if nulls_first or i not in keys), key=rank.get)
    keyed = sorted((i for i in keys if not (nulls_first and i in nulls)), key=rank.get)
    keyed.sort(key=lambda i: _first_key(keys[i], desc), reverse=desc)
    return null_part + keyed if nulls_first else keyed + null_part


def _index_ops(keys):
    return st.lists(st.one_of(
        st.tuples(st.just("add"), keys, st.integers(0, 9)),
        st.tuples(st.just("remove"), keys, st.integers(0, 9)),
        st.tuples(st.just("commit")),
        st.tuples(st.just("select"), keys, keys, st.booleans()),
        st.tuples(st.just("sort"), st.booleans(), st.booleans(), st.integers(0, 3)),
    ), max_size=30)


def _run_index_model(ops):
    root = tempfile.mkdtemp()
    db0.init(root, prefix="model", autocommit=False)
    try:
        objs = [Event(i, None) for i in range(10)]
        for i, o in enumerate(objs):
            db0.tags(o).add(f"g{i % 4}")
        ix = db0.index()
        Holder(ix)
        pairs = set()
        for op in ops:
            if op[0] == "add":
                ix.add(op[1], objs[op[2]])
                pairs.add((op[1], op[2]))
            elif op[0] == "remove":
                ix.remove(op[1], objs[op[2]])
                pairs.discard((op[1], op[2]))
            elif op[0] == "commit":
                db0.commit()
            elif op[0] == "select":
                _, lo, hi, nf = op
                assert ids(ix.select(lo, hi, null_first=nf)) == model_select(pairs, lo, hi, nf)
                assert len(ix.select(lo, hi, null_first=nf)) == len(model_select(pairs, lo, hi, nf))
                in_range = model_select(pairs, lo, hi, nf)
                for desc in (False, True):
                    assert ids(ix.sort(ix.select(lo, hi, null_first=nf), desc=desc, null_first=nf)) \
                        == model_sort(pairs, in_range, desc, nf)
            else:
                _, desc, nf, which = op
                q = db0.find(Event) if which == 0 else db0.find(["g0", "g1"]) if which == 1 \
                    else db0.find(Event)[2:7] if which == 2 else db0.find("g3")
                members = [o.eid for o in q]
                assert ids(ix.sort(q, desc=desc, null_first=nf)) == model_sort(pairs, members, desc, nf)
            assert len(ix) == len(pairs)
            for i, o in enumerate(objs):
                assert db0.getrefcount(o) == 1 + sum(1 for _k, j in pairs if j == i)
        db0.commit()
        assert ids(ix.sort(db0.find(Event))) == model_sort(pairs, list(range(10)), False, False)
    finally:
        db0.close()
        shutil.rmtree(root, ignore_errors=True)


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(_index_ops(NUM_KEYS))
def test_model_numeric_keys(ops):
    _run_index_model(ops)


@SETTINGS
@given(_index_ops(STR_KEYS))
def test_model_str_keys(ops):
    _run_index_model(ops)


@SETTINGS
@given(_index_ops(DT_KEYS))
def test_model_datetime_keys(ops):
    _run_index_model(ops)


def test_large_index_strategies_agree(db):
    """Walk and lookup strategies of sort give the same order (both sizes)."""
    import random
    rng = random.Random(3)
    ix = db0.index()
    Holder(ix)
    objs = [Event(i, None) for i in range(3000)]
    keys = {}
    for o in objs:
        if rng.random() < 0.9:
            k = rng.choice([None, rng.randrange(500), rng.random() * 500])
            ix.add(k, o)
            keys[o.eid] = k
        if o.eid % 50 == 0:
            db0.tags(o).add("rare")
        if o.eid % 2 == 0:
            db0.tags(o).add("half")
    db0.commit()
    pairs = {(k, i) for i, k in keys.items()}
    from dbzero.index import SortQuery
    cost = SortQuery.LOOKUP_COST
    try:
        for forced in (None, 10 ** 9, 0):       # chosen by size, always walk, always look up
            SortQuery.LOOKUP_COST = cost if forced is None else forced
            for tag in ("rare", "half"):
                q = db0.find(tag)
                members = [o.eid for o in q]
                for desc in (False, True):
                    for nf in (False, True):
                        assert ids(ix.sort(q, desc=desc, null_first=nf)) == \
                            model_sort(pairs, members, desc, nf)
    finally:
        SortQuery.LOOKUP_COST = cost
    assert ids(ix.select(100, 200)) == model_select(pairs, 100, 200, False)


# -- block layout (format 2): splits, merges and boundaries ---------------------------------------

import sys  # noqa: E402

_index_mod = sys.modules["dbzero.index"]   # (db0.index is the function)


class _SmallBlocks:
    """Blocks of ~``size`` bytes (a few entries each), so few objects span many blocks."""

    def __init__(self, size=48):
        self.size = size

    def __enter__(self):
        self.saved = _index_mod.BLOCK_BYTES
        _index_mod.BLOCK_BYTES = self.size

    def __exit__(self, *exc):
        _index_mod.BLOCK_BYTES = self.saved


def _blocks(ix, section=b"f"):
    """The committed blocks of a section: [(last entry, entries)]."""
    from dbzero.prefix import pack_oid
    from dbzero_ext.query import decode_block
    prefix = pack_oid(ix._oid) + section
    return [(k[len(prefix):], decode_block(v)) for k, v in ix._px.storage.scan("index", prefix)]


def _check_blocks(ix):
    """Both sections are sorted, keyed by their last entry, and hold one entry per pair."""
    from dbzero_ext.query import reverse_entries
    for section in (b"f", b"r"):
        flat = []
        for last, entries in _blocks(ix, section):
            assert entries and entries[-1] == last
            flat += entries
        assert flat == sorted(set(flat))
        if section == b"f":
            forward = flat
        else:
            assert flat == sorted(reverse_entries(forward))
    return forward


def test_equal_keys_spanning_blocks(db, root):
    with _SmallBlocks():
        ix = Catalog().by_time
        objs = [Event(i, None) for i in range(60)]
        pairs = set()

        def add(key, o):
            ix.add(key, o)
            pairs.add((key, o.eid))

        def check(committed=True):
            if committed:
                assert len(_check_blocks(ix)) == len(pairs)
            assert len(ix) == len(pairs)
            everyone = list(range(60))
            for desc in (False, True):
                for nf in (False, True):
                    assert ids(ix.sort(db0.find(Event), desc=desc, null_first=nf)) == \
                        model_sort(pairs, everyone, desc, nf)
            for lo, hi in ((5, 5), (None, 5), (5, None), (None, None), (1000, 1039), (2000, None)):
                assert ids(ix.select(lo, hi)) == model_select(pairs, lo, hi, False)

        for o in objs:
            add(5 if o.eid % 3 else 2000 + o.eid, o)
        add(None, objs[0])
        add(7, objs[1])
        db0.commit()
        assert len(_blocks(ix)) > 10
        check()
        fives = [o.eid for o in objs if o.eid % 3]
        assert ids(ix.select(5, 5)) == fives
        assert ids(ix.sort(ix.select(5, 5), desc=True)) == fives       # ties keep id order
        # the reverse map spans blocks too: an object with many keys
        for k in range(40):
            add(1000 + k, objs[2])
        db0.commit()
        assert ix._multi
        check()
        assert ids(ix.select(1000, 1039)) == [2]
        assert len(ix._lookup([objs[2]._oid])[0]) == 41
        # removing everything under one key empties whole blocks
        for o in objs:
            if o.eid % 3:
                ix.remove(5, o)
                pairs.discard((5, o.eid))
        check(committed=False)
        before = len(_blocks(ix))
        db0.commit()
        assert len(_blocks(ix)) < before
        assert ids(ix.select(5, 5)) == []
        check()
        n = len(pairs)
    db0.close()
    db0.init(root, prefix="test", autocommit=False)
    ix = db0.fetch(Catalog).by_time
    assert len(ix) == n
    assert ids(ix.select(1000, 1005)) == [2]
    assert ids(ix.select(None, None, null_first=True))[0] == 0


def test_appends_fill_blocks_and_removals_keep_order(db):
    with _SmallBlocks(200):
        ix = db0.index()
        Holder(ix)
        objs = [Event(i, None) for i in range(400)]
        for step in range(4):                       # append in increasing key order
            for o in objs[step * 100:(step + 1) * 100]:
                ix.add(o.eid, o)
            db0.commit()
        sizes = [len(e) for _l, e in _blocks(ix)]
        assert sum(sizes) == 400
        assert sum(1 for s in sizes if s < max(sizes) // 2) <= 2      # appends leave full blocks
        assert ids(ix.select(0, None)) == list(range(400))
        # remove every other entry, then the first and last blocks entirely
        for o in objs[::2]:
            ix.remove(o.eid, o)
        for o in objs[:40] + objs[-40:]:
            ix.remove(o.eid, o)
        assert ids(ix.select(None, None)) == [i for i in range(40, 360) if i % 2]
        db0.commit()
        _check_blocks(ix)
        assert ids(ix.select(None, None)) == [i for i in range(40, 360) if i % 2]
        assert ids(ix.sort(db0.find(Event), desc=True)) == [i for i in range(359, 39, -1) if i % 2]
        # re-adding in the middle and at both ends
        for o in objs[:10] + objs[100:110] + objs[-10:]:
            ix.add(o.eid, o)
        db0.commit()
        _check_blocks(ix)
        expect = sorted({i for i in range(40, 360) if i % 2} | set(range(10)) | set(range(100, 110))
                        | set(range(390, 400)))
        assert ids(ix.select(None, None)) == expect
        assert len(ix) == len(expect)


def test_small_blocks_merge_forward(db):
    with _SmallBlocks(200):
        ix = db0.index()
        h = Holder(ix)
        objs = [Event(i, None) for i in range(600)]
        for o in objs:
            ix.add(o.eid, o)
        db0.commit()
        full = len(_blocks(ix))
        s1 = db0.get_state_num(finalized=True)
        keep = set(range(0, 600, 10)) | set(range(300, 320))
        for o in objs:                          # thin out everything but a dense run
            if o.eid not in keep:
                ix.remove(o.eid, o)
        db0.commit()
        assert ids(ix.select(None, None)) == sorted(keep)
        assert len(_check_blocks(ix)) == len(keep) == len(ix)
        assert len(_blocks(ix)) < full // 2                    # small blocks were merged
        for o in objs[::7]:                     # and refilled
            ix.add(o.eid, o)
            keep.add(o.eid)
        db0.commit()
        assert len(_check_blocks(ix)) == len(keep)
        assert ids(ix.select(None, None)) == sorted(keep)
        assert ids(ix.sort(db0.find(Event), desc=True)) == sorted(keep, reverse=True)
        with db0.snapshot(s1) as snap:          # the merged blocks' history
            assert ids(snap.fetch(db0.uuid(h)).ix.select(None, None)) == list(range(600))


def test_blocks_through_snapshots(db):
    with _SmallBlocks():
        ix = db0.index()
        holder = Holder(ix)
        objs = [Event(i, None) for i in range(30)]
        for o in objs:
            ix.add(o.eid % 7, o)
        db0.commit()
        s1 = db0.get_state_num(finalized=True)
        for o in objs[:15]:
            ix.remove(o.eid % 7, o)
            ix.add(100 + o.eid, o)
        db0.commit()
        now = ids(ix.select(None, None))
        with db0.snapshot(s1) as snap:
            old = snap.fetch(db0.uuid(holder)).ix
            assert ids(old.select(None, None)) == [o.eid for o in sorted(objs, key=lambda o: (o.eid % 7, o.eid))]
            assert ids(old.select(100, None)) == []
            assert ids(old.sort(snap.find(Event), desc=True))[:3] == [6, 13, 20]
            assert len(old) == 30
        assert ids(ix.select(None, None)) == now


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_index_ops(NUM_KEYS))
def test_model_numeric_keys_small_blocks(ops):
    from dbzero.index import SortQuery
    cost = SortQuery.LOOKUP_COST
    SortQuery.LOOKUP_COST = 0       # sorts look keys up in the reverse blocks
    try:
        with _SmallBlocks(64):      # ~4 entries a block; one entry is "small" (merged)
            _run_index_model(ops)
    finally:
        SortQuery.LOOKUP_COST = cost


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_index_ops(STR_KEYS))
def test_model_str_keys_small_blocks(ops):
    with _SmallBlocks(80):
        _run_index_model(ops)


def test_add_and_remove_checks(db):
    ix = Catalog().by_time
    a, b = Event(1, None), Event(2, None)
    for key in (1, 1.0, True, Decimal(1)):          # one numeric key whatever its type
        ix.add(key, a)
    assert len(ix) == 1 and db0.getrefcount(a) == 1
    ix.add("x", b)
    ix.add(b"x", b)
    ix.add(None, b)
    assert len(ix) == 4 and db0.getrefcount(b) == 3
    assert ids(ix.select(1, 1)) == [1] and ids(ix.select("x", "x")) == [2]
    with pytest.raises(RuntimeError, match="Expected a memo object"):
        ix.remove(1, "not memo")
    with pytest.raises(TypeError):
        ix.remove(object(), a)
    ix.remove(1.0, a)
    ix.remove(1, a)                                 # already gone: ignored
    assert len(ix) == 3 and db0.getrefcount(a) == 0
    db0.commit()
    ix.remove(None, b)
    ix.add(None, b)                                 # revives the committed pair
    assert len(ix) == 3 and db0.getrefcount(b) == 3
    db0.delete(a)
    with pytest.raises(db0.ReferenceError):
        ix.add(5, a)
    db0.commit()
    assert len(ix) == 3 and ids(ix.sort(ix.select())) == [2]       # once, at its first key
