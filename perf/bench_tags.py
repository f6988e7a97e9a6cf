"""Tags, find queries and range indexes against the same work done with raw py-lmdb.

    python perf/bench_tags.py [--n 100000] [--repeat 3] [--markdown]

  tag           N committed objects get 1-3 of 10 tags + commit    vs dupsort puts (tag -> oid), one txn
  and/or/not    len(find(a, b)), len(find([a, b])), len(find(a, no(b)))
                                                                  vs read both postings into Python sets
  iterate OR    list(find([a, b])) (objects)                      vs read both postings, union, sorted
  index add     ix.add(key, obj) for N objects + commit           vs put (key + oid) in one txn
  selects       100 sorted range selects of ~1% each              vs 100 cursor range scans
  sort          ix.sort(find(tag)) of a ~20% tag query            vs postings + reverse-map lookups + sort
"""

from __future__ import annotations

import os
import random
import struct

import lmdb

from harness import Result, bench_main, keep_alive, log, now, ops_per_sec, temp_dir, time_runs
import dbzero as db0

KEY = struct.Struct(">Q").pack
TAGS = [f"tag{i}" for i in range(10)]
TARGET = {"tag": 500e3, "count": 1.0, "iter": 15.0, "ix_add": 500e3, "selects": 30.0, "sort": 20.0}
REF_070 = {"tag": 53e3, "and": 0.99, "or": 1.44, "not": 1.83, "iter": 62.0, "ix_add": 236e3,
           "selects": 1154.0, "sort": 57.0}


@db0.memo(id="perf.bench_tags.Doc")
class Doc:
    def __init__(self, i):
        self.i = i


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def run(args) -> list:
    n = args.n
    rng = random.Random(7)
    plan = [rng.sample(TAGS, rng.randint(1, 3)) for _ in range(n)]
    keys = [rng.randrange(n * 10) for _ in range(n)]
    results = []
    with temp_dir("tags") as root:
        db0.init(root, prefix="bench", autocommit=False)
        docs = [Doc(i) for i in range(n)]
        holder = keep_alive(docs)
        db0.commit()

        start = now()
        for doc, ts in zip(docs, plan):
            db0.tags(doc).add(ts)
        db0.commit()
        t_tag = now() - start

        def count(q):
            return lambda: len(q())
        t_and = median(time_runs(count(lambda: db0.find("tag1", "tag2")), args.repeat * 3))
        t_or = median(time_runs(count(lambda: db0.find(["tag1", "tag2"])), args.repeat * 3))
        t_not = median(time_runs(count(lambda: db0.find("tag1", db0.no("tag2"))), args.repeat * 3))
        db0.clear_cache()
        del docs
        t_iter = median(time_runs(lambda: list(db0.find(["tag1", "tag2"])), args.repeat))

        ix = db0.index()
        holder.ix = ix
        docs = list(db0.find(Doc))
        start = now()
        for doc, key in zip(docs, keys):
            ix.add(key, doc)
        db0.commit()
        t_ix = now() - start
        width = n * 10 // 100
        bounds = [rng.randrange(n * 10 - width) for _ in range(100)]

        def selects():
            for lo in bounds:
                list(ix.sort(ix.select(lo, lo + width)))
        t_sel = median(time_runs(selects, args.repeat))
        t_sort = median(time_runs(lambda: list(ix.sort(db0.find("tag3"))), args.repeat))
        db0.close()

        # -- raw py-lmdb doing the same key/value work ------------------------------------
        env = lmdb.open(os.path.join(root, "raw.lmdb"), subdir=False, map_size=1 << 31, max_dbs=4)
        tdb = env.open_db(b"tags", dupsort=True, dupfixed=True)
        idb = env.open_db(b"index")
        rdb = env.open_db(b"rev")
        start = now()
        with env.begin(write=True) as txn:
            for oid, ts in enumerate(plan, 1):
                for t in ts:
                    txn.put(t.encode(), KEY(oid), db=tdb)
        raw_tag = now() - start

        def postings(txn, tag):
            cur = txn.cursor(db=tdb)
            if not cur.set_key(tag.encode()):
                return set()
            return {int.from_bytes(v, "big") for v in cur.iternext_dup()}

        def raw_count(op):
            def run_once():
                with env.begin() as txn:
                    a, b = postings(txn, "tag1"), postings(txn, "tag2")
                    return len(op(a, b))
            return run_once
        r_and = median(time_runs(raw_count(lambda a, b: a & b), args.repeat * 3))
        r_or = median(time_runs(raw_count(lambda a, b: a | b), args.repeat * 3))
        r_not = median(time_runs(raw_count(lambda a, b: a - b), args.repeat * 3))

        def raw_iter():
            with env.begin() as txn:
                return sorted(postings(txn, "tag1") | postings(txn, "tag2"))
        r_iter = median(time_runs(raw_iter, args.repeat))
        start = now()
        with env.begin(write=True) as txn:
            for oid, key in enumerate(keys, 1):
                txn.put(KEY(key) + KEY(oid), b"", db=idb)
                txn.put(KEY(oid), KEY(key), db=rdb)
        raw_ix = now() - start

        def raw_selects():
            with env.begin() as txn:
                cur = txn.cursor(db=idb)
                for lo in bounds:
                    out = []
                    if cur.set_range(KEY(lo)):
                        for k in cur.iternext(values=False):
                            if k[:8] > KEY(lo + width):
                                break
                            out.append(k[8:])
        r_sel = median(time_runs(raw_selects, args.repeat))

        def raw_sort():
            with env.begin() as txn:
                ids = postings(txn, "tag3")
                return sorted(ids, key=lambda oid: txn.get(KEY(oid), db=rdb))
        r_sort = median(time_runs(raw_sort, args.repeat))
        env.close()

    ms = 1000.0
    results += [
        Result("tag N objects (1-3 of 10 tags) + commit", ops_per_sec(n, t_tag), ops_per_sec(n, raw_tag),
               "obj/s", TARGET["tag"], REF_070["tag"]),
        Result("AND count", t_and * ms, r_and * ms, "ms", TARGET["count"], REF_070["and"]),
        Result("OR count", t_or * ms, r_or * ms, "ms", TARGET["count"], REF_070["or"]),
        Result("NOT count", t_not * ms, r_not * ms, "ms", TARGET["count"], REF_070["not"]),
        Result("iterate OR result (objects)", t_iter * ms, r_iter * ms, "ms", TARGET["iter"], REF_070["iter"]),
        Result("index add + commit", ops_per_sec(n, t_ix), ops_per_sec(n, raw_ix), "ops/s",
               TARGET["ix_add"], REF_070["ix_add"]),
        Result("100 sorted range selects of ~1%", t_sel * ms, r_sel * ms, "ms", TARGET["selects"],
               REF_070["selects"]),
        Result("sort a ~20% tag query by the index", t_sort * ms, r_sort * ms, "ms", TARGET["sort"],
               REF_070["sort"]),
    ]
    return results


if __name__ == "__main__":
    bench_main("tags, find and index", run)
