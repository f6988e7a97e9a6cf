"""cProfile one hot path of bench_core, to see where the time goes.

    python perf/profile_core.py create [--n 50000] [--top 25]
    python perf/profile_core.py fetch|commit|update

create   N Item(...) constructions + one commit (profiled separately)
fetch    db0.fetch(uuid).a over N committed objects in a fresh workspace (cold proxies)
update   obj.a = v on N held objects, commit every 1000
commit   1000 one-attribute commits
cProfile inflates the cost of small Python functions, so read the ranking, not the totals.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats

from harness import keep_alive, temp_dir
import dbzero as db0  # after harness: it puts the repository root on sys.path
from bench_core import COMMIT_EVERY, Item, db0_commit_latencies, db0_update, fetch_attr


def profile(label, fn, top):
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    print(f"\n===== {label} =====")
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(top)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("create", "fetch", "update", "commit"))
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    n = args.n
    with temp_dir("profile") as tmp:
        root = os.path.join(tmp, "db")
        db0.init(root, prefix="bench", autocommit=False)
        holder = {}
        if args.what == "create":
            profile("create: Item(...) x n", lambda: holder.update(objs=[Item(i, f"name{i}", i * 0.5)
                                                                         for i in range(n)]), args.top)
            profile("create: the one commit", db0.commit, args.top)
            db0.close()
            return
        objs = [Item(i, f"name{i}", i * 0.5) for i in range(n)]
        keep_alive(objs)
        db0.commit()
        if args.what == "update":
            profile(f"update, commit every {COMMIT_EVERY}", lambda: db0_update(objs, 1), args.top)
        elif args.what == "commit":
            profile("1000 one-attribute commits", lambda: db0_commit_latencies(objs, 1000), args.top)
        else:
            uuids = [db0.uuid(o) for o in objs]
            del objs
            db0.close()        # drop every proxy: the fetches below start cold
            db0.init(root, prefix="bench", autocommit=False)
            profile("fetch(uuid).a, cold proxies", lambda: fetch_attr(uuids), args.top)
        db0.close()


if __name__ == "__main__":
    main()
