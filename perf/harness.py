"""Shared helpers for the dbzero benchmarks in perf/.

A benchmark script is ``perf/bench_<topic>.py``.  It defines ``run(args) -> [Result]`` and
ends with ``bench_main("title", run)``; that gives it the common options (--n, --repeat,
--markdown, --json) and lets ``perf/run_all.py`` collect its rows.  Progress goes to stderr
(``log``) so that stdout carries only the table.

Nothing here imports dbzero at module level: baseline-only code and the run_all driver
must work even while the package is broken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

PERF_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(PERF_DIR)
if REPO_ROOT not in sys.path:
    # Scripts import this module first, so they find this checkout's dbzero without PYTHONPATH.
    sys.path.insert(1, REPO_ROOT)

now = time.perf_counter


def log(*parts: Any) -> None:
    """Progress output: stderr, so stdout stays a clean table."""
    print(*parts, file=sys.stderr, flush=True)


# -- timing ------------------------------------------------------------------------------------

def time_runs(fn: Callable[..., Any], repeat: int = 3,
              setup: Optional[Callable[[], Any]] = None) -> List[float]:
    """Wall time in seconds of ``repeat`` calls of ``fn``.

    If ``setup`` is given it runs (untimed) before each call and ``fn`` receives its return
    value - e.g. a fresh database for every run.  The garbage collector stays enabled
    (unlike ``timeit``): dbzero allocates proxies, and users pay for their collection too.
    """
    times = []
    for _ in range(repeat):
        state = setup() if setup is not None else None
        start = now()
        if setup is not None:
            fn(state)
        else:
            fn()
        times.append(now() - start)
    return times


def timeit_best(fn: Callable[..., Any], repeat: int = 3,
                setup: Optional[Callable[[], Any]] = None) -> float:
    return min(time_runs(fn, repeat, setup))


def timeit_median(fn: Callable[..., Any], repeat: int = 3,
                  setup: Optional[Callable[[], Any]] = None) -> float:
    return statistics.median(time_runs(fn, repeat, setup))


def ops_per_sec(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.inf


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) - no interpolation, so p99 is a real sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


# -- results -----------------------------------------------------------------------------------

@dataclass
class Result:
    """One row: the dbzero figure, the same work done with raw LMDB, and the reference marks.

    ``unit`` decides the direction: throughputs ("ops/s", "obj/s", ...) are better higher,
    latencies ("ms") better lower.  ``ratio`` is always dbzero / baseline.
    """
    name: str
    dbzero: float
    baseline: Optional[float] = None
    unit: str = "ops/s"
    target: Optional[float] = None      # reference target for dbzero
    ref: Optional[float] = None         # figure of the reference implementation (0.7.0)
    notes: str = ""
    group: str = ""                     # script title; set by bench_main

    @property
    def higher_is_better(self) -> bool:
        return self.unit.endswith("/s")

    @property
    def ratio(self) -> Optional[float]:
        if not self.baseline:
            return None
        return self.dbzero / self.baseline

    @property
    def meets_target(self) -> Optional[bool]:
        if self.target is None:
            return None
        return self.dbzero >= self.target if self.higher_is_better else self.dbzero <= self.target

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Result":
        return cls(**data)


def fmt_value(value: Optional[float], unit: str) -> str:
    """412k, 2.31M for rates; 3 significant digits for latencies."""
    if value is None:
        return "-"
    if unit.endswith("/s"):
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if value >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.3g}"
    return f"{value:.3g}"


def _target_cell(r: Result) -> str:
    if r.target is None:
        return "-"
    sign = ">=" if r.higher_is_better else "<="
    return f"{sign} {fmt_value(r.target, r.unit)}"


def _status_cell(r: Result) -> str:
    """'ok', or how far off the target is (x needed to reach it)."""
    met = r.meets_target
    if met is None:
        return "-"
    if met:
        return "ok"
    factor = r.target / r.dbzero if r.higher_is_better else r.dbzero / r.target
    return f"MISS {factor:.2f}x" if factor < 2 else f"MISS {factor:.1f}x"


COLUMNS = ("benchmark", "unit", "dbzero", "baseline", "db0/base", "target", "vs target",
           "0.7.0", "notes")


def _cells(r: Result) -> List[str]:
    ratio = r.ratio
    return [r.name, r.unit, fmt_value(r.dbzero, r.unit), fmt_value(r.baseline, r.unit),
            "-" if ratio is None else f"{ratio:.2f}", _target_cell(r), _status_cell(r),
            fmt_value(r.ref, r.unit), r.notes]


def format_table(results: Sequence[Result], title: str = "") -> str:
    """An aligned plain-text table (numbers right-aligned, text left-aligned)."""
    rows = [list(COLUMNS)] + [_cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    left = {0, 1, len(COLUMNS) - 1}

    def line(row: List[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [title, "=" * len(title)] if title else []
    out.append(line(rows[0]))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in rows[1:])
    return "\n".join(out)


def markdown_rows(results: Sequence[Result]) -> List[str]:
    return ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in results]


def format_markdown(results: Sequence[Result], title: str = "") -> str:
    out = [f"### {title}", ""] if title else []
    out.append("| " + " | ".join(COLUMNS) + " |")
    out.append("|" + "|".join("---" if i in (0, 1, len(COLUMNS) - 1) else "---:"
                              for i in range(len(COLUMNS))) + "|")
    out.extend(markdown_rows(results))
    return "\n".join(out)


def print_results(results: Sequence[Result], title: str = "", markdown: bool = False) -> None:
    print(format_markdown(results, title) if markdown else format_table(results, title))
    print()


# -- temporary directories -------------------------------------------------------------------------

@contextlib.contextmanager
def temp_dir(tag: str = "bench") -> Iterator[str]:
    """A fresh directory, removed afterwards.

    DB0_BENCH_DIR chooses the parent (default: the system temp dir); the file system matters
    for commit latency, so RESULTS.md notes where the figures were taken.
    """
    parent = os.environ.get("DB0_BENCH_DIR") or None
    path = tempfile.mkdtemp(prefix=f"db0-{tag}-", dir=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- fresh processes ---------------------------------------------------------------------------------

_RESULT_TAG = "__BENCH_RESULT__ "

# Prepended to every snippet: the parameters as ``P`` and ``report(**values)`` to send back
# numbers (timing is up to the snippet, so imports and opening stay outside the loop).
_PRELUDE = f"""\
import json, sys, time
sys.path.insert(0, {PERF_DIR!r})   # snippets may import helpers from perf/
P = json.loads(sys.argv[1])
now = time.perf_counter
def report(**values):
    print({_RESULT_TAG!r} + json.dumps(values), flush=True)
"""


def run_fresh(snippet: str, params: Optional[Dict[str, Any]] = None,
              timeout: float = 120.0) -> Dict[str, Any]:
    """Run ``snippet`` in a new Python process and return what it passed to ``report()``.

    The child gets PYTHONPATH = the repository root, so it imports this checkout's dbzero
    whatever the caller's working directory is.  Raises RuntimeError if it fails.
    """
    code = _PRELUDE + textwrap.dedent(snippet)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(params or {})],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    values: Dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            values.update(json.loads(line[len(_RESULT_TAG):]))
    if not values:
        raise RuntimeError(f"benchmark subprocess reported nothing:\n{proc.stdout[-2000:]}")
    return values


def run_fresh_many(snippet: str, params: Optional[Dict[str, Any]] = None, runs: int = 3,
                   timeout: float = 120.0) -> List[Dict[str, Any]]:
    return [run_fresh(snippet, params, timeout) for _ in range(runs)]


# -- memory -------------------------------------------------------------------------------------------

def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def rss_bytes() -> int:
    """Current resident set size (VmRSS) of this process."""
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """High-water mark of the resident set size (VmHWM) of this process."""
    return _status_kb("VmHWM") * 1024


# -- dbzero helpers ---------------------------------------------------------------------------------------

_ANCHOR_CLASSES: Dict[str, type] = {}


def keep_alive(objs: Sequence[Any], per_bucket: int = 1000) -> Any:
    """Reference ``objs`` from a persistent root so that they survive close and GC.

    dbzero deletes an object at commit/close once nothing persistent references it and
    Python lets go, so data a later fresh process reads must be reachable.  Only memo
    attributes are used (no collections or tags), so this works on any build: a singleton
    root holds buckets, each bucket holds ``per_bucket`` objects as attributes.  Call
    outside timed regions; it marks every object dirty (its reference count changes).
    """
    import dbzero as db0
    if not _ANCHOR_CLASSES:
        # Explicit ids: a fresh process resolves them without importing this module.
        @db0.memo(singleton=True, id="perf.harness.AnchorRoot")
        class AnchorRoot:
            pass

        @db0.memo(id="perf.harness.AnchorBucket")
        class AnchorBucket:
            pass

        _ANCHOR_CLASSES.update(root=AnchorRoot, bucket=AnchorBucket)
    root = _ANCHOR_CLASSES["root"]()
    start = getattr(root, "count", 0)
    for b, first in enumerate(range(0, len(objs), per_bucket)):
        bucket = _ANCHOR_CLASSES["bucket"]()
        for j, obj in enumerate(objs[first:first + per_bucket]):
            setattr(bucket, f"o{j}", obj)
        setattr(root, f"b{start + b}", bucket)
    root.count = start + math.ceil(len(objs) / per_bucket)
    return root


# -- script entry point -----------------------------------------------------------------------------------

def bench_main(title: str, run: Callable[[argparse.Namespace], List[Result]], default_n: int = 100_000,
               add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> None:
    """Parse the common options, run the benchmark and print (or save) its rows.

    --n N          problem size (default per script)
    --repeat R     runs per measurement; the median is reported
    --markdown     print markdown instead of an aligned table
    --json PATH    also write the rows as JSON (used by run_all.py)
    """
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--n", type=int, default=default_n)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args()
    results = run(args)
    for r in results:
        r.group = title
    print_results(results, f"{title} (n={args.n})", markdown=args.markdown)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"title": title, "n": args.n, "results": [r.to_dict() for r in results]}, fh)
