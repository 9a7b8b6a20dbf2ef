"""SETR (mmsegmentation layout): built-ins, mmseg checkpoints, the config parser, parity with mmseg.

The parity tests at the end need mmsegmentation (run them in the reference environment, see
scripts/reference/mmseg_setr_check.py); everything else runs anywhere.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.base import TokenState
from algm_export.models.families import setr as S
from algm_export.models.formats.mmseg import PATCH_BIAS_KEY, format_config
from algm_export.models.mmseg_common import mmseg_slide_inference, randomize_
from algm_export.models.formats.mmseg_config import parse_config

from conftest import photo, prep

CONFIGS = Path(__file__).parent / "data" / "mmseg_configs" / "configs"


def tiny_cfg(kind: str, size=64, n_cls: int = 5, **backbone) -> dict:
    """A published-style SETR `model` dict with a tiny ViT (D=64, 4 blocks) for quick tests."""
    m = S.builtin_setr_config(kind, size, n_cls)
    m["backbone"].update(embed_dims=64, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3))
    m["backbone"].update(backbone)
    if kind == "mla":
        m["neck"].update(in_channels=[64] * 4, out_channels=32)
        m["decode_head"].update(in_channels=(32,) * 4, mla_channels=16, channels=64)
    else:
        m["decode_head"].update(in_channels=64, channels=32)
    return m


def tiny(kind: str, seed: int = 0, **kw) -> S.SETR:
    return randomize_(S.build_setr(tiny_cfg(kind, **kw)), seed).eval()


@pytest.fixture(scope="module")
def builtins():
    return {k: S.builtin_setr(k, 64, seed=i) for i, k in enumerate(("naive", "pup", "mla"))}


# ----------------------------------------------------------------------------- built-ins

@pytest.mark.slow
def test_builtins_build_and_run(builtins):
    x = prep(photo("astronaut"), (64, 80), norm="deit")
    for kind, m in builtins.items():
        cfg = m.cfg
        assert cfg.family == "setr" and cfg.decoder_name == f"setr_{kind}"
        assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.patch_size) == (384, 12, 6, 16)
        assert m.num_prefix == (0 if kind == "mla" else 1) == cfg.num_prefix
        assert cfg.decoder_layers == ((2, 5, 8, 11) if kind == "mla" else (11,))
        assert cfg.normalization["mean"] == pytest.approx((0.485, 0.456, 0.406))
        assert cfg.normalization["std"] == pytest.approx((0.229, 0.224, 0.225))
        assert cfg.grid == (4, 4) and cfg.inference["mode"] == "whole"
        d = cfg.to_dict()
        assert d["num_prefix"] == cfg.num_prefix and d["image_size"] == [64, 64]
        prefixes = {k.split(".")[0] for k in m.state_dict()}
        assert prefixes == ({"backbone", "neck", "decode_head"} if kind == "mla" else {"backbone", "decode_head"})
        with torch.no_grad():
            y = m(x)
        assert y.shape == (1, 150, 64, 80) and torch.isfinite(y).all()
        # nothing left at an identity: BN statistics and norm scales were drawn
        bn = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
        assert bn and all(not torch.allclose(b.running_var, torch.ones_like(b.running_var)) for b in bn)
        assert not torch.allclose(m.backbone.layers[0].ln1.weight, torch.ones(384))
        assert m.macs() > m.backbone.depth * m.backbone.block_macs(17 - m.num_prefix, 17 - m.num_prefix)


def test_random_weights_are_seeded():
    a, b, c = tiny("pup", seed=3).state_dict(), tiny("pup", seed=3).state_dict(), tiny("pup", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if not k.endswith("num_batches_tracked"))


def test_decoder_is_not_a_registered_module():
    m = tiny("mla")
    assert "decoder" not in dict(m.named_children())
    assert set(m.decoder.state_dict()) == {k for k in m.state_dict() if not k.startswith("backbone.")}
    assert m.decoder.neck is m.neck and m.decoder.decode_head is m.decode_head
    m.train()
    assert m.decoder.training and m.decode_head.training
    m.eval()
    assert not m.decoder.training


# ----------------------------------------------------------------------------- names

def test_backbone_keys_are_mmsegs():
    """Keys as mmseg 1.2.2's VisionTransformer names them (read off the real module)."""
    cfg = tiny_cfg("naive", 32, num_layers=2, pre_norm=True, patch_norm=True, final_norm=True, patch_bias=True,
                   num_fcs=3, qkv_bias=False, out_indices=(0, 1))
    cfg["decode_head"]["in_index"] = -1
    m = S.build_setr(cfg)
    keys = [k[len("backbone."):] for k in m.state_dict() if k.startswith("backbone.")
            and not k.startswith("backbone.layers.1.")]
    assert keys == [
        "cls_token", "pos_embed", "patch_embed.projection.weight", "patch_embed.projection.bias",
        "patch_embed.norm.weight", "patch_embed.norm.bias", "ln_pre.weight", "ln_pre.bias",
        "layers.0.ln1.weight", "layers.0.ln1.bias", "layers.0.attn.attn.in_proj_weight",
        "layers.0.attn.attn.out_proj.weight", "layers.0.ln2.weight", "layers.0.ln2.bias",
        "layers.0.ffn.layers.0.0.weight", "layers.0.ffn.layers.0.0.bias", "layers.0.ffn.layers.1.0.weight",
        "layers.0.ffn.layers.1.0.bias", "layers.0.ffn.layers.2.weight", "layers.0.ffn.layers.2.bias",
        "ln1.weight", "ln1.bias"]
    assert m.backbone.pos_embed.shape == (1, 5, 64) and m.backbone.layers[0].ln1.eps == 1e-6


def test_head_and_neck_keys_are_mmsegs():
    naive = {k for k in S.build_setr(tiny_cfg("naive")).state_dict() if not k.startswith("backbone.")}
    assert naive == {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias", "decode_head.norm.weight",
                     "decode_head.norm.bias", "decode_head.up_convs.0.0.conv.weight"} | {
        f"decode_head.up_convs.0.0.bn.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked")}
    pup = S.build_setr(tiny_cfg("pup")).state_dict()
    assert pup["decode_head.up_convs.3.0.conv.weight"].shape == (32, 32, 3, 3)
    mla = S.build_setr(tiny_cfg("mla")).state_dict()
    for k in ("neck.norm.3.weight", "neck.mla.channel_proj.0.conv.weight", "neck.mla.channel_proj.3.bn.running_var",
              "neck.mla.feat_extract.2.conv.weight", "decode_head.up_convs.3.1.bn.weight",
              "decode_head.conv_seg.weight"):
        assert k in mla, k
    assert "neck.mla.channel_proj.0.conv.bias" not in mla  # a ConvModule with a norm has no conv bias
    assert mla["decode_head.conv_seg.weight"].shape == (5, 64, 1, 1)


# ----------------------------------------------------------------------------- checkpoints

def test_save_load_round_trip(tmp_path):
    m = tiny("mla", seed=1)
    path = S.save_mmseg_setr(m, tmp_path / "setr.pth")
    assert path.with_suffix(".py").is_file()
    x = prep(photo("coffee"), (64, 96), norm="deit")
    with torch.no_grad():
        ref = m(x)
    for source in (path.with_suffix(".py"), None):  # the config file, then the checkpoint's meta['cfg']
        m2 = S.load_mmseg_setr(source, path)
        assert list(m2.state_dict()) == list(m.state_dict())
        assert all(torch.equal(m2.state_dict()[k], v) for k, v in m.state_dict().items())
        with torch.no_grad():
            assert torch.equal(m2(x), ref)
        assert m2.cfg.decoder_name == "setr_mla" and m2.num_prefix == 0
        assert m2.config_path == (None if source is None else str(source)) and m2.source == str(path)


def test_key_mismatches_are_listed(tmp_path):
    m = tiny("naive")
    sd = dict(m.state_dict())
    sd.pop("decode_head.norm.weight")
    sd["decode_head.extra.weight"] = torch.zeros(1)
    sd["auxiliary_head.0.conv_seg.weight"] = torch.zeros(5, 32, 1, 1)  # training-only: ignored
    torch.save({"state_dict": sd, "meta": {}}, tmp_path / "bad.pth")
    cfg_py = tmp_path / "bad.py"
    cfg_py.write_text(format_config({"model": m.cfg.model_cfg}))
    with pytest.raises(CheckpointError) as e:
        S.load_mmseg_setr(cfg_py, tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing keys (1): decode_head.norm.weight" in msg
    assert "unexpected keys (1): decode_head.extra.weight" in msg and "auxiliary_head" not in msg
    loose = S.load_mmseg_setr(cfg_py, tmp_path / "bad.pth", strict=False)
    assert loose.load_report["missing"] == ["decode_head.norm.weight"]
    assert loose.load_report["ignored"] == ["auxiliary_head.0.conv_seg.weight"]
    sd = dict(m.state_dict())
    sd["decode_head.conv_seg.weight"] = torch.zeros(7, 32, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches: decode_head.conv_seg.weight \(7, 32, 1, 1\)"):
        S.load_mmseg_setr(cfg_py, tmp_path / "shape.pth", strict=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        S.load_mmseg_setr(cfg_py, tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        S.load_mmseg_setr(cfg_py, tmp_path / "junk.pth")


def test_mmseg_0x_checkpoint_with_patch_bias(tmp_path):
    """0.x: the patch conv always had a bias; configs had no `patch_bias`, `img_norm_cfg` and
    `meta['config']`. The bias is loaded, not dropped."""
    model_cfg = tiny_cfg("naive")
    model_cfg["backbone"]["patch_bias"] = True
    ref = randomize_(S.build_setr(model_cfg), 5).eval()
    v0 = copy.deepcopy(model_cfg)
    del v0["backbone"]["patch_bias"]
    dp = v0.pop("data_preprocessor")
    text = format_config({"img_norm_cfg": dict(mean=dp["mean"], std=dp["std"], to_rgb=True), "model": v0})
    torch.save({"state_dict": ref.state_dict(), "meta": {"config": text, "CLASSES": ["a"] * 5}}, tmp_path / "v0.pth")
    m = S.load_mmseg_setr(None, tmp_path / "v0.pth")
    assert torch.equal(m.backbone.patch_embed.projection.bias, ref.backbone.patch_embed.projection.bias)
    assert m.cfg.normalization_source == "img_norm_cfg" and m.cfg.channel_order == "rgb"
    assert any("0.x" in n for n in m.cfg.notes)
    x = prep(photo("rocket"), 64, norm="deit")
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
    # a 1.x checkpoint (no bias) with the same config text: no bias
    sd = {k: v for k, v in ref.state_dict().items() if k != PATCH_BIAS_KEY}
    torch.save({"state_dict": sd, "meta": {"cfg": text}}, tmp_path / "v1.pth")
    assert S.load_mmseg_setr(None, tmp_path / "v1.pth").backbone.patch_embed.projection.bias is None
    # an explicit patch_bias=False is obeyed: the 0.x bias is then an unexpected key
    explicit = copy.deepcopy(v0)
    explicit["backbone"]["patch_bias"] = False
    (tmp_path / "explicit.py").write_text(format_config({"model": explicit}))
    with pytest.raises(CheckpointError, match="unexpected keys.*patch_embed.projection.bias"):
        S.load_mmseg_setr(tmp_path / "explicit.py", tmp_path / "v0.pth")


def test_bgr_network_input_is_flipped(tmp_path):
    """A config without bgr_to_rgb feeds the network BGR: normalization is given in RGB order and
    prepare() flips the channels."""
    cfg = tiny_cfg("naive")
    cfg["data_preprocessor"]["bgr_to_rgb"] = False
    m = randomize_(S.build_setr(cfg), 2).eval()
    assert m.cfg.channel_order == "bgr"
    assert m.cfg.normalization["mean"] == pytest.approx((0.406, 0.456, 0.485))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        flipped = m.decoder.forward_maps(list(m.backbone(x.flip(1)))[-1:])
        assert torch.allclose(m(x), m.finish(flipped, (64, 64), (64, 64)), atol=1e-6)


def test_refused_backbone_settings():
    with pytest.raises(ConfigError, match="output_cls_token"):
        S.build_setr(tiny_cfg("naive", output_cls_token=True))
    with pytest.raises(ConfigError, match="out_indices"):
        S.build_setr(tiny_cfg("naive", out_indices=[-1]))
    with pytest.raises(ConfigError, match="interpolate_mode"):
        S.build_setr(tiny_cfg("naive", interpolate_mode="nearest"))
    with pytest.raises(ConfigError, match="unknown VisionTransformer settings"):
        S.build_setr(tiny_cfg("naive", embed_dim=64))


# ----------------------------------------------------------------------------- the seam

def test_padding_slots_are_masked():
    """block_attn honours state.key_mask: zero-size slots appended change no real token."""
    m = tiny("naive", seed=4)
    bb = m.backbone
    x, grid = bb.embed(torch.randn(1, 3, 64, 64))
    state = TokenState.initial(x, grid, bb.num_prefix)
    pad = torch.randn(1, 5, x.shape[-1]) * 10
    size = torch.cat([state.size, torch.zeros(1, 5)], dim=1)
    padded = TokenState(size, state.assign, grid, bb.num_prefix, padded=True)
    with torch.no_grad():
        ref = bb.block_mlp(1, bb.block_attn(1, x, state), state)
        got = bb.block_mlp(1, bb.block_attn(1, torch.cat([x, pad], dim=1), padded), padded)
    assert torch.allclose(got[:, : x.shape[1]], ref, atol=1e-5)


def test_forward_tokens_equals_the_plain_path():
    for kind in ("naive", "mla"):
        m = tiny(kind, seed=7)
        x = torch.randn(2, 3, 72, 100)  # not patch-aligned: padded, position table resized
        with torch.no_grad():
            maps = list(m.backbone(x))
            if kind == "naive":
                maps = maps[-1:]
            ref = m.finish(m.decoder.forward_maps(maps), (80, 112), (72, 100))
            assert torch.equal(m(x), ref)


def test_decoder_macs():
    m = S.build_setr(tiny_cfg("naive"))
    # up_convs.0: 1x1 64->32 at 4x4, conv_seg 32->5 at 16x16
    assert m.decoder.macs([16], (4, 4)) == 16 * 32 * 64 + 256 * 32 * 5
    mla = S.build_setr(tiny_cfg("mla"))
    neck = 4 * (16 * 32 * 64) + 4 * (16 * 32 * 32 * 9)
    head = 4 * (16 * 16 * 32 * 9 + 16 * 16 * 16 * 9) + 256 * 64 * 5
    assert mla.decoder.macs([16] * 4, (4, 4)) == neck + head


def test_slide_inference_windows():
    seen = []

    def fn(crop):
        seen.append(tuple(crop.shape[-2:]))
        return torch.ones(crop.shape[0], 3, *crop.shape[-2:])

    img = torch.zeros(1, 3, 100, 150)
    out = mmseg_slide_inference(fn, img, (64, 64), (42, 42), 3)
    assert len(seen) == 2 * 4 and set(seen) == {(64, 64)} and torch.equal(out, torch.ones(1, 3, 100, 150))
    seen.clear()
    mmseg_slide_inference(fn, torch.zeros(1, 3, 40, 50), (64, 64), (42, 42), 3)
    assert seen == [(40, 50)]  # a window larger than the image shrinks to it


# ----------------------------------------------------------------------------- the config parser

def test_real_setr_configs():
    mla = parse_config(CONFIGS / "setr" / "setr_vit-l_mla_8xb2-160k_ade20k-512x512.py")
    m = mla["model"]
    assert m["backbone"]["img_size"] == (512, 512) and m["backbone"]["with_cls_token"] is False
    assert m["backbone"]["out_indices"] == (5, 11, 17, 23) and m["backbone"]["drop_rate"] == 0.0
    assert m["decode_head"]["num_classes"] == 150 and m["neck"]["type"] == "MLANeck"
    assert m["test_cfg"] == {"mode": "slide", "crop_size": (512, 512), "stride": (341, 341)}
    assert m["data_preprocessor"]["size"] == (512, 512) and m["data_preprocessor"]["bgr_to_rgb"] is True
    assert len(m["auxiliary_head"]) == 4 and m["auxiliary_head"][0]["norm_cfg"]["type"] == "SyncBN"
    assert mla["train_dataloader"]["batch_size"] == 2 and mla["test_dataloader"]["batch_size"] == 1
    tta = mla["tta_pipeline"][1]["transforms"][0]  # a list comprehension in ade20k.py
    assert [t["scale_factor"] for t in tta] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    pup = parse_config(CONFIGS / "setr" / "setr_vit-l_pup_8xb2-160k_ade20k-512x512.py")["model"]
    assert (pup["decode_head"]["num_convs"], pup["decode_head"]["up_scale"], pup["decode_head"]["kernel_size"]) \
        == (4, 2, 3)
    city = parse_config(CONFIGS / "setr" / "setr_vit-l_naive_8xb1-80k_cityscapes-768x768.py")
    assert city["model"]["decode_head"]["num_classes"] == 19 and city["crop_size"] == (768, 768)
    assert city["model"]["backbone"]["img_size"] == (768, 768) and city["model"]["test_cfg"]["stride"] == (512, 512)
    # the real configs build once the ViT-L is shrunk
    for cfg, layers in ((mla, (0, 1, 2, 3)), (city, (3,))):
        mc = copy.deepcopy(cfg["model"])
        mc["backbone"].update(embed_dims=32, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3), img_size=(64, 64))
        if "neck" in mc:
            mc["neck"]["in_channels"] = [32] * 4
        else:
            mc["decode_head"]["in_channels"] = 32
        model = S.build_setr(mc, image_size=(64, 64), config=cfg)
        assert model.cfg.decoder_layers == layers and model.cfg.inference["mode"] == "slide"
        assert model.cfg.normalization["std"] == pytest.approx((0.229, 0.224, 0.225))


def test_config_semantics(tmp_path):
    (tmp_path / "base_a.py").write_text(
        "norm_cfg = dict(type='BN')\nmodel = dict(backbone=dict(depth=12, act=dict(type='ReLU'), keep=1), "
        "heads=[1, 2])\nlr = 0.01\n")
    (tmp_path / "base_b.yaml").write_text("runtime:\n  seed: 3\n")
    (tmp_path / "child.py").write_text(
        "_base_ = ['./base_a.py', 'base_b.yaml']\n"
        "'''docstring'''\n"
        "crop = (512, 512)\n"
        "depth = _base_.model.backbone.depth * 2\n"
        "model = dict(backbone=dict(depth=depth, act=dict(_delete_=True, type='GELU')), heads=[3],\n"
        "             size=crop[0] // 2 + -1, name=f'vit{crop[1]}', neg=-(3 ** 2), ref={{_base_.norm_cfg}},\n"
        "             items=[*crop, 1], more=dict(dict(a=1), b=2, **dict(c=3)), rep=[0] * 3, s='a' + 'b')\n")
    cfg = parse_config(tmp_path / "child.py")
    assert cfg["model"]["backbone"] == {"depth": 24, "act": {"type": "GELU"}, "keep": 1}
    assert cfg["model"]["heads"] == [3] and cfg["lr"] == 0.01 and cfg["runtime"] == {"seed": 3}
    assert cfg["model"]["size"] == 255 and cfg["model"]["name"] == "vit512" and cfg["model"]["neg"] == -9
    assert cfg["model"]["ref"] == {"type": "BN"} and cfg["model"]["items"] == [512, 512, 1]
    assert cfg["model"]["more"] == {"a": 1, "b": 2, "c": 3} and cfg["model"]["rep"] == [0, 0, 0]
    assert cfg["model"]["s"] == "ab" and "_base_" not in cfg


def test_config_errors(tmp_path):
    (tmp_path / "missing.py").write_text("_base_ = '../nowhere/base.py'\n")
    with pytest.raises(ConfigError, match=r"the base config '../nowhere/base.py' was not found \(looked for "):
        parse_config(tmp_path / "missing.py")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("x = 2\n")
    (tmp_path / "dup.py").write_text("_base_ = ['a.py', 'b.py']\n")
    with pytest.raises(ConfigError, match=r"the same settings \['x'\]"):
        parse_config(tmp_path / "dup.py")
    (tmp_path / "loop.py").write_text("_base_ = 'loop.py'\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        parse_config(tmp_path / "loop.py")
    (tmp_path / "notdict.py").write_text("_base_ = 'a.py'\nx = dict(y=1)\n")
    with pytest.raises(ConfigError, match="_delete_"):
        parse_config(tmp_path / "notdict.py")
    with pytest.raises(ConfigError, match="line 2: the name 'norm' is not assigned earlier"):
        parse_config("a = 1\nb = dict(n=norm)\n")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(tmp_path / "none.py")


HOSTILE = [
    ("x = __import__('os').system('touch {marker}')", "the call __import__('os').system"),
    ("import os\nx = os.system('touch {marker}')", "an import"),
    ("from os import system", "an import"),
    ("x = open('{marker}', 'w')", "the call open"),
    ("x = dict(a=(lambda: open('{marker}', 'w'))())", "the call"),
    ("f = lambda: 1", "a lambda"),
    ("x = ().__class__.__bases__[0].__subclasses__()", "the call"),
    ("x = ''.__class__", "attribute access"),
    ("x = [open('{marker}', 'w') for i in [1]]", "the call open"),
    ("x = {{k: 1 for k in 'ab'}}", "a comprehension"),
    ("def f():\n    pass", "a function definition"),
    ("class A: pass", "a class definition"),
    ("x = 1 if True else 2", "a conditional expression"),
    ("dict = 1", "assigning the name 'dict'"),
    ("x = 'a' * 10 ** 10", "too"),
    ("x = 10 ** 10 ** 10", "too large"),
    ("x = [0] * (1 << 40)", "operator LShift"),
    ("_base_ = ['a.py'] + ['b.py']", "_base_` must be a string or a list"),
    ("x = '{{{{ fileDirname }}}}'", None),   # config text has no file: the placeholder stays a string
    ("print('{marker}')", "an expression statement"),
    ("x = dict(a=1).update(b=2)", "the call dict(a=1).update"),
    ("x, y = 1, 2", "assignment to"),
    ("x = b'bytes'", "the constant bytes"),
]


@pytest.mark.parametrize("src,why", HOSTILE)
def test_hostile_configs_are_refused_without_running(tmp_path, src, why):
    marker = tmp_path / "ran"
    text = src.format(marker=marker)
    if why is None:
        parse_config(text)
    else:
        with pytest.raises(ConfigError) as e:
            parse_config(text)
        msg = str(e.value)
        assert why in msg and "never executed" in msg and "line " in msg
    assert not marker.exists()


def test_hostile_checkpoint_meta_is_refused(tmp_path):
    marker = tmp_path / "ran"
    text = f"model = dict(type='EncoderDecoder', x=__import__('os').system('touch {marker}'))\n"
    m = tiny("naive")
    torch.save({"state_dict": m.state_dict(), "meta": {"cfg": text}}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="meta config, line 1: the call __import__"):
        S.load_mmseg_setr(None, tmp_path / "evil.pth")
    assert not marker.exists()


# ----------------------------------------------------------------------------- parity with mmsegmentation

def _mmseg():
    if importlib.util.find_spec("mmcv") is not None and "mmcv.ops" not in sys.modules:
        sys.path.insert(0, str(Path(__file__).parents[1] / "scripts" / "reference"))
        try:
            import mmseg_setr_check

            mmseg_setr_check.stub_mmcv_ops()
        finally:
            sys.path.pop(0)
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed (the reference environment has it: "
                                        "see scripts/reference/mmseg_setr_check.py)")
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)


@pytest.mark.parametrize("kind", ["naive", "pup", "mla"])
def test_logits_match_mmseg(tmp_path, kind):
    _mmseg()
    import warnings

    from mmengine import Config
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    warnings.filterwarnings("ignore")
    model_cfg = tiny_cfg(kind, 64)
    model_cfg["test_cfg"] = dict(mode="slide", crop_size=(64, 64), stride=(40, 40))
    (tmp_path / "c.py").write_text(format_config({"model": model_cfg}))
    mm = revert_sync_batchnorm(MODELS.build(Config.fromfile(str(tmp_path / "c.py")).model))
    randomize_(mm, 11).eval()
    torch.save({"state_dict": mm.state_dict(), "meta": {}}, tmp_path / "c.pth")
    ours = S.load_mmseg_setr(tmp_path / "c.py", tmp_path / "c.pth")
    for hw in ((64, 64), (72, 100)):
        x = prep(photo("chelsea"), hw, norm="deit")
        meta = [dict(ori_shape=hw, img_shape=hw, pad_shape=hw, padding_size=[0, 0, 0, 0])]
        with torch.no_grad():
            for a, b in zip(mm.backbone(x), ours.backbone(x)):
                assert (a - b).abs().max() <= 1e-4
            assert (mm.whole_inference(x, meta) - ours(x)).abs().max() <= 1e-4
            assert (mm.inference(x, meta) - ours.inference(x)).abs().max() <= 1e-4
