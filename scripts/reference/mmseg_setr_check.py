"""Reference check: our SETR (algm_export.models.families.setr) against mmsegmentation 1.2.2.

Runs in a separate environment that has mmsegmentation (never the project's):

    python3 -m venv /work/mmseg-venv
    /work/mmseg-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/mmseg-venv/bin/pip install mmsegmentation==1.2.2 mmengine "mmcv-lite==2.1.0" ftfy regex scikit-image pytest
    PYTHONPATH=. /work/mmseg-venv/bin/python scripts/reference/mmseg_setr_check.py [--sizes 256,512] [--out DIR]

(mmseg 1.2.2 refuses mmcv >= 2.2.0, hence mmcv-lite 2.1.0; mmcv-lite has no compiled ops, so
`mmcv.ops` is replaced by a stub module here before mmseg is imported: no SETR code uses it.)

For SETR naive, PUP and MLA with a ViT-S/16 backbone built at each size: the mmseg model is built
from a config file (written like the published ADE20K configs: SyncBN, auxiliary heads, slide
test_cfg), SyncBN reverted to BN (what inference uses), every parameter and BN statistic drawn
at random (seeded), saved as an mmseg checkpoint (`{'state_dict', 'meta': {'cfg': pretty_text}}`)
beside its config `.py`, and loaded back with `load_mmseg_setr`. Then, on the photographs that
scikit-image bundles, compared (max |diff| of float32 logits, before argmax):

* whole inference at the built size (mmseg `EncoderDecoder.whole_inference`), per photo;
* the backbone's outputs for every `out_indices` entry (max over photos);
* whole inference on a non-square photo whose sides are not multiples of 16 (padding and the
  position-embedding resize);
* slide inference (the config's test_cfg) on that non-square photo;
* a 0.x-style checkpoint (naive, the smallest size): patch-embedding bias, `meta['config']`
  holding the config text with `img_norm_cfg` and no `patch_bias`, loaded from the meta alone.

Exit status 1 when any difference exceeds --tol (1e-4).
"""

from __future__ import annotations

import argparse
import copy
import glob
import os
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field"]
NON_SQUARE = "chelsea"  # 300 x 451


def stub_mmcv_ops() -> None:
    """mmcv-lite has no compiled ops: a stand-in `mmcv.ops` whose names fail only if called."""
    if "mmcv.ops" in sys.modules:
        return

    class _Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)

            def _missing(*a, **k):
                raise RuntimeError(f"mmcv.ops.{name} is a stub (mmcv-lite has no compiled ops)")

            return type(name, (), {"__init__": _missing}) if name[:1].isupper() else _missing

    mod = _Stub("mmcv.ops")
    mod.__path__ = []
    sys.modules["mmcv.ops"] = mod


def import_mmseg():
    stub_mmcv_ops()
    warnings.filterwarnings("ignore")
    import mmseg  # noqa: F401
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    return mmseg


def photo(name: str) -> np.ndarray:
    import skimage.data
    from PIL import Image

    path = glob.glob(os.path.join(os.path.dirname(skimage.data.__file__), name + ".*"))[0]
    img = np.asarray(Image.open(path).convert("RGB"))
    return img[..., :3]


def to_input(img: np.ndarray, size, normalization) -> torch.Tensor:
    """An RGB photo resized to `size` (H, W), in the network's normalisation."""
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
    t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    mean = torch.tensor(normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, 3, 1, 1)
    return (t - mean) / std


def reference_config(kind: str, size: int) -> dict:
    """A published-style config (as `configs/setr/*ade20k*.py` flatten to) with a ViT-S backbone."""
    from algm_export.models.families.setr import builtin_setr_config

    model = builtin_setr_config(kind, size)
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    if kind == "mla":
        model["auxiliary_head"] = [
            dict(type="FCNHead", in_channels=256, channels=256, in_index=i, dropout_ratio=0, norm_cfg=norm_cfg,
                 act_cfg=dict(type="ReLU"), num_convs=0, kernel_size=1, concat_input=False, num_classes=150,
                 align_corners=False, loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
            for i in range(4)]
    else:
        model["auxiliary_head"] = [
            dict(type="SETRUPHead", in_channels=384, channels=256, in_index=i, num_classes=150, dropout_ratio=0,
                 norm_cfg=norm_cfg, act_cfg=dict(type="ReLU"), num_convs=2, kernel_size=1 if kind == "naive" else 3,
                 align_corners=False,
                 loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
            for i in range(3)]
    stride = size * 2 // 3
    model["test_cfg"] = dict(mode="slide", crop_size=(size, size), stride=(stride, stride))
    crop = (size, size)
    return dict(norm_cfg=norm_cfg, crop_size=crop, data_preprocessor=dict(model["data_preprocessor"], size=crop),
                model=model)


def build_mmseg(config_path: Path, seed: int):
    from mmengine import Config
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    from algm_export.models.families.setr import randomize_

    cfg = Config.fromfile(str(config_path))
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    randomize_(model, seed)
    return model.eval(), cfg


def metas(x: torch.Tensor) -> list:
    hw = tuple(x.shape[-2:])
    return [dict(ori_shape=hw, img_shape=hw, pad_shape=hw, padding_size=[0, 0, 0, 0])] * x.shape[0]


def maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def check_model(kind: str, size: int, folder: Path, seed: int, rows: list, details: list) -> None:
    from algm_export.models.families.setr import format_config, load_mmseg_setr

    cfg_dict = reference_config(kind, size)
    cfg_path = folder / f"setr_{kind}_{size}.py"
    cfg_path.write_text(format_config(cfg_dict))
    t0 = time.time()
    mm, mcfg = build_mmseg(cfg_path, seed)
    ckpt = folder / f"setr_{kind}_{size}.pth"
    torch.save({"state_dict": mm.state_dict(), "meta": {"cfg": mcfg.pretty_text, "seed": seed}}, ckpt)
    ours = load_mmseg_setr(cfg_path, ckpt)
    ignored = len(ours.load_report["ignored"])
    norm = ours.cfg.normalization
    name = f"setr_{kind}"
    with torch.no_grad():
        xs = torch.cat([to_input(photo(p), (size, size), norm) for p in PHOTOS])
        ref = mm.whole_inference(xs, metas(xs))
        got = ours(xs)
        for i, p in enumerate(PHOTOS):
            rows.append((name, f"{size}x{size}", p, "whole", maxdiff(ref[i], got[i]), float(ref[i].abs().max())))
        fr = mm.backbone(xs)
        fo = ours.backbone(xs)
        for idx, a, b in zip(ours.backbone.out_indices, fr, fo):
            details.append((name, size, f"backbone out_indices {idx}", tuple(a.shape), maxdiff(a, b)))
        # non-square, sides not multiples of 16: padding + position-embedding resize
        img = photo(NON_SQUARE)
        hw = (size + 8, size * 3 // 2 + 4)
        x = to_input(img, hw, norm)
        rows.append((name, f"{hw[0]}x{hw[1]}", NON_SQUARE, "whole",
                     maxdiff(mm.whole_inference(x, metas(x)), ours(x)), None))
        for idx, a, b in zip(ours.backbone.out_indices, mm.backbone(x), ours.backbone(x)):
            details.append((name, f"{hw[0]}x{hw[1]}", f"backbone out_indices {idx}", tuple(a.shape), maxdiff(a, b)))
        # slide inference, as the config's test_cfg says
        ref_s = mm.inference(x, metas(x))
        got_s = ours.inference(x)
        inf = ours.cfg.inference
        rows.append((name, f"{hw[0]}x{hw[1]}", NON_SQUARE,
                     f"slide {inf['crop_size'][0]}/{inf['stride'][0]}", maxdiff(ref_s, got_s), None))
    details.append((name, size, "checkpoint keys", f"{len(ours.state_dict())} loaded, {ignored} auxiliary ignored",
                    time.time() - t0))


def check_v0(size: int, folder: Path, seed: int, rows: list, details: list) -> None:
    """A 0.x-style checkpoint: patch bias, meta['config'] text with img_norm_cfg, no patch_bias key."""
    from algm_export.models.families.setr import format_config, load_mmseg_setr

    cfg_dict = reference_config("naive", size)
    cfg_dict["model"]["backbone"]["patch_bias"] = True      # what 0.x always built
    mm_path = folder / f"setr_naive_{size}_v0_mmseg.py"
    mm_path.write_text(format_config(cfg_dict))
    mm, _ = build_mmseg(mm_path, seed + 100)
    v0 = copy.deepcopy(cfg_dict)
    del v0["model"]["backbone"]["patch_bias"]                # 0.x configs have no such key
    dp = v0["model"].pop("data_preprocessor")
    v0.pop("data_preprocessor")
    v0["img_norm_cfg"] = dict(mean=dp["mean"], std=dp["std"], to_rgb=True)
    ckpt = folder / f"setr_naive_{size}_v0.pth"
    torch.save({"state_dict": mm.state_dict(), "meta": {"config": format_config(v0), "CLASSES": ["c"] * 150}}, ckpt)
    ours = load_mmseg_setr(None, ckpt)
    assert ours.backbone.patch_embed.projection.bias is not None
    with torch.no_grad():
        xs = torch.cat([to_input(photo(p), (size, size), ours.cfg.normalization) for p in PHOTOS])
        ref = mm.whole_inference(xs, metas(xs))
        got = ours(xs)
    for i, p in enumerate(PHOTOS):
        rows.append(("setr_naive (0.x ckpt)", f"{size}x{size}", p, "whole", maxdiff(ref[i], got[i]),
                     float(ref[i].abs().max())))
    details.append(("setr_naive (0.x ckpt)", size, "notes", "; ".join(ours.cfg.notes), None))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--kinds", default="naive,pup,mla")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", default=None, help="keep the configs and checkpoints here (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mmseg = import_mmseg()
    import mmcv
    import mmengine

    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    tmp = None
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name)
    print(f"mmseg {mmseg.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, "
          f"torch {torch.__version__}, {args.threads} threads")
    rows: list = []
    details: list = []
    t0 = time.time()
    for size in sizes:
        for i, kind in enumerate(kinds):
            check_model(kind, size, folder, args.seed + i, rows, details)
            print(f"  {kind} {size}: done ({time.time() - t0:.0f} s)", flush=True)
    if "naive" in kinds:
        check_v0(min(sizes), folder, args.seed, rows, details)

    print("\n| model | input | photo | mode | max abs diff | max abs logit |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name, size, p, mode, d, mag in rows:
        worst = max(worst, d)
        print(f"| {name} | {size} | {p} | {mode} | {d:.2e} | {'' if mag is None else f'{mag:.2f}'} |")
    print("\n| model | input | check | shape / note | max abs diff |")
    print("|---|---|---|---|---|")
    for name, size, what, shape, d in details:
        if what.startswith("backbone"):
            worst = max(worst, d)
        dd = "" if d is None else (f"{d:.2e}" if what.startswith("backbone") else f"{d:.0f} s")
        print(f"| {name} | {size} | {what} | {shape} | {dd} |")
    ok = worst <= args.tol
    print(f"\nworst max |diff| {worst:.2e} (tolerance {args.tol:.0e}): {'PASS' if ok else 'FAIL'}; "
          f"{time.time() - t0:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
