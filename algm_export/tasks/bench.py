"""Benchmark (`algm-export bench`): latency and throughput of the baseline and every threshold setting,
on every backend present, measured side by side in one run.

Method: one runner per (backend, entry); warm-up runs; then `repeats` rounds, and in every
round each entry runs once in turn (interleaved, so drift and noise hit every entry alike).
Reported: median latency, p10/p90 spread, images/s, the GMACs of each entry computed from its
capacities (static engines compute every slot), the FLOP ratio and the measured speed-up over
the baseline of the same backend and batch size, and the patch tokens processed per image
after each merge step. Threads are pinned and reported.

Dynamic token mode entries (decision 30): their work depends on the image, so in round r they
run the r-th batch of the bench images (cycling; the baseline and static entries, whose work
does not, run the first batch every round, as before), and their GMACs are the mean per-image
MACs at the real token counts of the images they ran (`flops.mean_macs` with
`RunOutput.tokens`): FLOP ratio = baseline MACs / that mean; their latency is the mean over
those batches of each batch's median (the same images as the MACs). The tokens column shows their
mean and min-max over those images. (At batch > 1 a dynamic graph computes every image of a
batch at the batch's largest count: `gmacs_at_batch_max` in bench.json.) A threshold-input
entry is benched at each threshold (its manifest's `thresholds`, or `thresholds=`), one row per
threshold.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from algm_export.artifacts import ExportFolder, locks_export_folder
from algm_export.core.errors import BackendUnavailable
from algm_export.models.flops import mean_macs, model_macs
from algm_export.core.progress import progress_bar, status

from algm_export.core.published import PUBLISHED  # noqa: E402,F401  (re-exported)


@locks_export_folder("bench")
def bench(export_dir, backends: Optional[Sequence[str]] = None, batches: Sequence[int] = (1,), images=None,
          precision: str = "fp32",
          repeats: int = 10, warmup: int = 2, threads: Optional[int] = None, model=None,
          settle_s: float = 0.05, trust_checkpoint: bool = False, thresholds=None) -> dict:
    """Benchmark an export folder (see the module doc); writes DIR/bench/bench.json and bench.png.

    thresholds: the thresholds to bench threshold-input entries at (default: their manifest's);
    trust_checkpoint: unpickle the manifest's checkpoint completely (see `load_segmenter`);
    wait: wait for another run that holds the folder instead of stopping (`algm_export.core.lock`)."""
    import torch

    from algm_export.runtimes.registry import available_backends, make_runner, parse_backends

    folder = ExportFolder.load(export_dir, verify=True)
    export_dir = folder.path
    man = folder.data
    entries = folder.entries
    # one timed slot per (entry, threshold): a threshold-input entry has one per threshold
    slots = [(i, t) for i, ts in enumerate(folder.runs(thresholds)) for t in ts]
    if model is None:
        model = folder.model(trust_checkpoint)
    cfg = model.cfg
    threads = threads or min(os.cpu_count() or 1, 16)
    have = available_backends()
    backends = parse_backends(backends or [b for b in have if precision == "fp32" or b != "torch"])
    missing = [b for b in backends if b not in have]
    if missing:
        raise BackendUnavailable(f"backend(s) {missing} not available here (available: {have}); "
                                 "tensorrt needs a CUDA GPU with TensorRT")
    xs = [x for _, x in folder.inputs(images, model=model)]
    base_macs = model_macs(model)["total"]
    n_patches = cfg.grid[0] * cfg.grid[1]
    results = []
    for backend in backends:
        for bs in batches:
            def batch_of(r: int):
                return torch.cat([xs[(r * bs + i) % len(xs)] for i in range(bs)])

            first = batch_of(0)
            cycled = [batch_of(r) for r in range(repeats)] if any(entries[i].is_dynamic for i, _ in slots) else []
            runners = [make_runner(backend, e, precision, model=model, threads=threads) for e in entries]
            kws = [{} if t is None else {"threshold": t} for _, t in slots]
            for (i, _), kw in zip(slots, kws):
                for _ in range(warmup):
                    runners[i].infer(first, **kw)
            times = [[] for _ in slots]
            tokens = [[] for _ in slots]   # dynamic slots: the real counts of every image they ran
            with progress_bar(total=repeats * len(slots), desc=f"bench {backend} b{bs}", unit="run") as bar:
                for rnd in range(repeats):
                    for k, ((i, _), kw) in enumerate(zip(slots, kws)):
                        dynamic = entries[i].is_dynamic
                        batch = cycled[rnd] if dynamic else first
                        if settle_s:
                            # let the runtime that just ran go idle first: ONNX Runtime's intra-op threads
                            # busy-wait after a run, and on a small CPU they take the cores of the next
                            # model (2 cores: +27 ms on every run of every model, docs/performance.md)
                            time.sleep(settle_s)
                        t0 = time.perf_counter()
                        out = runners[i].infer(batch, **kw)
                        times[k].append(time.perf_counter() - t0)
                        if dynamic:
                            tokens[k].append(np.asarray(out.tokens))
                        bar.update(1)
            base_med = float(np.median(times[0]))
            period = len(xs) // math.gcd(bs, len(xs))     # the cycle of distinct batches
            for (i, t), ts, toks in zip(slots, times, tokens):
                e = entries[i]
                results.append(_result(model, e, t, ts, toks, backend, bs, base_med, base_macs, n_patches,
                                       [r % period for r in range(len(ts))]))
            for r in runners:
                r.close()
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "threads": threads},
        "model": man["model"]["source"], "backbone": cfg.backbone, "image_size": list(cfg.image_size),
        "precision": precision, "repeats": repeats, "warmup": warmup, "settle_s": settle_s, "results": results,
        "published": PUBLISHED.get(cfg.backbone),
    }
    out = folder.resolve("bench", "bench folder")
    folder.write_json("bench/bench.json", report, "bench report")
    try:
        report["plot"] = str(plot(report, folder, folder.resolve("bench/bench.png", "bench plot"))
                             .relative_to(out.parent))
        folder.write_json("bench/bench.json", report, "bench report")
    except Exception as e:  # a plot must never lose the numbers
        status(f"plot skipped: {e}")
    return report


def _result(model, e, threshold, times, tokens, backend, bs, base_med, base_macs, n_patches, groups) -> dict:
    """One row of the benchmark: latency figures, GMACs and FLOP ratio, tokens per image.

    A dynamic entry ran a different batch per round (`groups`: the batch of each run): its latency is
    the mean over those batches of each batch's median, and its MACs the mean over the same batches,
    so that speed-up and FLOP ratio average the same images (a median over runs of different images
    would pick one middle image instead)."""
    med = float(np.median(times))
    caps = e.capacities
    row = {"backend": backend, "batch": bs, "setting": e.name,
           "threshold": e.threshold if threshold is None else threshold, "capacities": caps}
    if e.is_dynamic:
        by_batch: dict = {}
        for g, t, tk in zip(groups, times, tokens):
            by_batch.setdefault(g, ([], tk))[0].append(t)
        med = float(np.mean([np.median(ts) for ts, _ in by_batch.values()]))
        tokens = [tk for _, tk in by_batch.values()]          # one token record per distinct batch
        counts = np.concatenate(tokens)                      # [images run, steps]: real counts
        macs = mean_macs(model, e.layers, counts.tolist())["total"]
        at_max = [model_macs(model, e.layers, b.max(0).tolist())["total"] for b in tokens]
        row.update({"token_mode": "dynamic", "gmacs_at_batch_max": float(np.mean(at_max)),
                    "tokens": {"mean": counts.mean(0).round(1).tolist(), "min": counts.min(0).tolist(),
                               "max": counts.max(0).tolist(), "images": int(counts.shape[0])},
                    "tokens_kept": (counts.mean(0) / n_patches).tolist()})
        if e.takes_threshold:
            row["threshold_input"] = True
    else:
        macs = base_macs if not caps else model_macs(model, e.layers, caps)["total"]
        row.update({"token_mode": None if e.is_baseline else "static",
                    "tokens": None if not caps else {"mean": list(caps), "min": list(caps), "max": list(caps)},
                    "tokens_kept": None if not caps else [c / n_patches for c in caps]})
    row.update({"latency_ms": 1e3 * med, "p10_ms": 1e3 * float(np.percentile(times, 10)),
                "p90_ms": 1e3 * float(np.percentile(times, 90)), "images_per_s": bs / med, "gmacs": macs,
                "flop_ratio": base_macs / macs, "speedup": base_med / med,
                "speedup_vs_flop_ratio": (base_med / med) / (base_macs / macs)})
    return row


def tokens_cell(r: dict) -> str:
    """The tokens processed per image after each step: static `C1/C2`, dynamic `mean (min-max)`."""
    from algm_export.core.tables import tokens_text

    return tokens_text(r.get("tokens"), r.get("token_mode") == "dynamic")


def plot(report: dict, folder: ExportFolder, path: Path) -> Path:
    """bench.png: speed-up against tokens kept, per backend and batch size, with the ideal (the FLOP
    ratio); the same chart as the report's (`tasks.visualize.speed_chart`)."""
    from algm_export.tasks.visualize import speed_chart

    return speed_chart(report["results"], path,
                       f"{report['backbone']} {report['image_size'][0]}x{report['image_size'][1]}")


def _setting_cell(r: dict) -> str:
    return f"{r['setting']} @{r['threshold']:.3f}" if r.get("threshold_input") else r["setting"]


def format_bench(report: dict) -> str:
    from algm_export.core.tables import format_table

    rows = [[r["backend"], r["batch"], _setting_cell(r), f"{r['latency_ms']:.1f}",
             f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}", f"{r['images_per_s']:.2f}", tokens_cell(r), f"{r['gmacs']:.1f}",
             f"{r['flop_ratio']:.2f}", f"{r['speedup']:.2f}", f"{r['speedup_vs_flop_ratio']:.2f}"]
            for r in report["results"]]
    head = ["backend", "batch", "setting", "median ms", "p10-p90", "img/s", "tokens/img", "GMACs", "FLOP ratio",
            "speed-up", "speed-up/FLOP"]
    m = report["machine"]
    return (format_table(head, rows) + f"\n  {m['cpus']} CPUs, {m['threads']} threads, {report['repeats']} interleaved "
            f"repeats, {1e3 * report.get('settle_s', 0):.0f} ms idle before each timed run"
            + ("\n  dynamic rows: a different batch of the images each round; ms = the mean over those batches of "
               "each one's median, GMACs the mean over the same images"
               if any(r.get("token_mode") == "dynamic" for r in report["results"]) else ""))
