"""Fuzz the artifacts algm-export reads, for longer than CI does (tests/test_fuzz_artifacts.py).

    python scripts/fuzz_artifacts.py --cases 2000 --seed 7 [--work DIR] [--keep] [--timeout 60]

Makes one real export folder of a micro Segmenter, then, per case, corrupts a copy of it at
random (see tests/_helpers/fuzz_artifacts.py) and runs one command in-process. Prints every
finding (a crash, a traceback, a wrong exit code, a hang, a write outside the folder) with the
case's seed and mutations; exits 1 when there was one. A finding's folder is kept under --work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _helpers.fuzz_artifacts import make_base, run_cases  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="folder for the cases (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--keep", action="store_true", help="keep every case folder, not just the findings")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="algm-fuzz-"))
    t0 = time.perf_counter()
    base = make_base(work / "base")
    print(f"base export folder: {base['export']} ({time.perf_counter() - t0:.1f} s)", flush=True)

    def show(r):
        if a.verbose or r.problems:
            head = "FINDING " if r.problems else ""
            print(f"{head}{r.index:5d} {r.command:9s} exit {r.code} {r.seconds:5.2f}s  {'; '.join(r.mutations)}",
                  flush=True)
            errors = [line for line in r.error.splitlines() if line.startswith("error:")]
            if a.verbose and errors:
                print(f"      {errors[0][:300]}", flush=True)
            if r.problems:
                print("   ", r.describe(), flush=True)

    t1 = time.perf_counter()
    results = run_cases(base, work / "cases", a.cases, a.seed, a.timeout, a.keep, show)
    bad = [r for r in results if r.problems]
    codes = Counter((r.command, r.code) for r in results)
    print(f"\n{len(results)} cases in {time.perf_counter() - t1:.1f} s, {len(bad)} finding(s); exits: "
          + ", ".join(f"{c} {k}: {n}" for (c, k), n in sorted(codes.items(), key=str)))
    print(f"cases under {work / 'cases'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
