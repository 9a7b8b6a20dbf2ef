"""Frozen outputs of the published ALGM code, for tests/test_published_frozen.py.

The published code is the ALGM authors' Segmenter + ALGM repository (github.com/tue-mps/algm-segmenter,
CVPR 2024). It runs in its own environment, never the project's (it needs timm 0.4.12; the project
uses timm 1.x), from a git folder of that repository: its `segm/model/`, `segm/utils/torch.py` and
`algm/algm/` files are read with `git show` into a temporary package *outside* this repository and
imported from there. Nothing of it is copied into the repository; what is stored is its outputs.

    python3 -m venv /path/to/algm-published-venv
    /path/to/algm-published-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==0.4.12 einops pyyaml pillow scipy tqdm
    PYTHONPATH=$PWD .venv/bin/python scripts/reference/algm_published_check.py \\
        --algm-git /path/to/algm-segmenter/.git --ref-python /path/to/algm-published-venv/bin/python \\
        [--out tests/data/published_algm] [--check]

What it does (about a minute on 2 cores):

1. (project environment) the model of `RECIPE`: `create_segmenter(backbone, decoder, image_size,
   n_cls, seed)` -- ViT-Ti/16 at 512 x 512, linear decoder, seeded random weights -- saved by our
   `save_segmenter` as a published-format checkpoint (`checkpoint.pth` + `variant.yml`); the inputs:
   the photos `PHOTOS` bundled with scikit-image, read and preprocessed by tests/conftest.py
   (`photo`, `prep(img, 512)`: RGB in [0, 1], bilinear resize to 512 x 512 without corner alignment,
   (x - 0.5) / 0.5).
2. (published environment, `--published`, started by step 1 with --ref-python) the published loader
   `segm.model.factory.load_model` reads that checkpoint; `algm.patch.algm_segmenter_patch(model,
   layers, trace_source=True)` and `model.encoder.window_size` / `.threshold` set as the published
   `segm/eval/miou.py` does; forward on each photo alone (batch of 1: the published coupling reduces
   to per-image) and on the four photos as one batch (the published `batch_min` coupling). Recorded:
   the decoder's output (logits on the 32 x 32 patch grid, before the final upsampling), the model's
   output (512 x 512 logits) at `SAMPLES` seeded pixel positions, and the patch tokens left after
   each merge step (the blocks' output lengths minus the class token).
3. (project environment) `tests/data/published_algm/`: `published.npz` (float32 logits, int64 token
   counts) and `meta.json` (recipe, setting, photos, preprocessing, sha256 of the weights and of each
   input tensor, the merge-decision margins below). With --check nothing is written: the frozen files
   are compared with this run instead.
4. Our reference method (`apply_algm` without token mode, `merging/reference.py`) per image and
   batch_min, and static token mode with capacities = the per-image maximum of the published counts
   (as an export calibrates them), are compared with the published outputs (the test does the same).

Margins: how far every merge decision was from flipping (our float64-free float32 statistics of the
same tokens): CLAP min |window score - threshold|, GBM min |node_max - tau|, GBM min top-1 minus top-2
score of a merged token (which destination), and for batch_min the gap at each image's rank-r
boundary. They are stored in meta.json; the comparison is exact on token counts only when they are
far above the float32 rounding of the features (~1e-6).

Shims, both here, both installed only in the published process:

* `torch.Tensor.cuda(device)` with a CPU device: `local_merge.conditional_pooling` moves the
  threshold tensor with `torch.tensor(threshold).cuda(sims.device)`, which fails without a GPU; a
  CPU device is passed to `.to(device)` instead (the value is unchanged);
* `segm.model.factory.load_custom_pretrained`: a no-op. The published factory loads timm's ImageNet
  weights into a fresh backbone (a download) before the checkpoint replaces every parameter
  (`load_state_dict(strict=True)`), so nothing of them reaches the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data" / "published_algm"

RECIPE = {"backbone": "vit_tiny", "decoder": "linear", "image_size": 512, "n_cls": 21, "seed": 20240617}
SETTING = {"threshold": 0.88, "window": [2, 2], "layers": [1, 5]}
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]
SAMPLES = 512          # full-size logit positions kept per image
SAMPLE_SEED = 7
PUBLISHED_FILES = ("segm/model/", "segm/utils/torch.py", "algm/algm/")


sys.path.insert(0, str(REPO / "tests"))
from _helpers.published_algm import (inputs, model_from_recipe, run_ours, sample_positions, state_sha256,  # noqa: E402
                                     take_samples, tensor_sha256)


def positions():
    return sample_positions(len(PHOTOS), RECIPE["image_size"], SAMPLES, SAMPLE_SEED)


# ----------------------------------------------------------------------------- project side

def margins(model, images) -> dict:
    """How far the reference's merge decisions were from flipping (see the module docstring)."""
    from algm_export.merging import reference

    seen = {"clap": [], "gbm": []}
    clap, gbm = reference.clap, reference.gbm

    def rec_clap(x, size, grid, window, threshold, num_prefix):
        seen["clap"].append((x.clone(), grid, window, threshold, num_prefix))
        return clap(x, size, grid, window, threshold, num_prefix)

    def rec_gbm(x, size, assign, num_prefix, divisor):
        seen["gbm"].append((x.clone(), num_prefix, divisor))
        return gbm(x, size, assign, num_prefix, divisor)

    out = {}
    reference.clap, reference.gbm = rec_clap, rec_gbm
    try:
        for policy in ("per_image", "batch_min"):
            seen["clap"].clear()
            seen["gbm"].clear()
            run_ours(model, images, SETTING, policy)
            clap_m, gbm_m, arg_m, bound = [], [], [], []
            for x, grid, window, t, P in seen["clap"]:
                s = reference.window_scores(x[:, P:], grid, window)
                clap_m.append(float((s - t).abs().min()))
                r = int((s >= t).sum(1).min())
                srt = s.sort(dim=1, descending=True).values
                bound += [float(srt[b, r - 1] - srt[b, r]) for b in range(s.shape[0])
                          if 0 < r < s.shape[1] and int((s[b] >= t).sum()) > r]
            for x, P, divisor in seen["gbm"]:
                m = x.float() / x.float().norm(dim=-1, keepdim=True)
                sc = m[:, ::2] @ m[:, 1::2].transpose(-1, -2)
                sc[:, 0, :] = -float("inf")
                top2 = sc.topk(2, dim=-1).values
                node_max = top2[..., 0]
                cand = node_max[:, 1:]
                tau = cand.mean(1).mean() + cand.std(1).mean() / divisor
                gbm_m.append(float((cand - tau).abs().min()))
                r = int((node_max >= tau).sum(1).min())
                for b in range(x.shape[0]):
                    order = node_max[b].sort(descending=True)
                    merged = order.indices[:r]
                    arg_m.append(float((top2[b, merged, 0] - top2[b, merged, 1]).min()))
                    if int((node_max[b] >= tau).sum()) > r:
                        bound.append(float(order.values[r - 1] - order.values[r]))
            out[policy] = {"clap_threshold": min(clap_m), "gbm_threshold": min(gbm_m),
                           "gbm_destination": min(arg_m), "batch_min_rank_boundary": min(bound) if bound else None}
    finally:
        reference.clap, reference.gbm = clap, gbm
    return out


def compare(frozen: dict, model, images) -> tuple[list[str], list[str]]:
    """Our reference (per image, batch_min) and static mode against the published outputs.
    Returns (table lines, failures)."""
    import torch

    pos = torch.as_tensor(frozen["sample_positions"])
    lines, bad = [], []
    caps = [int(c) for c in frozen["tokens_per_image"].max(0)]
    runs = [("reference per_image", "per_image", run_ours(model, images, SETTING, "per_image", positions=pos)),
            ("reference batch_min", "batch", run_ours(model, images, SETTING, "batch_min", positions=pos)),
            (f"static {caps[0]},{caps[1]}", "per_image", run_ours(model, images, SETTING, "per_image", caps, pos))]
    for name, key, r in runs:
        tok = r["tokens"].numpy()
        want = frozen[f"tokens_{key}"]
        dg = float((r["grid"] - torch.as_tensor(frozen[f"grid_logits_{key}"])).abs().max())
        ds = float((r["samples"] - torch.as_tensor(frozen[f"sample_logits_{key}"])).abs().max())
        ok = (tok == want).all() and dg <= 1e-4 and ds <= 1e-4 and int(r["forced"].sum()) == 0
        lines.append(f"{name:24s} tokens {'/'.join(map(str, tok.tolist()))} (published "
                     f"{'/'.join(map(str, want.tolist()))})  max|d| grid {dg:.2e}  samples {ds:.2e}  "
                     f"{'OK' if ok else 'DIFFERS'}")
        if not ok:
            bad.append(name)
    return lines, bad


def project_main(a) -> int:
    import numpy as np
    import torch

    from algm_export.models.formats.published_segmenter import save_segmenter

    t0 = time.perf_counter()
    model = model_from_recipe(RECIPE)
    images = inputs(PHOTOS, RECIPE["image_size"])
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="algm-published-"))
    save_segmenter(model, work / "ckpt")
    torch.save({"images": images, "positions": positions(), "setting": SETTING}, work / "inputs.pt")
    cmd = [a.ref_python, str(Path(__file__).resolve()), "--published", "--algm-git", a.algm_git,
           "--work", str(work)]
    print("published run:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    pub = torch.load(work / "published.pt")
    frozen = {
        "grid_logits_per_image": pub["grid_per_image"].numpy().astype(np.float32),
        "sample_logits_per_image": pub["samples_per_image"].numpy().astype(np.float32),
        "tokens_per_image": pub["tokens_per_image"].numpy().astype(np.int64),
        "grid_logits_batch": pub["grid_batch"].numpy().astype(np.float32),
        "sample_logits_batch": pub["samples_batch"].numpy().astype(np.float32),
        "tokens_batch": pub["tokens_batch"].numpy().astype(np.int64),
        "sample_positions": positions().numpy(),
    }
    meta = {
        "about": "outputs of the published ALGM code (github.com/tue-mps/algm-segmenter) for "
                 "tests/test_published_frozen.py; regenerate with scripts/reference/algm_published_check.py",
        "published_commit": pub["commit"],
        "published_environment": pub["versions"],
        "recipe": dict(RECIPE, call="algm_export.create_segmenter(backbone, decoder, image_size, n_cls=n_cls, "
                                    "seed=seed)", weights_sha256=state_sha256(model.state_dict())),
        "setting": SETTING,
        "photos": PHOTOS,
        "preprocessing": f"tests/conftest.py prep(photo(name), {RECIPE['image_size']}): RGB / 255, bilinear "
                         "resize (align_corners=False), (x - 0.5) / 0.5",
        "input_sha256": {n: tensor_sha256(images[i:i + 1]) for i, n in enumerate(PHOTOS)},
        "samples": {"per_image": SAMPLES, "seed": SAMPLE_SEED},
        "runs": {"per_image": "each photo alone (batch of 1)", "batch": "the four photos as one batch (batch_min)"},
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in frozen.items()},
        "margins": margins(model, images),
    }
    print(json.dumps({k: meta[k] for k in ("published_commit", "margins")}, indent=1))
    print("published tokens per image:", frozen["tokens_per_image"].tolist(), " batch:",
          frozen["tokens_batch"].tolist())
    out = Path(a.out)
    if a.check:
        old = dict(np.load(out / "published.npz"))
        worst = max(float(np.abs(old[k].astype(np.float64) - frozen[k]).max()) for k in frozen)
        print(f"frozen files in {out} vs this run: max |d| {worst:.2e}")
        against = old
    else:
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "published.npz", **frozen)
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {out}/published.npz ({(out / 'published.npz').stat().st_size / 1e3:.0f} kB) and meta.json")
        against, worst = frozen, 0.0
    lines, bad = compare(against, model, images)
    print("\n".join(lines))
    print(f"{time.perf_counter() - t0:.0f} s")
    return 1 if bad or worst > 1e-6 else 0


# ----------------------------------------------------------------------------- published side

def extract_published(git_dir: str, dest: Path) -> str:
    """`git show` the published files into dest (segm/..., algm/...); returns the commit."""
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    names = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", "--name-only", "HEAD"], check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if not name.endswith(".py") or not name.startswith(PUBLISHED_FILES):
            continue
        rel = name[len("algm/"):] if name.startswith("algm/algm/") else name   # algm/algm -> package algm
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "--git-dir", git_dir, "show", f"HEAD:{name}"], check=True,
                                          capture_output=True).stdout)
    return commit


def install_shims() -> None:
    import torch

    cuda = torch.Tensor.cuda

    def cuda_or_cpu(self, device=None, *args, **kwargs):
        if device is not None and torch.device(device).type == "cpu":
            return self.to(device)
        return cuda(self, device, *args, **kwargs)

    torch.Tensor.cuda = cuda_or_cpu


def published_main(a) -> int:
    import timm
    import torch

    work = Path(a.work)
    pkg = Path(tempfile.mkdtemp(prefix="algm-published-src-"))
    commit = extract_published(a.algm_git, pkg)
    sys.path.insert(0, str(pkg))
    install_shims()
    import segm.model.factory as factory

    factory.load_custom_pretrained = lambda *args, **kwargs: None
    import algm.patch

    torch.set_num_threads(2)
    inp = torch.load(work / "inputs.pt")
    images, positions, st = inp["images"], inp["positions"], inp["setting"]
    model, _variant = factory.load_model(str(work / "ckpt" / "checkpoint.pth"))
    model.eval()
    algm.patch.algm_segmenter_patch(model, list(st["layers"]), trace_source=True)
    model.encoder.window_size = tuple(st["window"])
    model.encoder.threshold = st["threshold"]

    grid, tokens = [], []
    model.decoder.register_forward_hook(lambda mod, args, out: grid.append(out.detach().float()))
    for layer in st["layers"]:
        model.encoder.blocks[layer - 1].register_forward_hook(
            lambda mod, args, out: tokens.append(out.shape[1] - 1))

    def run(x):
        grid.clear()
        tokens.clear()
        with torch.no_grad():
            out = model(x)
        return grid[0], out.float(), torch.tensor([tokens] * x.shape[0])

    res = {"commit": commit, "versions": {"torch": str(torch.__version__), "timm": str(timm.__version__)}}
    per = [run(images[i:i + 1]) for i in range(images.shape[0])]
    res["grid_per_image"] = torch.cat([p[0] for p in per])
    res["samples_per_image"] = take_samples(torch.cat([p[1] for p in per]), positions)
    res["tokens_per_image"] = torch.cat([p[2] for p in per])
    g, out, tok = run(images)
    res.update(grid_batch=g, samples_batch=take_samples(out, positions), tokens_batch=tok)
    torch.save(res, work / "published.pt")
    print("published: tokens per image", res["tokens_per_image"].tolist(), "batch", tok.tolist())
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algm-git", required=True, help="git folder of github.com/tue-mps/algm-segmenter")
    ap.add_argument("--ref-python", help="python of the published code's environment (timm 0.4.12)")
    ap.add_argument("--out", default=str(DATA), help="where the frozen files go (default tests/data/published_algm)")
    ap.add_argument("--work", help="folder for the checkpoint and the exchange files (default: temporary)")
    ap.add_argument("--check", action="store_true", help="compare with the frozen files instead of writing them")
    ap.add_argument("--published", action="store_true", help=argparse.SUPPRESS)   # the published-side run
    a = ap.parse_args(argv)
    if a.published:
        return published_main(a)
    if not a.ref_python:
        ap.error("--ref-python is required (the published code's environment)")
    return project_main(a)


if __name__ == "__main__":
    sys.exit(main())
