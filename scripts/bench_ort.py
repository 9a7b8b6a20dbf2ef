#!/usr/bin/env python
"""ONNX Runtime CPU: baseline vs each threshold setting, side by side in one run.

    .venv/bin/python scripts/bench_ort.py [--out runs/bench-ort] [--thresholds 0.85,0.88,0.92] [--repeats 10]

Exports Segmenter ViT-S/16 512 (built-in seeded weights) with capacities calibrated on the
bundled photos, then runs `algm-export bench --backends ort`. Prints latency, FLOP ratio from
the capacities, and the measured speed-up; the target is speed-up >= 0.9 x FLOP ratio at 0.88.
"""

import argparse
import os

from algm_export.tasks.bench import bench, format_bench
from algm_export.export.pipeline import export_folder
from algm_export.models.registry import resolve_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:vit_s16_512")
    ap.add_argument("--init", choices=("builtin", "upstream"), default="builtin",
                    help="upstream: a built-in mmseg-family model initialised as upstream initialises a fresh "
                         "model (`<name>_upstream_init`, docs/decisions.md item 32); builtin: the name as given")
    ap.add_argument("--out", default="runs/bench-ort")
    ap.add_argument("--thresholds", default="0.85,0.88,0.92")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reuse", action="store_true", help="reuse an existing export in --out")
    ap.add_argument("--settle-ms", type=float, default=50.0, help="idle time before each timed run (0: back to back)")
    a = ap.parse_args()
    if a.init == "upstream":
        from algm_export.models.families.setr import UPSTREAM_SUFFIX

        if not a.model.startswith("builtin:"):
            ap.error("--init upstream goes with a built-in model (builtin:NAME)")
        if not a.model.endswith(UPSTREAM_SUFFIX):
            a.model += UPSTREAM_SUFFIX
    model = resolve_model(a.model)
    if not (a.reuse and os.path.exists(os.path.join(a.out, "manifest.json"))):
        export_folder(model, a.model, a.out, thresholds=[float(t) for t in a.thresholds.split(",")], force=True)
    rep = bench(a.out, backends=["ort"], batches=[int(b) for b in a.batch.split(",")], repeats=a.repeats,
                threads=a.threads, model=model, settle_s=a.settle_ms / 1e3)
    print(format_bench(rep))
    for r in rep["results"]:
        if r["threshold"] is not None and abs(r["threshold"] - 0.88) < 1e-9:
            ok = r["speedup"] >= 0.9 * r["flop_ratio"]
            print(f"\ntarget at 0.88 (batch {r['batch']}): speed-up {r['speedup']:.2f} vs 0.9 x FLOP ratio "
                  f"{0.9 * r['flop_ratio']:.2f}: {'MET' if ok else 'NOT MET'}")


if __name__ == "__main__":
    main()
