"""Reference check: our SegViT (algm_export.models.families.segvit) against SegViT's own ATM head.

Runs in the separate environment with mmsegmentation 1.2.2 (never the project's), with SegViT's
repository fetched as a bare git folder (github.com/zbwxp/SegVit):

    PYTHONPATH=. /work/mmseg-venv/bin/python scripts/reference/segvit_check.py \
        --segvit-git /work/.mirror/zbwxp+SegVit/repo [--sizes 256] [--out DIR]

The reference model is mmsegmentation 1.x's `EncoderDecoder` + `VisionTransformer` with SegViT's
`ATMHead` (`decode_heads/atm_head.py`) and its `ATMLoss` (`losses/`, for the checkpoint's loss
buffer). Those files are read from the git folder with `git show` into a temporary package
*outside* this repository and imported from there; nothing of SegViT is copied into the repo.
SegViT targets mmcv-full 1.x / mmseg 0.x; the shims that let its files import on mmcv-lite 2.x /
mmseg 1.x are installed in `sys.modules` before the import, and are all here:

* `mmcv.ops`: a stub (mmcv-lite has no compiled ops; nothing here calls them) — from the SETR
  harness (`mmseg_setr_check.stub_mmcv_ops`);
* `mmcv.runner.auto_fp16` / `force_fp32`: identity decorators (mixed-precision hooks of mmcv 1.x,
  no effect in float32);
* `timm.models.layers.trunc_normal_` = `torch.nn.init.trunc_normal_` (timm is not installed
  there; only used by the head's initialisation, which is overwritten by random weights anyway);
* `mmseg.models.builder.HEADS` / `LOSSES`, `mmseg.models.decode_heads.decode_head.BaseDecodeHead`,
  `mmseg.models.losses.accuracy` exist in mmseg 1.x (`HEADS = LOSSES = MODELS`), so the head and
  the loss register into mmseg 1.x's registry unchanged; mmseg 1.x's `BaseDecodeHead` accepts the
  head's arguments.

Checks, for a ViT-S/16 backbone at each size (12 blocks, `out_indices` [5, 7, 11], 3 stages, head
width 192, 6 heads; SegViT's `configs/_base_/models/seg_vit-b16.py` scaled down):

1. a SegViT-style 0.x config (`_base_` model file + a top file with `img_norm_cfg`, as the
   published configs are laid out) is built by mmengine/mmseg, every parameter re-drawn at random
   (seeded; `randomize_segvit_`, whose ATM scales make a random model segment, so that the argmax
   agreement means something), saved as a SegViT checkpoint (`{'state_dict', 'meta': {'config'}}`, 0.x layout:
   patch-embedding bias, the loss's `criterion.empty_weight` buffer) beside its config, and loaded
   by our `load_segvit`;
2. on the photographs bundled with scikit-image, resized to the crop: max |diff| of the outputs
   (class probabilities, `softmax x sigmoid`) of mmseg's `encode_decode` (the 0.x whole-crop
   forward) and of ours, per photo; the backbone outputs and the per-stage mask logits too;
3. slide inference (the config's `test_cfg`) on a non-square photo at its own size (300 x 451);
4. the published ADE20K ViT-L config (`configs/segvit/segvit_vit-l_jax_640x640_160k_ade20k.py`
   with its `_base_` chain, from the git folder): parsed by our parser (never executed) and built;
   its settings (slide 640 / 608, stages, widths, normalisation) and its state-dict keys and shapes
   compared with mmseg's build of the same file (`--no-vit-l` skips it: ~2.5 GB of memory).

Exit status 1 when any difference exceeds --tol (1e-4) or a key / setting differs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmseg_setr_check import PHOTOS, maxdiff, metas, photo, stub_mmcv_ops, to_input  # noqa: E402

NON_SQUARE = "chelsea"  # 300 x 451
SEGVIT_FILES = ("decode_heads/atm_head.py", "losses/atm_loss.py", "losses/criterion.py", "losses/misc.py")
VIT_L_CONFIG = "configs/segvit/segvit_vit-l_jax_640x640_160k_ade20k.py"


# ----------------------------------------------------------------------------- shims + SegViT import

def install_shims() -> None:
    stub_mmcv_ops()
    runner = types.ModuleType("mmcv.runner")

    def _decorator(*args, **kwargs):                 # @auto_fp16() / @force_fp32(apply_to=...)
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda fn: fn

    runner.auto_fp16 = runner.force_fp32 = _decorator
    sys.modules.setdefault("mmcv.runner", runner)
    if "timm" not in sys.modules:
        timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
        layers.trunc_normal_ = torch.nn.init.trunc_normal_
        timm.models, models.layers = models, layers
        sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})
    os.environ.setdefault("MPLBACKEND", "Agg")       # atm_head imports pyplot


def git_show(git_dir: str, path: str) -> str:
    return subprocess.check_output(["git", "--git-dir", git_dir, "show", f"HEAD:{path}"]).decode()


def import_segvit(git_dir: str, tmp: Path):
    """SegViT's head and loss, imported from a temporary package outside the repository."""
    pkg = tmp / "segvit_ref"
    for sub in ("", "decode_heads", "losses"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    for f in SEGVIT_FILES:
        (pkg / f).write_text(git_show(git_dir, f))
    sys.path.insert(0, str(tmp))
    import segvit_ref.decode_heads.atm_head as atm_head  # noqa: F401  (registers ATMHead)
    import segvit_ref.losses.atm_loss  # noqa: F401  (registers ATMLoss)

    return atm_head


def import_mmseg():
    import warnings

    warnings.filterwarnings("ignore")
    import mmseg  # noqa: F401
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return mmseg


# ----------------------------------------------------------------------------- configs

def write_configs(size: int, folder: Path) -> tuple[Path, Path]:
    """(config for our loader: 0.x, `_base_` + top file; config for mmseg 1.x: same, patch_bias=True)."""
    from algm_export.models.families.segvit import builtin_segvit_config
    from algm_export.models.formats.mmseg import format_config

    cfg = builtin_segvit_config(size)
    base = folder / "_base_" / f"seg_vit-s16_{size}.py"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_text(format_config({"model": cfg["model"]}))
    top = folder / f"segvit_vit-s_{size}.py"
    top.write_text(f"_base_ = ['./_base_/{base.name}']\n" + format_config({"img_norm_cfg": cfg["img_norm_cfg"]}))
    mm = folder / f"segvit_vit-s_{size}_mmseg1.py"
    mm.write_text(f"_base_ = ['./{top.name}']\nmodel = dict(backbone=dict(patch_bias=True))\n")
    return top, mm


def build_mmseg(config_path: Path, seed: int):
    from mmengine import Config
    from mmseg.registry import MODELS

    from algm_export.models.families.segvit import randomize_segvit_

    cfg = Config.fromfile(str(config_path))
    cfg.model.pop("pretrained", None)
    model = MODELS.build(cfg.model)
    randomize_segvit_(model, seed)     # works on mmseg's module: the same parameter names
    return model.eval(), cfg


# ----------------------------------------------------------------------------- checks

def stage_masks_reference(head, feats):
    """SegViT's per-stage mask logits (the `attns` of ATMHead.forward), recomputed with its modules."""
    x = [head.d4_to_d3(f) for f in feats[:head.use_stages]][::-1]
    q = head.q.weight.repeat(x[0].shape[0], 1, 1).transpose(0, 1)
    out = []
    for x_, proj, norm, dec in zip(x, head.input_proj, head.proj_norm, head.decoder):
        q, attn = dec(q, norm(proj(x_)).transpose(0, 1))
        out.append(attn.transpose(-1, -2))                  # [B, N, Q]
    return out


def check_size(size: int, folder: Path, seed: int, rows: list, details: list) -> None:
    from algm_export.models.base import Level, TokenState
    from algm_export.models.families.segvit import load_segvit

    top, mm_cfg = write_configs(size, folder)
    t0 = time.time()
    mm, mcfg = build_mmseg(mm_cfg, seed)
    ckpt = top.with_suffix(".pth")
    sd = mm.state_dict()
    assert "decode_head.loss_decode.criterion.empty_weight" in sd
    torch.save({"state_dict": sd, "meta": {"config": top.read_text(), "CLASSES": [f"c{i}" for i in range(150)]}},
               ckpt)
    ours = load_segvit(top, ckpt)
    name = "segvit vit-s16"
    norm = ours.cfg.normalization
    with torch.no_grad():
        xs = torch.cat([to_input(photo(p), (size, size), norm) for p in PHOTOS])
        ref = mm.encode_decode(xs, metas(xs))
        got = ours(xs)
        for i, p in enumerate(PHOTOS):
            rows.append((name, f"{size}x{size}", p, "whole crop", maxdiff(ref[i], got[i]), float(ref[i].abs().max()),
                         float((ref[i].argmax(0) == got[i].argmax(0)).float().mean()),
                         int(ref[i].argmax(0).unique().numel())))
        fr = mm.backbone(xs)
        fo = ours.backbone(xs)
        for idx, a, b in zip(ours.backbone.out_indices, fr, fo):
            details.append((name, size, f"backbone out_indices {idx}", tuple(a.shape), maxdiff(a, b)))
        levels = [Level(i, f.flatten(2).transpose(1, 2), TokenState.initial(f.flatten(2).transpose(1, 2),
                                                                             tuple(f.shape[-2:]), 0))
                  for i, f in zip(ours.backbone.out_indices, fr)]
        _, mo = ours.decoder.stage_masks(levels)
        for s, (a, b) in enumerate(zip(stage_masks_reference(mm.decode_head, fr), mo), start=1):
            details.append((name, size, f"stage {s} mask logits (same features)", tuple(a.shape), maxdiff(a, b)))
        img = photo(NON_SQUARE)
        hw = tuple(img.shape[:2])
        x = to_input(img, hw, norm)
        ref_s = mm.inference(x, metas(x))
        got_s = ours.inference(x)
        inf = ours.cfg.inference
        rows.append((name, f"{hw[0]}x{hw[1]}", NON_SQUARE, f"slide {inf['crop_size'][0]}/{inf['stride'][0]}",
                     maxdiff(ref_s, got_s), float(ref_s.abs().max()),
                     float((ref_s.argmax(1) == got_s.argmax(1)).float().mean()), int(ref_s.argmax(1).unique().numel())))
    rep = ours.load_report
    details.append((name, size, "checkpoint keys", f"{len(ours.state_dict())} loaded; ignored {rep['ignored']}; "
                    f"notes: {'; '.join(ours.cfg.notes)}", time.time() - t0))


def check_published_config(git_dir: str, tmp: Path, details: list) -> bool:
    """The published ViT-L ADE20K config: our parse + build vs mmseg's build (keys, shapes, settings)."""
    from mmengine import Config
    from mmseg.registry import MODELS

    from algm_export.models.families.segvit import build_segvit
    from algm_export.models.formats.mmseg_config import parse_config

    root = tmp / "segvit_configs"
    files = subprocess.check_output(["git", "--git-dir", git_dir, "ls-tree", "-r", "--name-only", "HEAD",
                                     "configs"]).decode().split()
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(git_show(git_dir, f))
    path = root / VIT_L_CONFIG
    config = parse_config(path)
    ours = build_segvit(config["model"], config=config)
    c = ours.cfg
    want = {"inference": {"mode": "slide", "crop_size": [640, 640], "stride": [608, 608]},
            "decoder_layers": (7, 15, 23), "n_layers": 24, "d_model": 1024, "n_cls": 150,
            "head": {"img_size": 640, "embed_dims": 512, "num_layers": 3, "num_heads": 16, "use_stages": 3},
            "normalization": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}, "num_prefix": 0}
    got = {k: getattr(c, k) for k in want}
    ok_settings = got == want
    details.append(("published ViT-L ADE20K", 640, "settings", "match" if ok_settings else f"{got} != {want}", None))
    mcfg = Config.fromfile(str(path))
    mcfg.model.pop("pretrained", None)
    mcfg.model.backbone.patch_bias = True                # 0.x ViT: the patch embedding has a bias
    mm = MODELS.build(mcfg.model)
    a = {k: tuple(v.shape) for k, v in mm.state_dict().items() if not k.startswith("decode_head.loss_decode.")}
    b = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ok_keys = a == b
    diff = sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])
    details.append(("published ViT-L ADE20K", 640, "state-dict keys / shapes",
                    f"{len(b)} keys identical" if ok_keys else f"differ: {diff[:8]}", None))
    del mm, ours
    return ok_settings and ok_keys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segvit-git", default="/work/.mirror/zbwxp+SegVit/repo",
                    help="bare git folder of github.com/zbwxp/SegVit")
    ap.add_argument("--sizes", default="256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", default=None, help="keep the configs and checkpoints here (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-vit-l", action="store_true", help="skip building the published ViT-L config")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    install_shims()
    mmseg = import_mmseg()
    import mmcv
    import mmengine

    tmp = tempfile.TemporaryDirectory()
    tmp_path = Path(tmp.name)
    import_segvit(args.segvit_git, tmp_path)
    commit = subprocess.check_output(["git", "--git-dir", args.segvit_git, "rev-parse", "HEAD"]).decode().strip()
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = tmp_path / "run"
        folder.mkdir()
    print(f"SegViT {commit[:12]}, mmseg {mmseg.__version__}, mmcv {mmcv.__version__}, mmengine "
          f"{mmengine.__version__}, torch {torch.__version__}, {args.threads} threads")
    rows: list = []
    details: list = []
    t0 = time.time()
    for i, size in enumerate(int(s) for s in args.sizes.split(",")):
        check_size(size, folder, args.seed + i, rows, details)
        print(f"  {size}: done ({time.time() - t0:.0f} s)", flush=True)
    ok_cfg = True
    if not args.no_vit_l:
        ok_cfg = check_published_config(args.segvit_git, tmp_path, details)

    print("\n| model | input | photo | mode | max abs diff | max abs output | argmax agreement | classes |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, size, p, mode, d, mag, agree, ncls in rows:
        worst = max(worst, d)
        print(f"| {name} | {size} | {p} | {mode} | {d:.2e} | {mag:.2f} | {agree:.4f} | {ncls} |")
    print("\n| model | input | check | shape / note | max abs diff |")
    print("|---|---|---|---|---|")
    for name, size, what, shape, d in details:
        numeric = what.startswith(("backbone", "stage"))
        if numeric:
            worst = max(worst, d)
        dd = "" if d is None else (f"{d:.2e}" if numeric else f"{d:.0f} s")
        print(f"| {name} | {size} | {what} | {shape} | {dd} |")
    ok = worst <= args.tol and ok_cfg
    print(f"\nworst max |diff| {worst:.2e} (tolerance {args.tol:.0e}); published config "
          f"{'matches' if ok_cfg else 'DIFFERS'}: {'PASS' if ok else 'FAIL'}; {time.time() - t0:.0f} s")
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
