"""Run every perf/bench_*.py and print all their tables.

    python perf/run_all.py [--markdown] [--runs K] [--only core,tags] [--n N] [--repeat R]

Each script runs in its own process (dbzero keeps one workspace per process) with
``--json`` to hand back its rows; its own output goes to stderr as progress, so stdout
carries only the combined tables.  With ``--runs K`` every script runs K times and each
figure is the median over the runs (the machine is shared; single runs are noisy).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

from harness import PERF_DIR, REPO_ROOT, Result, print_results


def scripts(only: List[str]) -> List[str]:
    paths = sorted(glob.glob(os.path.join(PERF_DIR, "bench_*.py")))
    if only:
        paths = [p for p in paths if os.path.basename(p)[len("bench_"):-len(".py")] in only]
    return paths


def run_script(path: str, extra: List[str]) -> dict:
    """One run of one script; returns its JSON payload.  Raises RuntimeError on failure."""
    fd, out = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        proc = subprocess.run([sys.executable, path, "--json", out, *extra],
                              stdout=sys.stderr, stderr=sys.stderr, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{os.path.basename(path)} exited with {proc.returncode}")
        with open(out) as fh:
            return json.load(fh)
    finally:
        os.remove(out)


def _median(values: List[float]):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def combine(payloads: List[dict]) -> Tuple[str, List[Result]]:
    """Rows of several runs of one script -> one row per benchmark with median figures."""
    by_name: Dict[str, List[Result]] = {}
    for payload in payloads:
        for data in payload["results"]:
            r = Result.from_dict(data)
            by_name.setdefault(r.name, []).append(r)
    rows = []
    for name, runs in by_name.items():
        first = runs[0]
        first.dbzero = _median([r.dbzero for r in runs])
        first.baseline = _median([r.baseline for r in runs])
        rows.append(first)
    title = f"{payloads[0]['title']} (n={payloads[0]['n']}, median of {len(payloads)} run(s))"
    return title, rows


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every perf/bench_*.py")
    parser.add_argument("--markdown", action="store_true", help="print markdown (for RESULTS.md)")
    parser.add_argument("--runs", type=int, default=1, help="runs per script; medians are reported")
    parser.add_argument("--only", default="", help="comma-separated topics, e.g. core,tags")
    parser.add_argument("--n", type=int, help="passed to every script")
    parser.add_argument("--repeat", type=int, help="passed to every script")
    args = parser.parse_args()
    extra = []
    if args.n is not None:
        extra += ["--n", str(args.n)]
    if args.repeat is not None:
        extra += ["--repeat", str(args.repeat)]

    failed = []
    tables = []
    for path in scripts([t for t in args.only.split(",") if t]):
        try:
            payloads = []
            for k in range(args.runs):
                print(f"### {os.path.basename(path)} run {k + 1}/{args.runs}", file=sys.stderr, flush=True)
                payloads.append(run_script(path, extra))
            tables.append(combine(payloads))
        except RuntimeError as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            failed.append(os.path.basename(path))

    if args.markdown:
        import lmdb
        print(f"_{datetime.date.today().isoformat()}, `python perf/run_all.py {' '.join(sys.argv[1:])}`, "
              f"Python {platform.python_version()}, py-lmdb {lmdb.__version__}, "
              f"{os.cpu_count()} CPUs_\n")
    for title, rows in tables:
        print_results(rows, title, markdown=args.markdown)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
