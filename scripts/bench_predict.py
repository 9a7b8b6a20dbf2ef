#!/usr/bin/env python
"""Images/s of `algm-export predict` over a collection: one process vs Ray local (and one actor per GPU).

    .venv/bin/python scripts/bench_predict.py [--out runs/bench-predict] [--images 96] [--actors 1,2]
    .venv/bin/python scripts/bench_predict.py --backend tensorrt --gpus-per-actor 1   # on a GPU machine

Exports the built-in Segmenter ViT-S/16 512 (seeded weights) at one threshold (static, calibrated
on the bundled photos) into OUT/exp, and for `--backend tensorrt` builds its engine there. Writes
a collection of `--images` images in nested folders (crops of the bundled photos, 256 to 768 px
a side, so some run sliding windows), then runs the same `predict` command, with `--overwrite`
so that every run segments every image:

* one process (`predict DIR --engine FILE`), ONNX Runtime / TensorRT with its default threads;
* `--ray local --actors N` for each N of `--actors` (CPU actors of `--cpus-per-actor`), or with
  `--gpus-per-actor G` one actor per G GPUs.

Runs alternate, `--repeats` times each; the table gives the median of images/s end to end
(from start-up of the command's work to the last image, `run.json`) and, for Ray, without the
cluster's start (`ray_start_seconds`). Every run's label maps are compared with the first
single-process run's (they must be equal pixel for pixel).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_collection(root: Path, n: int, seed: int = 0) -> None:
    from PIL import Image

    from algm_export.models.images import sample_images

    photos = [img for _, img in sample_images()]
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(rng.integers(256, 769))
        im = Image.fromarray(img).resize((side, int(side * img.shape[0] / img.shape[1])))
        sub = root / f"day{i % 3}" / ("cam_a" if i % 2 else "cam_b")
        sub.mkdir(parents=True, exist_ok=True)
        im.save(sub / f"frame{i:04d}.png")


def predict(args: list, quiet_env: dict) -> dict:
    cmd = [sys.executable, "-m", "algm_export", "predict", *map(str, args), "--overwrite", "--no-merge", "-q"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=quiet_env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    out = Path(args[args.index("--out") + 1])
    run = json.loads((out / "run.json").read_text())
    run["wall"] = wall
    return run


def labels(out: Path) -> dict:
    from PIL import Image

    return {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted(out.rglob("*_labels.png"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-predict")
    ap.add_argument("--model", default="builtin:vit_s16_512")
    ap.add_argument("--threshold", type=float, default=0.88)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    ap.add_argument("--actors", default="1,2", help="Ray local actor counts to run (CPU actors)")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPU actors: one per G GPUs (--actors ignored)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="reuse the export and the images in --out")
    a = ap.parse_args()

    root = Path(a.out)
    exp, imgs = root / "exp", root / "images"
    env = dict(os.environ, ALGM_QUIET="1")
    if not a.reuse:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "algm_export", "export", a.model, "--out", str(exp), "--thresholds",
                        str(a.threshold)], env=env, check=True)
        if a.backend == "tensorrt":
            subprocess.run([sys.executable, "-m", "algm_export", "build", str(exp), "--backend", "tensorrt"],
                           env=env, check=True)
        make_collection(imgs, a.images)
    man = json.loads((exp / "manifest.json").read_text())
    setting = man["settings"][0]["name"]
    if a.backend == "tensorrt":
        engine = exp / next(e["file"] for e in man["engines"] if e["setting"] == setting and e["precision"] == "fp32")
    else:
        engine = exp / man["settings"][0]["onnx"]

    common = [imgs, "--engine", engine, "--batch-size", a.batch_size]
    runs = {"one process": common + ["--out", root / "single"]}
    if a.gpus_per_actor:
        runs["Ray local, one actor per GPU"] = common + ["--out", root / "ray-gpu", "--ray", "local",
                                                         "--gpus-per-actor", a.gpus_per_actor]
    else:
        for n in [int(v) for v in a.actors.split(",") if v]:
            runs[f"Ray local, {n} actor(s) x {a.cpus_per_actor:g} CPU"] = common + [
                "--out", root / f"ray-{n}", "--ray", "local", "--actors", n, "--cpus-per-actor", a.cpus_per_actor]
    results: dict = {k: [] for k in runs}
    for r in range(a.repeats):
        for name, args in runs.items():
            run = predict(args, env)
            results[name].append(run)
            print(f"[{r + 1}/{a.repeats}] {name}: {run['done']} images in {run['seconds']:.1f} s "
                  f"({run['images_per_second']:.2f} images/s)", flush=True)
    ref = labels(root / "single")
    for name, args in runs.items():
        got = labels(Path(args[args.index("--out") + 1]))
        same = got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
        if not same:
            sys.exit(f"{name}: label maps differ from the single-process run")

    print(f"\n{a.images} images, {a.model} t={a.threshold}, {a.backend}, batch size {a.batch_size}, "
          f"{os.cpu_count()} CPUs; median of {a.repeats}; label maps equal to the single-process run\n")
    print("| run | images/s end to end | images/s without the cluster start | cluster start s |")
    print("|---|---|---|---|")
    for name, rs in results.items():
        ips = statistics.median(x["images_per_second"] for x in rs)
        start = statistics.median(x.get("ray_start_seconds", 0.0) for x in rs)
        steady = statistics.median(x["done"] / max(1e-9, x["seconds"] - x.get("ray_start_seconds", 0.0)) for x in rs)
        print(f"| {name} | {ips:.2f} | {steady:.2f} | {start:.1f} |" if "Ray" in name
              else f"| {name} | {ips:.2f} | - | - |")
    (root / "bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
