"""copy_prefix, drop, assign, compare, find_singleton, get_type and the CLI."""

import os

import pytest

import dbzero as db0
from dbzero import storage
from conftest import run_python


@db0.memo(singleton=True, id="tools.Root")
class Root:
    def __init__(self):
        self.items = []


@db0.memo(id="tools.Item")
class Item:
    def __init__(self, v):
        self.v = v


def test_copy_prefix_opens_elsewhere(db, root, tmp_path):
    r = Root()
    r.items.append(Item(7))
    dest_root = str(tmp_path / "copy")
    db0.copy_prefix(os.path.join(dest_root, "test.db0"))
    with pytest.raises(FileExistsError):
        db0.copy_prefix(os.path.join(dest_root, "test.db0"))
    db0.close()
    db0.init(dest_root, prefix="test", read_write=False)
    assert db0.fetch(Root).items[0].v == 7


def test_drop(db, root):
    db0.open("doomed")
    Root()
    db0.drop("doomed")
    assert not os.path.exists(os.path.join(root, "doomed.db0"))
    assert "doomed" not in [p.name for p in db0.get_prefixes()]


def test_assign_compare_singleton_type(db):
    a, b = Item(1), Item(2)
    db0.assign(a, b, v=5, w="x")
    assert (a.v, b.w) == (5, "x") and db0.compare(a, b)
    db0.tags(a).add("t")
    assert not db0.compare(a, b, tags=["t"])
    with pytest.raises(RuntimeError, match="Failed to set attribute 'v'"):
        db0.assign(a, v=object())
    assert db0.find_singleton(Root) is None
    r = Root()
    assert db0.find_singleton(Root) is r
    with pytest.raises(RuntimeError):
        db0.find_singleton(Item)
    assert db0.get_type(a) is Item


def test_cli(db, root):
    r = Root()
    r.items.append(Item(3))
    db0.commit()
    path = os.path.join(root, "test.db0")
    out = run_python(f"import sys; from dbzero.__main__ import main; sys.exit(main(['stat', {path!r}]))")
    assert "objects" in out.stdout and f"format {storage.FORMAT_VERSION}" in out.stdout
    out = run_python(f"import sys; from dbzero.__main__ import main; sys.exit(main(['dump', {path!r}]))")
    assert "tools.Item" in out.stdout and "'v': 3" in out.stdout
    out = run_python(f"import sys; from dbzero.__main__ import main; sys.exit(main(['readers', {path!r}]))")
    assert "stale reader" in out.stdout
