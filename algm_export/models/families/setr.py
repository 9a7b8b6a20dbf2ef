"""The SETR family: mmsegmentation's ViT + SETR naive / PUP / MLA decoders, mmseg's checkpoint format.

Model: `backbones/mmseg_vit.py` (`MMSegViT`) and `decoders/setr.py` (`SETRDecoder`), assembled
into `SETR(SegModel)` whose `state_dict()` keys are the mmseg checkpoint's: `backbone.*`,
`neck.*` (MLA) and `decode_head.*`. The decoder object (`model.decoder`) is kept out of the
module tree (it holds the same `neck` / `decode_head` modules the model registers), so no
`decoder.` prefix appears; `model.to()`, `.eval()`, `.half()` reach it through those modules.

Checkpoints: a `.pth` holding `{"state_dict": ..., "meta": {...}}` with the mmseg config beside it
(a `.py` file, parsed, never executed: `algm_export.models.formats.mmseg_config`), or the config text the
checkpoint's `meta` carries (`cfg` in 1.x, `config` in 0.x). `auxiliary_head.*` keys are
training-only and ignored (listed in `model.load_report`).

Version differences handled on purpose (mmseg 0.x -> 1.x, read from both versions' ViT):

* patch-embedding bias: 0.x's `PatchEmbed` always had one (`bias=True`); 1.x added
  `patch_bias` with default False. A config that does not set `patch_bias` follows the checkpoint:
  with `backbone.patch_embed.projection.bias` present the conv gets its bias (the weights as
  trained), without it none. (mmseg 1.x itself would drop a 0.x bias with an "unexpected key"
  warning.) An explicit `patch_bias` is obeyed, and a mismatch is a key error.
* normalisation: 1.x `data_preprocessor` (in `model` or at the top level), 0.x `img_norm_cfg`.
* test settings: `model.test_cfg` (both), top-level `test_cfg` (early 0.x).
* `pre_norm`, `patch_pad`, `out_origin`, `frozen_exclude` are 1.x-only arguments with defaults
  equal to 0.x's behaviour.

Input: `normalization` is in 0..1 units in RGB order (our images are RGB). mmseg loads images
as BGR (OpenCV) and its preprocessor's `bgr_to_rgb=True` (every SETR config) flips them to RGB
before `(x - mean) / std` with mean/std in 0..255 units of the network's channel order; so
normalization = mean/255, std/255 as listed. A config without the flip feeds the network BGR:
then `channel_order='bgr'`, normalization lists mean/std reversed (RGB order) and `prepare` flips
the normalised image's channels before the patch embedding.
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
from algm_export.models.decoders.setr import SETRDecoder, SETRMLAHead, build_head, build_neck
from algm_export.models.formats.mmseg import accepts_types, format_config, read_mmseg
from algm_export.models.mmseg_common import (
    encoder_decoder,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    DecoderUnderHostKeys,
    MMSegViTConfig,
    TRAINING_ONLY_PREFIXES,
    UPSTREAM_SUFFIX,
    MMSegWholeInference,
    backbone_name,
    build_vit,
    inference_from_config,
    load_state_dict_checked,
    normalization_from_config,
    randomize_,
)

FAMILY = "setr"
IGNORED_PREFIXES = TRAINING_ONLY_PREFIXES
# Common names of the ViT sizes (embed_dims, num_layers, num_heads) -> name.


# ----------------------------------------------------------------------------- configuration

@dataclass
class SETRConfig(MMSegViTConfig):
    """The uniform family fields plus what SETR needs. `image_size` is the run size (H, W)."""

    n_cls: int
    image_size: tuple[int, int]
    patch_size: int
    n_layers: int
    d_model: int
    n_heads: int
    normalization: dict
    backbone: str
    decoder_name: str                      # 'setr_naive' | 'setr_pup' | 'setr_mla'
    inference: dict                        # mode 'whole' | 'slide', crop_size, stride
    align_corners: bool = False
    with_cls_token: bool = True
    built_image_size: tuple[int, int] = (512, 512)   # backbone img_size: the stored position grid
    decoder_layers: tuple[int, ...] = ()
    channel_order: str = "rgb"             # what the network consumes; 'bgr': prepare() flips
    normalization_source: str = "data_preprocessor"
    algm: Optional[dict] = None
    notes: list = field(default_factory=list)  # version decisions taken while loading
    model_cfg: dict = field(default_factory=dict)  # the parsed mmseg `model` dict
    family: str = FAMILY




def _decoder_name(head: dict, head_module) -> str:
    if isinstance(head_module, SETRMLAHead):
        return "setr_mla"
    return "setr_naive" if int(head.get("num_convs", 1)) == 1 else "setr_pup"


def build_setr(model_cfg: Mapping, image_size=None, config: Optional[Mapping] = None) -> "SETR":
    """A SETR model (random weights, eval mode) from a parsed mmseg config's `model` dict.

    `config` (the whole parsed config) supplies 0.x-style top-level settings (`img_norm_cfg`,
    `test_cfg`) when the model dict lacks them. `image_size` is the run size (default: the slide
    window for slide inference, else the backbone's `img_size`).
    """
    model_cfg = encoder_decoder(model_cfg, "SETR models")
    config = config or {}
    bb_cfg = dict(model_cfg.get("backbone") or {})
    head_cfg = model_cfg.get("decode_head")
    if not isinstance(head_cfg, Mapping):
        raise ConfigError("the config's model has no decode_head")
    if isinstance(head_cfg, (list, tuple)):
        raise ConfigError("a list of decode heads (cascade) is not supported")

    backbone = build_vit(bb_cfg)
    neck = build_neck(model_cfg.get("neck"))
    head = build_head(dict(head_cfg))
    decoder = SETRDecoder(head, neck, backbone.out_indices)

    normalization, order, source = normalization_from_config(model_cfg, config)
    inference = inference_from_config(model_cfg, config)
    if image_size is None:
        image_size = inference["crop_size"] if inference["mode"] == "slide" else backbone.img_size
    cfg = SETRConfig(
        n_cls=decoder.n_cls, image_size=pair(image_size, "image size"), patch_size=backbone.patch_size,
        n_layers=backbone.depth, d_model=backbone.embed_dim, n_heads=backbone.num_heads,
        normalization=normalization, backbone=backbone_name(bb_cfg), decoder_name=_decoder_name(head_cfg, head),
        inference=inference, align_corners=decoder.align_corners, with_cls_token=backbone.with_cls_token,
        built_image_size=backbone.img_size, decoder_layers=tuple(decoder.in_layers), channel_order=order,
        normalization_source=source, model_cfg=model_cfg,
    )
    backbone.set_image_size(cfg.image_size)
    return SETR(cfg, backbone, decoder).eval()


# ----------------------------------------------------------------------------- the model

class SETR(DecoderUnderHostKeys, MMSegWholeInference, SegModel):
    """SETR: mmseg ViT + SETR decoder. `forward(im)` = mmseg's whole inference on a normalised batch."""

    family = FAMILY

    def __init__(self, cfg: SETRConfig, backbone: MMSegViT, decoder: SETRDecoder):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.hold_decoder(decoder, neck=decoder.neck, decode_head=decoder.decode_head)  # keys neck.* / decode_head.*
        self.load_report: dict = {}

    def macs(self, image_size=None) -> int:
        """Multiply-accumulates of one whole-image forward (no merging)."""
        grid = self.backbone.run_grid(image_size)
        t = grid[0] * grid[1] + self.num_prefix
        bb = self.backbone
        return int(bb.embed_macs(grid) + bb.depth * bb.block_macs(t, t) + self.decoder.macs([], grid))


# ----------------------------------------------------------------------------- checkpoints

def load_mmseg_setr(config_path_or_text=None, checkpoint_path=None, image_size=None, strict: bool = True,
                    trust_checkpoint: bool = False) -> SETR:
    """A SETR model from an mmseg config (file, text, or None: the checkpoint's `meta`) and checkpoint."""
    config, model_cfg, sd, notes, config_path, where = read_mmseg(config_path_or_text, checkpoint_path,
                                                                  who="load_mmseg_setr", trust=trust_checkpoint)
    model = build_setr(model_cfg, image_size=image_size, config=config)
    model.cfg.model_cfg = copy.deepcopy(config["model"])
    model.cfg.notes = notes
    model.load_report = load_state_dict_checked(model, sd, strict=strict, where=where, ignored_prefixes=IGNORED_PREFIXES)
    model.source = where
    model.checkpoint_path = Path(checkpoint_path)
    model.config_path = None if config_path is None else str(config_path)
    return model.eval()


def save_mmseg_setr(model: SETR, path, config: Optional[Mapping] = None, meta: Optional[dict] = None) -> Path:
    """Write `{'state_dict', 'meta': {'cfg': config text}}` as mmseg 1.x does, and the config `.py`
    beside it (same stem). `config` defaults to `{'model': model.cfg.model_cfg}`."""
    path = Path(path)
    config = dict(config) if config is not None else {"model": copy.deepcopy(model.cfg.model_cfg)}
    text = format_config(config)
    m = {"cfg": text}
    m.update(meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": m}, path)
    path.with_suffix(".py").write_text(text)
    return path


# ----------------------------------------------------------------------------- built-ins

def builtin_setr_config(kind: str, image_size=256, n_cls: int = 150) -> dict:
    """An mmseg `model` dict like the published SETR configs, with a ViT-S/16 backbone.

    The published ViT-L configs (24 blocks) read blocks (9, 14, 19, 23) for naive / PUP (the head
    the last, the auxiliary heads the others) and (5, 11, 17, 23) for MLA; scaled to 12 blocks:
    (4, 7, 9, 11) and (2, 5, 8, 11). Auxiliary heads are left out (training only)."""
    size = pair(image_size, "image size")
    norm_cfg = dict(type="SyncBN", requires_grad=True)
    backbone = dict(type="VisionTransformer", img_size=size, patch_size=16, in_channels=3, embed_dims=384,
                    num_layers=12, num_heads=6, out_indices=(4, 7, 9, 11), drop_rate=0.0,
                    norm_cfg=dict(type="LN", eps=1e-6, requires_grad=True), with_cls_token=True,
                    interpolate_mode="bilinear")
    data_preprocessor = dict(type="SegDataPreProcessor", mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255),
                             bgr_to_rgb=True, pad_val=0, seg_pad_val=255)
    model = dict(type="EncoderDecoder", data_preprocessor=data_preprocessor, backbone=backbone)
    if kind in ("naive", "pup"):
        naive = kind == "naive"
        model["decode_head"] = dict(
            type="SETRUPHead", in_channels=384, channels=256, in_index=3, num_classes=n_cls, dropout_ratio=0,
            norm_cfg=norm_cfg, num_convs=1 if naive else 4, up_scale=4 if naive else 2,
            kernel_size=1 if naive else 3, align_corners=False)
    elif kind == "mla":
        backbone.update(out_indices=(2, 5, 8, 11), with_cls_token=False)
        model["neck"] = dict(type="MLANeck", in_channels=[384] * 4, out_channels=256, norm_cfg=norm_cfg,
                             act_cfg=dict(type="ReLU"))
        model["decode_head"] = dict(
            type="SETRMLAHead", in_channels=(256, 256, 256, 256), channels=512, in_index=(0, 1, 2, 3),
            dropout_ratio=0, mla_channels=128, num_classes=n_cls, norm_cfg=norm_cfg, align_corners=False)
    else:
        raise ConfigError(f"unknown SETR kind {kind!r}; use 'naive', 'pup' or 'mla'")
    model.update(train_cfg=dict(), test_cfg=dict(mode="whole"))
    return model


def builtin_setr(kind: str, image_size=256, seed: int = 0, n_cls: int = 150, init: str = "random") -> SETR:
    """A small SETR (ViT-S/16 backbone, built at `image_size`), eval mode, with seeded weights:
    `init="random"` every parameter drawn at random (`randomize_`, the test suite's models);
    `init="upstream"` the weights mmsegmentation gives a fresh model (`mmseg_common.init_upstream_`,
    the benchmarks' models: docs/performance.md, docs/decisions.md item 32)."""
    from algm_export.models.mmseg_common import check_init, init_upstream_, seeded_construction

    if check_init(init) == "upstream":
        with seeded_construction(seed):
            model = build_setr(builtin_setr_config(kind, image_size, n_cls))
        init_upstream_(model, seed)
    else:
        model = build_setr(builtin_setr_config(kind, image_size, n_cls))
        randomize_(model, seed)
    model.source = f"builtin:setr_{kind}_vit_s16_{pair(image_size, 'image size')[0]}" + (
        UPSTREAM_SUFFIX if init == "upstream" else "")
    return model.eval()


# built-ins initialised as upstream initialises a fresh model carry this suffix

# name -> factory, for the family registry
BUILTIN_MODELS: dict[str, Callable[[], SETR]] = {
    f"setr_{kind}_vit_s16_{size}": (lambda kind=kind, size=size: builtin_setr(kind, size, seed=0))
    for kind in ("naive", "pup", "mla") for size in (256, 512)
}
BUILTIN_MODELS.update({
    f"setr_{kind}_vit_s16_512{UPSTREAM_SUFFIX}": (lambda kind=kind: builtin_setr(kind, 512, seed=0, init="upstream"))
    for kind in ("naive", "pup", "mla")
})


# ----------------------------------------------------------------------------- registry

SETR_HEADS = {"SETRUPHead", "SETRMLAHead"}


def _accepts(files: dict, trust_checkpoint: bool = False) -> bool:
    return accepts_types(files, trust_checkpoint, decode_head=SETR_HEADS)


def _load(files: dict, image_size=None, strict: bool = True, trust_checkpoint: bool = False):
    return load_mmseg_setr(files.get("config"), files["checkpoint"], image_size=image_size, strict=strict,
                           trust_checkpoint=trust_checkpoint)


def _register():
    from algm_export.models.registry import Family, register

    return register(Family(
        name=FAMILY, format="mmsegmentation",
        describe="SETR naive / PUP / MLA (decode_head SETRUPHead or SETRMLAHead on mmseg's VisionTransformer)",
        builtins=BUILTIN_MODELS, accepts=_accepts, load=_load))


FAMILY_ENTRY = _register()
