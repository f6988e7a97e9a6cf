"""Memo classes and helpers shared by the multi-process tests and their child processes.

Children get ``PYTHONPATH`` = repository root + tests/, so ``import procmodels`` works there.
"""

import os
import subprocess
import sys
import tempfile
import textwrap

import dbzero as db0

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


@db0.memo(singleton=True, id="procmodels.Board")
class Board:
    def __init__(self, title="v1"):
        self.title = title
        self.posts = []


@db0.memo(singleton=True, id="procmodels.Pair")
class Pair:
    def __init__(self):
        self.a = 0
        self.b = 0


@db0.memo(id="procmodels.Counter")
class Counter:
    def __init__(self, name):
        self.name = name
        self.value = 0


@db0.memo(singleton=True, id="procmodels.Counters")
class Counters:
    def __init__(self, names=()):
        self.by_name = {}
        for name in names:
            self.by_name[name] = Counter(name)
        self.total = 0


@db0.memo(id="procmodels.Item")
class Item:
    def __init__(self, owner, k):
        self.owner = owner
        self.k = k
        self.v = 0


def child_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, TESTS_DIR, env.get("PYTHONPATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


def spawn(code, *args, env=None, **popen_kwargs):
    """Start ``code`` in a fresh interpreter (stdout/stderr piped, text mode)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                            **popen_kwargs)


def run(code, *args, timeout=120, check=True, env=None):
    proc = spawn(code, *args, env=env)
    out, err = proc.communicate(timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{out}\n{err}")
    return proc.returncode, out, err


def fast_root(tmp_path, name="db"):
    """A storage root on tmpfs when available (fsync is free there), else under tmp_path.

    Used by tests that commit thousands of times; durability is tested elsewhere."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(tmp_path)
    return tempfile.mkdtemp(prefix=f"db0-{name}-", dir=base)
