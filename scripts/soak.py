#!/usr/bin/env python
"""Soak: a threshold sweep of 10 settings x 50 images validated in one process.

    .venv/bin/python scripts/soak.py [--model builtin:vit_ti16_512] [--settings 10] [--images 50]

For every setting: calibrate, export, then validate 50 images (ONNX Runtime vs PyTorch static).
Prints the resident memory (VmRSS) after every setting and the peak (VmHWM); memory growth from
the second setting to the last is reported, since the first one pays for one-time imports and caches.
"""

import argparse
import gc
import tempfile
import time

import numpy as np


def rss_mb(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def images(n):
    from algm_export.models.images import sample_images

    base = sample_images()
    out = []
    i = 0
    while len(out) < n:  # flips and crops of the bundled photos: 50 distinct images
        name, img = base[i % len(base)]
        v = i // len(base)
        h, w = img.shape[:2]
        im = img[:, ::-1] if v % 2 else img
        c = v // 2
        im = im[c * h // 16: h - c * h // 16, c * w // 16: w - c * w // 16]
        out.append((f"{name}_{v}", np.ascontiguousarray(im)))
        i += 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:vit_ti16_512")
    ap.add_argument("--settings", type=int, default=10)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--same", type=float, default=None,
                    help="run every round at this one threshold (separates a leak from growing capacities)")
    a = ap.parse_args()
    import torch

    from algm_export import AlgmSetting, apply_algm
    from algm_export.merging.calibrate import calibrate
    from algm_export.export.exporter import export_onnx
    from algm_export.models.images import to_model_input
    from algm_export.models.registry import resolve_model
    from algm_export.runtimes.onnxruntime import OrtRunner

    model = resolve_model(a.model)
    cfg = model.cfg
    pairs = images(a.images)
    xs = [to_model_input(img, cfg.image_size, cfg.normalization) for _, img in pairs]
    thresholds = np.linspace(0.80, 0.98, a.settings) if a.same is None else np.full(a.settings, a.same)
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        for t in thresholds:
            s = AlgmSetting(float(t))
            caps = calibrate(model, s, xs[:11])["capacities"]
            static = apply_algm(model, s, caps)
            path = export_onnx(static, f"{d}/s.onnx")
            runner = OrtRunner(path)
            agree, forced = [], 0
            with torch.no_grad():
                for x in xs:
                    ref = static(x).numpy()
                    out = runner.infer(x)
                    agree.append((out["logits"].argmax(1) == ref.argmax(1)).mean())
                    forced += int(out["merge_stats"][0, :, 1].sum())
            runner.close()
            del runner, static
            gc.collect()
            rows.append((float(t), caps, 100 * float(np.mean(agree)), 100 * float(np.min(agree)), forced, rss_mb()))
            print(f"tau {t:.3f} caps {caps} agree mean {rows[-1][2]:.3f}% min {rows[-1][3]:.3f}% "
                  f"forced {forced} RSS {rows[-1][5]:.0f} MB", flush=True)
    growth = rows[-1][5] - rows[1][5] if len(rows) > 1 else 0.0
    print(f"\n{a.settings} settings x {a.images} images in {time.time() - t0:.0f} s; peak RSS (VmHWM) "
          f"{rss_mb('VmHWM'):.0f} MB; RSS growth from setting 2 to {a.settings}: {growth:+.0f} MB")


if __name__ == "__main__":
    main()
