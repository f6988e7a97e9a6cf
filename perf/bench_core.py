"""Core dbzero costs against the same key/value work done with raw py-lmdb + msgpack.

    python perf/bench_core.py [--n 100000] [--repeat 3] [--commits 1000] [--markdown]

Steps (each prints dbzero, baseline and dbzero/baseline):
  create        N objects with 3 attributes + one commit      vs packb + put, one write txn
  read cold     fetch(uuid).a for all N in a fresh process     vs txn.get + unpackb, fresh process
  read warm     obj.a on held, loaded proxies; fetch(uuid).a   vs txn.get + unpackb, same process
  update        obj.a = v, commit every 1000                   vs get/unpack/modify/pack/put
  commit        one attribute change + commit, p50/p99         vs one put + commit (sync)
  open          db0.init(root); db0.open("bench") fresh proc   vs lmdb.open of the same file
See perf/README.md for what exactly is timed.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct

import lmdb
import msgpack

from harness import (Result, bench_main, keep_alive, log, now, ops_per_sec, percentile,
                     run_fresh, run_fresh_many, temp_dir, time_runs)
import dbzero as db0  # after harness: it puts the repository root on sys.path

KEY = struct.Struct(">Q").pack
COMMIT_EVERY = 1000
MAP_SIZE = 1 << 30          # what dbzero maps, so both sides open alike

# Reference targets and the 0.7.0 figures measured on this machine (see RESULTS.md).
TARGET = {"create": 400e3, "cold": 500e3, "warm": 2e6, "update": 100e3, "open": 5.0, "commit": 0.35}
REF_070 = {"create": 42e3, "cold": 210e3, "warm": 255e3, "update": 45e3, "open": 17.0, "commit": 0.51}


# An explicit id lets fresh processes import this class as ``bench_core.Item``.
@db0.memo(id="perf.bench_core.Item")
class Item:
    def __init__(self, a, b, c):
        self.a = a
        self.b = b
        self.c = c


def median(values):
    return statistics.median(values)


# -- fresh-process snippets (run by harness.run_fresh; P = params, report() = result) ---------

CREATE_SNIPPET = """
import os
import dbzero as db0
from bench_core import Item
db0.init(P["root"], prefix="bench", autocommit=False)
n = P["n"]
start = now()
objs = [Item(i, f"name{i}", i * 0.5) for i in range(n)]
db0.commit()
report(seconds=now() - start)
# Skip db0.close(): it would delete these unreferenced objects one by one (seconds of
# work nobody measures) and the root is thrown away.  The commit above is durable.
os._exit(0)
"""

COLD_READ_SNIPPET = """
import dbzero as db0
from bench_core import Item  # noqa: F401 - registers the class
with open(P["uuids"]) as fh:
    uuids = json.load(fh)
db0.init(P["root"], prefix="bench", autocommit=False)
fetch = db0.fetch
total = 0
start = now()
for u in uuids:
    total += fetch(u).a
report(seconds=now() - start, total=total)
db0.close()
"""

BASE_COLD_READ_SNIPPET = """
import lmdb, msgpack, struct
env = lmdb.open(P["path"], subdir=False, map_size=P["map_size"], readonly=True)
keys = [struct.pack(">Q", i) for i in range(P["n"])]
unpackb = msgpack.unpackb
total = 0
with env.begin() as txn:
    get = txn.get
    start = now()
    for k in keys:
        total += unpackb(get(k))[0]
    report(seconds=now() - start, total=total)
"""

OPEN_SNIPPET = """
import dbzero as db0
start = now()
db0.init(P["root"])
db0.open("bench")
report(ms=(now() - start) * 1e3)
db0.close()
"""

BASE_OPEN_SNIPPET = """
import lmdb
start = now()
env = lmdb.open(P["path"], subdir=False, map_size=P["map_size"], max_dbs=16)
report(ms=(now() - start) * 1e3)
env.close()
"""


# -- baseline (raw lmdb + msgpack) -----------------------------------------------------------

def base_open(path):
    # LMDB defaults: sync=True, metasync=True - the durability of dbzero's "full" mode.
    return lmdb.open(path, subdir=False, map_size=MAP_SIZE)


def base_create(env, n):
    packb = msgpack.packb
    with env.begin(write=True) as txn:
        put = txn.put
        for i in range(n):
            put(KEY(i), packb((i, f"name{i}", i * 0.5)))


def base_read(env, n):
    unpackb = msgpack.unpackb
    total = 0
    with env.begin() as txn:
        get = txn.get
        for i in range(n):
            total += unpackb(get(KEY(i)))[0]
    return total


def base_update(env, n, delta):
    packb, unpackb = msgpack.packb, msgpack.unpackb
    txn = env.begin(write=True)
    for i in range(n):
        key = KEY(i)
        rec = unpackb(txn.get(key))
        rec[0] = i + delta
        txn.put(key, packb(rec))
        if (i + 1) % COMMIT_EVERY == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()


def base_commit_latencies(env, n, count):
    packb = msgpack.packb
    out = []
    for i in range(count):
        start = now()
        with env.begin(write=True) as txn:
            txn.put(KEY(i % n), packb((i, f"name{i}", i * 0.5)))
        out.append(now() - start)
    return out


# -- dbzero (in this process) ---------------------------------------------------------------------

def db0_update(objs, delta):
    commit = db0.commit
    for i, obj in enumerate(objs):
        obj.a = i + delta
        if (i + 1) % COMMIT_EVERY == 0:
            commit()
    commit()


def db0_commit_latencies(objs, count):
    out = []
    for i in range(count):
        obj = objs[i % len(objs)]
        start = now()
        obj.a = -i
        db0.commit()
        out.append(now() - start)
    return out


def read_attr(objs):
    total = 0
    for obj in objs:
        total += obj.a
    return total


def fetch_attr(uuids):
    fetch = db0.fetch
    total = 0
    for u in uuids:
        total += fetch(u).a
    return total


class Plain:
    """The plain-Python yardstick for warm reads."""

    def __init__(self, a, b, c):
        self.a = a
        self.b = b
        self.c = c


# -- the benchmark -------------------------------------------------------------------------------

def run(args):
    n, repeat = args.n, args.repeat
    expected_sum = n * (n - 1) // 2
    results = []
    with temp_dir("core") as tmp:
        # create: fresh process and empty prefix per run; baseline: fresh file per run.
        log(f"create: {repeat} fresh processes x {n} objects")
        runs = []
        for r in range(repeat):
            root = os.path.join(tmp, f"create{r}")
            runs.append(run_fresh(CREATE_SNIPPET, {"root": root, "n": n})["seconds"])
            shutil.rmtree(root, ignore_errors=True)

        def fresh_env():
            path = os.path.join(tmp, "create-base.mdb")
            for p in (path, path + "-lock"):
                if os.path.exists(p):
                    os.remove(p)
            return base_open(path)

        base_runs = time_runs(lambda env: (base_create(env, n), env.close()), repeat, fresh_env)
        results.append(Result("create 3-attr objects + 1 commit", ops_per_sec(n, median(runs)),
                              ops_per_sec(n, median(base_runs)), "obj/s",
                              TARGET["create"], REF_070["create"], "fresh process per run"))

        # The data set every later step uses: N objects, anchored so they outlive close().
        log("building the data set")
        root = os.path.join(tmp, "main")
        db0.init(root, prefix="bench", autocommit=False)
        objs = [Item(i, f"name{i}", i * 0.5) for i in range(n)]
        keep_alive(objs)
        db0.commit()
        uuids = [db0.uuid(o) for o in objs]
        uuid_file = os.path.join(tmp, "uuids.json")
        with open(uuid_file, "w") as fh:
            json.dump(uuids, fh)
        base_path = os.path.join(tmp, "base.mdb")
        env = base_open(base_path)
        base_create(env, n)

        # warm reads: objects loaded and held by this process.
        log("warm reads")
        warm = time_runs(lambda: read_attr(objs), repeat)
        warm_fetch = time_runs(lambda: fetch_attr(uuids), repeat)
        base_warm = time_runs(lambda: base_read(env, n), repeat)
        plain = [Plain(i, f"name{i}", i * 0.5) for i in range(n)]
        plain_rate = ops_per_sec(n, median(time_runs(lambda: read_attr(plain), repeat)))
        del plain
        assert read_attr(objs) == fetch_attr(uuids) == base_read(env, n) == expected_sum
        results.append(Result("read warm: obj.a (held proxies)", ops_per_sec(n, median(warm)),
                              ops_per_sec(n, median(base_warm)), "reads/s", TARGET["warm"],
                              REF_070["warm"], f"plain Python obj.a: {plain_rate / 1e6:.1f}M/s"))
        results.append(Result("read warm: db0.fetch(uuid).a", ops_per_sec(n, median(warm_fetch)),
                              ops_per_sec(n, median(base_warm)), "reads/s", None, REF_070["warm"]))

        # updates: one attribute, commit every 1000.  delta differs per run so every
        # assignment really changes the value.
        log("updates")
        deltas = iter(range(1, repeat + 1))
        upd = time_runs(lambda: db0_update(objs, next(deltas)), repeat)
        deltas = iter(range(1, repeat + 1))
        base_upd = time_runs(lambda: base_update(env, n, next(deltas)), repeat)
        results.append(Result(f"update 1 attr, commit every {COMMIT_EVERY}", ops_per_sec(n, median(upd)),
                              ops_per_sec(n, median(base_upd)), "upd/s", TARGET["update"],
                              REF_070["update"]))

        # commit latency: median over runs of each run's percentile.
        log(f"commit latency: {repeat} x {args.commits} commits")
        lat = [db0_commit_latencies(objs, args.commits) for _ in range(repeat)]
        base_lat = [base_commit_latencies(env, n, args.commits) for _ in range(repeat)]
        for p, target, ref in ((50, TARGET["commit"], REF_070["commit"]), (99, None, None)):
            results.append(Result(f"commit 1-attr change p{p}",
                                  median([percentile(run_, p) for run_ in lat]) * 1e3,
                                  median([percentile(run_, p) for run_ in base_lat]) * 1e3,
                                  "ms", target, ref, f"over {args.commits} commits"))

        # The cold reads must find what this process left behind.
        expected_cold, expected_base_cold = read_attr(objs), base_read(env, n)
        # Release the writer lock: the next steps open the prefix from fresh processes.
        del objs
        db0.close()
        env.close()

        log(f"cold reads: {repeat} fresh processes")
        cold = run_fresh_many(COLD_READ_SNIPPET, {"root": root, "uuids": uuid_file}, repeat)
        base_cold = run_fresh_many(BASE_COLD_READ_SNIPPET,
                                   {"path": base_path, "n": n, "map_size": MAP_SIZE}, repeat)
        assert all(c["total"] == expected_cold for c in cold)
        assert all(c["total"] == expected_base_cold for c in base_cold)
        results.insert(1, Result("read cold: fetch(uuid).a, fresh process",
                                 ops_per_sec(n, median([c["seconds"] for c in cold])),
                                 ops_per_sec(n, median([c["seconds"] for c in base_cold])),
                                 "reads/s", TARGET["cold"], REF_070["cold"],
                                 "new process, OS page cache warm"))

        log(f"open: {args.opens} fresh processes each")
        prefix_file = os.path.join(root, "bench.db0")
        opens = run_fresh_many(OPEN_SNIPPET, {"root": root}, args.opens)
        base_opens = run_fresh_many(BASE_OPEN_SNIPPET, {"path": prefix_file, "map_size": MAP_SIZE},
                                    args.opens)
        results.append(Result("open prefix, fresh process", median([o["ms"] for o in opens]),
                              median([o["ms"] for o in base_opens]), "ms", TARGET["open"],
                              REF_070["open"], f"median of {args.opens}; init+open vs lmdb.open"))
    return results


def add_args(parser):
    parser.add_argument("--commits", type=int, default=1000, help="commits per latency run")
    parser.add_argument("--opens", type=int, default=10, help="fresh processes for the open time")


if __name__ == "__main__":
    bench_main("core", run, default_n=100_000, add_args=add_args)
