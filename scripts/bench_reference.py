#!/usr/bin/env python
"""Eager PyTorch CPU time per image: baseline vs ALGM dynamic vs ALGM static.

    .venv/bin/python scripts/bench_reference.py [--model builtin:vit_s16_512] [--threshold 0.88] [--repeats 3]

Runs on the photos bundled with scikit-image at the model's input size, batch 1, interleaved
repeats (baseline, dynamic, static in turn), and prints the median per image and the token
counts after each merge step. Static capacities = the maximum real counts over the photos.
"""

import argparse
import os
import platform
import time

import numpy as np
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.merging.calibrate import calibrate
from algm_export.models.flops import model_macs
from algm_export.models.images import sample_images, to_model_input
from algm_export.models.registry import resolve_model
from algm_export.core.tables import format_table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:vit_s16_512")
    ap.add_argument("--threshold", type=float, default=0.88)
    ap.add_argument("--layers", default="1,5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = resolve_model(a.model).to(a.device)
    cfg = model.cfg
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    s = AlgmSetting(a.threshold, (2, 2), tuple(int(v) for v in a.layers.split(",")))
    pairs = sample_images(a.images)
    xs = [to_model_input(img, cfg.image_size, cfg.normalization).to(a.device) for _, img in pairs]
    cal = calibrate(model, s, xs, [n for n, _ in pairs])
    runs = {"baseline": model, "algm dynamic": apply_algm(model, s), "algm static": apply_algm(model, s, cal["capacities"])}
    times = {k: [] for k in runs}
    tokens = {}
    with torch.no_grad():
        for m in runs.values():
            m(xs[0])
        for _ in range(a.repeats):
            for x, (name, _) in zip(xs, pairs):
                for k, m in runs.items():
                    sync()
                    t0 = time.perf_counter()
                    m(x)
                    sync()
                    times[k].append(time.perf_counter() - t0)
                    if k == "algm dynamic":
                        tokens[name] = m.merge_stats["tokens"][0].tolist()
    base = np.median(times["baseline"])
    g0 = model_macs(model)["total"]
    rows = []
    for k in runs:
        med = np.median(times[k])
        if k == "baseline":
            g = g0
        elif k == "algm static":
            g = model_macs(model, s.layers, cal["capacities"])["total"]
        else:
            g = np.mean([model_macs(model, s.layers, t)["total"] for t in tokens.values()])
        rows.append([k, f"{1e3 * med:.0f}", f"{base / med:.2f}", f"{g:.1f}", f"{g0 / g:.2f}"])
    print(f"{cfg.backbone} {cfg.image_size[0]}x{cfg.image_size[1]}, threshold {a.threshold}, layers {s.layers}, "
          f"{a.threads} threads, {a.device}, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(format_table(["model", "ms / image", "speed-up", "GMACs", "FLOP ratio"], rows))
    print(f"static capacities {cal['capacities']}")
    print(format_table(["photo"] + [f"tokens after layer {l}" for l in s.layers],
                       [[n] + t for n, t in tokens.items()]))


if __name__ == "__main__":
    main()
