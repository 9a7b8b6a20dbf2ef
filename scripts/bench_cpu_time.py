#!/usr/bin/env python
"""ONNX Runtime CPU *time* (process time at 1 intra-op thread), interleaved: for a machine shared with
other jobs, where wall-clock latencies are meaningless but the CPU time a run takes is stable to ~1 %.

    # several ONNX files on the bundled photos at batch 1 (ratios against the first file)
    PYTHONPATH=. .venv/bin/python scripts/bench_cpu_time.py files BASELINE.onnx A.onnx B.onnx [--repeats 8]
    # an export folder's dynamic entry at batch > 1: batches grouped by CLAP count vs in image order
    PYTHONPATH=. .venv/bin/python scripts/bench_cpu_time.py batches DIR [--batch 4] [--repeats 4]

`files` prints per photo and on average the median CPU ms of every file and its speed-up over the
first; `batches` prints, for three ways of running the bench images (batches grouped by CLAP count,
batches in image order, and one image at a time: what a server that split its batches would
run), the CPU time per image, the
speed-up over the baseline, the per-image FLOP ratio and the FLOP ratio of what the batches computed
(every image at its batch's largest counts), and their quotients (docs/decisions.md items 43-44).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PHOTOS = "astronaut,coffee,chelsea,rocket,motorcycle_left,motorcycle_right"


def _cpu(runner, x):
    c = time.process_time()
    out = runner.infer(x)
    return time.process_time() - c, out


def files(a) -> None:
    from algm_export.models.images import sample_images, to_model_input
    from algm_export.runtimes.onnxruntime import OrtRunner

    pairs = sample_images(names=a.photos.split(","))
    xs = [to_model_input(img, (a.size, a.size), "vit").numpy() for _, img in pairs]
    runners = [OrtRunner(m, threads=1) for m in a.models]
    outs = [[r.infer(x)["logits"] for x in xs] for r in runners]
    ref = 1 if len(a.models) > 2 else 0          # with a baseline first, the others against the second file
    for m, o in zip(a.models[ref + 1:], outs[ref + 1:]):
        d = max(float(np.abs(u - v).max()) for u, v in zip(o, outs[ref]))
        print(f"{Path(m).name}: max |logits - {Path(a.models[ref]).name}| = {d:.2e}")
    cpu = [[[] for _ in xs] for _ in runners]
    for rnd in range(a.repeats):
        for i, x in enumerate(xs):
            for k, r in enumerate(runners):
                cpu[k][i].append(_cpu(r, x)[0])
        print(f"  round {rnd + 1}/{a.repeats}", end="\r", flush=True)
    med = [[1e3 * float(np.median(t)) for t in per] for per in cpu]
    names = [n for n, _ in pairs]
    print("\nCPU ms (median)".ljust(20) + "".join(Path(m).name[-24:].rjust(26) for m in a.models))
    for i, n in enumerate(names):
        print(n.ljust(20) + "".join(f"{med[k][i]:26.1f}" for k in range(len(runners))))
    mean = [float(np.mean(m)) for m in med]
    print("mean".ljust(20) + "".join(f"{v:26.1f}" for v in mean))
    print("speed-up vs first".ljust(20) + "".join(f"{mean[0] / v:26.3f}" for v in mean))


def batches(a) -> None:
    from algm_export.artifacts import ExportFolder
    from algm_export.merging.static import tokens_from_stats
    from algm_export.models.flops import mean_macs, model_macs
    from algm_export.runtimes.onnxruntime import OrtRunner
    from algm_export.tasks.bench import _dynamic_batches

    import torch

    f = ExportFolder.load(a.dir)
    model = f.model()
    xs = [x for _, x in f.inputs(a.images, model=model)]
    N = model.cfg.grid[0] * model.cfg.grid[1]
    dyn = next(e for e in f.entries if e.is_dynamic)
    base = next(e for e in f.entries if e.is_baseline)
    bs = a.batch
    ways = {"grouped": _dynamic_batches(model, dyn, None, xs, bs, True),
            "in order": _dynamic_batches(model, dyn, None, xs, bs, False),
            "one by one": [[j] for j in range(len(xs))]}       # batch 1: every image at its own counts
    for k, v in ways.items():
        print(f"{k}: {v}")
    rb, rd = OrtRunner(base.onnx_path(), threads=1), OrtRunner(dyn.onnx_path(), threads=1)
    stack = lambda idx: torch.cat([xs[j] for j in idx]).numpy()   # noqa: E731
    first = stack([j % len(xs) for j in range(bs)])
    _cpu(rb, first), _cpu(rd, first)
    cpu = {"baseline": [], **{k: [[] for _ in v] for k, v in ways.items()}}
    toks = {}
    for rnd in range(a.repeats):
        for k in range(max(len(v) for v in ways.values())):
            cpu["baseline"].append(_cpu(rb, first)[0])
            for name, groups in ways.items():
                if k < len(groups):
                    c, o = _cpu(rd, stack(groups[k]))
                    cpu[name][k].append(c)
                    toks[(name, k)] = np.asarray(tokens_from_stats(o["merge_stats"], N))
        print(f"  round {rnd + 1}/{a.repeats}", end="\r", flush=True)
    g0 = model_macs(model)["total"]
    b = float(np.median(cpu["baseline"])) / bs
    print(f"\nbaseline batch {bs}: {1e3 * b:.1f} ms CPU per image")
    for name, groups in ways.items():
        per_image = sum(float(np.median(t)) for t in cpu[name]) / sum(len(g) for g in groups)
        real = np.concatenate([toks[(name, k)] for k in range(len(groups))])
        flop = g0 / mean_macs(model, dyn.layers, real.tolist())["total"]
        at_max = sum(len(g) * model_macs(model, dyn.layers, toks[(name, k)].max(0).tolist())["total"]
                     for k, g in enumerate(groups)) / len(real)
        sp = b / per_image
        print(f"{name:9s}: {1e3 * per_image:.1f} ms CPU per image, speed-up {sp:.3f}, per-image FLOP ratio "
              f"{flop:.3f}, batch FLOP ratio {g0 / at_max:.3f}; speed-up / per-image FLOP ratio {sp / flop:.3f}, "
              f"/ batch FLOP ratio {sp / (g0 / at_max):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("files", help="ONNX files on the photos at batch 1")
    p.add_argument("models", nargs="+")
    p.add_argument("--photos", default=PHOTOS)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=8)
    p = sub.add_parser("batches", help="an export folder's dynamic entry at batch > 1")
    p.add_argument("dir")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--images", default=None, help="image folder (default: the bundled photos)")
    p.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    files(a) if a.what == "files" else batches(a)


if __name__ == "__main__":
    main()
