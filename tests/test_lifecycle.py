"""init / open / close / commit, state numbers, autocommit, locks (API.md §1)."""

import os
import signal
import time

import pytest

import dbzero as db0

from conftest import run_python


@db0.memo(singleton=True)
class Box:
    def __init__(self):
        self.v = 0


@db0.memo
class Doc:
    def __init__(self, text):
        self.text = text


def test_not_initialized():
    with pytest.raises(db0.NotInitializedError, match="dbzero not initialized"):
        db0.get_config()
    with pytest.raises(RuntimeError, match="not initialized"):
        db0.commit()
    db0.close()  # harmless


def test_init_twice(root):
    db0.init(root)
    with pytest.raises(RuntimeError, match="already initialized"):
        db0.init(root)


def test_no_default_prefix(root):
    db0.init(root)
    with pytest.raises(RuntimeError, match="no default prefix"):
        db0.get_current_prefix()
    with pytest.raises(RuntimeError, match="no default prefix"):
        Box()
    assert not os.path.exists(root)  # init does not create the directory


def test_config(root):
    db0.init(root, autocommit=False, cache_size=1 << 20, unknown_option=1)
    cfg = db0.get_config()
    assert cfg["autocommit"] is False and cfg["cache_size"] == 1 << 20
    assert db0.get_cache_stats()["capacity"] == 1 << 20     # the option bounds the cache
    assert cfg["autocommit_interval"] == 367
    assert db0.build_flags() == ""


def test_bad_cache_size(root):
    with pytest.raises(TypeError):
        db0.init(root, cache_size="big")
    with pytest.raises(ValueError):
        db0.init(root, cache_size=0)


def test_open_modes_and_names(root):
    db0.init(root)
    with pytest.raises(RuntimeError, match="Invalid access type: x"):
        db0.open("a", "x")
    with pytest.raises(RuntimeError, match="Invalid prefix name"):
        db0.open("")
    with pytest.raises(TypeError):
        db0.open(5)
    with pytest.raises(RuntimeError, match="Prefix: missing not found"):
        db0.open("missing", "r")
    with pytest.raises(TypeError):
        db0.open("a", "rw", bogus=1)
    db0.open("a", "rw", slab_size=1 << 20, page_io_step_size=4096, meta_io_step_size=4096)
    assert db0.get_current_prefix().name == "a"
    db0.open("b")
    assert db0.get_current_prefix().name == "b"
    db0.open("a")
    assert db0.get_current_prefix().name == "a"
    assert sorted(p.name for p in db0.get_mutable_prefixes()) == ["a", "b"]


def test_nested_prefix_files(root):
    db0.init(root, prefix="/org/app/settings")
    assert db0.get_current_prefix().name == "org/app/settings"
    assert os.path.exists(os.path.join(root, "org", "app", "settings.db0"))
    assert [p.name for p in db0.get_prefixes()] == ["org/app/settings"]


def test_state_numbers(db):
    assert db0.get_state_num(finalized=True) == 1
    assert db0.get_state_num() == 2
    b = Box()
    db0.commit()
    assert db0.get_state_num(finalized=True) == 2
    db0.commit()  # nothing to write: no new state
    assert db0.get_state_num(finalized=True) == 2
    b.v = 5
    db0.commit("test")
    assert db0.get_state_num("test", finalized=True) == 3
    with pytest.raises(RuntimeError, match="Prefix with name zzz not found"):
        db0.commit("zzz")
    with pytest.raises(RuntimeError, match="not found"):
        db0.get_state_num("zzz")


def test_close_one_prefix_and_stack(root):
    db0.init(root, autocommit=False)
    db0.open("a")
    box = Box()
    box.v = 1
    db0.open("b")
    db0.close("a")
    assert db0.get_current_prefix().name == "b"
    with pytest.raises(RuntimeError, match="Object is no longer accessible"):
        box.v
    db0.close("never-opened")
    db0.close()
    with pytest.raises(RuntimeError, match="not initialized"):
        db0.commit()
    db0.init(root)
    db0.open("a", "r")
    assert db0.fetch(Box).v == 1  # close committed it


def test_read_only_prefix(root):
    db0.init(root, prefix="docs")
    Box().v = 3
    db0.close()
    db0.init(root, prefix="docs", read_write=False)
    b = db0.fetch(Box)
    assert b.v == 3
    with pytest.raises(AttributeError, match="Cannot modify read-only prefix: docs"):
        b.v = 4
    with pytest.raises(RuntimeError, match="read-only"):
        Doc("new")  # constructing in a read-only prefix raises, never aborts
    db0.commit()  # no-op
    assert db0.get_state_num() == db0.get_state_num(finalized=True) == 2


def test_autocommit_commits_in_background(root):
    db0.init(root, prefix="auto", autocommit_interval=50)
    b = Box()
    b.v = 1
    deadline = time.time() + 3
    while db0.get_state_num(finalized=True) == 1 and time.time() < deadline:
        time.sleep(0.01)
    assert db0.get_state_num(finalized=True) == 2
    state = db0.get_state_num(finalized=True)
    time.sleep(0.3)
    assert db0.get_state_num(finalized=True) == state  # idle: no commits


def test_autocommit_disabled_per_prefix(root):
    db0.init(root, autocommit_interval=30)
    db0.open("manual", autocommit=False)
    Box().v = 2
    time.sleep(0.3)
    assert db0.get_state_num(finalized=True) == 1


def test_second_writer_is_refused_and_killed_writer_leaves_no_lock(root):
    db0.init(root, prefix="locked")
    db0.commit()
    proc = run_python(f"""
        import dbzero as db0
        db0.init({root!r})
        try:
            db0.open("locked", "rw")
        except RuntimeError as e:
            print("refused:", e)
        db0.open("locked", "r")
        print("reader ok")
    """)
    assert "refused: Failed to aquire lock" in proc.stdout and "reader ok" in proc.stdout
    db0.close()
    # A writer killed while holding the lock does not block the next one.
    proc = run_python(f"""
        import os, signal, dbzero as db0
        db0.init({root!r}, prefix="locked")
        os.kill(os.getpid(), signal.SIGKILL)
    """, check=False)
    assert proc.returncode == -signal.SIGKILL
    db0.init(root, prefix="locked")


def test_blocking_lock_waits_for_holder(root):
    db0.init(root, prefix="wait")
    db0.commit()
    import subprocess, sys, textwrap
    from conftest import REPO_ROOT
    code = textwrap.dedent(f"""
        import time, dbzero as db0
        db0.init({root!r}, lock_flags={{"blocking": True, "timeout": 5}})
        t = time.time(); db0.open("wait", "rw"); print(round(time.time() - t, 1))
    """)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.8)
    db0.close()
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and float(out.strip()) >= 0.3


def test_close_at_exit_persists(root):
    run_python(f"""
        import dbzero as db0
        @db0.memo(singleton=True)
        class Counter:
            def __init__(self): self.n = 0
        db0.init({root!r}, prefix="exit")
        Counter().n += 1
    """)
    out = run_python(f"""
        import dbzero as db0
        @db0.memo(singleton=True)
        class Counter:
            def __init__(self): self.n = 0
        db0.init({root!r}, prefix="exit")
        c = Counter(); c.n += 1; print(c.n)
    """)
    assert out.stdout.strip() == "2"
