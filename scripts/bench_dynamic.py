#!/usr/bin/env python
"""ONNX Runtime CPU: baseline vs static vs dynamic token mode, side by side in one run.

    PYTHONPATH=. .venv/bin/python scripts/bench_dynamic.py [--out runs/bench-dynamic] [--repeats 10]
        [--threshold 0.88] [--reuse] [--threshold-check 0.85,0.88,0.92] [--export-batch 1]

Exports Segmenter ViT-S/16 512 (`builtin:vit_s16_512`, seeded weights): the baseline, the static
ALGM model with capacities calibrated on the photos (their maximum: no forced merge), and the
dynamic token mode model. On the first 6 bundled scikit-image photos (`--photos`; the set of
scripts/bench_reference.py and docs/performance.md) at batch 1 it then

* checks parity: each export against the PyTorch reference (`per_image`) -- max |logit error|,
  pixels whose class agrees, and (dynamic) the real token counts from `merge_stats`, which must
  equal the reference's exactly;
* times the three models in ONNX Runtime, interleaved (every round runs each photo through each
  model in turn) with a settle pause before every run (`algm_export/tasks/bench.py`, docs/decisions.md
  item 10), and prints the median latency per photo and model, the per-image FLOP ratio (mean
  MACs over the photos, `algm_export.models.flops.model_macs`: the static model at its capacities, the
  dynamic one at each photo's real counts) and speed-up / FLOP ratio. Target: the
  dynamic speed-up >= 0.9 x its FLOP ratio;
* with --threshold-check T1,T2,...: exports the threshold-input model once and a fixed-threshold
  dynamic model per threshold, and compares their outputs photo by photo.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

PHOTOS = "astronaut,coffee,chelsea,rocket,motorcycle_left,motorcycle_right"


def _export(path: Path, model, reuse: bool, **kw):
    from algm_export.export.exporter import export_onnx

    if not (reuse and path.exists()):
        t0 = time.perf_counter()
        export_onnx(model, path, **kw)
        print(f"  exported {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def _parity(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    return float(np.abs(out - ref).max()), float((out.argmax(1) == ref.argmax(1)).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:vit_s16_512")
    ap.add_argument("--init", choices=("builtin", "upstream"), default="builtin",
                    help="upstream: a built-in mmseg-family model initialised as upstream initialises a fresh "
                         "model (`<name>_upstream_init`, docs/decisions.md item 32); builtin: the name as given")
    ap.add_argument("--out", default="runs/bench-dynamic")
    ap.add_argument("--threshold", type=float, default=0.88)
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds (each: every photo through every model)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--settle-ms", type=float, default=50.0, help="idle time before each timed run (0: back to back)")
    ap.add_argument("--reuse", action="store_true", help="reuse the ONNX files already in --out")
    ap.add_argument("--threshold-check", default="", help="e.g. 0.85,0.88,0.92: threshold-input file vs per-threshold exports")
    ap.add_argument("--export-batch", type=int, default=None, choices=(1,),
                    help="1: export every graph for one image per run (`export --batch 1`: no padding mask in dynamic "
                         "token mode, EoMT's head as a convolution); default: a dynamic batch axis")
    ap.add_argument("--photos", default=PHOTOS, help="bundled photos (algm_export.models.images.SAMPLE_IMAGES), comma-separated")
    a = ap.parse_args()
    if a.init == "upstream":
        from algm_export.models.families.setr import UPSTREAM_SUFFIX

        if not a.model.startswith("builtin:"):
            ap.error("--init upstream goes with a built-in model (builtin:NAME)")
        if not a.model.endswith(UPSTREAM_SUFFIX):
            a.model += UPSTREAM_SUFFIX

    from algm_export import AlgmSetting, apply_algm
    from algm_export.merging.calibrate import calibrate
    from algm_export.models.flops import mean_macs, model_macs
    from algm_export.models.images import sample_images, to_model_input
    from algm_export.merging.static import tokens_from_stats
    from algm_export.models.registry import resolve_model
    from algm_export.runtimes.onnxruntime import OrtRunner

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = resolve_model(a.model)
    cfg = model.cfg
    N = cfg.grid[0] * cfg.grid[1]
    setting = AlgmSetting(a.threshold, (2, 2), (1, 5) if cfg.n_layers < 24 else (1, 7))
    pairs = sample_images(names=[n for n in a.photos.split(",") if n])
    names = [n for n, _ in pairs]
    xs = [to_model_input(img, cfg.image_size, cfg.normalization) for _, img in pairs]
    print(f"{a.model}: {cfg.backbone} {cfg.image_size[0]}x{cfg.image_size[1]}, N={N}, setting {setting.name}, "
          f"{len(xs)} photos, {a.threads} threads", flush=True)

    # reference (published per_image) logits and token counts
    ref = apply_algm(model, setting)
    ref_logits, ref_tokens = [], []
    with torch.no_grad():
        for x in xs:
            ref_logits.append(ref(x).numpy())
            ref_tokens.append(ref.merge_stats["tokens"][0].tolist())
    cal = calibrate(model, setting, xs, names, 1.0)
    caps = cal["capacities"]
    print(f"  real token counts {ref_tokens}; capacities (max) {caps}", flush=True)

    kw = {} if a.export_batch is None else {"batch": a.export_batch}
    tag = "" if a.export_batch is None else f"_b{a.export_batch}"
    paths = {
        "baseline": _export(out / f"baseline{tag}.onnx", model, a.reuse, **kw),
        "static": _export(out / f"{setting.name}{tag}.onnx", apply_algm(model, setting, caps), a.reuse, **kw),
        "dynamic": _export(out / f"{setting.name}_dyn{tag}.onnx", apply_algm(model, setting, token_mode="dynamic"),
                           a.reuse, **kw),
    }
    runners = {k: OrtRunner(p, threads=a.threads) for k, p in paths.items()}

    # parity (first run of every photo; also the warm-up)
    report = {"model": a.model, "setting": setting.to_dict(), "export_batch": a.export_batch, "capacities": caps, "photos": names,
              "reference_tokens": ref_tokens, "parity": {}, "latency_ms": {}}
    print("\nparity vs the PyTorch reference (per_image), batch 1:")
    for k in ("static", "dynamic"):
        rows = []
        for i, x in enumerate(xs):
            o = runners[k].infer(x)
            err, agree = _parity(o["logits"], ref_logits[i])
            toks = tokens_from_stats(o["merge_stats"], N)[0].tolist()
            rows.append({"photo": names[i], "max_abs": err, "pixels_agree": agree, "tokens": toks,
                         "forced": int(o["merge_stats"][..., 1].sum())})
        within = sum(r["max_abs"] <= 1e-3 for r in rows)
        same_tokens = all(r["tokens"] == t for r, t in zip(rows, ref_tokens))
        report["parity"][k] = rows
        print(f"  {k:8s} within 1e-3 on {within}/{len(rows)} photos, min pixel agreement "
              f"{100 * min(r['pixels_agree'] for r in rows):.3f} %, token counts = reference: {same_tokens}"
              + ("" if k == "dynamic" else f" (static forced merges: {sum(r['forced'] for r in rows)})"))
        for r in rows:
            print(f"      {r['photo']:18s} max|d| {r['max_abs']:.2e}  pixels {100 * r['pixels_agree']:.3f} %  "
                  f"tokens {r['tokens']}")
    runners["baseline"].infer(xs[0])

    # timing: interleaved rounds, settle pause before every run
    order = list(runners)
    times = {k: [[] for _ in xs] for k in order}
    for _ in range(a.warmup):
        for x in xs:
            for k in order:
                runners[k].infer(x)
    t_start = time.perf_counter()
    for rnd in range(a.repeats):
        for i, x in enumerate(xs):
            for k in order:
                if a.settle_ms:
                    time.sleep(a.settle_ms / 1e3)
                t0 = time.perf_counter()
                runners[k].infer(x)
                times[k][i].append(time.perf_counter() - t0)
        print(f"  round {rnd + 1}/{a.repeats} ({time.perf_counter() - t_start:.0f} s)", end="\r", flush=True)
    print()
    med = {k: [1e3 * float(np.median(t)) for t in times[k]] for k in order}
    report["latency_ms"] = med

    base = model_macs(model)["total"]
    static_macs = model_macs(model, setting.layers, caps)["total"]
    dyn_mean = mean_macs(model, setting.layers, ref_tokens)["total"]
    flop = {"baseline": 1.0, "static": base / static_macs, "dynamic": base / dyn_mean}
    mean = {k: float(np.mean(med[k])) for k in order}
    print(f"\nONNX Runtime CPU, {a.threads} threads, batch 1 ("
          f"{'graphs for one image' if a.export_batch else 'graphs with a dynamic batch axis'}), median of {a.repeats} interleaved rounds per photo, "
          f"settle {a.settle_ms:g} ms (ms):")
    print("  " + f"{'photo':18s}" + "".join(f"{k:>10s}" for k in order))
    for i, n in enumerate(names):
        print("  " + f"{n:18s}" + "".join(f"{med[k][i]:10.1f}" for k in order))
    print("  " + f"{'mean':18s}" + "".join(f"{mean[k]:10.1f}" for k in order))
    print(f"\n  {'model':9s} {'GMACs':>8s} {'FLOP ratio':>11s} {'speed-up':>9s} {'speed-up/FLOP':>14s}")
    summary = {}
    for k in order:
        g = {"baseline": base, "static": static_macs, "dynamic": dyn_mean}[k]
        sp = mean["baseline"] / mean[k]
        summary[k] = {"gmacs": g, "flop_ratio": flop[k], "speedup": sp, "speedup_vs_flop": sp / flop[k],
                      "mean_ms": mean[k]}
        print(f"  {k:9s} {g:8.2f} {flop[k]:11.2f} {sp:9.2f} {sp / flop[k]:14.2f}")
    d = summary["dynamic"]
    ok = d["speedup"] >= 0.9 * d["flop_ratio"]
    print(f"\ntarget (dynamic speed-up >= 0.9 x per-image FLOP ratio {d['flop_ratio']:.2f} = "
          f"{0.9 * d['flop_ratio']:.2f}): {d['speedup']:.2f} {'MET' if ok else 'NOT MET'}")
    report["summary"] = summary

    if a.threshold_check:
        ts = [float(t) for t in a.threshold_check.split(",") if t]
        tin = OrtRunner(_export(out / f"tin_l{'-'.join(map(str, setting.layers))}_dyn.onnx",
                                apply_algm(model, setting, token_mode="dynamic"), a.reuse, threshold_input=True),
                        threads=a.threads)
        print("\nthreshold-input file vs per-threshold dynamic exports:")
        report["threshold_check"] = {}
        for t in ts:
            s = setting.with_threshold(t)
            p = paths["dynamic"] if abs(t - a.threshold) < 1e-12 else _export(
                out / f"{s.name}_dyn.onnx", apply_algm(model, s, token_mode="dynamic"), a.reuse)
            fixed = OrtRunner(p, threads=a.threads)
            worst, same = 0.0, True
            for x in xs:
                u, v = tin.infer(x, threshold=t), fixed.infer(x)
                worst = max(worst, float(np.abs(u["logits"] - v["logits"]).max()))
                same = same and np.array_equal(u["merge_stats"], v["merge_stats"])
            report["threshold_check"][str(t)] = {"max_abs": worst, "merge_stats_equal": same}
            print(f"  {t:.2f}: max |logits difference| {worst:.2e}, merge_stats identical: {same}")
    (out / "bench_dynamic.json").write_text(json.dumps(report, indent=1))
    print(f"\nreport: {out / 'bench_dynamic.json'}")


if __name__ == "__main__":
    main()
