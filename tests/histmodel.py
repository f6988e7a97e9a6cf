"""A small world of memo objects, a List, a Dict, a Set, tags and an index, driven by random
operations next to a plain-Python model of the same data.

Used by tests/test_history.py (atomic rollback and snapshot model tests) and by the fresh
processes those tests start (``python tests/histmodel.py check ROOT EXPECTED.json``).
"""

import copy
import json
import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import dbzero as db0  # noqa: E402

POOL = 4
TAGS = ("a", "b", "c")
KEYS = ("k0", "k1", "k2", "k3")


@db0.memo(id="histmodel.Item")
class Item:
    def __init__(self, name, v=0):
        self.name = name
        self.v = v


@db0.memo(singleton=True, id="histmodel.Root")
class Root:
    def __init__(self):
        self.pool = [Item(f"p{i}") for i in range(POOL)]
        self.l = db0.list()
        self.d = db0.dict()
        self.s = db0.set()
        self.ix = db0.index()


# Operations: (name, a, b) with small ints a, b.
OPS = ("set", "setf", "delf", "new", "lapp", "lpop", "lset", "lins", "lobj", "dset", "ddel",
       "dobj", "dlist", "sadd", "sdis", "tadd", "trem", "ixadd", "ixrem", "ixnull")


def new_model():
    items = {f"p{i}": {"name": f"p{i}", "v": 0} for i in range(POOL)}
    return {"items": items, "seq": {n: i for i, n in enumerate(items)}, "next": POOL,
            "l": [], "d": {}, "s": set(), "tags": {}, "ix": set()}


class World:
    """The live objects plus the model; ``apply`` does one operation on both."""

    def __init__(self, root):
        self.root = root
        self.items = list(root.pool)      # Python references (index = creation order)
        self.model = new_model()

    # -- checkpoints (what an atomic rollback must restore) ---------------------------------
    def save(self):
        return copy.deepcopy(self.model), list(self.items)

    def restore(self, saved):
        self.model = copy.deepcopy(saved[0])
        self.items = list(saved[1])

    def _item(self, a):
        obj = self.items[a % len(self.items)]
        return obj, obj.name

    def apply(self, op, a, b):
        r, m = self.root, self.model
        if op == "set":
            obj, name = self._item(a)
            obj.v = b
            m["items"][name]["v"] = b
        elif op == "setf":
            obj, name = self._item(a)
            setattr(obj, f"f{b % 3}", b)
            m["items"][name][f"f{b % 3}"] = b
        elif op == "delf":
            obj, name = self._item(a)
            field = f"f{b % 3}"
            if field in m["items"][name]:
                delattr(obj, field)
                del m["items"][name][field]
        elif op == "new":
            name = f"n{m['next']}"
            obj = Item(name, b)
            m["items"][name] = {"name": name, "v": b}
            m["seq"][name] = m["next"]
            m["next"] += 1
            self.items.append(obj)
            r.l.append(obj)
            m["l"].append(["item", name])
        elif op == "lapp":
            r.l.append(b)
            m["l"].append(b)
        elif op == "lpop":
            if m["l"]:
                i = a % len(m["l"])
                r.l.pop(i)
                m["l"].pop(i)
        elif op == "lset":
            if m["l"]:
                i = a % len(m["l"])
                r.l[i] = b
                m["l"][i] = b
        elif op == "lins":
            r.l.insert(a, b)
            m["l"].insert(a, b)
        elif op == "lobj":
            obj, name = self._item(a)
            r.l.append(obj)
            m["l"].append(["item", name])
        elif op == "dset":
            key = KEYS[a % len(KEYS)]
            r.d[key] = b
            m["d"][key] = b
        elif op == "ddel":
            key = KEYS[a % len(KEYS)]
            if key in m["d"]:
                del r.d[key]
                del m["d"][key]
        elif op == "dobj":
            obj, name = self._item(b)
            key = KEYS[a % len(KEYS)]
            r.d[key] = obj
            m["d"][key] = ["item", name]
        elif op == "dlist":
            key = KEYS[a % len(KEYS)]
            r.d[key] = [b, b + 1]           # a collection created here (converted list)
            m["d"][key] = ["list", [b, b + 1]]
        elif op == "sadd":
            r.s.add(b % 6)
            m["s"].add(b % 6)
        elif op == "sdis":
            r.s.discard(b % 6)
            m["s"].discard(b % 6)
        elif op == "tadd":
            obj, name = self._item(a)
            db0.tags(obj).add(TAGS[b % 3])
            m["tags"].setdefault(name, set()).add(TAGS[b % 3])
        elif op == "trem":
            obj, name = self._item(a)
            db0.tags(obj).remove(TAGS[b % 3])
            m["tags"].setdefault(name, set()).discard(TAGS[b % 3])
        elif op == "ixadd":
            obj, name = self._item(a)
            r.ix.add(b % 5, obj)
            m["ix"].add((b % 5, name))
        elif op == "ixrem":
            obj, name = self._item(a)
            if (b % 5, name) in m["ix"]:
                r.ix.remove(b % 5, obj)
                m["ix"].discard((b % 5, name))
        elif op == "ixnull":
            obj, name = self._item(a)
            r.ix.add(None, obj)
            m["ix"].add((None, name))
        else:
            raise AssertionError(op)


# -- what a reader sees --------------------------------------------------------------------------

def _select_order(pairs, seq, lo=None, hi=None, nulls=True):
    """Index select order of the model: each object once, at its first key in range."""
    first = {}
    null_only = set()
    for key, name in pairs:
        if key is None:
            if nulls:
                null_only.add(name)
            continue
        if (lo is None or key >= lo) and (hi is None or key <= hi):
            first[name] = min(first.get(name, key), key)
    ordered = sorted(first, key=lambda n: (first[n], seq[n]))
    rest = sorted((n for n in null_only if n not in first), key=seq.__getitem__)
    return ordered + rest


def expected(model):
    """The observation (see ``observe``) the model predicts, in JSON-normal form."""
    seq = model["seq"]
    reached = {f"p{i}" for i in range(POOL)}

    def walk(value):
        if isinstance(value, list) and value and value[0] == "item":
            reached.add(value[1])

    for v in model["l"]:
        walk(v)
    for v in model["d"].values():
        walk(v)
    tags = {}
    for t in TAGS:
        names = sorted((n for n, ts in model["tags"].items() if t in ts), key=seq.__getitem__)
        tags[t] = names
        reached.update(names)
    reached.update(name for _k, name in model["ix"])
    out = {
        "l": model["l"],
        "d": dict(sorted(model["d"].items())),
        "s": sorted(model["s"]),
        "tags": tags,
        "ix_all": _select_order(model["ix"], seq),
        "ix_1_3": _select_order(model["ix"], seq, 1, 3, nulls=False),
        "ix_sorted_a": [n for n in _select_order(model["ix"], seq) if n in tags["a"]],
        "fields": {n: dict(sorted(model["items"][n].items())) for n in sorted(reached)},
    }
    return json.loads(json.dumps(out))


def observe(root, find=None):
    """What ``root`` shows: list, dict, set, tags (via ``find``), index selects, fields."""
    find = find or db0.find
    fields = {}

    def val(x):
        if isinstance(x, Item):
            fields[x.name] = dict(sorted(vars(x).items()))
            return ["item", x.name]
        if isinstance(x, db0.List):
            return ["list", [val(y) for y in x]]
        return x

    for item in root.pool:
        val(item)
    out = {
        "l": [val(x) for x in root.l],
        "d": {k: val(v) for k, v in sorted(root.d.items())},
        "s": sorted(root.s),
        "tags": {t: [val(o)[1] for o in find(Item, t)] for t in TAGS},
        "ix_all": [val(o)[1] for o in root.ix.select()],
        "ix_1_3": [val(o)[1] for o in root.ix.select(1, 3)],
        "ix_sorted_a": [o.name for o in root.ix.sort(find(Item, "a"))],
    }
    out["fields"] = dict(sorted(fields.items()))
    return json.loads(json.dumps(out))


def check_states(history, use_module_level=False):
    """Compare every recorded state's snapshot with its expected observation.
    ``history``: {state: expected}.  Returns the list of mismatching states."""
    bad = []
    for state, want in sorted(history.items()):
        with db0.snapshot(int(state)) as snap:
            root = snap.fetch(Root)
            got = observe(root, db0.find if use_module_level else snap.find)
        if got != want:
            bad.append((int(state), got, want))
    return bad


def main(argv):
    """``check ROOT EXPECTED.json``: verify the snapshots in a fresh process; prints OK."""
    _cmd, root, path = argv
    with open(path) as fh:
        history = json.load(fh)
    db0.init(root, prefix="hist", read_write=False)
    try:
        bad = check_states(history) + check_states(history, use_module_level=True)
    finally:
        db0.close()
    if bad:
        state, got, want = bad[0]
        print(f"MISMATCH at state {state}:\n got  {got}\n want {want}")
        return 1
    print(f"OK {len(history)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
