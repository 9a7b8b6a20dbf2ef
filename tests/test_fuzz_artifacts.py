"""Corrupted artifacts never crash algm-export (issue "Untrusted artifacts"): a few hundred random
corruptions of a real export folder (fixed seed), each followed by one command, end with exit 0 or
2 (validate: or 3), one readable `error:` line, no traceback, no hang and nothing written outside
the folder. `scripts/fuzz_artifacts.py --cases N --seed S` runs longer; the mutations and checks
are in tests/_helpers/fuzz_artifacts.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from _helpers.fuzz_artifacts import commands, copy_base, make_base, m_traversal, run_cases, snapshot

pytestmark = pytest.mark.slow  # fuzzing (hundreds of commands on corrupted export folders)

CASES = int(os.environ.get("ALGM_FUZZ_CASES", "300"))
SEED = 20261124
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("fuzz") / "base")


def test_fuzzed_artifacts_end_cleanly(base, tmp_path):
    t0 = time.perf_counter()
    results = run_cases(base, tmp_path / "cases", CASES, SEED, timeout=60)
    seconds = time.perf_counter() - t0
    bad = [r for r in results if r.problems]
    assert not bad, "\n".join(r.describe() for r in bad[:5])
    codes = Counter(r.code for r in results)
    print(f"\n{len(results)} fuzz cases in {seconds:.1f} s; exit codes {dict(codes)}")
    # the corruptions are caught, and not only by the first check: some cases still run to the end
    assert codes[2] > len(results) // 3 and codes[0] > 0
    assert {r.command for r in results} == {"validate", "build", "bench", "report", "predict"}


def test_fuzz_case_through_the_real_command_line(base, tmp_path):
    """One corrupted folder through `python -m algm_export` in a child process (timeout = no hang)."""
    import random

    c = copy_base(base, tmp_path / "sub")
    m_traversal(random.Random(3), c)
    before = snapshot(c["root"], [c["dir"], c["root"] / "predictions"])
    env = dict(os.environ, ALGM_QUIET="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "algm_export", *commands(c)["validate"]], env=env,
                       capture_output=True, text=True, timeout=300)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert snapshot(c["root"], [c["dir"], c["root"] / "predictions"]) == before
