"""Several writer processes on one prefix (``shared=True``): id allocation, conflicts,
rollback, ``db0.transaction`` and crashes.  Every test uses real processes."""

import os
import random
import shutil
import signal
import time

import pytest

import dbzero as db0
from procmodels import Counter, Counters, Item, fast_root, run, spawn


@pytest.fixture
def shm_root(tmp_path):
    path = fast_root(tmp_path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _setup_counters(root, names, prefix="w"):
    db0.init(root, prefix=prefix, autocommit=False)
    Counters(names)
    db0.commit()
    db0.close()


INCREMENTER = """
    import sys, random, dbzero as db0
    from procmodels import Counters
    root, n, name, names = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
    db0.init(root)
    db0.open("w", "rw", shared=True)
    counters = db0.fetch(Counters)
    rng = random.Random(name)

    def incr():
        counters.total += 1
        counters.by_name[rng.choice(names)].value += 1   # the shared counters
        counters.by_name[name].value += 1                # this writer's own count
        return counters.by_name[name].value

    for i in range(n):
        mine = db0.transaction(incr)
        print(mine, flush=True)
    db0.close()
"""


def test_four_writers_increment_shared_counters_exactly(shm_root):
    shared = ["red", "green"]
    writers = [f"w{i}" for i in range(4)]
    _setup_counters(shm_root, shared + writers)
    n = 2000
    procs = [spawn(INCREMENTER, shm_root, n, name, ",".join(shared)) for name in writers]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outs.append(out.split())
    for out in outs:
        assert [int(x) for x in out] == list(range(1, n + 1))   # each saw its own increments
    db0.init(shm_root)
    db0.open("w", "r")
    c = db0.fetch(Counters)
    assert c.total == 4 * n
    assert c.by_name["red"].value + c.by_name["green"].value == 4 * n
    assert all(c.by_name[w].value == n for w in writers)


def test_writers_on_disjoint_objects(shm_root):
    _setup_counters(shm_root, [])
    code = """
        import sys, dbzero as db0
        from procmodels import Counters, Item
        root, owner, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        db0.init(root)
        db0.open("w", "rw", shared=True)
        def create():
            items = [Item(owner, k) for k in range(n)]
            for it in items:
                db0.tags(it).add(owner)   # a tag holds each item (reference count 1)
            return items
        # The first use of a class writes the shared class table: that may conflict
        # with the other writers doing the same, so it runs as a transaction.
        items = db0.transaction(create)
        for rnd in range(20):
            for it in items:
                it.v += 1
            db0.commit()                  # never conflicts: nobody else writes these
        print(" ".join(db0.uuid(it) for it in items))
        db0.close()
    """
    procs = [spawn(code, shm_root, f"o{i}", 50) for i in range(4)]
    uuids = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        uuids.extend(out.split())
    assert len(uuids) == len(set(uuids)) == 200            # ids never collide
    db0.init(shm_root)
    db0.open("w", "r")
    for i in range(4):
        got = sorted((it.k, it.v) for it in db0.find(Item, f"o{i}"))
        assert got == [(k, 20) for k in range(50)]
    assert all(db0.fetch(u).v == 20 for u in uuids)


def test_conflict_rolls_back_pending_changes(tmp_path):
    root = str(tmp_path)
    db0.init(root, prefix="w", autocommit=False)
    c = Counters(["x"])
    c.log = ["start"]
    c.ix = db0.index()
    keep = Item("keep", 1)
    db0.tags(keep).add("kept")
    c.keep = keep
    db0.commit()
    db0.close()

    db0.init(root)
    db0.open("w", "rw", shared=True)
    c = db0.fetch(Counters)
    x = c.by_name["x"]
    keep = c.keep
    state = db0.get_state_num("w", finalized=True)
    # Pending changes of several kinds...
    x.value += 1
    c.log.append("mine")
    fresh = Item("fresh", 2)
    c.fresh = fresh
    db0.tags(keep).add("mine")
    c.ix.add(5, keep)
    # ...while another writer commits a change to x.
    run("""
        import sys, dbzero as db0
        from procmodels import Counters
        db0.init(sys.argv[1]); db0.open("w", "rw", shared=True)
        db0.fetch(Counters).by_name["x"].value = 100
        db0.commit(); db0.close()
    """, root)
    with pytest.raises(db0.ConflictError):
        db0.commit()
    # Everything pending is gone; what the other writer committed is visible.
    assert x.value == 100
    assert list(c.log) == ["start"]
    assert not hasattr(c, "fresh")
    with pytest.raises(db0.ReferenceError):
        fresh.k
    assert len(db0.find("mine")) == 0 and len(db0.find("kept")) == 1
    assert len(c.ix) == 0
    assert db0.get_state_num("w", finalized=True) == state + 1
    # The same work succeeds when nobody interferes.
    x.value += 1
    c.log.append("mine")
    db0.tags(keep).add("mine")
    db0.commit()
    db0.close()
    db0.init(root)
    db0.open("w", "r")
    c = db0.fetch(Counters)
    assert c.by_name["x"].value == 101 and list(c.log) == ["start", "mine"]
    assert len(db0.find("mine")) == 1


def test_transaction_retries_on_conflict(tmp_path):
    root = str(tmp_path)
    _setup_counters(root, ["x"])
    db0.init(root)
    db0.open("w", "rw", shared=True)
    x = db0.fetch(Counters).by_name["x"]
    calls = []

    def incr():
        calls.append(x.value)
        if len(calls) == 1:          # another writer commits while we work
            run("""
                import sys, dbzero as db0
                from procmodels import Counters
                db0.init(sys.argv[1]); db0.open("w", "rw", shared=True)
                db0.fetch(Counters).by_name["x"].value += 10
                db0.commit(); db0.close()
            """, root)
        x.value += 1
        return x.value

    assert db0.transaction(incr) == 11
    assert calls == [0, 10]          # ran twice: the first attempt conflicted
    assert x.value == 11


def test_transaction_errors_and_decorator(tmp_path):
    root = str(tmp_path)
    _setup_counters(root, ["x"])
    db0.init(root)
    db0.open("w", "rw", shared=True)
    c = db0.fetch(Counters)
    x = c.by_name["x"]

    def failing():
        x.value = 99
        Item("gone", 1)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        db0.transaction(failing)
    assert x.value == 0 and not db0.get_prefix_of(x).name == "" and not c._px.has_changes()

    @db0.transactional
    def add(n):
        x.value += n
        return x.value

    @db0.transactional(retries=3)
    def add2(n):
        return add(n)                # nested: runs inside the outer atomic? not allowed

    assert add(5) == 5 and add(2) == 7
    with pytest.raises(db0.TransactionError):
        add2(1)
    with db0.atomic():
        with pytest.raises(db0.TransactionError):
            db0.transaction(lambda: None)
    assert x.value == 7


def test_exclusive_and_shared_writers_exclude_each_other(tmp_path):
    root = str(tmp_path)
    _setup_counters(root, [])
    holder = spawn("""
        import sys, dbzero as db0
        db0.init(sys.argv[1]); db0.open("w", "rw", shared=True)
        print("open", flush=True); sys.stdin.readline()
    """, root)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(db0.PrefixLockedError, match="Failed to aquire lock"):
            db0.init(root, prefix="w")                       # exclusive: refused
        db0.close()
        db0.init(root)
        db0.open("w", "rw", shared=True)                     # another shared writer: fine
        db0.open("w", "r")                                   # already open: stays shared
        assert db0.get_mutable_prefixes()[0].name == "w"
        db0.close()
    finally:
        holder.stdin.close()
        holder.wait(10)
    db0.init(root, prefix="w")                               # exclusive now works
    code, out, err = run("""
        import sys, dbzero as db0
        db0.init(sys.argv[1])
        try:
            db0.open("w", "rw", shared=True)
        except db0.PrefixLockedError as exc:
            print("refused", exc)
    """, root)
    assert out.startswith("refused") and "Failed to aquire lock" in out


def test_shared_writers_do_not_autocommit(tmp_path):
    root = str(tmp_path)
    _setup_counters(root, ["x"])
    db0.init(root, autocommit_interval=20)
    with pytest.raises(ValueError):
        db0.open("w", "rw", shared=True, autocommit=True)
    db0.open("w", "rw", shared=True)
    x = db0.fetch(Counters).by_name["x"]
    before = db0.get_state_num("w", finalized=True)
    x.value = 5
    time.sleep(0.2)
    assert db0.get_state_num("w", finalized=True) == before   # nothing committed by itself
    db0.commit()
    assert db0.get_state_num("w", finalized=True) == before + 1


def test_new_classes_from_two_writers(shm_root):
    """Writers registering different new classes concurrently never mix class ids."""
    _setup_counters(shm_root, [])
    code = """
        import sys, dbzero as db0
        root, tag = sys.argv[1], sys.argv[2]
        cls = db0.memo(type(f"Kind{tag}", (), {"__init__": lambda self, v: setattr(self, "v", v)}),
                       id=f"kind.{tag}")
        db0.init(root); db0.open("w", "rw", shared=True)
        def make():
            o = cls(tag)
            db0.tags(o).add("kinds")
        for _ in range(20):
            db0.transaction(make)
        db0.close()
    """
    procs = [spawn(code, shm_root, t) for t in "ABC"]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    db0.init(shm_root)
    db0.open("w", "r")
    kinds = sorted((type(o).__db0_type_id__, o.v) for o in db0.find("kinds"))
    assert kinds == sorted([(f"kind.{t}", t) for t in "ABC"] * 20)


def test_writer_killed_mid_commit_others_continue(shm_root):
    names = ["w0", "w1", "w2"]
    _setup_counters(shm_root, ["red", "green"] + names)
    rng = random.Random(3)
    n = 300
    killed_total = 0
    for round_no in range(3):
        procs = {name: spawn(INCREMENTER, shm_root, n, name, "red,green") for name in names}
        victim = procs["w0"]
        seen = 0
        target = rng.randint(20, 120)
        while seen - killed_total < target:
            line = victim.stdout.readline()
            assert line, victim.stderr.read()
            seen = int(line)
        time.sleep(rng.uniform(0, 0.003))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        out = victim.stdout.read()      # (communicate() would skip what readline() buffered)
        printed = [int(x) for x in out.split()] + [seen]
        assert victim.returncode == -signal.SIGKILL
        for name in ("w1", "w2"):
            out, err = procs[name].communicate(timeout=300)
            assert procs[name].returncode == 0, err
            assert out.split()[-1] == str(n * (round_no + 1))
        db0.init(shm_root)
        db0.open("w", "r")
        c = db0.fetch(Counters)
        v0 = c.by_name["w0"].value
        assert v0 in (max(printed), max(printed) + 1)   # the kill may come right after a commit
        assert c.total == v0 + c.by_name["w1"].value + c.by_name["w2"].value
        assert c.by_name["red"].value + c.by_name["green"].value == c.total
        killed_total = v0
        db0.close()
    # The prefix still opens exclusively and nothing committed was lost.
    db0.init(shm_root, prefix="w")
    c = db0.fetch(Counters)
    assert c.by_name["w1"].value == c.by_name["w2"].value == 3 * n



def test_shared_collections_lose_no_update(shm_root):
    db0.init(shm_root, prefix="w", autocommit=False)
    c = Counters([])
    c.seen = []
    c.last = {}
    db0.commit()
    db0.close()
    code = """
        import sys, dbzero as db0
        from procmodels import Counters
        root, me = sys.argv[1], sys.argv[2]
        db0.init(root); db0.open("w", "rw", shared=True)
        c = db0.fetch(Counters)
        for i in range(150):
            def step():
                c.seen.append(f"{me}-{i}")
                c.last[me] = i
                if i % 10 == 0:
                    c.by_name[f"{me}-{i}"] = i      # the dict of Counter objects grows too
            db0.transaction(step)
        db0.close()
    """
    procs = [spawn(code, shm_root, f"p{i}") for i in range(4)]
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    db0.init(shm_root)
    db0.open("w", "r")
    c = db0.fetch(Counters)
    assert sorted(c.seen) == sorted(f"p{p}-{i}" for p in range(4) for i in range(150))
    assert dict(c.last) == {f"p{p}": 149 for p in range(4)}
    assert len(c.by_name) == 4 * 15
