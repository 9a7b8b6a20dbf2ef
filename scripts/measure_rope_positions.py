"""Measure where a merged token's rotary embedding should be evaluated (EVA-02 + ALGM).

For an EVA-02 UperNet (a built-in, seeded random weights) and the photographs scikit-image
bundles, run the unmerged model and ALGM (dynamic, per_image; CLAP at layer 1, GBM at the middle
layer) with each rule for the rotary position of a merged token (`Eva02Backbone.rope_position`):

* centroid: the size-weighted centroid of the held patches (the default, docs/algorithm.md: other families)
* nearest:  that centroid rounded to the nearest grid position
* first:    the position of the first (lowest raster index) patch held
* origin:   control, every patch token at grid position (0, 0) after the first merge

and report, per rule, the logit difference to the unmerged model (mean and max |diff|) and the
argmax agreement with it (fraction of pixels). The merge decisions themselves do not depend on
the rule at CLAP (layer 1 merges before any merged rotary is used) but may at GBM.

Second, model-independent: how well one rotation stands in for the rotations of the patches a
merged token holds. Attention sees a key k at position p as R(p) k; a merged token's key is the
mean of its patches' keys, which the unmerged model would have seen as mean_j R(p_j) k_j. Per
frequency band R is e^{i theta}; the table reports, over the merged tokens of the photos' real
merges (size >= 2, weighted by size), the mean over bands of |e^{i theta(p*)} - mean_j e^{i theta(p_j)}|
for each rule's p* (0 = exact; the mean of unit phasors has modulus <= 1, so a spread-out
token cannot be matched exactly by any single position).

    PYTHONPATH=. .venv/bin/python scripts/measure_rope_positions.py [--model eva02_s16_256] [--threshold 0.88]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field"]


def photo(name: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    path = glob.glob(os.path.join(os.path.dirname(skimage.data.__file__), name + ".*"))[0]
    return np.asarray(Image.open(path).convert("RGB"))[..., :3]


def to_input(img: np.ndarray, size, norm) -> torch.Tensor:
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return (t - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)


def rotary_approximation(model, algm, xs, rules) -> dict:
    """rule -> (error after CLAP, after GBM, after GBM for tokens of >= 8 patches), size-weighted."""
    from algm_export.models.backbones import eva02 as ev

    bb = model.backbone
    grid = model.cfg.grid
    table = bb.rope_at.table(grid)                     # [N, 2 hd]: sin | cos, interleaved pairs
    hd = table.shape[-1] // 2
    sin, cos = table[:, :hd:2], table[:, hd::2]
    z = torch.complex(cos, sin)                        # [N, hd/2] e^{i theta} per band
    sums = {r: [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]] for r in rules}
    for x in xs:
        with torch.no_grad():
            algm(x)
        for step, assign in enumerate(algm.assignments):
            a = assign[0]
            T = int(a.max()) + 1
            size = torch.bincount(a, minlength=T).float()
            full = torch.cat([torch.ones(1), size])[None]
            mean_z = torch.zeros(T, z.shape[1], dtype=z.dtype).index_add_(0, a, z) / size[:, None]
            for r in rules:
                pos = ev.token_positions(a[None], full, grid, 1, r)[0]
                emb = bb.rope_at(pos, grid)
                zr = torch.complex(emb[:, hd::2], emb[:, :hd:2])
                err = (zr - mean_z).abs().mean(1)
                keep = size >= 2
                sums[r][step][0] += float((err * size)[keep].sum())
                sums[r][step][1] += float(size[keep].sum())
                if step == 1:
                    big = size >= 8
                    sums[r][2][0] += float((err * size)[big].sum())
                    sums[r][2][1] += float(size[big].sum())
    return {r: tuple(v[0] / max(v[1], 1.0) for v in sums[r]) for r in rules}


def main(argv=None) -> int:
    from algm_export import AlgmSetting, apply_algm
    from algm_export.models.backbones import eva02 as ev
    from algm_export.models.registry import builtin_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:eva02_s16_256")
    ap.add_argument("--threshold", type=float, default=0.88)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = builtin_model(args.model)
    depth = model.cfg.n_layers
    setting = AlgmSetting(args.threshold, (2, 2), (1, 5 if depth == 12 else 7 if depth == 24 else depth // 2))
    algm = apply_algm(model, setting)
    size = model.cfg.image_size
    xs = [to_input(photo(p), size, model.cfg.normalization) for p in PHOTOS]
    t0 = time.time()
    with torch.no_grad():
        base = [model(x) for x in xs]
    rules = ["centroid", "nearest", "first", "origin"]
    real_positions = ev.token_positions
    results = {r: [] for r in rules}
    counts = []
    for rule in rules:
        if rule == "origin":
            ev.token_positions = lambda assign, size, grid, P, rule="": torch.zeros(
                size.shape[0], size.shape[1] - P, 2, device=size.device)
            model.backbone.rope_position = "centroid"
        else:
            ev.token_positions = real_positions
            model.backbone.rope_position = rule
        for i, x in enumerate(xs):
            with torch.no_grad():
                out = algm(x)
            d = (out - base[i]).abs()
            agree = float((out.argmax(1) == base[i].argmax(1)).float().mean())
            results[rule].append((float(d.mean()), float(d.max()), agree))
            if rule == "centroid":
                counts.append(algm.merge_stats["tokens"][0].tolist())
    ev.token_positions = real_positions
    model.backbone.rope_position = "centroid"
    approx = rotary_approximation(model, algm, xs, rules[:3])
    n = model.cfg.grid[0] * model.cfg.grid[1]
    print(f"{args.model}: {model.cfg.backbone}, grid {model.cfg.grid}, N={n}, ALGM tau={args.threshold} "
          f"layers {setting.layers}; {time.time() - t0:.0f} s")
    print("patch tokens after CLAP / GBM per photo: " + ", ".join(f"{p} {c[0]}/{c[1]}" for p, c in zip(PHOTOS, counts)))
    print("\n| rule | mean abs logit diff | max abs logit diff | argmax agreement (mean) | (min) |")
    print("|---|---|---|---|---|")
    for r in rules:
        a = np.array(results[r])
        print(f"| {r} | {a[:, 0].mean():.4f} | {a[:, 1].max():.3f} | {a[:, 2].mean() * 100:.2f} % | "
              f"{a[:, 2].min() * 100:.2f} % |")
    print("\n| rule | rotary error after CLAP | after GBM | after GBM, tokens of >= 8 patches |")
    print("|---|---|---|---|")
    for r in rules[:3]:
        print(f"| {r} | {approx[r][0]:.4f} | {approx[r][1]:.4f} | {approx[r][2]:.4f} |")
    print("\nper photo (mean abs diff / agreement):")
    for i, p in enumerate(PHOTOS):
        print(f"  {p}: " + "; ".join(f"{r} {results[r][i][0]:.4f} / {results[r][i][2] * 100:.2f} %" for r in rules))
    return 0


if __name__ == "__main__":
    sys.exit(main())
