"""Reference check: our EoMT (algm_export.models.families.eomt) against the published code (tue-mps/eomt).

Runs in a separate environment with the published code's model dependencies (never the project's):

    python3 -m venv /work/ref-venv
    /work/ref-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.15 pyyaml scikit-image
    git clone https://github.com/tue-mps/eomt /path/to/eomt        (or a bare mirror: pass its git dir)
    PYTHONPATH=. /work/ref-venv/bin/python scripts/reference/eomt_check.py --eomt /path/to/eomt [--out DIR]

timm 1.0.15 is the version the published `requirements.txt` pins. The published modules are
imported from that checkout as they are (`models/eomt.py`, `models/vit.py`,
`models/scale_block.py`, and `training/lightning_module.py` for the semantic windowing and the
per-pixel scores); what they import but never call here is replaced by stand-ins before the
import: `transformers.AutoModel` (DINOv3 backbones only), and for the Lightning module
`lightning`, `torchmetrics`, `wandb`, `matplotlib`. The Lightning module's windowing methods
are called on a stand-in `self` holding `img_size` (they read nothing else).

For EoMT-S/16 at 512 (`ViT(backbone_name="vit_small_patch14_reg4_dinov2", patch_size=16)`,
timm's DINOv2-reg4 ViT-S, no pretrained download: `ckpt_path` set so `pretrained=False`;
`EoMT(num_q=100, num_blocks=4, num_classes=150)`, the ADE20K semantic layout) every parameter is
drawn at random (seeded, layer scales U(0.5, 1.5) so every block counts), `attn_mask_probs`
set to 0 (annealing ended). It is saved the published way: `pytorch_model.bin` = the Lightning
module's `state_dict()` (`network.*` + `criterion.empty_weight`) beside a LightningCLI
`config.yaml`, and a Lightning `.ckpt` (`state_dict`, `hyper_parameters` as LightningCLI stores
them, optimizer state). Then loaded with algm-export's registry in five forms (the .bin with
its config, the folder, the .bin alone = sizes inferred from the tensors, the .ckpt alone =
its hyper_parameters, the .ckpt with the config) and compared on the photographs
scikit-image bundles (float32, max |diff|):

* the final normed tokens (queries, cls, registers, patches) the head reads, tol 1e-5;
* mask logits and class logits, tol 1e-5;
* the published per-pixel scores (`to_per_pixel_logits_semantic` of the mask logits resized to
  512), with `masked_attn_enabled=False` (the published inference notebook) and `True` with
  `attn_mask_probs` 0 (the published validation), tol 1e-5;
* windowed inference (`window_imgs_semantic` -> network -> `revert_window_logits_semantic`) on
  a non-square photo in both orientations: exact (tol 1e-5) on the photo scaled beforehand to
  the size the windowing scales it to (so both pipelines' resizes are identities), and on the
  raw photo (the published pipeline resizes the uint8 image with PIL, ours the float image with
  an antialiased bilinear resize): max |diff| and argmax agreement, reported, not gated.

Exit status 1 when a gated difference exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

TOL = 1e-5       # float32: relative to the largest value compared
TOL64 = 1e-9     # float64: absolute
ORT_TOL = 1e-4   # the exported baseline in ONNX Runtime: absolute
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field"]
NON_SQUARE = "chelsea"   # 300 x 451
SIZE = 512
NUM_Q, NUM_BLOCKS, N_CLS = 100, 4, 150
BACKBONE = "vit_small_patch14_reg4_dinov2"


# ----------------------------------------------------------------------------- the published code

def checkout(path: str) -> Path:
    """A folder with the published sources: `path` itself, or HEAD of a git dir extracted to a temp folder."""
    p = Path(path)
    if (p / "models" / "eomt.py").is_file():
        return p
    tmp = Path(tempfile.mkdtemp(prefix="eomt-ref-"))
    tar = subprocess.run(["git", f"--git-dir={p}", "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, check=True)
    return tmp


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__path__ = []
    sys.modules[name] = m
    return m


def _unused(name):
    def f(*a, **k):
        raise RuntimeError(f"{name} is a stand-in: the reference check does not use it")
    return f


def install_stand_ins() -> None:
    """Modules the published files import but the check never calls (see the module doc)."""
    _module("transformers", AutoModel=types.SimpleNamespace(from_pretrained=_unused("transformers.AutoModel")))
    _module("lightning", LightningModule=torch.nn.Module)
    _module("lightning.fabric")
    _module("lightning.fabric.utilities", rank_zero_info=print)
    _module("torchmetrics")
    _module("torchmetrics.classification", MulticlassJaccardIndex=_unused("MulticlassJaccardIndex"))
    _module("torchmetrics.detection", PanopticQuality=_unused("PanopticQuality"),
            MeanAveragePrecision=_unused("MeanAveragePrecision"))
    _module("torchmetrics.functional")
    _module("torchmetrics.functional.detection")
    _module("torchmetrics.functional.detection._panoptic_quality_common", _prepocess_inputs=_unused("pq"),
            _Color=tuple, _get_color_areas=_unused("pq"), _calculate_iou=_unused("pq"))
    _module("wandb", Image=_unused("wandb.Image"))
    _module("matplotlib")
    _module("matplotlib.colors")
    _module("matplotlib.lines", Line2D=_unused("Line2D"))
    _module("matplotlib.pyplot")


def import_published(root: Path):
    install_stand_ins()
    sys.path.insert(0, str(root))
    eomt = importlib.import_module("models.eomt")
    vit = importlib.import_module("models.vit")
    lm = importlib.import_module("training.lightning_module")
    return eomt, vit, lm


def windowing(lm, img_size):
    """The Lightning module's semantic windowing methods bound to a stand-in `self`."""
    me = types.SimpleNamespace(img_size=img_size)
    L = lm.LightningModule
    for name in ("scale_img_size_semantic", "window_imgs_semantic", "revert_window_logits_semantic"):
        setattr(me, name, types.MethodType(getattr(L, name), me))
    me.to_per_pixel_logits_semantic = L.to_per_pixel_logits_semantic
    return me


# ----------------------------------------------------------------------------- photos

def photo(name: str) -> np.ndarray:
    import skimage.data as skd

    from algm_export.models.images import SAMPLE_IMAGES, to_rgb_uint8

    attr, idx = SAMPLE_IMAGES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = getattr(skd, attr)()
    return to_rgb_uint8(data[idx] if idx is not None else data)


def pil_resize(img: np.ndarray, hw) -> np.ndarray:
    from PIL import Image

    return np.array(Image.fromarray(img).resize((int(hw[1]), int(hw[0])), Image.BILINEAR))


def as_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)


def normalise(x01: torch.Tensor, norm) -> torch.Tensor:
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    return (x01 - mean) / std


def maxdiff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


# ----------------------------------------------------------------------------- the check

def build_published(eomt, vit, seed: int, masked: bool):
    from algm_export.models.families.eomt import randomize_eomt_

    enc = vit.ViT(img_size=(SIZE, SIZE), patch_size=16, backbone_name=BACKBONE, ckpt_path="no-download")
    net = eomt.EoMT(encoder=enc, num_classes=N_CLS, num_q=NUM_Q, num_blocks=NUM_BLOCKS, masked_attn_enabled=masked)
    randomize_eomt_(net, seed)       # seeded draws by name; layer scales U(0.5, 1.5)
    with torch.no_grad():
        net.attn_mask_probs.zero_()  # annealing ended
        net.encoder.pixel_mean.copy_(torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        net.encoder.pixel_std.copy_(torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    return net.eval()


def lightning_cli_config() -> dict:
    """What LightningCLI's config dump holds for this run (the published ADE20K semantic config,
    links resolved), as `config.yaml`."""
    img = [SIZE, SIZE]
    return {
        "seed_everything": 0,
        "trainer": {"max_epochs": 31, "precision": "16-mixed", "devices": 1, "gradient_clip_val": 0.01},
        "model": {
            "class_path": "training.mask_classification_semantic.MaskClassificationSemantic",
            "init_args": {
                "network": {"class_path": "models.eomt.EoMT", "init_args": {
                    "encoder": {"class_path": "models.vit.ViT", "init_args": {
                        "img_size": img, "patch_size": 16, "backbone_name": BACKBONE, "ckpt_path": None}},
                    "num_classes": N_CLS, "num_q": NUM_Q, "num_blocks": NUM_BLOCKS, "masked_attn_enabled": True}},
                "img_size": img, "num_classes": N_CLS, "attn_mask_annealing_enabled": True,
                "attn_mask_annealing_start_steps": [6520, 13040, 19560, 26080],
                "attn_mask_annealing_end_steps": [13040, 19560, 26080, 32600], "ignore_idx": 255, "lr": 1e-4,
                "llrd": 0.8, "poly_power": 0.9, "warmup_steps": [500, 1000], "ckpt_path": None}},
        "data": {"class_path": "datasets.ade20k_semantic.ADE20KSemantic",
                 "init_args": {"path": "/data", "num_workers": 4, "batch_size": 16, "img_size": img,
                               "num_classes": N_CLS}},
        "compile_disabled": False,
    }


def save_published(net, folder: Path) -> dict:
    """pytorch_model.bin + config.yaml, a folder of them, and a Lightning .ckpt (alone in its folder)."""
    sd = {f"network.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    empty = torch.ones(N_CLS + 1)
    empty[-1] = 0.1                                     # MaskClassificationLoss(no_object_coefficient=0.1)
    sd["criterion.empty_weight"] = empty
    cfg = lightning_cli_config()
    run = folder / "run"
    run.mkdir(parents=True, exist_ok=True)
    torch.save(sd, run / "pytorch_model.bin")
    (run / "config.yaml").write_text("# lightning.pytorch==2.5.1.post0\n" + yaml.safe_dump(cfg, sort_keys=False))
    # a Lightning checkpoint: LightningCLI stores the model's init args (links resolved) as hyper_parameters
    params = [torch.nn.Parameter(net.q.weight.detach().clone()), torch.nn.Parameter(net.class_head.bias.detach().clone())]
    opt = torch.optim.AdamW(params, lr=1e-4)
    (params[0].sum() + params[1].sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    m = cfg["model"]
    hp = copy.deepcopy(m["init_args"])
    hp["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    dhp = dict(copy.deepcopy(cfg["data"]["init_args"]), _instantiator="lightning.pytorch.cli.instantiate_module")
    ck = folder / "lightning" / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 30, "global_step": 32600, "pytorch-lightning_version": "2.5.1.post0",
                "state_dict": sd, "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 31}}}},
                "callbacks": {"LearningRateMonitor{'logging_interval': 'epoch'}": {}},
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [{"last_epoch": 32600, "_step_count": 32601}],
                "hparams_name": "kwargs", "hyper_parameters": hp,
                "datamodule_hparams_name": "kwargs", "datamodule_hyper_parameters": dhp},
               ck / "epoch=30-step=32600.ckpt")
    alone = folder / "bin_alone"
    alone.mkdir(exist_ok=True)
    torch.save(sd, alone / "pytorch_model.bin")
    return {"bin + config.yaml": (run / "pytorch_model.bin", None), "folder": (run, None),
            "bin alone (shapes)": (alone / "pytorch_model.bin", None),
            ".ckpt alone (hyper_parameters)": (ck / "epoch=30-step=32600.ckpt", None),
            ".ckpt + --config": (ck / "epoch=30-step=32600.ckpt", run / "config.yaml")}


def final_tokens(net, x01: torch.Tensor) -> tuple:
    """The published network's outputs and the tokens its last `_predict` reads (the final norm's output)."""
    seen = []
    h = net.encoder.backbone.norm.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        masks, classes = net(x01)
    finally:
        h.remove()
    return seen[-1], masks[-1], classes[-1]


def compare(name, dt, net, masked_net, ours, loaded, lm, rows) -> None:
    """Every comparison at one precision: float64 (the same arithmetic: tol 1e-9 absolute) or
    float32 (rounding: tol 1e-5 relative to the largest value compared)."""
    prec = "fp64" if dt == torch.float64 else "fp32"
    tol = TOL64 if dt == torch.float64 else TOL
    mode = "abs" if dt == torch.float64 else "rel"
    net, masked_net, ours = (copy.deepcopy(m).to(dt) for m in (net, masked_net, ours))
    norm = ours.cfg.normalization
    win = windowing(lm, (SIZE, SIZE))

    def row(size, p, what, a, b, gated=True, extra="", gate=None):
        rows.append((name, prec, size, p, what + extra, maxdiff(a, b), float(a.abs().max()),
                     (gate or (tol, mode)) if gated else None))

    with torch.no_grad():
        x01 = torch.cat([as_chw(pil_resize(photo(p), (SIZE, SIZE)))[None].to(dt) / 255.0 for p in PHOTOS])
        x = normalise(x01, norm)
        tok_ref, mask_ref, cls_ref = final_tokens(net, x01)
        ref = win.to_per_pixel_logits_semantic(F.interpolate(mask_ref, (SIZE, SIZE), mode="bilinear"), cls_ref)
        _, mask_m, cls_m = final_tokens(masked_net, x01)
        ref_masked = win.to_per_pixel_logits_semantic(F.interpolate(mask_m, (SIZE, SIZE), mode="bilinear"), cls_m)
        tok, mask, cls = ours.predict_masks(x)
        got = ours(x)
        sz = f"{SIZE}x{SIZE}"
        for i, p in enumerate(PHOTOS):
            row(sz, p, "final normed tokens (queries, cls, registers, patches)", tok_ref[i], tok[i])
            row(sz, p, "mask logits [100, 128, 128]", mask_ref[i], mask[i])
            row(sz, p, "class logits [100, 151]", cls_ref[i], cls[i])
            row(sz, p, "per-pixel scores [150, 512, 512]", ref[i], got[i])
        row(sz, "all photos", "per-pixel scores, published validation (masked_attn_enabled, attn_mask_probs 0)",
            ref_masked, got)
        if dt == torch.float32:
            for form, m in loaded.items():
                if form != "bin + config.yaml":
                    d = maxdiff(m(x), got)
                    rows.append((name, prec, sz, "all photos", f"per-pixel scores, loaded from {form} vs .bin + config",
                                 d, float(got.abs().max()), (0.0, "abs")))

        # windowed inference on a non-square photo, both orientations
        for label, img in ((f"{NON_SQUARE} (wide)", photo(NON_SQUARE)),
                           (f"{NON_SQUARE} (tall, transposed)", np.ascontiguousarray(photo(NON_SQUARE).transpose(1, 0, 2)))):
            scaled = win.scale_img_size_semantic(img.shape[:2])
            for kind, im in (("pre-scaled", pil_resize(img, scaled)), ("raw", img)):
                t = as_chw(im)
                crops, origins = win.window_imgs_semantic([t])
                mref, cref = net(crops.to(dt) / 255.0)
                cl = win.to_per_pixel_logits_semantic(F.interpolate(mref[-1], (SIZE, SIZE), mode="bilinear"), cref[-1])
                r = win.revert_window_logits_semantic(cl.to(dt), origins, [t.shape[-2:]])[0]
                g = ours.inference(normalise(t[None].to(dt) / 255.0, norm))[0]
                what = f"windowed scores ({len(origins)} crops, {kind}{'' if kind == 'raw' else ' to ' + str(scaled)})"
                agree = float((r.argmax(0) == g.argmax(0)).float().mean())
                # the published revert sums the crops in float32 (torch.zeros' default dtype), at any precision
                row(f"{t.shape[-2]}x{t.shape[-1]}", label, what, r, g, gated=kind != "raw",
                    extra=f"; argmax agreement {agree:.4f}" if kind == "raw" else
                    (" (published revert sums in fp32)" if dt == torch.float64 else ""),
                    gate=(TOL, "rel") if dt == torch.float64 else None)


def compare_onnx(name, path, net, norm, lm, rows) -> None:
    """The exported baseline in ONNX Runtime (CPU, fp32) against the published per-pixel scores, per photo."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    win = windowing(lm, (SIZE, SIZE))
    with torch.no_grad():
        for p in PHOTOS:
            x01 = as_chw(pil_resize(photo(p), (SIZE, SIZE)))[None].float() / 255.0
            _, mask, cls = final_tokens(net, x01)
            ref = win.to_per_pixel_logits_semantic(F.interpolate(mask, (SIZE, SIZE), mode="bilinear"), cls)
            out = sess.run(["logits"], {"image": normalise(x01, norm).numpy()})[0]
            got = torch.from_numpy(out)
            agree = float((ref.argmax(1) == got.argmax(1)).float().mean())
            rows.append((name, "fp32", f"{SIZE}x{SIZE}", p, f"ONNX Runtime baseline logits vs published per-pixel "
                         f"scores; argmax agreement {agree:.5f}", maxdiff(ref, got), float(ref.abs().max()),
                         (ORT_TOL, "abs")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eomt", required=True, help="a checkout of github.com/tue-mps/eomt, or its git dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the checkpoints here (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="fp64,fp32", help="comma-separated: fp64 (same arithmetic), fp32")
    ap.add_argument("--onnx", default=None,
                    help="the baseline ONNX that `algm-export export OUT/run` wrote from the checkpoint saved here "
                         "(same --seed): compared in ONNX Runtime with the published per-pixel scores, tol 1e-4")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import timm

    root = checkout(args.eomt)
    eomt, vit, lm = import_published(root)
    from algm_export.models.registry import resolve_model

    tmp = None
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name)
    print(f"timm {timm.__version__}, torch {torch.__version__}, published code from {root}, {args.threads} threads")
    t0 = time.time()
    rows, details = [], []
    name = "EoMT-S/16 512"

    net = build_published(eomt, vit, args.seed, masked=False)
    forms = save_published(net, folder)
    loaded = {}
    for form, (path, cfg) in forms.items():
        m = resolve_model(str(path), config=None if cfg is None else str(cfg))
        loaded[form] = m
        rep = m.load_report
        details.append((name, form, f"config from {m.cfg.config_source}; {len(rep['ignored'])} ignored "
                        f"({', '.join(rep['ignored'])}), missing {len(rep['missing'])}, unexpected "
                        f"{len(rep['unexpected'])}; {'; '.join(m.cfg.notes) or 'no notes'}"))
    ours = loaded["bin + config.yaml"]
    masked_net = build_published(eomt, vit, args.seed, masked=True)
    masked_net.load_state_dict(net.state_dict())
    for prec in args.precisions.split(","):
        dt = {"fp64": torch.float64, "fp32": torch.float32}[prec.strip()]
        compare(name, dt, net, masked_net, ours, loaded, lm, rows)
        print(f"  {dt}: done ({time.time() - t0:.0f} s)", flush=True)
    if args.onnx:
        compare_onnx(name, args.onnx, net, ours.cfg.normalization, lm, rows)
        print(f"  ONNX Runtime: done ({time.time() - t0:.0f} s)", flush=True)
    print(f"  done ({time.time() - t0:.0f} s)", flush=True)

    print("\n| model | precision | input | photo | compared | max abs diff | max abs value | gate |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    ratios = []
    for n, prec, size, p, what, d, mag, gate in rows:
        if gate is None:
            g = "report only"
        else:
            tol, mode = gate
            bound = tol * max(mag, 1e-30) if mode == "rel" else tol
            ok &= d <= bound
            ratios.append(d / bound if bound else (0.0 if d == 0 else float("inf")))
            g = "exact" if tol == 0 else (f"{tol:.0e} x max" if mode == "rel" else f"{tol:.0e}")
        print(f"| {n} | {prec} | {size} | {p} | {what} | {d:.2e} | {mag:.2f} | {g} |")
    print("\n| model | checkpoint form | load |")
    print("|---|---|---|")
    for row in details:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"\nworst max |diff| / tolerance {max(ratios):.2f}: {'PASS' if ok else 'FAIL'}; {time.time() - t0:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
