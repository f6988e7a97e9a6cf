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
