"""Cost of history (time travel) against the same work done with raw py-lmdb + msgpack.

    python perf/bench_history.py [--n 1000] [--repeat 3] [--markdown]

Steps (each prints dbzero, baseline and dbzero/baseline):
  commits       obj.a = i; db0.commit(), N times              vs get old + put history + put, one txn each
  read back     value of obj.a 1,000 states back: snapshot(s) vs set_range on the history key + unpackb
                + fetch + .a + close, per read
  live reads    fetch(uuid).a of keys with 100 old versions   vs txn.get + unpackb of the same keys
                next to keys with none (proxies not held,        (history in another table)
                so every read decodes the record from LMDB)
  disk          bytes of the history table per overwritten    vs the same (key, state) -> old value
                value (1,000 objects x 10 overwrites)            entries in a raw LMDB table
See perf/README.md ("bench_history.py") for exactly what is timed.
"""

from __future__ import annotations

import gc
import os
import statistics
import struct

import lmdb
import msgpack

from harness import Result, bench_main, log, now, ops_per_sec, temp_dir, time_runs
import dbzero as db0  # after harness: it puts the repository root on sys.path

KEY = struct.Struct(">Q").pack
STATE = struct.Struct(">Q").pack
MAP_SIZE = 1 << 30
BACK = 1000             # how many states back "read back" reads
VERSIONS = 100          # old versions of each key in the live-read comparison
LIVE_KEYS = 1000        # keys per group in the live-read comparison
DISK_OBJECTS, DISK_OVERWRITES = 1000, 10

TARGET = {"commits": 3000.0, "back": 0.1, "live": 1.10}
REF_070 = {"commits": 2000.0, "back": 0.28}


@db0.memo(id="perf.bench_history.Item")
class Item:
    def __init__(self, a, b, c):
        self.a = a
        self.b = b
        self.c = c


def median(values):
    return statistics.median(values)


# -- baseline (raw lmdb + msgpack): history kept by hand ---------------------------------------------

def base_open(path):
    env = lmdb.open(path, subdir=False, map_size=MAP_SIZE, max_dbs=4)
    return env, env.open_db(b"live"), env.open_db(b"history")


def base_commit(env, live, hist, key, value, state):
    """One commit of one changed value, keeping the old one: what dbzero does per commit."""
    with env.begin(write=True) as txn:
        old = txn.get(key, db=live)
        if old is not None:
            txn.put(key + STATE(state), old, db=hist)
        txn.put(key, msgpack.packb(value), db=live)


def base_read_back(env, hist, key, state):
    """Value of ``key`` as of ``state``: the first history entry after it."""
    with env.begin() as txn:
        cur = txn.cursor(db=hist)
        cur.set_range(key + STATE(state + 1))
        return msgpack.unpackb(cur.value())[0]


# -- the benchmark ------------------------------------------------------------------------------------

def run(args):
    n, repeat = args.n, args.repeat
    results = []
    with temp_dir("history") as tmp:
        root = os.path.join(tmp, "db")
        db0.init(root, prefix="hist", autocommit=False)
        holder = Item(0, "x", 0.5)
        db0.commit()

        # -- commits of one attribute ------------------------------------------------------------
        log(f"commits: {repeat} x {n}")
        counter = iter(range(1, 10 ** 9))

        def commits():
            for _ in range(n):
                holder.a = next(counter)
                db0.commit()

        db_runs = time_runs(commits, repeat)
        env, live, hist = base_open(os.path.join(tmp, "base.mdb"))
        bstate = iter(range(1, 10 ** 9))

        def base_commits():
            for _ in range(n):
                s = next(bstate)
                base_commit(env, live, hist, KEY(1), (s, "x", 0.5), s)

        base_runs = time_runs(base_commits, repeat)
        results.append(Result("commit 1 attribute (history kept)", ops_per_sec(n, median(db_runs)),
                              ops_per_sec(n, median(base_runs)), "commits/s", TARGET["commits"],
                              REF_070["commits"], f"{n} commits; base: get+put history+put per txn"))

        # -- reading a value BACK states back -------------------------------------------------------
        while db0.get_state_num(finalized=True) < BACK + 10:
            holder.a = next(counter)
            db0.commit()
        uid = db0.uuid(holder)
        last = db0.get_state_num(finalized=True)
        target_state = last - BACK
        with db0.snapshot(target_state) as snap:
            expect = snap.fetch(uid).a
        reads = 2000

        def read_back():
            snapshot, total = db0.snapshot, 0
            for _ in range(reads):
                with snapshot(target_state) as snap:
                    total += snap.fetch(uid).a
            assert total == expect * reads

        log(f"read back {BACK} states: {repeat} x {reads}")
        back = time_runs(read_back, repeat)
        bkey, blast = KEY(1), next(bstate) - 1

        def base_back():
            for _ in range(reads):
                base_read_back(env, hist, bkey, blast - BACK)

        base_back_runs = time_runs(base_back, repeat)
        results.append(Result(f"read a value {BACK} states back", median(back) / reads * 1e3,
                              median(base_back_runs) / reads * 1e3, "ms", TARGET["back"],
                              REF_070["back"], "snapshot(s) + fetch + .a + close"))

        # -- live reads: keys with 100 old versions vs keys with none --------------------------------
        log(f"live reads: {LIVE_KEYS} keys with {VERSIONS} versions vs {LIVE_KEYS} with none")
        old = [Item(i, "o", 0.5) for i in range(LIVE_KEYS)]
        fresh = [Item(i, "f", 0.5) for i in range(LIVE_KEYS)]
        holder.old = db0.list(old)
        holder.fresh = db0.list(fresh)
        db0.commit()
        for v in range(VERSIONS):
            for obj in old:
                obj.a = v
            db0.commit()
        for obj in fresh:
            obj.a = VERSIONS - 1
        db0.commit()            # one write: no history for these records
        old_u = [db0.uuid(o) for o in old]
        fresh_u = [db0.uuid(o) for o in fresh]
        del old, fresh, obj
        gc.collect()

        def fetch_all(uuids):
            fetch, total = db0.fetch, 0
            for u in uuids:
                total += fetch(u).a     # proxy dropped at once: next fetch decodes again
            return total

        assert fetch_all(old_u) == fetch_all(fresh_u) == (VERSIONS - 1) * LIVE_KEYS
        rounds = 20
        with_hist, without = [], []
        for _ in range(repeat * rounds):          # interleaved, so drift hits both alike
            with_hist += time_runs(lambda: fetch_all(old_u), 1)
            without += time_runs(lambda: fetch_all(fresh_u), 1)
        # Raw: the same two groups of keys in one table, history of one group in another.
        env2, live2, hist2 = base_open(os.path.join(tmp, "base-live.mdb"))
        with env2.begin(write=True) as txn:
            for i in range(2 * LIVE_KEYS):
                txn.put(KEY(i), msgpack.packb((VERSIONS - 1, "o", 0.5)), db=live2)
            for i in range(LIVE_KEYS):
                for v in range(VERSIONS):
                    txn.put(KEY(i) + STATE(v + 2), msgpack.packb((v, "o", 0.5)), db=hist2)

        def base_reads(lo):
            total = 0
            with env2.begin() as txn:
                for i in range(lo, lo + LIVE_KEYS):
                    total += msgpack.unpackb(txn.get(KEY(i), db=live2))[0]
            return total

        b_with, b_without = [], []
        for _ in range(repeat * rounds):
            b_with += time_runs(lambda: base_reads(0), 1)
            b_without += time_runs(lambda: base_reads(LIVE_KEYS), 1)
        ratio = median(with_hist) / median(without)
        base_ratio = median(b_with) / median(b_without)
        results.append(Result(f"live read, key with {VERSIONS} versions", ops_per_sec(LIVE_KEYS, median(with_hist)),
                              ops_per_sec(LIVE_KEYS, median(b_with)), "reads/s", None, None,
                              "fetch(uuid).a, record decoded each time"))
        results.append(Result("live read, key without history", ops_per_sec(LIVE_KEYS, median(without)),
                              ops_per_sec(LIVE_KEYS, median(b_without)), "reads/s", None, None))
        results.append(Result("live read slowdown from history (x)", ratio, base_ratio, "x",
                              TARGET["live"], None, "time with / time without; <= 1.10"))

        # -- disk cost of history ------------------------------------------------------------------
        log(f"disk: {DISK_OBJECTS} objects x {DISK_OVERWRITES} overwrites")
        px_storage = _storage_of(holder)
        objs = [Item(i, f"name{i}", i * 0.5) for i in range(DISK_OBJECTS)]
        holder.disk = db0.list(objs)
        db0.commit()
        before_pages, before_entries = _table_pages(px_storage, "history")
        record_bytes = []
        for k in range(DISK_OVERWRITES):
            for obj in objs:
                obj.a = obj.a + 1
            db0.commit()
        after_pages, after_entries = _table_pages(px_storage, "history")
        for obj in objs[:100]:
            record_bytes.append(len(px_storage.get("objects", KEY(obj._oid))))
        overwritten = DISK_OBJECTS * DISK_OVERWRITES
        psize = px_storage._env.stat()["psize"]
        db_bytes = (after_pages - before_pages) * psize / overwritten
        # Raw: (8-byte key + 8-byte state) -> the old record, same count, same value sizes.
        env3, _live3, hist3 = base_open(os.path.join(tmp, "base-disk.mdb"))
        value = b"\0" * (8 + int(median(record_bytes)))
        with env3.begin(write=True) as txn:
            for k in range(DISK_OVERWRITES):
                for i in range(DISK_OBJECTS):
                    txn.put(b"\x02" + KEY(i) + STATE(k + 2), value, db=hist3)
        with env3.begin() as txn:
            st = txn.stat(hist3)
        base_bytes = (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"] / overwritten
        results.append(Result("disk: history bytes per overwritten value", db_bytes, base_bytes, "bytes",
                              None, None, f"record {8 + int(median(record_bytes))} B incl. state; "
                              f"{after_entries - before_entries} history+journal entries"))
        env.close()
        env2.close()
        env3.close()
        db0.close()

        # -- the same commits with durability="fast" (no fsync of the meta page) ---------------------
        log(f"commits, durability=fast: {repeat} x {n}")
        db0.init(os.path.join(tmp, "fast"), prefix="hist", autocommit=False, durability="fast")
        holder = Item(0, "x", 0.5)
        db0.commit()
        fast_runs = time_runs(commits, repeat)
        db0.close()
        path = os.path.join(tmp, "base-fast.mdb")
        env = lmdb.open(path, subdir=False, map_size=MAP_SIZE, max_dbs=4, metasync=False)
        live, hist = env.open_db(b"live"), env.open_db(b"history")
        base_fast = time_runs(base_commits, repeat)
        env.close()
        results.insert(1, Result("commit 1 attribute, durability=fast", ops_per_sec(n, median(fast_runs)),
                                 ops_per_sec(n, median(base_fast)), "commits/s", TARGET["commits"], None,
                                 "base: lmdb metasync=False"))
    return results


def _storage_of(obj):
    return obj._px.storage


def _table_pages(storage, name):
    st = storage._rtxn.stat(storage._dbs[name])
    return st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"], st["entries"]


if __name__ == "__main__":
    bench_main("history", run, default_n=1000)
