"""Several prefixes: class-level prefixes, set_prefix, weak cross-prefix references,
auto-open, find(prefix=), snapshot({prefix: state}), get_prefixes (API.md §8, S7, S12)."""

import os
import sys

import pytest

import dbzero as db0
from procmodels import run


@db0.memo(singleton=True, prefix="/my-org/my-app/settings", id="px.Settings")
class Settings:
    def __init__(self, theme):
        self.theme = theme


@db0.memo(prefix="/my-org/my-app/data", id="px.Note")
class Note:
    def __init__(self, text):
        self.text = text


@db0.memo(id="px.Doc")
class Doc:
    def __init__(self, title):
        self.title = title


@db0.memo(id="px.Plain")
class Plain:
    def __init__(self, text, where=None):
        if where is not None:
            db0.set_prefix(self, where)
        self.text = text


def test_scenario_s7_class_prefixes_and_weak_references(tmp_path):
    root = str(tmp_path)
    db0.init(root, prefix="main")
    s = Settings("dark")
    n = Note("hello")
    db0.tags(n).add("note")
    d = Doc("readme")
    db0.tags(d).add("doc")
    names = sorted(p.name for p in db0.get_prefixes())
    assert names == ["main", "my-org/my-app/data", "my-org/my-app/settings"]
    assert db0.get_current_prefix().name == "main"
    assert os.path.isfile(os.path.join(root, "main.db0"))
    assert os.path.isfile(os.path.join(root, "my-org", "my-app", "settings.db0"))
    assert os.path.isfile(os.path.join(root, "my-org", "my-app", "data.db0"))
    assert db0.get_prefix_of(Note).name == "my-org/my-app/data"
    assert db0.get_prefix_of(s).name == "my-org/my-app/settings"
    assert [x.text for x in db0.find(Note)] == ["hello"]
    assert len(db0.find("note")) == 0
    assert len(db0.find("note", prefix="my-org/my-app/data")) == 1
    d.note = n
    assert db0.getrefcount(n) == 1          # the tag only: the cross-prefix reference is weak
    assert d.note is n
    uid = db0.uuid(n)
    db0.tags(n).remove("note")
    del n
    db0.commit()
    assert not db0.exists(uid)
    assert db0.expired(d.note)
    with pytest.raises(db0.ReferenceError):
        d.note.text
    db0.open("second")
    assert db0.get_current_prefix().name == "second"
    assert len(db0.find(Doc)) == 0
    assert len(db0.find(Doc, prefix="main")) == 1
    assert Settings("light").theme == "dark"           # the singleton of its class prefix


def test_scenario_s12_close_semantics(tmp_path):
    root = str(tmp_path)
    db0.init(root, autocommit=False)
    db0.open("a")
    n = Plain("n")
    db0.tags(n).add("k")
    uid_n = db0.uuid(n)
    db0.open("b")
    m = Plain("other")
    db0.tags(m).add("k")
    n.text = "edited-before-close"
    db0.close("a")
    assert db0.get_current_prefix().name == "b"
    with pytest.raises(RuntimeError, match="no longer accessible"):
        n.text
    assert db0.fetch(uid_n).text == "edited-before-close"   # re-opened read-only
    assert [p.name for p in db0.get_mutable_prefixes()] == ["b"]
    db0.close()
    with pytest.raises(RuntimeError, match="not initialized"):
        db0.fetch(uid_n)
    with pytest.raises(RuntimeError, match="not initialized"):
        db0.commit()
    with pytest.raises(RuntimeError, match="no longer accessible"):
        m.text
    db0.close()
    db0.init(root)
    db0.open("b")
    assert [x.text for x in db0.find("k")] == ["other"]


def test_set_prefix_and_find_prefix(tmp_path):
    db0.init(str(tmp_path), prefix="one", autocommit=False)
    db0.open("two")
    here = Plain("here")
    there = Plain("there", where="one")
    db0.tags(here, there).add("t")
    assert db0.get_prefix_of(there).name == "one" and db0.get_prefix_of(here).name == "two"
    assert [x.text for x in db0.find("t")] == ["here"]
    assert [x.text for x in db0.find("t", prefix="one")] == ["there"]
    p = Plain("x")
    with pytest.raises(RuntimeError, match="set_prefix failed"):
        db0.set_prefix(p, "one")          # only as the first statement of __init__
    db0.commit()
    db0.close()
    db0.init(str(tmp_path), prefix="one")
    assert [x.text for x in db0.find("t")] == ["there"]


def test_several_prefixes_have_own_states_and_commits(tmp_path):
    db0.init(str(tmp_path), autocommit=False)
    db0.open("a")
    Plain("a1")
    db0.open("b")
    sa, sb = db0.get_state_num("a", True), db0.get_state_num("b", True)
    db0.commit("a")
    assert db0.get_state_num("a", True) == sa + 1
    assert db0.get_state_num("b", True) == sb
    Plain("b1")
    db0.commit("b")
    assert db0.get_state_num("b", True) == sb + 1


def test_reference_auto_opens_prefix_read_only(tmp_path):
    root = str(tmp_path)
    run("""
        import sys, dbzero as db0
        from test_prefixes import Doc, Note
        db0.init(sys.argv[1], prefix="main", autocommit=False)
        n = Note("far away"); db0.tags(n).add("keep")
        d = Doc("d"); d.note = n; db0.tags(d).add("d")
        db0.commit(); db0.close()
    """, root)
    db0.init(root, prefix="main")
    d = next(iter(db0.find("d")))
    assert d.note.text == "far away"                    # opens my-org/my-app/data read-only
    assert "my-org/my-app/data" not in [p.name for p in db0.get_mutable_prefixes()]
    assert db0.get_current_prefix().name == "main"
    with pytest.raises(AttributeError):
        d.note.text = "x"


def test_snapshot_with_states_per_prefix(tmp_path):
    db0.init(str(tmp_path), autocommit=False)
    db0.open("a")
    x = Plain("a-1")
    db0.tags(x).add("x")
    db0.commit()
    sa = db0.get_state_num("a", True)
    db0.open("b")
    y = Plain("b-1")
    db0.tags(y).add("y")
    db0.commit()
    sb = db0.get_state_num("b", True)
    x.text, y.text = "a-2", "b-2"
    db0.commit()
    with db0.snapshot({"a": sa, "b": sb}) as snap:
        assert snap.fetch(db0.uuid(x)).text == "a-1"
        assert snap.fetch(db0.uuid(y)).text == "b-1"
        assert snap.get_state_num("a") == sa and snap.get_state_num("b") == sb
    with db0.snapshot({"a": sa}) as snap:
        assert snap.fetch(db0.uuid(x)).text == "a-1"
        assert snap.fetch(db0.uuid(y)).text == "b-2"     # unlisted: last committed
    with pytest.raises(db0.StateNotAvailableError):
        db0.snapshot({"a": sa + 50})


def test_get_prefixes_lists_prefixes_on_disk(tmp_path):
    root = str(tmp_path)
    run("""
        import sys, dbzero as db0
        db0.init(sys.argv[1])
        for name in ("x", "deep/er/y", "z"):
            db0.open(name)
        db0.close()
    """, root)
    db0.init(root)
    assert sorted(p.name for p in db0.get_prefixes()) == ["deep/er/y", "x", "z"]
    db0.open("x", "r")
    info = {p.name: p.uuid for p in db0.get_prefixes()}
    assert info["x"] and set(info) == {"deep/er/y", "x", "z"}
