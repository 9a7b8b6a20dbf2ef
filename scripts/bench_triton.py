#!/usr/bin/env python
"""Served throughput on Triton: baseline vs ALGM at concurrency 1 and 8, side by side in one run.

    PYTHONPATH=. .venv/bin/python scripts/bench_triton.py [--out runs/bench-triton] [--reuse]
        [--model builtin:vit_s16_512] [--threshold 0.88] [--concurrency 1,8] [--repeats 5]
        [--requests 4] [--threads N] [--triton-backend onnxruntime] [--answer logits|labels]

Exports the model (default: Segmenter ViT-S/16 512, seeded weights) with the baseline, the static
ALGM setting at --threshold (capacities calibrated on the bundled photos) and the same threshold in
dynamic token mode (`export --dynamic-thresholds`), unless --reuse finds the folder. Then
`algm-export bench DIR --backend triton` (algm_export/bench.py, `bench_served`): the folder is
served by Triton on free loopback ports (one model per entry on --triton-backend, dynamic batching
up to the largest concurrency), and for each concurrency c, c gRPC clients send one photo per
request (the bundled photos in turn), --requests each per timed block, the entries interleaved
block by block for --repeats rounds. Prints served images/s per entry and concurrency, the ratio
ALGM / baseline (the speed-up) next to the FLOP ratio, and writes DIR/bench/bench.json and
DIR/bench/triton.md (the table for docs/performance.md). `--answer labels`: each request asks for
the classes (`labels`, [H, W]) instead of the logits (157 MB per 512 x 512 image at 150 classes).

Run it on a quiet machine: every other process takes cores from the server and the clients alike,
but not evenly from one block to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def export(out: Path, model_name: str, threshold: float, reuse: bool) -> Path:
    from algm_export.export.pipeline import export_folder
    from algm_export.models.registry import resolve_model

    if reuse and (out / "manifest.json").is_file():
        print(f"reusing {out}")
        return out
    t0 = time.perf_counter()
    model = resolve_model(model_name)
    export_folder(model, model_name, out, thresholds=[threshold], dynamic_thresholds=[threshold], force=True)
    print(f"exported {out} in {time.perf_counter() - t0:.0f} s")
    return out


def table(report: dict) -> str:
    rows = [r for r in report["results"] if r["backend"] == "triton"]
    concs = sorted({r["concurrency"] for r in rows})
    names = list(dict.fromkeys(r["setting"] for r in rows))
    by = {(r["setting"], r["concurrency"]): r for r in rows}
    head = "| entry | token mode | FLOP ratio | " + " | ".join(
        f"c{c} img/s | c{c} ratio | c{c} median ms" for c in concs) + " |"
    lines = [head, "|" + "---|" * (3 + 3 * len(concs))]
    for n in names:
        first = by[(n, concs[0])]
        cells = [n, first.get("token_mode") or "-", f"{first['flop_ratio']:.2f}"]
        for c in concs:
            r = by[(n, c)]
            cells += [f"{r['images_per_s']:.2f}", f"{r['speedup']:.2f}", f"{r['latency_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    from algm_export.core.names import ANSWERS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:vit_s16_512")
    ap.add_argument("--out", default="runs/bench-triton")
    ap.add_argument("--threshold", type=float, default=0.88)
    ap.add_argument("--reuse", action="store_true", help="reuse the export folder already in --out")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (each: one block per entry)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client in each block")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime threads of each model")
    ap.add_argument("--triton-backend", default="onnxruntime")
    ap.add_argument("--images", default=None, help="image folder (default: the bundled sample photos)")
    ap.add_argument("--answer", choices=ANSWERS, default="logits",
                    help="what each request asks for besides merge_stats (default: logits)")
    a = ap.parse_args()

    from algm_export.tasks.bench import bench, format_bench

    out = export(Path(a.out), a.model, a.threshold, a.reuse)
    t0 = time.perf_counter()
    rep = bench(out, backends=["triton"], images=a.images, repeats=a.repeats, warmup=a.warmup, threads=a.threads,
                concurrency=[int(c) for c in a.concurrency.split(",")], requests=a.requests,
                triton_backend=a.triton_backend, answer=a.answer)
    wall = time.perf_counter() - t0
    print(format_bench(rep))
    md = table(rep)
    m = rep["machine"]
    note = (f"\n\n{a.model} {rep['image_size'][0]}x{rep['image_size'][1]}, threshold {a.threshold}; served on "
            f"{a.triton_backend} ({m['threads']} threads per model), {m['cpus']} CPUs ({m['processor']}, "
            f"{platform.platform()}); {a.repeats} rounds x {a.requests} requests per client; answers: "
            f"{a.answer}; {wall:.0f} s.\n"
            f"`scripts/bench_triton.py --out {a.out} --repeats {a.repeats} --requests {a.requests} "
            f"--concurrency {a.concurrency} --threads {a.threads} --answer {a.answer}`\n")
    (out / "bench" / "triton.md").write_text(md + note)
    print("\n" + md + note)
    print(json.dumps({r["setting"] + f"@c{r['concurrency']}": round(r["speedup"], 3)
                      for r in rep["results"]}, indent=None))


if __name__ == "__main__":
    main()
