"""Reference check: our EVA-02 UperNet (algm_export.models.families.eva02) against timm + mmsegmentation 1.2.2.

Runs in the separate environment that has mmsegmentation (never the project's), with timm
installed there too (`/work/mmseg-venv/bin/pip install timm einops`; einops only for `--eva-git-dir`):

    PYTHONPATH=. /work/mmseg-venv/bin/python scripts/reference/eva02_check.py [--sizes 256,512]
        [--eva-git-dir /path/to/EVA/.git] [--out DIR]

For an EVA-02-S-sized UperNet at each size (mmseg's `TIMMBackbone` over timm's
`eva02_small_patch14_224` with `patch_size=16` and `img_size=<size>`, `out_indices` (3, 5, 7, 11),
`Feature2Pyramid` (4, 2, 1, 0.5), `UPerHead`; written like EVA-02's ADE20K configs: SyncBN, an
auxiliary FCN head, slide test_cfg) mmseg builds the model from the config file, SyncBN is
reverted to BN, every parameter and BN statistic is drawn at random (seeded), the model is saved
as an mmseg checkpoint beside its config and loaded back with `load_mmseg_eva02`. Then, on the
photographs scikit-image bundles (float32, max |diff| before argmax):

* the backbone features: timm's own (`TIMMBackbone` -> `FeatureGetterNet` ->
  `Eva.forward_intermediates`) against ours (the Backbone-interface loop), tolerance 1e-5;
* the logits of mmseg's whole inference (Feature2Pyramid + UPerHead built by mmseg), tol 1e-4;
* slide inference (the config's test_cfg) on a non-square photo.

With `--eva-git-dir` (a clone or bare mirror of github.com/baaivision/EVA), EVA-02's official
segmentation backbone `EVA2` (`EVA-02/seg/backbone/eva2.py`, read from that repository at run
time and executed with stand-ins for xformers (`memory_efficient_attention` = softmax
attention), apex (`FusedLayerNorm` = LayerNorm) and its `mmcv_custom`) is built S-sized with
sub-LN / SwiGLU / rotary, its weights (official key names) + an mmseg UPerHead saved as a 0.x
checkpoint with an `EVA2` config, and loaded through our key map: its fpn outputs against our
neck's, its logits against ours (tol 1e-4).

`mmcv.ops` is stubbed (mmcv-lite has no compiled ops; nothing here calls them). Exit status 1
when a difference exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import copy
import logging
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mmseg_setr_check import PHOTOS, NON_SQUARE, build_mmseg, import_mmseg, maxdiff, metas, photo, to_input  # noqa: E402

FEAT_TOL = 1e-5
LOGIT_TOL = 1e-4


def reference_config(size: int) -> dict:
    from algm_export.models.families.eva02 import builtin_eva02_config

    model = builtin_eva02_config("small", size, patch_size=16)
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    model["auxiliary_head"] = dict(
        type="FCNHead", in_channels=384, in_index=2, channels=256, num_convs=1, concat_input=False, dropout_ratio=0.1,
        num_classes=150, norm_cfg=norm_cfg, align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
    stride = size * 2 // 3
    model["test_cfg"] = dict(mode="slide", crop_size=(size, size), stride=(stride, stride))
    crop = (size, size)
    return dict(norm_cfg=norm_cfg, crop_size=crop, data_preprocessor=dict(model["data_preprocessor"], size=crop),
                model=model)


def check_timm(size: int, folder: Path, seed: int, rows: list, details: list) -> None:
    from algm_export.models.families.eva02 import load_mmseg_eva02
    from algm_export.models.formats.mmseg import format_config

    cfg_path = folder / f"eva02_s16_{size}.py"
    cfg_path.write_text(format_config(reference_config(size)))
    t0 = time.time()
    mm, mcfg = build_mmseg(cfg_path, seed)
    ckpt = folder / f"eva02_s16_{size}.pth"
    torch.save({"state_dict": mm.state_dict(), "meta": {"cfg": mcfg.pretty_text, "seed": seed}}, ckpt)
    ours = load_mmseg_eva02(cfg_path, ckpt)
    rep = ours.load_report
    name = "eva02_s16 (TIMMBackbone)"
    norm = ours.cfg.normalization
    prefix = sorted({".".join(k.split(".")[:3]) for k in mm.state_dict() if k.startswith("backbone.")})
    with torch.no_grad():
        xs = torch.cat([to_input(photo(p), (size, size), norm) for p in PHOTOS])
        feats_ref = mm.backbone(xs)                  # timm: FeatureGetterNet -> forward_intermediates
        feats_ours = ours.features(xs)
        for idx, a, b in zip(ours.cfg.out_indices, feats_ref, feats_ours):
            for i, p in enumerate(PHOTOS):
                rows.append((name, f"{size}x{size}", p, f"backbone block {idx}", maxdiff(a[i], b[i]),
                             float(a[i].abs().max()), FEAT_TOL))
        ref = mm.whole_inference(xs, metas(xs))
        got = ours(xs)
        for i, p in enumerate(PHOTOS):
            rows.append((name, f"{size}x{size}", p, "whole logits", maxdiff(ref[i], got[i]), float(ref[i].abs().max()),
                         LOGIT_TOL))
        hw = (size + 8, size * 3 // 2 + 4)
        x = to_input(photo(NON_SQUARE), hw, norm)
        ref_s, got_s = mm.inference(x, metas(x)), ours.inference(x)
        inf = ours.cfg.inference
        rows.append((name, f"{hw[0]}x{hw[1]}", NON_SQUARE, f"slide {inf['crop_size'][0]}/{inf['stride'][0]} logits",
                     maxdiff(ref_s, got_s), float(ref_s.abs().max()), LOGIT_TOL))
    details.append((name, size, "checkpoint", f"{len(mm.state_dict())} keys ({', '.join(prefix)}...); "
                    f"{rep['renamed']} renamed, ignored {len(rep['ignored'])} (auxiliary), missing {len(rep['missing'])}, "
                    f"unexpected {len(rep['unexpected'])}", f"{time.time() - t0:.0f} s"))


# ----------------------------------------------------------------------------- EVA-02's official backbone

def load_eva2_module(git_dir: str):
    """EVA-02's `EVA-02/seg/backbone/eva2.py`, read from the repository and run with stand-ins."""
    src = subprocess.run(["git", f"--git-dir={git_dir}", "show", "HEAD:EVA-02/seg/backbone/eva2.py"],
                         check=True, capture_output=True, text=True).stdout

    def mea(q, k, v, attn_bias=None, p=0.0, scale=None):   # xformers layout [B, N, H, C]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)

    xformers = types.ModuleType("xformers")
    xops = types.ModuleType("xformers.ops")
    xops.memory_efficient_attention = mea
    xformers.ops = xops
    apex = types.ModuleType("apex")
    apex_norm = types.ModuleType("apex.normalization")
    apex_norm.FusedLayerNorm = nn.LayerNorm
    apex.normalization = apex_norm
    mmcv_custom = types.ModuleType("mmcv_custom")
    mmcv_custom.load_checkpoint = lambda *a, **k: None
    for n, m in (("xformers", xformers), ("xformers.ops", xops), ("apex", apex), ("apex.normalization", apex_norm),
                 ("mmcv_custom", mmcv_custom)):
        sys.modules.setdefault(n, m)
    import mmseg.utils

    if not hasattr(mmseg.utils, "get_root_logger"):
        mmseg.utils.get_root_logger = lambda *a, **k: logging.getLogger("eva2")
    src = src.replace("@BACKBONES.register_module()", "")   # keep mmseg's registry untouched
    mod = types.ModuleType("eva2_reference")
    exec(compile(src, "EVA-02/seg/backbone/eva2.py", "exec"), mod.__dict__)
    return mod


def check_eva2(size: int, git_dir: str, folder: Path, seed: int, rows: list, details: list) -> None:
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    from algm_export.models.families.eva02 import load_mmseg_eva02
    from algm_export.models.mmseg_common import IMAGENET_MEAN_255, IMAGENET_STD_255, randomize_
    from algm_export.models.formats.mmseg import format_config

    mod = load_eva2_module(git_dir)
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    bb = dict(type="EVA2", img_size=size, patch_size=16, in_chans=3, embed_dim=384, depth=12, num_heads=6,
              mlp_ratio=4 * 2 / 3, out_indices=[3, 5, 7, 11], qkv_bias=True, drop_path_rate=0.1, init_values=None,
              use_checkpoint=False, use_abs_pos_emb=True, use_rel_pos_bias=False, use_shared_rel_pos_bias=False,
              rope=True, pt_hw_seq_len=16, intp_freq=True, subln=True, xattn=True, naiveswiglu=True, pretrained=None)
    head = dict(type="UPerHead", in_channels=[384] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6), channels=384,
                dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    aux = dict(type="FCNHead", in_channels=384, in_index=2, channels=256, num_convs=1, concat_input=False,
               dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg, align_corners=False,
               loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
    t0 = time.time()
    eva = mod.EVA2(**{k: v for k, v in bb.items() if k != "type"})
    eva = revert_sync_batchnorm(eva).eval()
    dec = revert_sync_batchnorm(MODELS.build(copy.deepcopy(head))).eval()
    aux_m = revert_sync_batchnorm(MODELS.build(copy.deepcopy(aux))).eval()
    randomize_(eva, seed)
    randomize_(dec, seed + 1)
    randomize_(aux_m, seed + 2)
    sd = {f"backbone.{k}": v for k, v in eva.state_dict().items()}
    sd.update({f"decode_head.{k}": v for k, v in dec.state_dict().items()})
    sd.update({f"auxiliary_head.{k}": v for k, v in aux_m.state_dict().items()})
    config = dict(model=dict(type="EncoderDecoder", pretrained=None, backbone=bb, decode_head=head, auxiliary_head=aux,
                             train_cfg=dict(), test_cfg=dict(mode="whole")),
                  img_norm_cfg=dict(mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255), to_rgb=True))
    own = folder / f"eva2_official_s16_{size}"       # a folder of its own: no other config .py beside it
    own.mkdir(exist_ok=True)
    ckpt = own / f"eva2_official_s16_{size}.pth"
    torch.save({"state_dict": sd, "meta": {"config": format_config(config)}}, ckpt)
    ours = load_mmseg_eva02(None, ckpt)              # 0.x: the config text from meta['config']
    assert ours.cfg.checkpoint_format == "eva2" and ours.config_path is None
    rep = ours.load_report
    name = "EVA2 official (S-sized)"
    with torch.no_grad():
        xs = torch.cat([to_input(photo(p), (size, size), ours.cfg.normalization) for p in PHOTOS])
        fr = eva(xs)
        fo = ours.neck(ours.features(xs))
        for lvl, (a, b) in enumerate(zip(fr, fo)):
            rows.append((name, f"{size}x{size}", "all photos", f"fpn{lvl + 1} / neck level {lvl}", maxdiff(a, b),
                         float(a.abs().max()), FEAT_TOL))
        ref = F.interpolate(dec(list(fr)), size=xs.shape[-2:], mode="bilinear", align_corners=False)
        got = ours(xs)
        for i, p in enumerate(PHOTOS):
            rows.append((name, f"{size}x{size}", p, "whole logits", maxdiff(ref[i], got[i]), float(ref[i].abs().max()),
                         LOGIT_TOL))
    details.append((name, size, "checkpoint", f"{len(sd)} official keys; {rep['renamed']} renamed, "
                    f"{len(rep['derived'])} rotary tables checked (max diff {rep['rope_table_max_diff']:.1e}) and dropped, "
                    f"ignored {len(rep['ignored'])}, missing {len(rep['missing'])}, unexpected {len(rep['unexpected'])}",
                    f"{time.time() - t0:.0f} s"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eva-git-dir", default=None, help="git dir of github.com/baaivision/EVA (official EVA2 check)")
    ap.add_argument("--out", default=None, help="keep the configs and checkpoints here (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mmseg = import_mmseg()
    import mmcv
    import mmengine
    import timm

    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = None
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory()
        folder = Path(tmp.name)
    print(f"mmseg {mmseg.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, timm {timm.__version__}, "
          f"torch {torch.__version__}, {args.threads} threads")
    rows: list = []
    details: list = []
    t0 = time.time()
    for size in sizes:
        check_timm(size, folder, args.seed, rows, details)
        print(f"  TIMMBackbone {size}: done ({time.time() - t0:.0f} s)", flush=True)
        if args.eva_git_dir:
            check_eva2(size, args.eva_git_dir, folder, args.seed + 10, rows, details)
            print(f"  EVA2 {size}: done ({time.time() - t0:.0f} s)", flush=True)

    print("\n| model | input | photo | compared | max abs diff | max abs value | tol |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    for name, size, p, what, d, mag, tol in rows:
        ok &= d <= tol
        print(f"| {name} | {size} | {p} | {what} | {d:.2e} | {mag:.2f} | {tol:.0e} |")
    print("\n| model | input | check | note | time |")
    print("|---|---|---|---|---|")
    for row in details:
        print("| " + " | ".join(str(v) for v in row) + " |")
    worst = max(d / tol for *_, d, _, tol in rows)
    print(f"\nworst max |diff| / tolerance {worst:.2f}: {'PASS' if ok else 'FAIL'}; {time.time() - t0:.0f} s")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
