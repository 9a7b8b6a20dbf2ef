#!/usr/bin/env python
"""ONNX Runtime CPU profile of exported models, side by side: time per op type (and the slowest
nodes) summed over `--runs` profiled runs, so that where an ALGM graph pays more than its
baseline shows op by op.

    PYTHONPATH=. .venv/bin/python scripts/profile_ort.py BASELINE.onnx ALGM.onnx [...] [--runs 3]
        [--threads 2] [--image 512] [--top 15]

Uses `SessionOptions.enable_profiling` (the kernel events of the JSON trace); the input is a fixed
seeded image (an ALGM graph's cost does not depend on the pixels in static mode; in dynamic
mode pass --photo NAME to profile at a real photo's token counts).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np


def profile(path: str, x: np.ndarray, runs: int, threads: int, warmup: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    tmp = tempfile.mkdtemp(prefix="ortprof-")
    sess0 = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {sess0.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess0.run(None, feeds)
    del sess0
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tmp, "p")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        sess.run(None, feeds)
    for _ in range(runs):
        sess.run(None, feeds)
    trace = json.load(open(sess.end_profiling()))
    nodes = [e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    # the last `runs` runs: drop the warm-up runs' events (one event per node per run)
    per_run = len(nodes) // (runs + warmup)
    nodes = nodes[warmup * per_run:]
    by_type = collections.Counter()
    count = collections.Counter()
    by_node = collections.Counter()
    for e in nodes:
        t = e["args"].get("op_name", "?")
        by_type[t] += e["dur"] / runs / 1e3
        count[t] += 1 / runs
        by_node[(e["name"][:-len("_kernel_time")], t)] += e["dur"] / runs / 1e3
    runs_ev = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    wall = float(np.median([e["dur"] for e in runs_ev[warmup:]])) / 1e3 if runs_ev else float("nan")
    return {"by_type": by_type, "count": count, "by_node": by_node, "wall_ms": wall,
            "kernel_ms": sum(by_type.values()), "nodes": per_run}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", type=int, default=512)
    ap.add_argument("--photo", default="", help="a bundled photo (algm_export.models.images) instead of noise")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    if a.photo:
        from algm_export.models.images import sample_images, to_model_input

        img = dict(sample_images(names=[a.photo]))[a.photo]
        x = to_model_input(img, (a.image, a.image), {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})  # ImageNet
        x = x.numpy().astype(np.float32)
    else:
        x = np.random.default_rng(0).standard_normal((1, 3, a.image, a.image)).astype(np.float32)
    res = {}
    for m in a.models:
        res[m] = profile(m, x, a.runs, a.threads)
        r = res[m]
        print(f"{m}: {r['nodes']} nodes, run {r['wall_ms']:.1f} ms (median), kernels {r['kernel_ms']:.1f} ms", flush=True)
    types = sorted({t for r in res.values() for t in r["by_type"]},
                   key=lambda t: -max(r["by_type"][t] for r in res.values()))
    print("\nms per run by op type (count):")
    print(f"  {'op':28s}" + "".join(f"{os.path.basename(m)[:22]:>26s}" for m in a.models))
    for t in types:
        print(f"  {t:28s}" + "".join(f"{res[m]['by_type'][t]:17.2f} ({res[m]['count'][t]:5.0f})" for m in a.models))
    for m in a.models:
        print(f"\nslowest nodes of {m}:")
        for (n, t), v in res[m]["by_node"].most_common(a.top):
            print(f"  {v:8.2f} ms  {t:18s} {n}")


if __name__ == "__main__":
    main()
