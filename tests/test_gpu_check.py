"""scripts/gpu_check.sh: the one-run GPU validation, exercised here in its dry-run form (CI has no GPU):
the step list, the CPU-able steps (emulator build and checks), argument handling and both reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
GPU_STEPS = {"kernels-vs-emulator", "gpu-tests", "kernel-time", "torch-throughput", "token-counts",
             "plugin-selftest", "tensorrt"}


def _run(*args, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(ROOT))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_dry_run_runs_the_cpu_steps_and_writes_both_reports(tmp_path):
    p = _run("--dry-run", "--out", str(tmp_path / "gc"))
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    status = {s["name"]: s for s in rep["steps"]}
    assert rep["dry_run"] is True and set(status) == GPU_STEPS | {"environment", "build", "emulator"}
    for name in ("environment", "build", "emulator"):
        assert status[name]["status"] == "passed", status[name]
    for name in GPU_STEPS:       # listed with the reason, never silently dropped
        assert status[name]["status"] == "skipped" and status[name]["reason"].startswith("dry run: needs"), status[name]
    assert "emulator only" in status["build"]["summary"]
    rows = status["emulator"]["details"]["rows"]
    assert [r["P"] for r in rows] == [0, 1, 2, 3, 4, 5, 9, 16]
    limit = status["build"]["details"]["max_prefix"]
    for r in rows:   # every P the library accepts is checked; the others are skipped naming the limit
        assert r["status"] == ("passed" if r["P"] <= limit else "skipped"), r
    assert rep["counts"] == {"passed": 3, "failed": 0, "skipped": 7}
    md = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "# GPU check (dry run" in md and "| emulator | passed |" in md and "**3 passed, 0 failed, 7 skipped**" in md


def test_list_and_bad_arguments(tmp_path):
    p = _run("--list")
    assert p.returncode == 0 and "kernels-vs-emulator" in p.stdout and "torch-throughput" in p.stdout
    p = _run("--only", "bogus", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "unknown step(s) ['bogus']" in p.stderr
    p = _run("--prefix", "1,x", "--dry-run", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "--prefix" in p.stderr
    p = _run("--wheels", str(tmp_path), "--dry-run")
    assert p.returncode == 2 and "holds no .whl files" in p.stderr
    env = dict(os.environ, PYTHON="/nonexistent/python")
    p = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and "PYTHON=" in p.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_gpu_steps_run_on_the_cpu_with_the_emulator_standing_in(tmp_path, monkeypatch):
    """The GPU steps' own code (not the GPU) at small sizes: the emulator plays the CUDA library, tensors stay
    on the CPU, a tiny Segmenter plays the throughput and token-count models. A bug here would otherwise
    first show on a lent GPU machine."""
    import argparse
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    from algm_export.models.families.segmenter import create_segmenter
    from algm_export.models.formats.published_segmenter import save_segmenter

    save_segmenter(create_segmenter("vit_tiny", "linear", 128, n_cls=5), tmp_path / "ck")
    monkeypatch.setattr(gc, "DEVICE", "cpu")
    monkeypatch.setattr(gc, "KERNEL_SHAPE", (1, 8, 32))
    monkeypatch.setattr(gc, "THROUGHPUT_MODELS", [("vit_tiny", 128, (1, 5))])
    monkeypatch.setattr(gc, "TOKEN_COUNT_MODEL", str(tmp_path / "ck"))
    monkeypatch.setattr(gc, "TOKEN_COUNT_IMAGES", 3)
    args = argparse.Namespace(dry_run=True, out=str(tmp_path / "gc"), budget_s=600.0, prefix="0,1,16",
                              tensorrt_include=None, throughput_batch=2)
    ctx = gc.Context(args)
    assert gc.s_build(ctx)["details"]["method"] == "direct"
    ctx.libs["cuda"] = ctx.libs["emu"]
    kve = gc.s_kernels_vs_emulator(ctx)
    rows = kve["details"]["rows"]
    limit = gc._max_prefix(ctx.libs["emu"])
    assert [(r["P"], r["dtype"]) for r in rows if r["P"] < 16] == [(0, "fp32"), (0, "fp16"), (1, "fp32"), (1, "fp16")]
    assert all(r["status"] == "passed" for r in rows if r["P"] < 16)
    p16 = [r["status"] for r in rows if r["P"] == 16]
    assert p16 == (["passed", "passed"] if limit >= 16 else ["skipped"])   # refused by the library: said so
    thr = gc.s_torch_throughput(ctx)["details"]["rows"]
    assert len(thr) == 1 and thr[0]["status"] == "measured" and thr[0]["images"] == 4
    assert thr[0]["batch_flop_ratio"] <= thr[0]["flop_ratio"] and thr[0]["baseline_img_s"] > 0
    tc = gc.s_token_counts(ctx)
    assert tc["summary"] == "equal on 3 of 3 images" and torch.tensor(tc["details"]["cpu"]).shape == (3, 2)
    results = [{"name": "torch-throughput", "title": "t", "status": "passed", "seconds": 1.0, "summary": "x",
                "details": {"rows": thr, "note": "n"}}]
    gc.write_reports(ctx, results, 0.0)
    md = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert "## PyTorch throughput, batch 2 (images/s)" in md and "vit_tiny" in md
