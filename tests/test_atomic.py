"""db0.atomic(): all-or-nothing blocks (API.md §13, scenario S5 for memo attributes)."""

import gc
import random

import pytest

import dbzero as db0


@db0.memo
class Order:
    def __init__(self, qty):
        self.qty = qty


@db0.memo(singleton=True)
class Shop:
    def __init__(self):
        self.main = None


def _setup():
    shop = Shop()
    o = Order(1)
    shop.main = o
    db0.commit()
    return shop, o


def test_cancel_and_success(db):
    shop, o = _setup()
    with db0.atomic() as tx:
        o.qty = 8
        tx.cancel()
    assert o.qty == 1
    before = db0.get_state_num(finalized=True)
    with db0.atomic():
        o.qty = 7
    assert o.qty == 7 and db0.get_state_num(finalized=True) == before


def test_rollback_on_exception(db, root):
    shop, o = _setup()
    o.qty = 7
    with pytest.raises(ValueError):
        with db0.atomic():
            o.qty = 5
            o.note = "rush"
            extra = Order(9)
            shop.extra = extra
            shop.main = None  # releases o inside the block
            raise ValueError("boom")
    assert o.qty == 7 and not hasattr(o, "note")
    assert shop.main is o and not hasattr(shop, "extra")
    assert db0.getrefcount(o) == 1
    with pytest.raises(db0.ReferenceError, match="Memo instance expired"):
        extra.qty
    db0.commit()
    db0.close()
    db0.init(root, prefix="test")
    assert db0.fetch(Shop).main.qty == 7


def test_commit_inside_atomic_raises(db):
    _setup()
    with db0.atomic():
        with pytest.raises(RuntimeError, match="cannot run inside an active db0.atomic"):
            db0.commit()


def test_nested_blocks(db):
    shop, o = _setup()
    with db0.atomic():
        o.qty = 2
        with pytest.raises(KeyError):
            with db0.atomic():
                o.qty = 3
                raise KeyError("inner")
        assert o.qty == 2
    assert o.qty == 2
    with pytest.raises(ValueError):
        with db0.atomic():
            o.qty = 4
            with db0.atomic():
                o.qty = 5
            raise ValueError("outer")
    assert o.qty == 2


def test_deleted_inside_block_comes_back(db):
    shop, o = _setup()
    lone = Order(3)
    shop.lone = lone
    with pytest.raises(RuntimeError):
        with db0.atomic():
            del shop.lone
            db0.delete(lone)
            raise RuntimeError("x")
    assert lone.qty == 3 and shop.lone is lone


def test_random_exceptions_restore_state(db):
    rng = random.Random(3)
    shop = Shop()
    orders = [Order(i) for i in range(20)]
    for i, o in enumerate(orders):
        setattr(shop, f"o{i}", o)
    db0.commit()
    for round_ in range(30):
        before = {i: (o.qty, sorted(vars(o))) for i, o in enumerate(orders)}
        fail_at = rng.randrange(10)
        try:
            with db0.atomic():
                for step in range(10):
                    o = rng.choice(orders)
                    action = rng.randrange(3)
                    if action == 0:
                        o.qty = rng.randrange(1000)
                    elif action == 1:
                        setattr(o, f"x{rng.randrange(3)}", step)
                    elif hasattr(o, "x0"):
                        del o.x0
                    if step == fail_at:
                        raise ZeroDivisionError
        except ZeroDivisionError:
            assert {i: (o.qty, sorted(vars(o))) for i, o in enumerate(orders)} == before
        if round_ % 5 == 0:
            db0.commit()
