"""The EVA-02 family: timm's EVA-02 backbone + UperNet (Feature2Pyramid + UPerHead), mmseg checkpoints.

Model: `backbones/eva02.py` (`Eva02Backbone`, timm's `Eva` with rotary positions for merged
tokens) and `decoders/uper.py` (`UperNetDecoder`), assembled into `Eva02UperNet(SegModel)` whose
`state_dict()` keys are `backbone.*` (timm's `Eva` names), `neck.*` and `decode_head.*` (mmseg's).

Checkpoints are mmsegmentation checkpoints (`{'state_dict', 'meta'}`, `.pth`) with their Python
config (a `.py` beside or given, or the config text in `meta`; parsed, never executed), in two
namings:

* **mmseg 1.x** (`checkpoint_format='mmseg'`): the backbone is mmseg's `TIMMBackbone` wrapping
  timm's `Eva` (`model_name='eva02_*'`, `features_only=True`, `out_indices`, timm arguments such
  as `img_size` and `patch_size`); its keys are `backbone.timm_model.model.*` (timm's
  `FeatureGetterNet` holds the pruned model as `model`), then `neck.*` (`Feature2Pyramid`) and
  `decode_head.*` (`UPerHead`).
* **EVA-02's official segmentation checkpoints** (`checkpoint_format='eva2'`, backbone type
  `EVA2`, from the EVA repository's `EVA-02/seg/backbone/eva2.py`, an mmseg 0.x codebase): the
  key map, read from that code, is

      backbone.blocks.{i}.attn.q_bias / v_bias    -> attn.q_proj.bias / v_proj.bias (subln: separate q/k/v)
                                                     (attn.q_bias / v_bias with the fused qkv)
      backbone.blocks.{i}.mlp.w1 / w2 / ffn_ln / w3 -> mlp.fc1_g / fc1_x / norm / fc2 (SwiGLU, gate = w1)
      backbone.fpn1.0 / .1 / .3, fpn2.0           -> neck.upsample_4x.0 / .1 / .3, upsample_2x.0 (patch 16)
      backbone.fpn1.0                             -> neck.upsample_2x.0 (patch 8)
      everything else under backbone.            -> the same name (patch_embed.proj, cls_token,
                                                     pos_embed, norm1/2, q/k/v_proj weights, attn.proj,
                                                     gamma_1/2)
      backbone.rope.* / blocks.{i}.attn.rope.*    -> derived rotary tables: checked against ours, dropped

  and the EVA2 arguments map to timm's: `subln` -> `qkv_fused=False` + `scale_mlp=True`,
  `naiveswiglu` -> `swiglu_mlp`, `rope` + `pt_hw_seq_len` + `intp_freq` -> `use_rot_pos_emb` +
  `ref_feat_shape`; `xattn` (xformers) is the same softmax attention.

`auxiliary_head.*` keys are training-only and ignored; blocks after the last `out_indices` entry
(pruned, as timm's features wrapper does) are listed as unused. Every load leaves
`model.load_report` (ignored / missing / unexpected keys, the key map used, the rotary check).
Saving writes the mmseg 1.x form (TIMMBackbone config + keys), which mmseg itself loads.

Input: `normalization` in 0..1 units, RGB order (see `models/mmseg_common.py:normalization_from_config`).
Run size: the slide window for slide inference, else the backbone's `img_size`; images are
padded bottom / right to whole patches (as mmseg's preprocessor pads) and the logits, resized
to the padded size with the head's `align_corners`, cropped back.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
import torch.nn.functional as F

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.backbones.eva02 import EVA02_MODELS, EVA_KWARGS, Eva02Backbone, eva02_kwargs
from algm_export.core.names import pair
from algm_export.models.base import Level, SegModel, TokenState
from algm_export.models.decoders.uper import (
    UperNetDecoder,
    build_feature2pyramid,
    build_uper_head,
    resize_bilinear,
)
from algm_export.models import mmseg_common
from algm_export.models.mmseg_common import (
    encoder_decoder,
    UPSTREAM_SUFFIX,
    DecoderUnderHostKeys,
    MMSegViTConfig,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    inference_from_config,
    mmseg_slide_inference,
    normalization_from_config,
    randomize_,
)
from algm_export.models.formats.mmseg import accepts_types, format_config, read_mmseg, typename
from algm_export.models.registry import Family, register

FAMILY = "eva02"
TIMM_PREFIX = "backbone.timm_model.model."
# TIMMBackbone's own arguments; everything else goes to timm.create_model (i.e. to Eva).
_TIMM_BACKBONE_OWN = ("model_name", "features_only", "pretrained", "checkpoint_path", "in_channels", "init_cfg",
                      "out_indices")
# EVA2 (EVA-02's official segmentation backbone) arguments.
_EVA2_ARGS = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "qkv_bias", "qk_scale", "drop_rate", "attn_drop_rate", "drop_path_rate", "hybrid_backbone",
              "norm_layer", "init_values", "use_checkpoint", "use_abs_pos_emb", "use_rel_pos_bias",
              "use_shared_rel_pos_bias", "out_indices", "subln", "xattn", "naiveswiglu", "rope", "pt_hw_seq_len",
              "intp_freq", "pretrained")
# Official EVA2 sizes -> the timm EVA-02 model whose defaults are closest (all structure is passed explicitly).
_EVA2_TIMM_NAME = {192: "eva02_tiny_patch14_224", 384: "eva02_small_patch14_224", 768: "eva02_base_patch14_224",
                   1024: "eva02_large_patch14_224"}
_SIZE_NAMES = {"tiny": "eva02_tiny_patch14_224", "small": "eva02_small_patch14_224",
               "base": "eva02_base_patch14_224", "large": "eva02_large_patch14_224"}


# ----------------------------------------------------------------------------- configuration

@dataclass
class Eva02Config(MMSegViTConfig):
    """The uniform family fields plus what EVA-02 + UperNet needs. `image_size` is the run size."""

    n_cls: int
    image_size: tuple[int, int]
    patch_size: int
    n_layers: int
    d_model: int
    n_heads: int
    normalization: dict
    backbone: str                          # timm model name (+ the overrides in timm_kwargs)
    inference: dict                        # mode 'whole' | 'slide', crop_size, stride
    decoder_name: str = "upernet"
    timm_model: str = "eva02_small_patch14_224"
    timm_kwargs: dict = field(default_factory=dict)
    out_indices: tuple[int, ...] = ()
    align_corners: bool = False
    built_image_size: tuple[int, int] = (224, 224)
    channel_order: str = "rgb"
    normalization_source: str = "data_preprocessor"
    checkpoint_format: str = "mmseg"       # 'mmseg' (TIMMBackbone keys) | 'eva2' (EVA-02's official keys)
    algm: Optional[dict] = None
    notes: list = field(default_factory=list)
    model_cfg: dict = field(default_factory=dict)   # the parsed mmseg `model` dict
    family: str = FAMILY

    LIST_FIELDS = ("image_size", "built_image_size", "out_indices")

    @property
    def num_prefix(self) -> int:
        return 1  # EVA-02's class token


def _resolve_out_indices(out_indices, depth: int) -> list[int]:
    """timm's rule: an int n = the last n blocks; a list = those blocks (negative from the end)."""
    if isinstance(out_indices, bool):
        raise ConfigError(f"backbone out_indices {out_indices!r} must be an int or a list")
    if isinstance(out_indices, int):
        if not 0 < out_indices <= depth:
            raise ConfigError(f"backbone out_indices {out_indices} (last n blocks) is outside 1..{depth}")
        return list(range(depth - out_indices, depth))
    if not isinstance(out_indices, (list, tuple)) or not out_indices:
        raise ConfigError(f"backbone out_indices {out_indices!r} must be an int or a non-empty list")
    out = []
    for i in out_indices:
        i = int(i)
        if not -depth <= i < depth:
            raise ConfigError(f"backbone out_indices {list(out_indices)} outside the {depth} blocks")
        out.append(i % depth)
    return out


def timm_backbone_spec(bb: Mapping) -> tuple[str, dict, list[int], list]:
    """mmseg `TIMMBackbone` dict -> (timm model name, Eva kwargs overrides, out_indices, notes)."""
    kw = {k: v for k, v in bb.items() if k != "type"}
    name = kw.get("model_name")
    if name not in EVA02_MODELS:
        raise ConfigError(f"backbone: TIMMBackbone model_name {name!r} is not an EVA-02 model this family builds; "
                          f"use one of {sorted(EVA02_MODELS)}")
    if not kw.get("features_only", True):
        raise ConfigError("backbone: TIMMBackbone with features_only=False returns classifier outputs, which a "
                          "neck cannot read; use features_only=True")
    if "norm_layer" in kw:
        raise ConfigError("backbone: a TIMMBackbone norm_layer override is not supported (EVA-02 uses timm's LayerNorm)")
    notes = []
    if kw.get("pretrained", True) or kw.get("checkpoint_path"):
        notes.append("TIMMBackbone pretrained / checkpoint_path ignored: the weights come from the checkpoint")
    timm_kw = {k: v for k, v in kw.items() if k not in _TIMM_BACKBONE_OWN}
    unknown = sorted(set(timm_kw) - set(EVA_KWARGS))
    if unknown:
        raise ConfigError(f"backbone: unsupported timm arguments {unknown} for {name}")
    if int(kw.get("in_channels", 3)) != 3:
        raise ConfigError(f"backbone: in_channels {kw['in_channels']} is not supported (RGB images only)")
    for k in ("img_size", "patch_size"):
        if k in timm_kw:
            v = pair(timm_kw[k], f"backbone.{k}")
            timm_kw[k] = v[0] if v[0] == v[1] else list(v)
    if "ref_feat_shape" in timm_kw and timm_kw["ref_feat_shape"] is not None:
        timm_kw["ref_feat_shape"] = list(pair(timm_kw["ref_feat_shape"], "backbone.ref_feat_shape"))
    depth = int(timm_kw.get("depth", EVA02_MODELS[name]["depth"]))
    outs = _resolve_out_indices(kw.get("out_indices", 3), depth)   # timm's EVA default: the last 3 blocks
    return name, timm_kw, outs, notes


def eva2_backbone_spec(bb: Mapping) -> tuple[str, dict, list[int], dict, list]:
    """EVA-02's official `EVA2` dict -> (timm name, Eva kwargs, out_indices, neck dict, notes)."""
    kw = {k: v for k, v in bb.items() if k != "type"}
    unknown = sorted(set(kw) - set(_EVA2_ARGS))
    if unknown:
        raise ConfigError(f"backbone: unknown EVA2 settings {unknown}")
    for k, bad in (("hybrid_backbone", None), ("use_rel_pos_bias", False), ("use_shared_rel_pos_bias", False),
                   ("norm_layer", None)):
        if kw.get(k, bad) != bad:
            raise ConfigError(f"backbone: EVA2 {k}={kw[k]!r} is not supported")
    img = pair(kw.get("img_size", 224), "backbone.img_size")
    patch = int(kw.get("patch_size", 16))
    embed, depth, heads = int(kw.get("embed_dim", 768)), int(kw.get("depth", 12)), int(kw.get("num_heads", 12))
    if kw.get("qk_scale") not in (None, (embed // heads) ** -0.5):
        raise ConfigError(f"backbone: EVA2 qk_scale {kw['qk_scale']!r} differs from head_dim ** -0.5 (timm's scale)")
    subln, swiglu = bool(kw.get("subln", True)), bool(kw.get("naiveswiglu", True))
    rope = bool(kw.get("rope", True))
    pt = int(kw.get("pt_hw_seq_len", 16))
    grid = (img[0] // patch, img[1] // patch)
    if rope and not kw.get("intp_freq", True) and grid != (pt, pt):
        raise ConfigError(f"backbone: EVA2 with intp_freq=False needs a {pt}x{pt} grid (img_size / patch_size), "
                          f"got {grid[0]}x{grid[1]}")
    timm_kw = dict(
        img_size=img[0] if img[0] == img[1] else list(img), patch_size=patch, embed_dim=embed, depth=depth,
        num_heads=heads, mlp_ratio=float(kw.get("mlp_ratio", 4 * 2 / 3)), qkv_bias=bool(kw.get("qkv_bias", False)),
        qkv_fused=not subln, swiglu_mlp=swiglu, scale_mlp=subln and swiglu,
        use_abs_pos_emb=bool(kw.get("use_abs_pos_emb", True)), use_rot_pos_emb=rope,
        ref_feat_shape=[pt, pt] if kw.get("intp_freq", True) else None, init_values=kw.get("init_values"),
    )
    notes = []
    if swiglu and not subln:
        timm_kw["swiglu_align_to"] = 1   # timm's split SwiGLU (fc1_g / fc1_x) without a norm, like EVA2's w1 / w2
    if not swiglu and subln:
        raise ConfigError("backbone: EVA2 with subln=True and naiveswiglu=False (sub-LN attention, plain MLP) has no "
                          "timm equivalent")
    if kw.get("xattn", True):
        notes.append("EVA2 xattn (xformers memory-efficient attention): the same softmax attention")
    name = _EVA2_TIMM_NAME.get(embed, "eva02_base_patch14_224")
    outs = _resolve_out_indices(kw.get("out_indices", [3, 5, 7, 11]), depth)
    if patch == 16:
        neck = dict(type="Feature2Pyramid", embed_dim=embed, rescales=[4, 2, 1, 0.5],
                    norm_cfg=dict(type="SyncBN", requires_grad=True))
    elif patch == 8:
        neck = dict(type="Feature2Pyramid", embed_dim=embed, rescales=[2, 1, 0.5, 0.25],
                    norm_cfg=dict(type="SyncBN", requires_grad=True))
    else:
        raise ConfigError(f"backbone: EVA2 defines its fpn1..fpn4 for patch size 16 or 8 only, got {patch}")
    return name, timm_kw, outs, neck, notes


def _backbone_label(name: str, timm_kw: Mapping) -> str:
    extra = {k: timm_kw[k] for k in ("patch_size", "img_size") if k in timm_kw}
    if not extra:
        return name
    return name + "(" + ", ".join(f"{k}={v}" for k, v in extra.items()) + ")"


def build_eva02(model_cfg: Mapping, image_size=None, config: Optional[Mapping] = None,
                resize: bool = True) -> "Eva02UperNet":
    """An EVA-02 UperNet (random weights, eval mode) from a parsed mmseg config's `model` dict.

    The backbone is mmseg's `TIMMBackbone` over timm's EVA-02 or EVA-02's official `EVA2`; the
    neck `Feature2Pyramid` (for `EVA2` its built-in fpn1..4, unless the config names a neck),
    the head `UPerHead`. `image_size` is the run size (default: the slide window for slide
    inference, else the backbone's `img_size`), applied unless `resize=False` (the loader resizes after
    loading the weights, which are stored at the built size).
    """
    model_cfg = encoder_decoder(model_cfg, "EVA-02 UperNets")
    config = config or {}
    bb_cfg = dict(model_cfg.get("backbone") or {})
    bb_type = typename(bb_cfg)
    if bb_type == "TIMMBackbone":
        name, timm_kw, outs, notes = timm_backbone_spec(bb_cfg)
        neck_cfg, fmt = model_cfg.get("neck"), "mmseg"
        label = _backbone_label(name, timm_kw)
    elif bb_type == "EVA2":
        name, timm_kw, outs, neck_cfg, notes = eva2_backbone_spec(bb_cfg)
        if model_cfg.get("neck") is not None:
            raise ConfigError("an EVA2 backbone carries its own fpn1..fpn4; the config must not add a neck")
        fmt = "eva2"
        label = (f"EVA2(embed_dim={timm_kw['embed_dim']}, depth={timm_kw['depth']}, "
                 f"patch_size={timm_kw['patch_size']}, img_size={timm_kw['img_size']})")
    else:
        raise ConfigError(f"backbone type {bb_cfg.get('type')!r} is not supported here; use TIMMBackbone "
                          "(model_name='eva02_*') or EVA-02's EVA2")
    head_cfg = model_cfg.get("decode_head")
    if not isinstance(head_cfg, Mapping):
        raise ConfigError("the config's model has no decode_head")
    if isinstance(head_cfg, (list, tuple)):
        raise ConfigError("a list of decode heads (cascade) is not supported")

    eva_kw = eva02_kwargs(name, **timm_kw)
    neck = build_feature2pyramid(dict(neck_cfg) if neck_cfg is not None else None)
    if neck.embed_dim != int(eva_kw["embed_dim"]):
        raise ConfigError(f"neck embed_dim {neck.embed_dim} differs from the backbone's {eva_kw['embed_dim']}")
    head = build_uper_head(dict(head_cfg))
    decoder = UperNetDecoder(neck, head, outs)
    backbone = Eva02Backbone(out_indices=outs, **eva_kw)        # last: the costly part (timm's init)

    normalization, order, source = normalization_from_config(model_cfg, config)
    inference = inference_from_config(model_cfg, config)
    built = tuple(int(v) for v in backbone.patch_embed.img_size)
    if built[0] % backbone.patch_size or built[1] % backbone.patch_size:
        raise ConfigError(f"backbone img_size {list(built)} is not a multiple of the patch size {backbone.patch_size} "
                          "(timm's patch embedding would drop the remainder pixels); use a multiple")
    cfg = Eva02Config(
        n_cls=decoder.n_cls, image_size=built, patch_size=backbone.patch_size,
        n_layers=backbone.depth, d_model=backbone.embed_dim, n_heads=backbone.blocks[0].attn.num_heads,
        normalization=normalization, backbone=label, inference=inference,
        timm_model=name, timm_kwargs=copy.deepcopy(timm_kw), out_indices=tuple(outs),
        align_corners=decoder.align_corners, built_image_size=built, channel_order=order,
        normalization_source=source, checkpoint_format=fmt, notes=list(notes), model_cfg=model_cfg,
    )
    model = Eva02UperNet(cfg, backbone, decoder).eval()
    if resize:
        model.set_image_size(default_run_size(model, image_size))
    return model


def default_run_size(model: "Eva02UperNet", image_size=None) -> tuple[int, int]:
    """The requested run size, else the slide window for slide inference, else the built size."""
    if image_size is not None:
        return pair(image_size, "image size")
    inf = model.cfg.inference
    return pair(inf["crop_size"], "crop size") if inf["mode"] == "slide" else tuple(model.cfg.built_image_size)


# ----------------------------------------------------------------------------- the model

class Eva02UperNet(DecoderUnderHostKeys, SegModel):
    """EVA-02 + UperNet. `forward(im)` = mmseg's whole inference on a normalised batch."""

    family = FAMILY

    def __init__(self, cfg: Eva02Config, backbone: Eva02Backbone, decoder: UperNetDecoder):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.hold_decoder(decoder, neck=decoder.neck, decode_head=decoder.decode_head)  # keys neck.* / decode_head.*
        self.load_report: dict = {}

    def prepare(self, im: torch.Tensor) -> torch.Tensor:
        """The BGR flip where the network consumes BGR; zero padding bottom / right to whole patches."""
        if self.cfg.channel_order == "bgr":
            im = im.flip(1)
        H, W = im.shape[-2:]
        p = self.cfg.patch_size
        ph, pw = (p - H % p) % p, (p - W % p) % p
        if ph or pw:
            im = F.pad(im, (0, pw, 0, ph), value=0.0)
        return im

    def finish(self, logits: torch.Tensor, padded_hw, out_hw) -> torch.Tensor:
        """mmseg: the head's logits resized to the (padded) input with `align_corners`, padding cropped."""
        logits = resize_bilinear(logits.float(), tuple(int(v) for v in padded_hw), self.cfg.align_corners)
        return logits[..., : int(out_hw[0]), : int(out_hw[1])]

    @torch.no_grad()
    def features(self, im: torch.Tensor) -> list[torch.Tensor]:
        """The raw `[B, D, Gh, Gw]` maps of the blocks the decoder reads, by the Backbone loop (no
        merging): what mmseg's TIMMBackbone returns (timm `forward_intermediates`)."""
        bb = self.backbone
        x, grid = bb.embed(self.prepare(im.to(self.dtype_of_input())))
        state = TokenState.initial(x, grid, bb.num_prefix)
        maps = []
        for i in range(bb.depth):
            x = bb.block_mlp(i, bb.block_attn(i, x, state), state)
            if i in self.decoder.in_layers:
                maps.append(Level(i, bb.layer_output(i, x), state).as_map())
        return maps

    def inference(self, im: torch.Tensor) -> torch.Tensor:
        """mmseg `EncoderDecoder.inference`: whole or slide per the config's `test_cfg`."""
        inf = self.cfg.inference
        if inf["mode"] == "slide":
            return mmseg_slide_inference(self, im, inf["crop_size"], inf["stride"], self.cfg.n_cls)
        return self(im)

    def mmseg_config(self) -> dict:
        """The mmseg 1.x `model` dict of this model (TIMMBackbone form), as `save_mmseg_eva02` writes it."""
        cfg = self.cfg
        src = copy.deepcopy(cfg.model_cfg)
        bb = dict(type="mmseg.TIMMBackbone", model_name=cfg.timm_model, features_only=True, pretrained=False,
                  checkpoint_path="", in_channels=3, out_indices=list(cfg.out_indices))
        bb.update(copy.deepcopy(cfg.timm_kwargs))
        img = tuple(int(v) for v in self.backbone.patch_embed.img_size)   # the stored position grid
        bb["img_size"] = img[0] if img[0] == img[1] else list(img)
        out = dict(type="EncoderDecoder")
        if src.get("data_preprocessor") is not None:
            out["data_preprocessor"] = src["data_preprocessor"]
        else:
            flip = cfg.channel_order == "rgb"
            mean = [m * 255 for m in cfg.normalization["mean"]]
            std = [s * 255 for s in cfg.normalization["std"]]
            if not flip:
                mean, std = mean[::-1], std[::-1]
            out["data_preprocessor"] = dict(type="SegDataPreProcessor", mean=mean, std=std, bgr_to_rgb=flip,
                                            pad_val=0, seg_pad_val=255)
        out["backbone"] = bb
        neck = self.neck
        out["neck"] = src.get("neck") or dict(type="Feature2Pyramid", embed_dim=neck.embed_dim,
                                              rescales=list(neck.rescales),
                                              norm_cfg=dict(type="SyncBN", requires_grad=True))
        out["decode_head"] = src["decode_head"]
        if src.get("auxiliary_head") is not None:
            out["auxiliary_head"] = src["auxiliary_head"]
        inf = cfg.inference
        tc = dict(mode=inf["mode"])
        if inf["mode"] == "slide":
            tc.update(crop_size=tuple(inf["crop_size"]), stride=tuple(inf["stride"]))
        out["train_cfg"] = dict()
        out["test_cfg"] = tc
        return out


# ----------------------------------------------------------------------------- key maps

_EVA2_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.*)$")
_EVA2_MLP = {"w1": "fc1_g", "w2": "fc1_x", "ffn_ln": "norm", "w3": "fc2"}


def eva2_key_map(sd: Mapping[str, torch.Tensor], cfg: Eva02Config) -> tuple[dict, dict, list]:
    """EVA-02 official names -> ours. Returns (mapped state dict, {ours: official}, derived keys dropped)."""
    fused = bool(cfg.timm_kwargs.get("qkv_fused", True))
    swiglu = bool(cfg.timm_kwargs.get("swiglu_mlp", False))
    patch = cfg.patch_size
    fpn = ({"fpn1.0.": "neck.upsample_4x.0.", "fpn1.1.": "neck.upsample_4x.1.", "fpn1.3.": "neck.upsample_4x.3.",
            "fpn2.0.": "neck.upsample_2x.0."} if patch == 16 else {"fpn1.0.": "neck.upsample_2x.0."})
    out, origin, derived = {}, {}, []
    for k, v in sd.items():
        new = k
        if k.startswith("backbone."):
            rest = k[len("backbone."):]
            m = _EVA2_BLOCK.match(k)
            if rest.startswith("rope.") or (m and m.group(2).startswith("attn.rope.")):
                derived.append(k)
                continue
            if rest.startswith("fpn"):
                for a, b in fpn.items():
                    if rest.startswith(a):
                        new = b + rest[len(a):]
                        break
            elif m:
                i, sub = m.group(1), m.group(2)
                if not fused and sub in ("attn.q_bias", "attn.v_bias"):
                    sub = f"attn.{sub[5]}_proj.bias"
                elif sub.startswith("mlp.") and swiglu:
                    part, _, tail = sub[4:].partition(".")
                    sub = f"mlp.{_EVA2_MLP.get(part, part)}.{tail}"
                new = f"backbone.blocks.{i}.{sub}"
        out[new] = v
        origin[new] = k
    return out, origin, derived


def mmseg_key_map(sd: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """mmseg TIMMBackbone names (`backbone.timm_model.model.*`) -> ours (`backbone.*`)."""
    out, origin = {}, {}
    for k, v in sd.items():
        new = "backbone." + k[len(TIMM_PREFIX):] if k.startswith(TIMM_PREFIX) else k
        out[new] = v
        origin[new] = k
    return out, origin


def to_mmseg_keys(sd: Mapping[str, torch.Tensor]) -> dict:
    """Ours -> mmseg TIMMBackbone names."""
    return {(TIMM_PREFIX + k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in sd.items()}


def _check_rope_tables(model: Eva02UperNet, sd: Mapping[str, torch.Tensor], keys: list) -> Optional[float]:
    """EVA2 stores its rotary tables (cos / sin, [N, head_dim]): they must equal timm's at the built grid."""
    bb = model.backbone
    if not keys or bb.rope_at is None:
        return None
    table = bb.rope_at.table(bb.built_grid)
    hd = table.shape[-1] // 2
    want = {"freqs_sin": table[:, :hd], "freqs_cos": table[:, hd:]}
    worst = 0.0
    for k in keys:
        leaf = k.rsplit(".", 1)[-1]
        if leaf not in want:
            continue
        got = sd[k].float().reshape(-1, sd[k].shape[-1])
        if got.shape != want[leaf].shape:
            raise CheckpointError(f"{k} has shape {tuple(sd[k].shape)} but the config's rotary table is "
                                  f"{tuple(want[leaf].shape)}: img_size / patch_size / pt_hw_seq_len do not match the "
                                  "checkpoint")
        worst = max(worst, float((got - want[leaf]).abs().max()))
    if worst > 1e-4:
        raise CheckpointError(f"the checkpoint's rotary tables differ from the config's by {worst:.2e}: "
                              "pt_hw_seq_len / intp_freq do not match the checkpoint")
    return worst


def _unused_blocks(sd: Mapping, depth: int) -> list:
    """Keys of blocks after the last output block (pruned, as timm's features wrapper does)."""
    out = []
    for k in sd:
        m = re.match(r"^backbone\.blocks\.(\d+)\.", k)
        if m and int(m.group(1)) >= depth:
            out.append(k)
    return out


def load_state_dict_mapped(model: Eva02UperNet, sd: Mapping[str, torch.Tensor], strict: bool = True,
                           where: str = "checkpoint") -> dict:
    """Map `sd` from the checkpoint's naming (model.cfg.checkpoint_format) and load it."""
    fmt = model.cfg.checkpoint_format
    derived: list = []
    if fmt == "eva2":
        mapped, origin, derived = eva2_key_map(sd, model.cfg)
    else:
        mapped, origin = mmseg_key_map(sd)
    rope_err = _check_rope_tables(model, sd, derived)
    pruned = _unused_blocks(mapped, model.backbone.depth)
    drop = set(pruned)
    mapped = {k: v for k, v in mapped.items() if k not in drop}
    try:
        report = mmseg_common.load_state_dict_checked(model, mapped, strict=strict, where=where)
    except CheckpointError as e:
        raise CheckpointError(f"{e} [key map: {fmt}; names above are ours: backbone.* = timm Eva, "
                              f"checkpoint keys under {'backbone.' if fmt == 'eva2' else TIMM_PREFIX}]") from None
    report["unexpected"] = sorted(origin.get(k, k) for k in report["unexpected"])
    report.update(key_map=fmt, derived=sorted(derived), pruned_blocks=sorted(origin[k] for k in pruned),
                  rope_table_max_diff=rope_err, renamed=sum(1 for k, o in origin.items() if k != o))
    return report


# ----------------------------------------------------------------------------- checkpoints

def load_mmseg_eva02(config_path_or_text=None, checkpoint_path=None, image_size=None, strict: bool = True,
                     trust_checkpoint: bool = False) -> Eva02UperNet:
    """An EVA-02 UperNet from an mmseg config (file, text, or None: the checkpoint's `meta`) and
    checkpoint, read as every mmseg family reads them (`models/formats/mmseg.py:read_mmseg`)."""
    config, _, sd, notes, config_path, where = read_mmseg(config_path_or_text, checkpoint_path,
                                                                who="load_mmseg_eva02", trust=trust_checkpoint)
    model = build_eva02(config["model"], config=config, resize=False)
    model.cfg.notes = [n for n in notes if not n.startswith("patch_bias")] + model.cfg.notes   # a ViT-only note
    model.load_report = load_state_dict_mapped(model, sd, strict=strict, where=where)
    model.set_image_size(default_run_size(model, image_size))
    model.source = where
    model.checkpoint_path = Path(checkpoint_path)
    model.config_path = None if config_path is None else str(config_path)
    return model.eval()


def save_mmseg_eva02(model: Eva02UperNet, path, config: Optional[Mapping] = None,
                     meta: Optional[dict] = None) -> Path:
    """Write the mmseg 1.x form: `{'state_dict' (TIMMBackbone keys), 'meta': {'cfg'}}` and the config
    `.py` beside it (same stem). `config` defaults to `{'model': model.mmseg_config()}`."""
    path = Path(path)
    text = format_config(dict(config) if config is not None else {"model": model.mmseg_config()})
    m = {"cfg": text}
    m.update(meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = to_mmseg_keys(model.state_dict())
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in sd.items()}, "meta": m}, path)
    path.with_suffix(".py").write_text(text)
    return path


# ----------------------------------------------------------------------------- built-ins

def builtin_eva02_config(size: str = "small", image_size=256, patch_size: int = 16, n_cls: int = 150,
                         channels: Optional[int] = None, out_indices=None) -> dict:
    """An mmseg 1.x `model` dict: TIMMBackbone over timm's `eva02_<size>_patch14_224` with
    `patch_size` and `img_size` overridden, Feature2Pyramid (4, 2, 1, 0.5), UPerHead reading all
    four levels (channels = the embedding width, as EVA-02's configs), ADE20K-style preprocessing.
    12-block models read blocks (3, 5, 7, 11), 24-block ones (7, 11, 15, 23) (EVA-02's configs)."""
    if size not in _SIZE_NAMES:
        raise ConfigError(f"unknown EVA-02 size {size!r}; use one of {sorted(_SIZE_NAMES)}")
    name = _SIZE_NAMES[size]
    d = EVA02_MODELS[name]["embed_dim"]
    depth = EVA02_MODELS[name]["depth"]
    img = pair(image_size, "image size")
    outs = list(out_indices) if out_indices is not None else ([3, 5, 7, 11] if depth == 12 else [7, 11, 15, 23])
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    backbone = dict(type="mmseg.TIMMBackbone", model_name=name, features_only=True, pretrained=False,
                    checkpoint_path="", in_channels=3, out_indices=outs,
                    img_size=img[0] if img[0] == img[1] else list(img), patch_size=int(patch_size))
    data_preprocessor = dict(type="SegDataPreProcessor", mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255),
                             bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
    return dict(
        type="EncoderDecoder", data_preprocessor=data_preprocessor, backbone=backbone,
        neck=dict(type="Feature2Pyramid", embed_dim=d, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
        decode_head=dict(type="UPerHead", in_channels=[d] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=int(channels or d), dropout_ratio=0.1, num_classes=int(n_cls), norm_cfg=norm_cfg,
                         align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode="whole"),
    )


def builtin_eva02(size: str = "small", image_size=256, patch_size: int = 16, seed: int = 0, n_cls: int = 150,
                  channels: Optional[int] = None, out_indices=None, init: str = "random") -> Eva02UperNet:
    """An EVA-02 UperNet with seeded weights, eval mode: `init="random"` every parameter and BN
    statistic drawn at random (the test suite's models); `init="upstream"` the weights a fresh
    model gets upstream: timm's `Eva` init for the backbone (seeded), mmseg's for the neck and
    UPerHead (`mmseg_common.init_upstream_`; docs/decisions.md item 32)."""
    cfg = builtin_eva02_config(size, image_size, patch_size, n_cls, channels, out_indices)
    if mmseg_common.check_init(init) == "upstream":
        with mmseg_common.seeded_construction(seed):
            model = build_eva02(cfg)
        mmseg_common.init_upstream_(model, seed, mmseg_vit=False)
    else:
        model = build_eva02(cfg)
        randomize_(model, seed)
    return model.eval()


BUILTIN_MODELS: dict[str, Callable[[], Eva02UperNet]] = {
    f"eva02_{s[0]}16_{size}": partial(builtin_eva02, s, size, 16, 0)
    for s in ("tiny", "small") for size in (256, 512)
}
BUILTIN_MODELS[f"eva02_s16_512{UPSTREAM_SUFFIX}"] = partial(builtin_eva02, "small", 512, 16, 0, init="upstream")


# ----------------------------------------------------------------------------- registry

UPERNET_TYPES = dict(backbone={"TIMMBackbone", "EVA2"}, decode_head={"UPerHead"})


def accepts(files: dict, trust_checkpoint: bool = False) -> bool:
    """An mmseg checkpoint whose config has a TIMMBackbone (EVA-02) or EVA2 backbone and a UPerHead."""
    return accepts_types(files, trust_checkpoint, **UPERNET_TYPES)


def load(files: dict, image_size=None, strict: bool = True, trust_checkpoint: bool = False):
    return load_mmseg_eva02(files.get("config"), files["checkpoint"], image_size=image_size, strict=strict,
                            trust_checkpoint=trust_checkpoint)


FAMILY_ENTRY = register(Family(
    name=FAMILY,
    format="mmsegmentation",
    describe="EVA-02 + UperNet (backbone TIMMBackbone over timm's EVA-02, or EVA-02's official EVA2; UPerHead)",
    builtins=dict(BUILTIN_MODELS),
    accepts=accepts,
    load=load,
))
