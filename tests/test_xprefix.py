"""Atomic commits across prefixes (dbzero/coordinator.py, docs/transactions.md): one
commit that changed two prefixes lands in both or in neither, also when the process is
killed at any point of the protocol."""

import os
import signal

import pytest

import dbzero as db0
from dbzero import coordinator
from procmodels import child_env, run


@db0.memo(singleton=True, prefix="xa", id="xp.A")
class A:
    def __init__(self):
        self.n = 0
        self.items = []


@db0.memo(singleton=True, prefix="xb", id="xp.B")
class B:
    def __init__(self):
        self.n = 0


@db0.memo(prefix="xa", id="xp.Thing")
class Thing:
    def __init__(self, n):
        self.n = n


def _markers(root):
    out = {}
    for name in ("xa", "xb"):
        import lmdb
        env = lmdb.open(os.path.join(root, name + ".db0"), subdir=False, readonly=True,
                        lock=False, max_dbs=16)
        try:
            with env.begin() as txn:
                out[name] = txn.get(coordinator.MARKER, db=env.open_db(b"meta", txn=txn))
        finally:
            env.close()
    return out


def _decisions(root):
    path = os.path.join(root, coordinator.DECISION_DIR)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_one_commit_of_two_prefixes(tmp_path):
    root = str(tmp_path)
    db0.init(root, prefix="main", autocommit=False)
    a, b = A(), B()
    db0.commit()
    sa, sb = db0.get_state_num("xa", True), db0.get_state_num("xb", True)
    with db0.atomic():
        a.n += 1
        b.n += 1
        a.items.append(Thing(1))
    db0.commit()
    assert db0.get_state_num("xa", True) == sa + 1 and db0.get_state_num("xb", True) == sb + 1
    assert _decisions(root) == []
    db0.close()
    assert not any(_markers(root).values())
    db0.init(root, prefix="main")
    assert (db0.fetch(A).n, db0.fetch(B).n, db0.fetch(A).items[0].n) == (1, 1, 1)


WRITER = """
    import os, sys, time, dbzero as db0
    from test_xprefix import A, B, Thing
    root, point, autocommit = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    db0.init(root, prefix="main", autocommit=autocommit, autocommit_interval=30)
    a, b = A(), B()
    db0.commit()
    for k in range(1, 4):
        if k == 3:
            os.environ["DB0_TEST_KILL_AT"] = point
        with db0.atomic():
            a.n = k
            b.n = k
            a.items.append(Thing(k))     # a new object and a collection change
            db0.tags(a.items[-1]).add("k%d" % k)
        if autocommit:
            time.sleep(0.5)
        else:
            db0.commit()
    print("survived", flush=True)
"""

POINTS = [("prepared-1", 2), ("prepared-2", 2), ("decided", 3), ("cleared-1", 3), ("cleared-2", 3)]


@pytest.mark.parametrize("point,expected", POINTS)
def test_kill_during_cross_prefix_commit(tmp_path, point, expected):
    root = str(tmp_path)
    code, out, err = run(WRITER, root, point, "0", check=False)
    assert code == -signal.SIGKILL, (out, err)
    markers = _markers(root)
    if point in ("prepared-1", "prepared-2", "decided"):
        assert markers["xa"]                      # the crash left an undecided / unfinished mark
    # Recovery happens when the prefixes are opened read-write.
    db0.init(root, prefix="main")
    a, b = db0.fetch(A), db0.fetch(B)
    assert (a.n, b.n) == (expected, expected)
    assert [t.n for t in a.items] == list(range(1, expected + 1))
    assert len(db0.find(Thing, "k3", prefix="xa")) == (expected == 3)
    assert len(db0.find(Thing, prefix="xa")) == expected
    assert not any(_markers_open().values())
    # Work continues normally after recovery.
    with db0.atomic():
        a.n += 10
        b.n += 10
    db0.commit()
    db0.close()
    db0.init(root, prefix="main")
    assert (db0.fetch(A).n, db0.fetch(B).n) == (expected + 10, expected + 10)


def _markers_open():
    ws = db0.workspace.current()
    return {name: ws.get_prefix(name).storage.meta_get(coordinator.MARKER) for name in ("xa", "xb")}


def test_autocommit_keeps_atomic_blocks_across_prefixes_together(tmp_path):
    root = str(tmp_path)
    code, out, err = run(WRITER, root, "prepared-1", "1", check=False)
    assert code == -signal.SIGKILL, (out, err)
    db0.init(root, prefix="main")
    assert (db0.fetch(A).n, db0.fetch(B).n) == (2, 2)


def test_recovery_of_one_prefix_at_a_time(tmp_path):
    root = str(tmp_path)
    code, _out, _err = run(WRITER, root, "prepared-2", "0", check=False)
    assert code == -signal.SIGKILL
    # A reader of xb sees the undecided state (the documented window) ...
    db0.init(root)
    db0.open("xb", "r")
    assert db0.fetch(B).n == 3
    db0.close()
    # ... until a read-write open rolls it back.
    db0.init(root)
    db0.open("xb", "rw")
    assert db0.fetch(B).n == 2
    db0.close()
    db0.init(root)
    db0.open("xa", "rw")
    assert db0.fetch(A).n == 2


def test_failure_before_the_decision_rolls_back_in_process(tmp_path, monkeypatch):
    root = str(tmp_path)
    db0.init(root, prefix="main", autocommit=False)
    a, b = A(), B()
    db0.commit()
    sa = db0.get_state_num("xa", True)

    def fail(point):
        if point == "prepared-1":
            raise OSError("disk on fire")

    monkeypatch.setattr(coordinator, "_kill_point", fail)
    with db0.atomic():
        a.n = 5
        b.n = 5
        a.items.append(Thing(5))
    thing = a.items[0]
    with pytest.raises(OSError):
        db0.commit()
    # Neither prefix keeps the change: xa was rolled back as a new state, xb's pending
    # change was dropped.
    assert (a.n, b.n) == (0, 0)
    assert len(a.items) == 0
    with pytest.raises(db0.ReferenceError):
        thing.n
    assert db0.get_state_num("xa", True) == sa + 2
    assert not db0.workspace.current().get_prefix("xb").has_changes()
    monkeypatch.undo()
    with db0.atomic():
        a.n = 6
        b.n = 6
    db0.commit()
    db0.close()
    db0.init(root, prefix="main")
    assert (db0.fetch(A).n, db0.fetch(B).n) == (6, 6)


def test_shared_writer_recovers_an_interrupted_commit(tmp_path):
    root = str(tmp_path)
    code, _out, _err = run(WRITER, root, "prepared-2", "0", check=False)
    assert code == -signal.SIGKILL
    db0.init(root, shared=True)
    db0.open("xa", "rw")
    db0.open("xb", "rw")
    assert (db0.fetch(A).n, db0.fetch(B).n) == (2, 2)
    assert not any(_markers_open().values())
    db0.transaction(lambda: setattr(db0.fetch(A), "n", 7))
    assert db0.fetch(A).n == 7
