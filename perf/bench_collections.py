"""Persistent collections against the same work done with raw py-lmdb.

    python perf/bench_collections.py [--n 100000] [--big 5000000] [--repeat 3] [--markdown]

  list append   N appends + commit                       vs N puts (8-byte key -> packed int)
  list read     N random L[i] (warm)                      vs N random txn.get + unpackb
  dict set      N d[k] = v + commit                       vs N puts
  dict get      N random d[k] (warm)                      vs N random txn.get + unpackb
  set add / in  N adds + commit; N random `in` (warm)     vs puts; txn.get
  big list      build --big ints (commit every 1M), then iterate, with cache_size 64 MiB;
                RSS growth is reported
"""

from __future__ import annotations

import os
import random
import struct

import lmdb
import msgpack

from harness import Result, bench_main, keep_alive, now, ops_per_sec, rss_bytes, temp_dir, time_runs
import dbzero as db0

KEY = struct.Struct(">Q").pack
TARGET = {"append": 2e6, "lread": 1.5e6, "dset": 700e3, "dget": 1.5e6, "sadd": 700e3, "sin": 1.5e6,
          "build": 2e6, "iter": 5e6}
REF_070 = {"append": 1.91e6, "lread": 736e3, "dset": 108e3, "dget": 135e3, "build": 1.78e6, "iter": 4.9e6}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def add_args(parser):
    parser.add_argument("--big", type=int, default=5_000_000)


def run(args) -> list:
    n, rep = args.n, args.repeat
    rng = random.Random(3)
    idx = [rng.randrange(n) for _ in range(n)]
    out = []
    with temp_dir("coll") as root:
        db0.init(root, prefix="bench", autocommit=False)

        def append():
            lst = db0.list()
            holder.append(lst)
            a = lst.append
            for i in range(n):
                a(i)
            db0.commit()
            return lst
        holder = db0.list()
        keep_alive([holder])
        times = time_runs(append, rep)
        lst = holder[-1]
        get = lst.__getitem__
        t_lread = median(time_runs(lambda: [get(i) for i in idx], rep))

        def dset():
            d = db0.dict()
            holder.append(d)
            for i in range(n):
                d[i] = i
            db0.commit()
        t_dset = median(time_runs(dset, rep))
        d = holder[-1]
        t_dget = median(time_runs(lambda: [d[i] for i in idx], rep))

        def sadd():
            s = db0.set()
            holder.append(s)
            a = s.add
            for i in range(n):
                a(i)
            db0.commit()
        t_sadd = median(time_runs(sadd, rep))
        s = holder[-1]
        t_sin = median(time_runs(lambda: [i in s for i in idx], rep))

        db0.set_cache_size(64 << 20)
        big = db0.list()
        holder.append(big)
        rss0 = rss_bytes()
        start = now()
        a = big.append
        for i in range(args.big):
            a(i)
            if i % 1_000_000 == 999_999:
                db0.commit()
        db0.commit()
        t_build = now() - start
        start = now()
        total = 0
        for v in big:
            total += v
        t_iter = now() - start
        growth = (rss_bytes() - rss0) / (1 << 20)
        db0.close()

        env = lmdb.open(os.path.join(root, "raw.lmdb"), subdir=False, map_size=1 << 32)
        pack, unpack = msgpack.packb, msgpack.unpackb

        def raw_put():
            with env.begin(write=True) as txn:
                for i in range(n):
                    txn.put(KEY(i), pack(i))
        r_put = median(time_runs(raw_put, rep))

        def raw_get():
            with env.begin() as txn:
                return [unpack(txn.get(KEY(i))) for i in idx]
        r_get = median(time_runs(raw_get, rep))
        with env.begin() as txn:
            r_in = median(time_runs(lambda: [txn.get(KEY(i)) is not None for i in idx], rep))
        env.close()

    ops = lambda t: ops_per_sec(n, t)  # noqa: E731
    out += [
        Result("list append + commit", ops(median(times)), ops(r_put), "ops/s", TARGET["append"], REF_070["append"]),
        Result("list random index read (warm)", ops(t_lread), ops(r_get), "ops/s", TARGET["lread"], REF_070["lread"]),
        Result("dict set + commit", ops(t_dset), ops(r_put), "ops/s", TARGET["dset"], REF_070["dset"]),
        Result("dict random get (warm)", ops(t_dget), ops(r_get), "ops/s", TARGET["dget"], REF_070["dget"]),
        Result("set add + commit", ops(t_sadd), ops(r_put), "ops/s", TARGET["sadd"]),
        Result("set `in` (warm)", ops(t_sin), ops(r_in), "ops/s", TARGET["sin"]),
        Result(f"build a {args.big:,}-int list (cache 64 MiB)", ops_per_sec(args.big, t_build), None, "ops/s",
               TARGET["build"], REF_070["build"]),
        Result(f"iterate it (RSS growth {growth:.0f} MiB, limit 50)", ops_per_sec(args.big, t_iter), None,
               "ops/s", TARGET["iter"], REF_070["iter"]),
    ]
    return out


if __name__ == "__main__":
    bench_main("collections", run, add_args=add_args)
