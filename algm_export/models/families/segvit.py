"""The SegViT family: mmsegmentation's ViT + SegViT's ATM decoder, SegViT's checkpoint format.

SegViT (Zhang et al., NeurIPS 2022; github.com/zbwxp/SegVit) is an mmsegmentation 0.x project:
an `EncoderDecoder` with mmseg's `VisionTransformer` (`with_cls_token=False`, `final_norm=False`,
`out_indices` of three blocks: [5, 7, 11] for ViT-B, [7, 15, 23] for ViT-L) and its own
`ATMHead` (`decoders/atm.py`). Model: `SegViT(SegModel)` with `backbone` (`MMSegViT`) and
`decode_head` (`ATMDecoder`) as its submodules, so `state_dict()` keys are the checkpoint's
`backbone.*` / `decode_head.*` keys.

Checkpoints: SegViT's are mmseg 0.x files, `{"state_dict": ..., "meta": {...}}`, with the Python
config beside them (parsed, never executed: `models/mmseg_config.py`; `_base_` files resolved as
mmengine does) or the config text in `meta['config']`. They are read through the mmseg path
shared with SETR (`models/formats/mmseg.py`: `read_mmseg`; `models/mmseg_common.py`: `build_vit`,
`load_state_dict_checked` and the config helpers); keys
that only training uses are ignored and listed in `model.load_report["ignored"]`: the ATM
loss's `decode_head.loss_decode.criterion.empty_weight` buffer (SetCriterion's class weights)
and any `auxiliary_head.*`. Missing, unexpected or mis-shaped keys raise `CheckpointError`
listing them. 0.x details (patch-embedding bias, `img_norm_cfg`, top-level `test_cfg`) are
handled as for SETR.

Inference (`SegViT.forward` = mmseg's whole inference of one crop): the ATM head returns
class-probability maps at its `img_size` (`decoders/atm.py`), which `finish` resizes bilinearly
to the input size with the head's `align_corners` (mmseg 0.x `EncoderDecoder.encode_decode`);
`inference` runs the config's `test_cfg` (the published ADE20K ViT-L: slide, crop 640, stride
608). Note the outputs are probabilities (softmax x sigmoid), not logits: the argmax is the
prediction, as in SegViT.

Refused with a `ConfigError`: other heads of the repository (`TPNATMHead`, the "shrunk" models
with their own backbone; `ATMSingleHead`, which sums laterals of consecutive stages: see
docs/decisions.md "SegViT stages"), `input_transform` (ATMHead ignores it but its in_channels
would change meaning), `use_stages` above the number of backbone outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from algm_export.core.errors import ConfigError
from algm_export.core.names import pair
from algm_export.models.backbones.mmseg_vit import MMSegViT
from algm_export.models.base import SegModel
from algm_export.models.decoders.atm import ATMDecoder
from algm_export.models.formats.mmseg import accepts_types, format_config, read_mmseg, typename
from algm_export.models.mmseg_common import (
    encoder_decoder,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    TRAINING_ONLY_PREFIXES,
    UPSTREAM_SUFFIX,
    MMSegViTConfig,
    MMSegWholeInference,
    backbone_name,
    build_vit,
    inference_from_config,
    load_state_dict_checked,
    normalization_from_config,
    randomize_,
)
from algm_export.models.registry import Family, register

FAMILY = "segvit"
HEAD_TYPE = "ATMHead"
IGNORED_PREFIXES = TRAINING_ONLY_PREFIXES + ("decode_head.loss_decode.",)
# ATMHead's own arguments and mmseg 0.x / 1.x BaseDecodeHead's.
_HEAD_ARGS = ("img_size", "in_channels", "embed_dims", "num_layers", "num_heads", "use_stages", "use_proj",
              "CE_loss", "crop_train", "shrink_ratio",
              "channels", "num_classes", "out_channels", "threshold", "dropout_ratio", "conv_cfg", "norm_cfg",
              "act_cfg", "in_index", "input_transform", "loss_decode", "ignore_index", "sampler", "align_corners",
              "init_cfg")
_OTHER_HEADS = {
    "TPNATMHead": "the 'shrunk' SegViT (TPNATMHead on the vit_shrink backbone) is not supported",
    "ATMSingleHead": "ATMSingleHead (one decoder over summed stage laterals) is not supported; "
                     "see docs/decisions.md 'SegViT stages'",
}


# ----------------------------------------------------------------------------- configuration

@dataclass
class SegViTConfig(MMSegViTConfig):
    """The uniform family fields plus what SegViT needs. `image_size` is the run size (H, W)."""

    n_cls: int
    image_size: tuple[int, int]
    patch_size: int
    n_layers: int
    d_model: int
    n_heads: int
    normalization: dict
    backbone: str
    inference: dict                          # mode 'whole' | 'slide', crop_size, stride
    decoder_name: str = "atm"
    align_corners: bool = False
    with_cls_token: bool = False
    built_image_size: tuple[int, int] = (512, 512)   # backbone img_size: the stored position grid
    decoder_layers: tuple[int, ...] = ()    # 0-based blocks the head reads (block order)
    head: dict = field(default_factory=dict)  # img_size, embed_dims, num_layers, num_heads, use_stages
    channel_order: str = "rgb"
    normalization_source: str = "img_norm_cfg"
    algm: Optional[dict] = None
    notes: list = field(default_factory=list)
    model_cfg: dict = field(default_factory=dict)  # the parsed mmseg `model` dict
    family: str = FAMILY



def check_head_type(head_cfg: Mapping) -> None:
    kind = typename(head_cfg)
    if kind in _OTHER_HEADS:
        raise ConfigError(f"decode_head type {kind!r}: {_OTHER_HEADS[kind]} (supported: {HEAD_TYPE})")
    if kind != HEAD_TYPE:
        raise ConfigError(f"decode_head type {head_cfg.get('type')!r} is not a SegViT head; use {HEAD_TYPE}")


def build_head(head_cfg: Mapping, backbone: MMSegViT) -> ATMDecoder:
    """SegViT's `ATMHead` from the config's `decode_head` (inference arguments; training ones ignored)."""
    head_cfg = dict(head_cfg)
    check_head_type(head_cfg)
    kw = {k: v for k, v in head_cfg.items() if k != "type"}
    unknown = sorted(set(kw) - set(_HEAD_ARGS))
    if unknown:
        raise ConfigError(f"decode_head: unknown ATMHead settings {unknown}")
    for need in ("img_size", "in_channels", "num_classes"):
        if need not in kw:
            raise ConfigError(f"decode_head (ATMHead) needs {need!r}")
    if kw.get("input_transform") is not None:
        raise ConfigError(f"decode_head input_transform={kw['input_transform']!r} is not supported: ATMHead reads "
                          "the backbone outputs as they are (leave input_transform unset)")
    if not isinstance(kw["in_channels"], int) or isinstance(kw["in_channels"], bool):
        raise ConfigError(f"decode_head in_channels must be one number, got {kw['in_channels']!r}")
    n_cls = int(kw["num_classes"])
    out_channels = kw.get("out_channels")
    if out_channels is not None and int(out_channels) != n_cls:
        raise ConfigError(f"decode_head out_channels {out_channels} != num_classes {n_cls} is not supported")
    use_stages = int(kw.get("use_stages", 3))
    outs = backbone.out_indices
    if not 1 <= use_stages <= len(outs):
        raise ConfigError(f"decode_head use_stages {use_stages} must be between 1 and the number of backbone "
                          f"outputs ({len(outs)}: out_indices {list(outs)})")
    if int(kw["in_channels"]) != backbone.embed_dim:
        raise ConfigError(f"decode_head in_channels {kw['in_channels']} != backbone embed_dims {backbone.embed_dim}")
    dec = ATMDecoder(
        n_cls, outs[:use_stages], int(kw["in_channels"]), embed_dims=int(kw.get("embed_dims", 768)),
        num_layers=int(kw.get("num_layers", 3)), num_heads=int(kw.get("num_heads", 8)), img_size=kw["img_size"],
        patch_size=backbone.patch_size, use_proj=bool(kw.get("use_proj", True)))
    dec.align_corners = bool(kw.get("align_corners", False))
    return dec


def build_segvit(model_cfg: Mapping, image_size=None, config: Optional[Mapping] = None) -> "SegViT":
    """A SegViT model (random weights, eval mode) from a parsed mmseg config's `model` dict.

    `config` (the whole parsed config) supplies the 0.x top-level settings (`img_norm_cfg`,
    `test_cfg`). `image_size` is the run size (default: the slide crop, else the backbone's
    `img_size`)."""
    model_cfg = encoder_decoder(model_cfg, "SegViT models")
    config = config or {}
    if model_cfg.get("neck"):
        raise ConfigError("a neck is not supported in a SegViT model (the ATM head reads the backbone directly)")
    head_cfg = model_cfg.get("decode_head")
    if not isinstance(head_cfg, Mapping):
        raise ConfigError("the config's model has no decode_head (a dict)")
    check_head_type(head_cfg)
    bb_cfg = dict(model_cfg.get("backbone") or {})
    notes = []
    if "patch_bias" not in bb_cfg:   # SegViT is mmseg 0.x, whose ViT patch embedding always had a bias
        bb_cfg["patch_bias"] = True
        notes.append("patch_bias not set in the config: the patch embedding has a bias (mmseg 0.x, SegViT)")
    backbone = build_vit(bb_cfg)
    decoder = build_head(head_cfg, backbone)
    normalization, order, source = normalization_from_config(model_cfg, config)
    inference = inference_from_config(model_cfg, config)
    if image_size is None:
        image_size = inference["crop_size"] if inference["mode"] == "slide" else backbone.img_size
    cfg = SegViTConfig(
        n_cls=decoder.n_cls, image_size=pair(image_size, "image size"), patch_size=backbone.patch_size,
        n_layers=backbone.depth, d_model=backbone.embed_dim, n_heads=backbone.num_heads,
        normalization=normalization, backbone=backbone_name(model_cfg.get("backbone") or {}), inference=inference,
        align_corners=decoder.align_corners, with_cls_token=backbone.with_cls_token,
        built_image_size=backbone.img_size, decoder_layers=tuple(decoder.in_layers),
        head={"img_size": decoder.img_size, "embed_dims": decoder.dim, "num_layers": decoder.n_layers,
              "num_heads": decoder.num_heads, "use_stages": decoder.use_stages},
        channel_order=order, normalization_source=source, notes=notes, model_cfg=model_cfg,
    )
    backbone.set_image_size(cfg.image_size)
    return SegViT(cfg, backbone, decoder).eval()


# ----------------------------------------------------------------------------- the model

class SegViT(MMSegWholeInference, SegModel):
    """SegViT: mmseg ViT + ATM head. `forward(im)` = mmseg's whole inference on a normalised batch."""

    family = FAMILY

    def __init__(self, cfg: SegViTConfig, backbone: MMSegViT, decode_head: ATMDecoder):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.decode_head = decode_head
        self.load_report: dict = {}

    @property
    def decoder(self) -> ATMDecoder:
        return self.decode_head

    def macs(self, image_size=None) -> int:
        """Multiply-accumulates of one whole-image forward (no merging)."""
        grid = self.backbone.run_grid(image_size)
        n = grid[0] * grid[1]
        bb = self.backbone
        return int(bb.embed_macs(grid) + bb.depth * bb.block_macs(n + self.num_prefix, n + self.num_prefix)
                   + self.decoder.macs([n] * self.decoder.use_stages, grid))


# ----------------------------------------------------------------------------- checkpoints

def load_segvit(config_path_or_text=None, checkpoint_path=None, image_size=None, strict: bool = True,
                trust_checkpoint: bool = False) -> SegViT:
    """A SegViT model from its mmseg config (file, text, or None: the checkpoint's `meta`) and checkpoint."""
    config, model_cfg, sd, notes, config_path, where = read_mmseg(config_path_or_text, checkpoint_path,
                                                                  who="load_segvit", trust=trust_checkpoint)
    model = build_segvit(model_cfg, image_size=image_size, config=config)
    model.cfg.model_cfg = copy.deepcopy(config["model"])
    model.cfg.notes = notes   # read_mmseg_checkpoint set patch_bias from the checkpoint
    model.load_report = load_state_dict_checked(model, sd, strict=strict, where=where,
                                                ignored_prefixes=IGNORED_PREFIXES)
    model.source = where
    model.checkpoint_path = Path(checkpoint_path)
    model.config_path = None if config_path is None else str(config_path)
    return model.eval()


def save_segvit(model: SegViT, path, config: Optional[Mapping] = None, meta: Optional[dict] = None) -> Path:
    """Write SegViT's (mmseg 0.x) format: `{'state_dict', 'meta': {'config': config text}}`, and the
    config `.py` beside it (same stem). `config` defaults to `{'model': model.cfg.model_cfg}` plus
    the 0.x `img_norm_cfg` of the model's normalisation."""
    path = Path(path)
    if config is None:
        norm = model.cfg.normalization
        order = model.cfg.channel_order
        mean = [round(m * 255, 6) for m in norm["mean"]]
        std = [round(s * 255, 6) for s in norm["std"]]
        if order == "bgr":
            mean, std = mean[::-1], std[::-1]
        config = {"model": copy.deepcopy(model.cfg.model_cfg),
                  "img_norm_cfg": dict(mean=mean, std=std, to_rgb=order == "rgb")}
    text = format_config(dict(config))
    m = {"config": text}
    m.update(meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": m}, path)
    path.with_suffix(".py").write_text(text)
    return path


# ----------------------------------------------------------------------------- registry

SEGVIT_HEADS = {HEAD_TYPE, *_OTHER_HEADS}


def accepts(files: dict, trust_checkpoint: bool = False) -> bool:
    """An mmseg checkpoint whose config has a SegViT head (the unsupported SegViT heads too, so that
    loading them names the reason)."""
    return accepts_types(files, trust_checkpoint, decode_head=SEGVIT_HEADS)


def load(files: dict, image_size=None, strict: bool = True, trust_checkpoint: bool = False):
    return load_segvit(files.get("config"), files["checkpoint"], image_size=image_size, strict=strict,
                       trust_checkpoint=trust_checkpoint)


# ----------------------------------------------------------------------------- built-ins

def builtin_segvit_config(image_size=256, n_cls: int = 150) -> dict:
    """A SegViT 0.x config (`model` + `img_norm_cfg`) like `configs/_base_/models/seg_vit-b16.py`,
    with a ViT-S/16 backbone: 12 blocks read at [5, 7, 11] (the published 12-block stages), head
    width embed_dims // 2, 3 TPN layers per stage, head dim 32 as in the published ViT-L head;
    slide inference with crop = the built size and stride 2/3 of it (the base config's 512 / 341)."""
    size = pair(image_size, "image size")
    if size[0] != size[1]:
        raise ConfigError(f"SegViT built-ins are square (the ATM head's img_size is one number), got {list(size)}")
    s = size[0]
    backbone = dict(type="VisionTransformer", img_size=size, patch_size=16, in_channels=3, embed_dims=384,
                    num_layers=12, num_heads=6, drop_path_rate=0.1, attn_drop_rate=0.0, drop_rate=0.0,
                    out_indices=[5, 7, 11], final_norm=False, norm_cfg=dict(type="LN", eps=1e-6, requires_grad=True),
                    with_cls_token=False, interpolate_mode="bicubic")
    head = dict(type=HEAD_TYPE, img_size=s, in_channels=384, channels=384, num_classes=n_cls, num_layers=3,
                num_heads=6, use_stages=3, embed_dims=192,
                loss_decode=dict(type="ATMLoss", num_classes=n_cls, dec_layers=3, loss_weight=1.0))
    stride = s * 2 // 3
    model = dict(type="EncoderDecoder", backbone=backbone, decode_head=head,
                 test_cfg=dict(mode="slide", crop_size=(s, s), stride=(stride, stride)))
    return {"model": model,
            "img_norm_cfg": dict(mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255), to_rgb=True)}


@torch.no_grad()
def randomize_segvit_(model: SegViT, seed: int = 0) -> SegViT:
    """Every parameter drawn at random (`randomize_`), then the ATM head's scales set so that a random
    model segments: with `randomize_`'s draws the post-norm TPN layers average the class queries
    into one (their self- and cross-attention mix all queries alike), every query then has the same
    class posterior and the output's argmax is one class for the whole image. So the residual
    branches (`self_attn.out_proj`, `multihead_attn.proj`, `linear2`) are scaled by 0.03 (queries keep
    their identity, as in a trained head), the class embedding by 5 (peaked class posteriors) and
    the cross-attention q / k by sqrt(10) each (mask logits of a trained head's spread). The result
    still depends on every parameter; only the scales of these draws change."""
    randomize_(model, seed)
    for name, t in model.decode_head.named_parameters():
        if any(k in name for k in (".self_attn.out_proj.", ".multihead_attn.proj.", ".linear2.")):
            t.mul_(0.03)
        elif name.startswith("class_embed."):
            t.mul_(5.0)
        elif ".multihead_attn.q." in name or ".multihead_attn.k." in name:
            t.mul_(10.0 ** 0.5)
    return model


def builtin_segvit(image_size=256, seed: int = 0, n_cls: int = 150, init: str = "random") -> SegViT:
    """A small SegViT (ViT-S/16, 3 stages, built at `image_size`) with seeded weights:
    `init="random"` random draws (`randomize_segvit_`, the test suite's models); `init="upstream"`
    the weights a fresh model gets upstream (`mmseg_common.init_upstream_`: mmseg's ViT init, the ATM
    head's Linear layers truncated normal 0.02; docs/decisions.md item 32)."""
    from algm_export.models.mmseg_common import check_init, init_upstream_, seeded_construction

    config = builtin_segvit_config(image_size, n_cls)
    if check_init(init) == "upstream":
        with seeded_construction(seed):
            model = build_segvit(config["model"], config=config)
        init_upstream_(model, seed, head_linear_trunc=True)
    else:
        model = build_segvit(config["model"], config=config)
        randomize_segvit_(model, seed)
    model.source = f"builtin:segvit_s16_{pair(image_size, 'image size')[0]}" + (
        UPSTREAM_SUFFIX if init == "upstream" else "")
    return model.eval()


BUILTIN_MODELS: dict[str, Callable[[], SegViT]] = {
    f"segvit_s16_{size}": (lambda size=size: builtin_segvit(size, seed=0)) for size in (256, 512)
}
BUILTIN_MODELS[f"segvit_s16_512{UPSTREAM_SUFFIX}"] = lambda: builtin_segvit(512, seed=0, init="upstream")

FAMILY_ENTRY = register(Family(
    name=FAMILY,
    format="mmsegmentation",
    describe="SegViT (decode_head ATMHead; mmseg 0.x checkpoints)",
    builtins=BUILTIN_MODELS,
    accepts=accepts,
    load=load,
))
