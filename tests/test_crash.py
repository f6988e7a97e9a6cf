"""Committed data survives SIGKILL at any moment; only uncommitted changes may be lost."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import dbzero as db0
from conftest import REPO_ROOT

KILLS = int(os.environ.get("DBZERO_CRASH_KILLS", "30"))

WRITER = textwrap.dedent("""
    import sys, dbzero as db0

    @db0.memo(singleton=True, id="crash.Counter")
    class Counter:
        def __init__(self):
            self.a = 0
            self.b = 0
            self.blob = b""

    db0.init(sys.argv[1], prefix="crash", autocommit=False)
    c = Counter()
    k = c.a
    while True:
        k += 1
        c.a = k
        c.blob = bytes(k % 251 for _ in range(2000 + k % 5000))  # commits of varying size
        c.b = k
        db0.commit()
        print(k, flush=True)
        c.a = -1  # an uncommitted change that a kill may lose
""")


@db0.memo(singleton=True, id="crash.Counter")
class Counter:
    def __init__(self):
        self.a = 0
        self.b = 0
        self.blob = b""


def _check(root):
    db0.init(root, prefix="crash", autocommit=False)
    try:
        c = db0.fetch(Counter)
        assert c.a == c.b, "a commit was torn"
        assert c.blob == bytes(c.a % 251 for _ in range(2000 + c.a % 5000))
        return c.a
    finally:
        db0.close()


def test_sigkill_during_commits_loses_nothing_committed(tmp_path):
    root = str(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    rng = random.Random(7)
    last_seen = 0
    for _ in range(KILLS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, root], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Wait for the first commit, then kill at a random moment.
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        printed = [int(x) for x in (line + out).split()]
        assert proc.returncode == -signal.SIGKILL
        stored = _check(root)
        assert stored >= printed[-1], "a commit that returned was lost"
        assert stored >= last_seen
        last_seen = stored
    assert last_seen > KILLS


def test_uncommitted_changes_are_lost_and_file_reopens(tmp_path, fresh):
    root = str(tmp_path)
    fresh(f"""
        import os, signal, dbzero as db0
        @db0.memo(singleton=True, id="crash.Counter")
        class Counter:
            def __init__(self):
                self.a = 0; self.b = 0; self.blob = b""
        db0.init({root!r}, prefix="crash", autocommit=False)
        c = Counter(); c.a = c.b = 1; c.blob = bytes(1 % 251 for _ in range(2001)); db0.commit()
        c.a = 99; c.note = "lost"
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert sorted(os.listdir(root)) == ["crash.db0", "crash.db0-lock", "crash.db0.lock"]
    assert _check(root) == 1
    db0.init(root, prefix="crash", autocommit=False)
    c = db0.fetch(Counter)
    assert not hasattr(c, "note")
    c.a = c.b = 2
    c.blob = bytes(2 % 251 for _ in range(2002))
    db0.commit()
    db0.close()
    assert _check(root) == 2


# Every round a fresh process adds all documents, as query results it never loads, to a
# new index: the commit patches each document's stored reference count in place.
GHOST_WRITER = textwrap.dedent("""
    import os, sys, time, dbzero as db0

    @db0.memo(id="crash.GDoc")
    class GDoc:
        def __init__(self, i):
            self.i = i

    @db0.memo(singleton=True, id="crash.GRoot")
    class GRoot:
        def __init__(self):
            self.indexes = []

    db0.init(sys.argv[1], prefix="ghosts", autocommit=False)
    root = GRoot()
    if not len(root.indexes):
        for i in range(int(sys.argv[2])):
            db0.tags(GDoc(i)).add("doc")    # the tag keeps it alive
    docs = list(db0.find(GDoc))
    ix = db0.index()
    root.indexes.append(ix)
    for doc in docs:
        ix.add(0, doc)
    print("committing", flush=True)
    t = time.perf_counter()
    db0.commit()
    print("done", time.perf_counter() - t, flush=True)
    os._exit(0)
""")


def _check_ghost_counts(root):
    db0.init(root, prefix="ghosts", read_write=False)
    try:
        rounds = len(db0.fetch(GRoot).indexes)
        # The tag counts as one reference, each committed index as one more.
        return rounds, {db0.getrefcount(doc) - 1 for doc in db0.find(GDoc)}
    finally:
        db0.close()


@db0.memo(id="crash.GDoc")
class GDoc:
    def __init__(self, i):
        self.i = i


@db0.memo(singleton=True, id="crash.GRoot")
class GRoot:
    def __init__(self):
        self.indexes = []


def test_sigkill_during_commits_of_unloaded_reference_counts(tmp_path):
    root = str(tmp_path)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    args = [sys.executable, "-c", GHOST_WRITER, root, "20000"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert _check_ghost_counts(root) == (1, {1})
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert _check_ghost_counts(root) == (2, {2})
    duration = float(second.stdout.split()[-1])     # of a commit that patches counts
    rng = random.Random(11)
    committed = 2
    outcomes = {"before": 0, "after": 0}
    for _ in range(max(4, KILLS // 5)):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "committing"
        time.sleep(rng.uniform(0, duration * 1.2))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        rounds, counts = _check_ghost_counts(root)
        assert rounds in (committed, committed + 1)
        assert "done" not in out or rounds == committed + 1, "a commit that returned was lost"
        assert counts == {rounds}, "reference counts disagree with the committed indexes"
        outcomes["after" if rounds > committed else "before"] += 1
        committed = rounds
    assert sum(outcomes.values()) == max(4, KILLS // 5), outcomes
