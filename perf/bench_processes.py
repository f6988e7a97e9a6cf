"""Many processes on one prefix: reader latency, refresh polling, concurrent writers.

    python perf/bench_processes.py [--n 1000000] [--repeat 3] [--commits 100] [--markdown]

Steps (each prints dbzero, the raw py-lmdb equivalent and dbzero/baseline):
  visible (auto)   a writer commits; a reader process that only polls ``obj.seq`` (every
                   0.5 ms, no refresh call) sees it after p50/p99 ms   vs a raw reader
                   polling ``env.begin()`` + get every 0.5 ms
  visible (wait)   the same reader blocked in ``db0.wait(prefix, state)``
  polls            ``db0.refresh(); obj.attr`` per poll, nothing committed meanwhile (--n
                   polls, fresh process)                               vs ``with env.begin()
                   as t: t.get(k)``
  disjoint         4 shared writers, each updating its own objects and committing, vs one
                   exclusive writer doing the same updates and commits  (raw: 4 processes
                   vs 1 doing put + commit); with small commits (50 updates: the serialised
                   fsync dominates) and large ones (1000 updates: Python work dominates)
  counters         4 writers incrementing one shared counter through ``db0.transaction``;
                   the result must be exact                            vs raw read-modify-
                   write transactions (LMDB serialises them)
See perf/README.md for what exactly is timed.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import struct
import subprocess
import sys
import textwrap
import time

import lmdb

from harness import (PERF_DIR, REPO_ROOT, Result, _PRELUDE, _RESULT_TAG, bench_main, log,
                     ops_per_sec, percentile, temp_dir)
import dbzero as db0  # after harness: it puts the repository root on sys.path

TARGET = {"visible": 20.0, "polls": 500e3}
REF_070 = {"visible": 138.0}
KEY = struct.Struct(">Q").pack
MAP_SIZE = 1 << 30


@db0.memo(singleton=True, id="perf.bench_processes.Probe")
class Probe:
    def __init__(self):
        self.seq = 0
        self.hits = 0


@db0.memo(id="perf.bench_processes.Cell")
class Cell:
    def __init__(self, owner, k):
        self.owner = owner
        self.k = k
        self.v = 0


def median(values):
    return statistics.median(values)


# -- concurrent fresh processes (harness.run_fresh runs one at a time) -----------------------------

def start(snippet: str, params: dict) -> subprocess.Popen:
    code = _PRELUDE + textwrap.dedent(snippet)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, PERF_DIR]))
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(params)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_line(proc: subprocess.Popen, expected: str = "ready") -> None:
    line = proc.stdout.readline()
    if line.strip() != expected:
        raise RuntimeError(f"benchmark subprocess: expected {expected!r}, got {line!r}\n"
                           f"{proc.stderr.read()[-3000:]}")


def go(procs) -> None:
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()


def collect(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{err[-3000:]}")
    values = {}
    for line in out.splitlines():
        if line.startswith(_RESULT_TAG):
            values.update(json.loads(line[len(_RESULT_TAG):]))
    return values


# -- snippets ------------------------------------------------------------------------------------------

READER_AUTO = """
import dbzero as db0
from bench_processes import Probe
db0.init(P["root"])                       # default refresh_interval (10 ms)
db0.open("lat", "r")
p = db0.fetch(Probe)
last = p.seq
seen = {}
print("ready", flush=True)
mono = time.monotonic
while last < P["n"]:
    s = p.seq                              # no refresh call: the background refresh moves it
    if s != last:
        seen[s] = mono()
        last = s
    time.sleep(0.0005)
report(seen=seen)
"""

READER_WAIT = """
import dbzero as db0
from bench_processes import Probe
db0.init(P["root"], refresh_interval=0)
db0.open("lat", "r")
p = db0.fetch(Probe)
state = db0.get_state_num("lat")
seen = {}
print("ready", flush=True)
mono = time.monotonic
while p.seq < P["n"]:
    db0.wait("lat", state + 1, 10000)
    state = db0.get_state_num("lat")
    seen[p.seq] = mono()
report(seen=seen)
"""

RAW_READER = """
import lmdb, struct
env = lmdb.open(P["path"], subdir=False, readonly=True, map_size=P["map_size"], max_spare_txns=1)
print("ready", flush=True)
mono = time.monotonic
last = 0
seen = {}
while last < P["n"]:
    with env.begin() as t:
        s = struct.unpack(">Q", t.get(b"seq"))[0]
    if s != last:
        seen[s] = mono()
        last = s
    time.sleep(0.0005)
report(seen=seen)
"""

POLLS = """
import dbzero as db0
from bench_processes import Probe
db0.init(P["root"])
db0.open("lat", "r")
p = db0.fetch(Probe)
refresh = db0.refresh
n = P["n"]
best = None
for _ in range(P["repeat"]):
    start = now()
    for _ in range(n):
        refresh()
        p.seq
    t = now() - start
    best = t if best is None or t < best else best
report(seconds=best)
"""

RAW_POLLS = """
import lmdb
env = lmdb.open(P["path"], subdir=False, readonly=True, map_size=P["map_size"], max_spare_txns=1)
n = P["n"]
best = None
for _ in range(P["repeat"]):
    start = now()
    for _ in range(n):
        with env.begin() as t:
            t.get(b"seq")
    t = now() - start
    best = t if best is None or t < best else best
report(seconds=best)
"""

DISJOINT = """
import dbzero as db0
from bench_processes import Cell
db0.init(P["root"])
db0.open("dis", "rw", shared=P["shared"])
owner, m, rounds, groups = P["owner"], P["m"], P["rounds"], P["groups"]
def create():
    cells = [Cell(owner, k) for k in range(m * groups)]
    for c in cells:
        db0.tags(c).add(owner)
    return cells
cells = db0.transaction(create)
parts = [cells[g * m:(g + 1) * m] for g in range(groups)]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
for r in range(rounds):
    for part in parts:
        for c in part:
            c.v += 1
        db0.commit()
report(t0=t0, t1=time.monotonic())
db0.close()
"""

RAW_DISJOINT = """
import lmdb, struct, msgpack
env = lmdb.open(P["path"], subdir=False, map_size=P["map_size"])
owner, m, rounds, groups = P["owner"], P["m"], P["rounds"], P["groups"]
keys = [struct.pack(">QQ", owner, k) for k in range(m * groups)]
with env.begin(write=True) as t:
    for k in keys:
        t.put(k, msgpack.packb([owner, 0]))
parts = [keys[g * m:(g + 1) * m] for g in range(groups)]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
for r in range(rounds):
    for part in parts:
        with env.begin(write=True) as t:
            for k in part:
                rec = msgpack.unpackb(t.get(k))
                rec[1] += 1
                t.put(k, msgpack.packb(rec))
report(t0=t0, t1=time.monotonic())
"""

COUNTER = """
import dbzero as db0
from bench_processes import Probe
db0.init(P["root"])
db0.open("cnt", "rw", shared=True)
p = db0.fetch(Probe)
calls = [0]
def incr():
    calls[0] += 1
    p.hits += 1
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
for _ in range(P["n"]):
    db0.transaction(incr)
report(t0=t0, t1=time.monotonic(), retries=calls[0] - P["n"])
db0.close()
"""

RAW_COUNTER = """
import lmdb, struct
env = lmdb.open(P["path"], subdir=False, map_size=P["map_size"])
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
for _ in range(P["n"]):
    with env.begin(write=True) as t:
        t.put(b"hits", struct.pack(">Q", struct.unpack(">Q", t.get(b"hits"))[0] + 1))
report(t0=t0, t1=time.monotonic())
"""


# -- steps ------------------------------------------------------------------------------------------

def _latencies(commit_times: dict, seen: dict) -> list:
    return [(seen[str(k)] if str(k) in seen else seen[k]) - t for k, t in commit_times.items()
            if str(k) in seen or k in seen]


def visible_latency(root: str, commits: int, reader_snippet: str) -> list:
    db0.init(root, prefix="lat", autocommit=False)
    p = Probe()
    p.seq = 0
    db0.commit()
    reader = start(reader_snippet, {"root": root, "n": commits})
    wait_line(reader)
    rng = random.Random(5)
    times = {}
    for k in range(1, commits + 1):
        time.sleep(rng.uniform(0.005, 0.015))
        p.seq = k
        db0.commit()
        times[k] = time.monotonic()
    seen = collect(reader)["seen"]
    db0.close()
    return _latencies(times, seen)


def raw_visible_latency(path: str, commits: int) -> list:
    env = lmdb.open(path, subdir=False, map_size=MAP_SIZE)
    with env.begin(write=True) as t:
        t.put(b"seq", KEY(0))
    reader = start(RAW_READER, {"path": path, "n": commits, "map_size": MAP_SIZE})
    wait_line(reader)
    rng = random.Random(5)
    times = {}
    for k in range(1, commits + 1):
        time.sleep(rng.uniform(0.005, 0.015))
        with env.begin(write=True) as t:
            t.put(b"seq", KEY(k))
        times[k] = time.monotonic()
    seen = collect(reader)["seen"]
    env.close()
    return _latencies(times, seen)


def concurrent(snippet: str, params_list: list) -> tuple:
    """Start the processes, let them set up, release them together.

    Returns (seconds from the first start to the last end of the timed loops, reports);
    process start-up and exit are not timed.
    """
    procs = [start(snippet, params) for params in params_list]
    for proc in procs:
        wait_line(proc)
    go(procs)
    reports = [collect(proc) for proc in procs]
    return max(r["t1"] for r in reports) - min(r["t0"] for r in reports), reports


def disjoint_writers(tmp: str, m: int, rounds: int, repeat: int) -> list:
    """4 shared writers each updating its own m objects per commit, `rounds` times, vs one
    exclusive writer doing the same 4 x rounds commits of m updates (and raw LMDB alike)."""
    updates = 4 * m * rounds
    log(f"disjoint writers: 4 x {m} objects x {rounds} rounds")
    par, single, raw_par, raw_single = [], [], [], []
    for r in range(repeat):
        root = os.path.join(tmp, f"dis{m}-{r}")
        db0.init(root, prefix="dis")
        db0.close()
        wall, _ = concurrent(DISJOINT, [{"root": root, "shared": True, "owner": f"w{i}", "m": m,
                                         "rounds": rounds, "groups": 1} for i in range(4)])
        par.append(wall)
        root1 = os.path.join(tmp, f"one{m}-{r}")
        wall, _ = concurrent(DISJOINT, [{"root": root1, "shared": False, "owner": "one", "m": m,
                                         "rounds": rounds, "groups": 4}])
        single.append(wall)
        path = os.path.join(tmp, f"rawdis{m}-{r}.mdb")
        wall, _ = concurrent(RAW_DISJOINT, [{"path": path, "owner": i, "m": m, "rounds": rounds,
                                             "groups": 1, "map_size": MAP_SIZE} for i in range(4)])
        raw_par.append(wall)
        path = os.path.join(tmp, f"rawone{m}-{r}.mdb")
        wall, _ = concurrent(RAW_DISJOINT, [{"path": path, "owner": 9, "m": m, "rounds": rounds,
                                             "groups": 4, "map_size": MAP_SIZE}])
        raw_single.append(wall)
    one_rate = ops_per_sec(updates, median(single))
    four_rate = ops_per_sec(updates, median(par))
    what = f"{4 * rounds} commits of {m} updates"
    return [
        Result(f"4 shared writers, disjoint objects, {m} upd/commit", four_rate,
               ops_per_sec(updates, median(raw_par)), "upd/s", one_rate, None,
               f"{what}; target = 1 writer; speed-up {four_rate / one_rate:.2f}x "
               f"(raw {median(raw_single) / median(raw_par):.2f}x)"),
        Result(f"1 exclusive writer, same work, {m} upd/commit", one_rate,
               ops_per_sec(updates, median(raw_single)), "upd/s", None, None, what),
    ]


def run(args):
    results = []
    repeat = args.repeat
    with temp_dir("procs") as tmp:
        # 1. commit -> visible in a reader process
        log(f"visibility latency: {args.commits} commits x {repeat}")
        auto, waited, raw = [], [], []
        for r in range(repeat):
            auto.append(visible_latency(os.path.join(tmp, f"auto{r}"), args.commits, READER_AUTO))
            waited.append(visible_latency(os.path.join(tmp, f"wait{r}"), args.commits, READER_WAIT))
            raw.append(raw_visible_latency(os.path.join(tmp, f"raw{r}.mdb"), args.commits))
        for p in (50, 99):
            results.append(Result(f"commit visible to auto-refreshing reader p{p}",
                                  median([percentile(x, p) for x in auto]) * 1e3,
                                  median([percentile(x, p) for x in raw]) * 1e3, "ms",
                                  TARGET["visible"] if p == 50 else None,
                                  REF_070["visible"] if p == 50 else None,
                                  "reader polls obj.seq every 0.5 ms; raw: begin+get every 0.5 ms"))
        results.append(Result("commit visible to db0.wait() p50",
                              median([percentile(x, 50) for x in waited]) * 1e3,
                              median([percentile(x, 50) for x in raw]) * 1e3, "ms", None, None,
                              "wait() polls the txn id every 0.2-0.5 ms"))

        # 2. refresh polling when nothing changes
        log(f"refresh polls: {args.n} x {repeat}")
        root = os.path.join(tmp, "auto0")
        raw_path = os.path.join(tmp, "raw0.mdb")
        polls = collect(start(POLLS, {"root": root, "n": args.n, "repeat": repeat}))
        raw_polls = collect(start(RAW_POLLS, {"path": raw_path, "n": args.n, "repeat": repeat,
                                              "map_size": MAP_SIZE}))
        results.append(Result("reader polls: db0.refresh(); obj.attr", ops_per_sec(args.n, polls["seconds"]),
                              ops_per_sec(args.n, raw_polls["seconds"]), "polls/s", TARGET["polls"], None,
                              "nothing committed; raw: with env.begin(): get"))

        # 3. 4 writers on disjoint objects vs 1 writer, same updates and commits: small
        #    commits (fsync-bound) and large ones (Python work per commit dominates).
        for m, rounds in ((args.cells, args.rounds), (args.big_cells, args.big_rounds)):
            results.extend(disjoint_writers(tmp, m, rounds, repeat))

        # 4. shared counter through db0.transaction
        n = args.increments
        log(f"shared counter: 4 x {n} transactions")
        rates, raw_rates, retries = [], [], []
        for r in range(repeat):
            root = os.path.join(tmp, f"cnt{r}")
            db0.init(root, prefix="cnt", autocommit=False)
            Probe()
            db0.commit()
            db0.close()
            wall, reports = concurrent(COUNTER, [{"root": root, "n": n}] * 4)
            db0.init(root)
            db0.open("cnt", "r")
            hits = db0.fetch(Probe).hits
            db0.close()
            if hits != 4 * n:
                raise AssertionError(f"shared counter is {hits}, expected {4 * n}")
            rates.append(ops_per_sec(4 * n, wall))
            retries.append(sum(rep["retries"] for rep in reports))
            path = os.path.join(tmp, f"rawcnt{r}.mdb")
            env = lmdb.open(path, subdir=False, map_size=MAP_SIZE)
            with env.begin(write=True) as t:
                t.put(b"hits", KEY(0))
            wall, _ = concurrent(RAW_COUNTER, [{"path": path, "n": n, "map_size": MAP_SIZE}] * 4)
            with env.begin() as t:
                assert struct.unpack(">Q", t.get(b"hits"))[0] == 4 * n
            env.close()
            raw_rates.append(ops_per_sec(4 * n, wall))
        results.append(Result("shared counter, 4 writers, db0.transaction", median(rates),
                              median(raw_rates), "incr/s", None, None,
                              f"exact ({4 * n}); {median(retries):.0f} retries per {4 * n}"))
    return results


def add_args(parser):
    parser.add_argument("--commits", type=int, default=100, help="commits per latency run")
    parser.add_argument("--cells", type=int, default=50, help="objects per writer (disjoint)")
    parser.add_argument("--rounds", type=int, default=150, help="update rounds (disjoint)")
    parser.add_argument("--big-cells", type=int, default=1000, help="objects per writer (large commits)")
    parser.add_argument("--big-rounds", type=int, default=15, help="update rounds (large commits)")
    parser.add_argument("--increments", type=int, default=500, help="transactions per writer")


if __name__ == "__main__":
    bench_main("processes", run, default_n=1_000_000, add_args=add_args)
