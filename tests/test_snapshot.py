"""Snapshots and time travel (API.md §7, scenario S4)."""

import gc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import dbzero as db0


@db0.memo(id="snap.Account")
class Account:
    def __init__(self, owner, balance):
        self.owner = owner
        self.balance = balance


@db0.memo(singleton=True, id="snap.Bank")
class Bank:
    def __init__(self):
        self.main = None


def test_readme_time_travel(db, capsys):
    person = Account("John", 25)
    Bank().main = person
    person.balance = 1500
    state = db0.get_state_num()
    db0.commit()
    person.balance -= 300
    db0.commit()
    print(f"{person.owner} balance: {person.balance}")
    with db0.snapshot(state) as snap:
        past = db0.fetch(db0.uuid(person))
        print(f"{past.owner} balance: {past.balance}")
    assert capsys.readouterr().out == "John balance: 1200\nJohn balance: 1500\n"


def test_s4_states_and_snapshot_objects(db):
    assert (db0.get_state_num(), db0.get_state_num(finalized=True)) == (2, 1)
    acc = Account("john", 1500)
    Bank().main = acc
    s1 = db0.get_state_num()
    db0.commit()
    assert db0.get_state_num(finalized=True) == s1
    acc.balance -= 300
    db0.commit()
    acc.balance = 0
    uid = db0.uuid(acc)
    with db0.snapshot(s1) as snap:
        old = snap.fetch(uid)
        assert old.balance == 1500 and acc.balance == 0
        assert old is not acc and db0.uuid(old) == uid and snap.get_state_num() == s1
        assert snap.fetch(uid) is old
        assert db0.get_snapshot_of(old) is snap
        with pytest.raises(AttributeError):
            old.balance = 1
        with pytest.raises(db0.ReadOnlyError):
            old.balance = 1
    with db0.snapshot() as last:
        assert last.fetch(uid).balance == 1200
    with pytest.raises(RuntimeError, match="Object is no longer accessible"):
        old.balance
    with pytest.raises(RuntimeError, match="Requested state number is not available"):
        db0.snapshot(999)
    with pytest.raises(RuntimeError, match="Requested state number is not available"):
        db0.snapshot(0)
    with pytest.raises(TypeError):
        db0.snapshot("x")
    with pytest.raises(RuntimeError, match="not found"):
        db0.snapshot({"nope": 1})
    with pytest.raises(RuntimeError, match="WorkspaceView is closed"):
        last.fetch(uid)


def test_objects_created_later_are_absent(db):
    Bank()
    db0.commit()
    state = db0.get_state_num(finalized=True)
    later = Account("late", 1)
    Bank().main = later
    db0.commit()
    uid = db0.uuid(later)
    with db0.snapshot(state) as snap:
        assert not snap.exists(uid)
        assert not db0.exists(uid)  # module-level exists reads the active snapshot
        with pytest.raises(db0.ReferenceError):
            snap.fetch(uid)
    assert db0.exists(uid)


def test_deleted_object_visible_in_older_snapshot(db):
    acc = Account("gone", 5)
    Bank().main = acc
    db0.commit()
    state = db0.get_state_num(finalized=True)
    uid = db0.uuid(acc)
    Bank().main = None
    del acc
    gc.collect()
    db0.commit()
    assert not db0.exists(uid)
    with db0.snapshot(state) as snap:
        assert snap.fetch(uid).owner == "gone"


def test_compaction(db):
    acc = Account("c", 0)
    Bank().main = acc
    states = []
    for i in range(10):
        acc.balance = i
        db0.commit()
        states.append(db0.get_state_num(finalized=True))
    keep = db0.snapshot(states[5])
    removed = db0.compact(before=states[8])
    assert removed > 0
    assert keep.fetch(db0.uuid(acc)).balance == 5  # history an open snapshot needs is kept
    keep.close()
    db0.compact(before=states[8])
    with pytest.raises(db0.StateNotAvailableError):
        db0.snapshot(states[5])
    with db0.snapshot(states[8]) as snap:
        assert snap.fetch(db0.uuid(acc)).balance == 8


ops = st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["set", "del", "commit"]),
                         st.integers(-5, 5)), min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_snapshots_match_model(tmp_path_factory, operations):
    root = str(tmp_path_factory.mktemp("model"))
    db0.init(root, prefix="model", autocommit=False)
    try:
        bank = Bank()
        accounts = [Account(f"a{i}", 0) for i in range(5)]
        for i, acc in enumerate(accounts):
            setattr(bank, f"a{i}", acc)
        db0.commit()
        model = {i: {"owner": f"a{i}", "balance": 0} for i in range(5)}
        history = {db0.get_state_num(finalized=True): {i: dict(m) for i, m in model.items()}}
        for idx, op, val in operations:
            if op == "set":
                setattr(accounts[idx], f"f{abs(val) % 3}", val)
                model[idx][f"f{abs(val) % 3}"] = val
            elif op == "del":
                name = f"f{abs(val) % 3}"
                if name in model[idx]:
                    delattr(accounts[idx], name)
                    del model[idx][name]
            else:
                db0.commit()
                history[db0.get_state_num(finalized=True)] = {i: dict(m) for i, m in model.items()}
        uids = [db0.uuid(a) for a in accounts]
        for state, expected in history.items():
            with db0.snapshot(state) as snap:
                got = {i: dict(vars(snap.fetch(u))) for i, u in enumerate(uids)}
            assert got == expected, state
    finally:
        db0.close()


def test_snapshot_in_fresh_process(db, root, fresh):
    acc = Account("p", 1)
    Bank().main = acc
    db0.commit()
    first = db0.get_state_num(finalized=True)
    acc.balance = 2
    db0.commit()
    uid = db0.uuid(acc)
    db0.close()
    out = fresh(f"""
        import dbzero as db0
        @db0.memo(id="snap.Account")
        class Account:
            pass
        db0.init({root!r}, prefix="test", read_write=False)
        with db0.snapshot({first}) as s:
            print(s.fetch({uid!r}).balance, db0.fetch({uid!r}).balance)
        print(db0.fetch({uid!r}).balance)
    """)
    assert out.stdout.split() == ["1", "1", "2"]
