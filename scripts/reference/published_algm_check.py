"""Reference check: our ALGM (PyTorch reference, and an export folder in ONNX Runtime) against the
published ALGM code (tue-mps `algm-segmenter`), merge step by merge step, with the margin of every
decision that differs.

Runs in two environments: this script in the project's (PyTorch reference, ONNX Runtime), and
itself again as a child in one that has the published code's dependencies (timm 0.4.12, einops):

    python3 -m venv /work/ref-algm-venv
    /work/ref-algm-venv/bin/pip install torch==2.14.1 timm==0.4.12 einops pyyaml tqdm
    PYTHONPATH=. .venv/bin/python scripts/reference/published_algm_check.py \\
        --algm-git-dir /path/to/algm-segmenter/.git --published-python /work/ref-algm-venv/bin/python \\
        --checkpoint ckpt/vit_l16_640 --threshold 0.95 --layers 1,7 --photos astronaut,coffee,rocket \\
        [--export out/vit_l] [--out DIR]

The published code is read from the repository at run time (`git show`), never copied into this
one: `segm/model/{vit,blocks,decoder,segmenter,utils}.py`, `segm/utils/torch.py` and
`algm/algm/{local_merge,global_merge,patch/algm_segmenter_patch}.py` are written to a temporary
folder and imported there, with one stand-in: CLAP's `torch.tensor(threshold).cuda(device)` becomes
`.to(device)` (the published code runs on a GPU only; this runs it on the CPU).

With --float64 our reference also runs in float64 (row `reference_float64`): where it differs
from both float32 sides, float32 rounding settles that decision (docs/decisions.md item 61).

The published model is the published `Segmenter(VisionTransformer, DecoderLinear)` built from the
checkpoint's `variant.yml` (`net_kwargs`) and loaded with its `checkpoint.pth`, patched with
`apply_patch(model, layers, trace_source=True)` at the threshold given. Each photo is resized to the
model's size and rounded to 8 bits (both sides get the same pixels). The published side records,
for every merge step, the tokens entering it and the assignment map after it (from `source`).

Reported per photo: max |logit difference| and argmax agreement of our PyTorch reference (and of the
export's ONNX Runtime entry at this threshold) against the published code; the merge counts of every
step; max |difference| of the tokens entering every merge step; the first step whose assignment map
differs, with the decisions that differ and their margins on both sides (`merging.margins`:
threshold distance |s - tau|, argmax gap, rank gap), and the smallest margin of every step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PUBLISHED_FILES = {
    "segm/model/vit.py": "segm/model/vit.py",
    "segm/model/blocks.py": "segm/model/blocks.py",
    "segm/model/decoder.py": "segm/model/decoder.py",
    "segm/model/segmenter.py": "segm/model/segmenter.py",
    "segm/model/utils.py": "segm/model/utils.py",
    "segm/utils/torch.py": "segm/utils/torch.py",
    "algm/algm/local_merge.py": "algm/local_merge.py",
    "algm/algm/global_merge.py": "algm/global_merge.py",
    "algm/algm/utils.py": "algm/utils.py",
    "algm/algm/patch/algm_segmenter_patch.py": "algm/patch/algm_segmenter_patch.py",
}


# ----------------------------------------------------------------------------- published side (child)

def materialize(git_dir: str, root: Path) -> None:
    for src, dst in PUBLISHED_FILES.items():
        text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{src}"], check=True,
                              capture_output=True, text=True).stdout
        if src.endswith("local_merge.py"):
            assert ".cuda(sims.device)" in text
            text = text.replace(".cuda(sims.device)", ".to(sims.device)")   # CPU stand-in
        p = root / dst
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in ("algm", "algm/patch"):
        (root / pkg / "__init__.py").write_text("")


def published_side(args) -> None:
    import torch
    import yaml

    root = Path(tempfile.mkdtemp(prefix="algm-published-"))
    materialize(args.algm_git_dir, root)
    sys.path.insert(0, str(root))
    from segm.model.decoder import DecoderLinear
    from segm.model.segmenter import Segmenter
    from segm.model.vit import VisionTransformer
    import algm.patch.algm_segmenter_patch as patchmod

    torch.set_num_threads(args.threads)
    ck = Path(args.checkpoint)
    variant = yaml.safe_load((ck / "variant.yml").read_text())
    net = variant["net_kwargs"]
    size = tuple(net["image_size"]) if isinstance(net["image_size"], (list, tuple)) else (net["image_size"],) * 2
    enc = VisionTransformer(size, net["patch_size"], net["n_layers"], net["d_model"], 4 * net["d_model"],
                            net["n_heads"], 1000, dropout=0.0, drop_path_rate=0.0, distilled=bool(net.get("distilled")))
    dec = DecoderLinear(net["n_cls"], net["patch_size"], net["d_model"])
    model = Segmenter(enc, dec, net["n_cls"])
    sd = torch.load(ck / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    del sd
    bad = [k for k in missing if not k.startswith("encoder.head")] + list(unexpected)
    if bad:
        raise SystemExit(f"published model does not match the checkpoint: {bad[:5]}")
    model.eval()
    layers = [int(v) for v in args.layers.split(",")]
    patchmod.apply_patch(model, layers, trace_source=True)
    model.encoder.threshold = float(args.threshold)
    model.encoder.window_size = (2, 2)

    record = []
    orig_cp, orig_tm, orig_src = patchmod.conditional_pooling, patchmod.turbo_matching, patchmod.merge_source

    def cp(feat, threshold, window_size):
        record.append({"x": feat.detach().float().clone(), "size": None})
        return orig_cp(feat, threshold, window_size)

    def tm(metric, layer_idx, source, class_token=False, distill_token=False):
        size = model.encoder._turbo_info["size"]
        record.append({"x": metric.detach().float().clone(), "size": None if size is None else size[..., 0].clone()})
        return orig_tm(metric, layer_idx, source, class_token, distill_token)

    def ms(merge, x, source=None):
        out = orig_src(merge, x, source)
        record[-1]["assign"] = out[:, 1:, 1:].argmax(dim=1)     # patch -> token (after the class token)
        return out

    patchmod.conditional_pooling, patchmod.turbo_matching, patchmod.merge_source = cp, tm, ms
    data = np.load(args.inputs)
    out = {}
    with torch.no_grad():
        for name in data.files:
            x = torch.from_numpy(data[name]).float()[None].permute(0, 3, 1, 2) / 255.0
            x = (x - 0.5) / 0.5
            record.clear()
            logits = model(x)
            out[f"{name}/logits"] = logits.numpy()
            for i, r in enumerate(record):
                out[f"{name}/x{i}"] = r["x"].numpy()
                out[f"{name}/assign{i}"] = r["assign"].numpy()
                if r["size"] is not None:
                    out[f"{name}/size{i}"] = r["size"].float().numpy()
            print(f"published: {name} done", file=sys.stderr, flush=True)
    np.savez(args.result, **out)


# ----------------------------------------------------------------------------- our side

def photo_uint8(name: str, size) -> np.ndarray:
    import glob

    import skimage.data
    import torch
    import torch.nn.functional as F
    from PIL import Image

    path = glob.glob(os.path.join(os.path.dirname(skimage.data.__file__), name + ".*"))[0]
    img = np.asarray(Image.open(path).convert("RGB"))[..., :3]
    t = torch.from_numpy(img.copy()).permute(2, 0, 1).float()[None]
    t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def compare(name, ours: dict, pub: dict, setting, model, threshold, caps=None) -> dict:
    from algm_export.merging.margins import decision_differences, step_margins

    grid, P = model.cfg.grid, model.num_prefix
    lo, lp = ours["logits"], pub["logits"]
    rec = {"max_abs": float(np.abs(lo.astype(np.float64) - lp).max()),
           "agreement": float(100 * (lo.argmax(1) == lp.argmax(1)).mean())}
    steps = []
    for i in range(len(setting.layers)):
        xo, xp = ours["inputs"][i].get("x"), pub["inputs"][i]["x"]
        st = {"step": i, "layer": int(setting.layers[i]),
              "tokens_ours": int(len(np.unique(ours["assign"][i][0]))),
              "tokens_published": int(len(np.unique(pub["assign"][i][0]))),
              "assign_equal": bool(np.array_equal(ours["assign"][i], pub["assign"][i]))}
        if xo is not None and xo.shape[1] >= xp.shape[1]:
            # a static export's tokens carry padding slots after the real ones
            st["x_max_abs"] = float(np.abs(xo[:, :xp.shape[1]].astype(np.float64) - xp).max())
        steps.append(st)
    rec["steps"] = steps
    pub_inputs = [{"x": pub["inputs"][i]["x"],
                   "size": pub["inputs"][i]["size"] if pub["inputs"][i]["size"] is not None
                   else np.ones(pub["inputs"][i]["x"].shape[:2], np.float32)} for i in range(len(steps))]
    rec["margins_published"] = step_margins(pub_inputs, setting, grid, P, None, threshold)[0]
    if ours["inputs"][0].get("x") is not None:
        rec["margins_ours"] = step_margins(ours["inputs"], setting, grid, P, caps, threshold)[0]
        rec["difference"] = decision_differences(setting, grid, P, ours["assign"], pub["assign"], ours["inputs"],
                                                 pub_inputs, threshold=threshold)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", default="ours", choices=["ours", "published"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--algm-git-dir", required=True, help="git directory of tue-mps/algm-segmenter (bare is fine)")
    ap.add_argument("--published-python", default=sys.executable, help="python of the environment with timm 0.4.12")
    ap.add_argument("--checkpoint", required=True, help="published-format checkpoint folder (checkpoint.pth + variant.yml)")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--layers", default="1,7")
    ap.add_argument("--photos", default="astronaut,coffee,rocket")
    ap.add_argument("--export", default=None, help="an export folder of the checkpoint: also its ONNX Runtime entry")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for the JSON result (default: a temporary folder)")
    ap.add_argument("--float64", action="store_true",
                    help="also our reference in float64 (the method in exact-enough arithmetic): shows which "
                         "decisions float32 rounding settles")
    args = ap.parse_args()
    if args.side == "published":
        return published_side(args)

    import torch

    from algm_export.core.setting import AlgmSetting
    from algm_export.merging.driver import apply_algm
    from algm_export.models.registry import resolve_model

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="algm-published-check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.checkpoint)
    size = tuple(model.cfg.image_size)
    photos = [p for p in args.photos.split(",") if p]
    inputs = {p: photo_uint8(p, size) for p in photos}
    np.savez(out_dir / "inputs.npz", **inputs)
    result = out_dir / "published.npz"
    if not result.exists():
        subprocess.run([args.published_python, __file__, "--side", "published", "--inputs", str(out_dir / "inputs.npz"),
                        "--result", str(result), "--algm-git-dir", args.algm_git_dir, "--checkpoint", args.checkpoint,
                        "--threshold", str(args.threshold), "--layers", args.layers, "--threads", str(args.threads)],
                       check=True)
    pub_all = np.load(result)
    layers = tuple(int(v) for v in args.layers.split(","))
    setting = AlgmSetting(args.threshold, (2, 2), layers)

    def published(name):
        return {"logits": pub_all[f"{name}/logits"],
                "inputs": [{"x": pub_all[f"{name}/x{i}"],
                            "size": pub_all[f"{name}/size{i}"] if f"{name}/size{i}" in pub_all.files else None}
                           for i in range(len(layers))],
                "assign": [pub_all[f"{name}/assign{i}"] for i in range(len(layers))]}

    def norm(a):
        x = torch.from_numpy(a).float()[None].permute(0, 3, 1, 2) / 255.0
        return (x - 0.5) / 0.5

    report = {"checkpoint": args.checkpoint, "threshold": args.threshold, "layers": list(layers), "photos": {}}
    ref = apply_algm(model, setting)
    ref.record_inputs = True
    base_pub = {}
    with torch.no_grad():
        for p in photos:
            lo = ref(norm(inputs[p])).numpy()
            ours = {"logits": lo, "assign": [a.numpy() for a in ref.assignments],
                    "inputs": [{k: v.numpy() for k, v in r.items()} for r in ref.merge_inputs]}
            report["photos"][p] = {"reference": compare(p, ours, published(p), setting, model, args.threshold)}
            print(f"ours (reference): {p} done", file=sys.stderr, flush=True)
        if args.float64:
            ref64 = apply_algm(model.double(), setting)
            ref64.record_inputs = True
            for p in photos:
                lo = ref64(norm(inputs[p]).double()).numpy()
                ours = {"logits": lo, "assign": [a.numpy() for a in ref64.assignments],
                        "inputs": [{k: v.float().numpy() for k, v in r.items()} for r in ref64.merge_inputs]}
                report["photos"][p]["reference_float64"] = compare(p, ours, published(p), setting, model,
                                                                   args.threshold)
                print(f"ours (reference, float64): {p} done", file=sys.stderr, flush=True)
            model.float()
    if args.export:
        from algm_export.artifacts import ExportFolder
        from algm_export.runtimes.registry import make_runner

        folder = ExportFolder.load(args.export, verify=True)
        entry = next(e for e in folder.settings if abs(e.threshold - args.threshold) < 1e-9
                     and tuple(e.layers) == layers and not e.is_dynamic)
        runner = make_runner("onnxruntime", entry, model=model, decisions=True)
        for p in photos:
            b = runner.infer(norm(inputs[p]))
            ours = {"logits": b.logits, "assign": b.assignments, "inputs": b.merge_inputs}
            r = compare(p, ours, published(p), setting, model, args.threshold, entry.capacities)
            r["forced"] = int(np.asarray(b.merge_stats)[0, :, 1].sum())
            r["entry"] = entry.name
            report["photos"][p]["onnxruntime"] = r
            print(f"ours (onnxruntime {entry.name}): {p} done", file=sys.stderr, flush=True)
        runner.close()
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    for p, rows in report["photos"].items():
        for kind, r in rows.items():
            steps = ", ".join(f"L{s['layer']}: {s['tokens_ours']}/{s['tokens_published']} tokens"
                              + ("" if s["assign_equal"] else " (assignment differs)")
                              + (f", x diff {s['x_max_abs']:.1e}" if "x_max_abs" in s else "") for s in r["steps"])
            print(f"{p:10s} {kind:12s} max|d| {r['max_abs']:.2e}  argmax {r['agreement']:.3f}%  {steps}"
                  + (f"  forced {r['forced']}" if "forced" in r else ""))
            d = r.get("difference")
            if d:
                print(f"    first difference: step {d['step']} ({d['op']}, layer {d['layer']}), "
                      f"{d['patches_differing']} patches")
                for dec in d["decisions"][:6]:
                    print(f"      {dec['decision']}: ours {dec['torch']}, published {dec['backend']}; margin ours "
                          f"{dec.get('torch_margin')}, published {dec.get('backend_margin')}")
            for side in ("margins_ours", "margins_published"):
                if side in r:
                    print(f"    {side}: " + ", ".join(
                        f"L{m['layer']} tau {m.get('threshold_margin'):.2e} "
                        + (f"rank {m.get('rank_margin')}" if m['op'] == 'clap' else f"argmax {m.get('argmax_margin')}")
                        for m in r[side]))
    print(f"\nreport: {out_dir / 'report.json'}")


if __name__ == "__main__":
    main()
