"""The Segmenter family (Strudel et al. 2021): timm ViT encoder + linear / mask-transformer decoder.

Everything of the family is here: its configuration (the published backbones, decoders and
normalisations), the model on the family seam, the built-in models, and its registry entry. The
encoder is `TimmViT` / `TimmDeiT` (`backbones/timm_vit.py`: timm's `VisionTransformer` /
`VisionTransformerDistilled` with the `Backbone` interface) built with the published details:
LayerNorm eps 1e-5, a 1000-class head that the checkpoint carries but segmentation never uses, and
the position embedding's grid part resized bilinearly (`align_corners=False`) when the run size
differs from the built size. The decoders (`decoders/segmenter.py`) are token decoders. State-dict
keys stay the published ones (`encoder.*`, `decoder.*`). Its checkpoint format (`checkpoint.pth` +
`variant.yml`) is `models/formats/published_segmenter.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from algm_export.core.errors import ConfigError
from algm_export.core.names import NORMALIZATION, pair
from algm_export.models.backbones.timm_vit import TimmDeiT, TimmViT
from algm_export.models.base import SegModel
from algm_export.models.decoders.segmenter import LayerNorm, LinearDecoder, MaskTransformer
from algm_export.models.layers import bilinear_upsample
from algm_export.models.registry import Family, register

# ----------------------------------------------------------------------------- configuration

BACKBONES: dict[str, tuple[int, int, int, bool]] = {
    "vit_tiny_patch16_384": (192, 3, 12, False),
    "vit_small_patch16_384": (384, 6, 12, False),
    "vit_base_patch16_384": (768, 12, 12, False),
    "vit_large_patch16_384": (1024, 16, 24, False),
    "deit_tiny_distilled_patch16_224": (192, 3, 12, True),
    "deit_small_distilled_patch16_224": (384, 6, 12, True),
    "deit_base_distilled_patch16_224": (768, 12, 12, True),
}
# Short names accepted everywhere a backbone is named.
ALIASES = {
    "vit_tiny": "vit_tiny_patch16_384", "vit_ti": "vit_tiny_patch16_384", "vit-ti": "vit_tiny_patch16_384",
    "vit_small": "vit_small_patch16_384", "vit_s": "vit_small_patch16_384", "vit-s": "vit_small_patch16_384",
    "vit_base": "vit_base_patch16_384", "vit_b": "vit_base_patch16_384", "vit-b": "vit_base_patch16_384",
    "vit_large": "vit_large_patch16_384", "vit_l": "vit_large_patch16_384", "vit-l": "vit_large_patch16_384",
    "deit_tiny": "deit_tiny_distilled_patch16_224", "deit_small": "deit_small_distilled_patch16_224",
    "deit_base": "deit_base_distilled_patch16_224",
}



def resolve_backbone(name: str) -> str:
    key = ALIASES.get(name.lower(), name)
    if key not in BACKBONES:
        raise ConfigError(
            f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} (or short names {sorted(ALIASES)})"
        )
    return key


@dataclass
class DecoderConfig:
    name: str = "linear"  # "linear" | "mask_transformer"
    n_layers: int = 2
    drop_path_rate: float = 0.0
    dropout: float = 0.1


@dataclass
class SegmenterConfig:
    backbone: str = "vit_small_patch16_384"
    d_model: int = 384
    n_heads: int = 6
    n_layers: int = 12
    patch_size: int = 16
    image_size: tuple[int, int] = (512, 512)
    n_cls: int = 150
    distilled: bool = False
    # register tokens after the class token (timm `reg_tokens`; not in the published models)
    reg_tokens: int = 0
    normalization: str = "vit"
    dropout: float = 0.0
    drop_path_rate: float = 0.1
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # ALGM settings found in a checkpoint's variant.yml (dataset_kwargs), if any.
    algm: Optional[dict] = None
    # Published evaluation settings (inference_kwargs), if any.
    inference: Optional[dict] = None

    family = "segmenter"

    @property
    def num_prefix(self) -> int:
        """Class token + distillation token + register tokens."""
        return (2 if self.distilled else 1) + int(self.reg_tokens)

    @property
    def decoder_name(self) -> str:
        return self.decoder.name

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SegmenterConfig":
        d = dict(d)
        dec = d.pop("decoder", None) or {}
        cfg = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "decoder"})
        cfg.decoder = dec if isinstance(dec, DecoderConfig) else DecoderConfig(
            **{k: v for k, v in dec.items() if k in DecoderConfig.__dataclass_fields__}
        )
        cfg.image_size = pair(cfg.image_size, "image size")
        return cfg




def make_config(
    backbone: str = "vit_small",
    decoder: str = "linear",
    image_size=512,
    n_cls: int = 150,
    patch_size: int = 16,
    normalization: Optional[str] = None,
) -> SegmenterConfig:
    name = resolve_backbone(backbone)
    d_model, n_heads, n_layers, distilled = BACKBONES[name]
    if decoder not in ("linear", "mask_transformer"):
        raise ConfigError(f"unknown decoder {decoder!r}; use 'linear' or 'mask_transformer'")
    norm = normalization or ("deit" if name.startswith("deit") else "vit")
    if norm not in NORMALIZATION:
        raise ConfigError(f"unknown normalization {norm!r}; use 'vit' or 'deit'")
    return SegmenterConfig(
        backbone=name, d_model=d_model, n_heads=n_heads, n_layers=n_layers, patch_size=patch_size,
        image_size=pair(image_size, "image size"), n_cls=n_cls, distilled=distilled, normalization=norm,
        decoder=DecoderConfig(name=decoder, n_layers=2),
    )


# ----------------------------------------------------------------------------- model

# ----------------------------------------------------------------------------- encoder

def build_encoder(cfg: SegmenterConfig):
    kwargs = dict(
        img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.d_model, depth=cfg.n_layers,
        num_heads=cfg.n_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=1000,
        norm_layer=LayerNorm, drop_rate=cfg.dropout, drop_path_rate=cfg.drop_path_rate,
        dynamic_img_size=False,
    )
    if cfg.reg_tokens:
        if cfg.distilled:
            raise ConfigError("a distilled (DeiT) encoder has no register tokens; set reg_tokens: 0 or distilled: false")
        kwargs["reg_tokens"] = int(cfg.reg_tokens)
    return (TimmDeiT if cfg.distilled else TimmViT)(**kwargs)


class Segmenter(SegModel):
    """Segmenter: ViT encoder + decoder. `forward(im)` takes a normalised `[B,3,H,W]` batch."""

    family = "segmenter"

    def __init__(self, cfg: SegmenterConfig, encoder: Optional[TimmViT] = None):
        """`encoder`: another timm ViT than the published one (e.g. `timm_backbone(
        "vit_small_patch14_reg4_dinov2", patch_size=16, img_size=512)`: registers, layer scale);
        its width, depth, patch size, built size and prefix tokens (`cfg.num_prefix`: class +
        distillation + `cfg.reg_tokens`) must be cfg's. The prefix travels to ALGM through the
        backbone (`SegModel.num_prefix`)."""
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        if encoder is not None:
            have = (int(encoder.embed_dim), encoder.depth, encoder.patch_size, encoder.built_grid, encoder.num_prefix)
            want = (cfg.d_model, cfg.n_layers, cfg.patch_size, cfg.grid, cfg.num_prefix)
            if have != want:
                raise ConfigError(f"encoder (width, depth, patch, grid, prefix tokens) {have} does not match the "
                                  f"config's {want}; build the encoder with the config's sizes (prefix tokens: "
                                  "set cfg.distilled / cfg.reg_tokens)")
        self.encoder = build_encoder(cfg) if encoder is None else encoder
        depth = cfg.n_layers
        if cfg.decoder.name == "linear":
            self.decoder = LinearDecoder(cfg.n_cls, cfg.d_model, depth)
        elif cfg.decoder.name == "mask_transformer":
            self.decoder = MaskTransformer(cfg.n_cls, cfg.d_model, cfg.decoder.n_layers, cfg.d_model,
                                           cfg.decoder.drop_path_rate, cfg.decoder.dropout, depth)
        else:
            raise ConfigError(f"unknown decoder {cfg.decoder.name!r}; use 'linear' or 'mask_transformer'")

    @property
    def backbone(self) -> TimmViT:
        return self.encoder

    @property
    def blocks(self):
        return self.encoder.blocks

    def normalization(self) -> dict:
        return NORMALIZATION[self.cfg.normalization]

    def pad(self, im: torch.Tensor) -> torch.Tensor:
        """Pad right/bottom with zeros to a multiple of the patch size (published `padding`)."""
        H, W = im.shape[-2:]
        p = self.patch_size
        ph, pw = (p - H % p) % p, (p - W % p) % p
        if ph or pw:
            im = F.pad(im, (0, pw, 0, ph), value=0.0)
        return im

    prepare = pad

    def embed(self, im: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding + prefix tokens + position embedding. im must be patch-aligned."""
        return self.encoder.embed(im)

    def finish(self, masks: torch.Tensor, padded_hw, out_hw) -> torch.Tensor:
        """Upsample grid logits to the padded image size, crop the padding off."""
        masks = bilinear_upsample(masks.float(), tuple(padded_hw))
        return masks[..., : out_hw[0], : out_hw[1]]


def create_segmenter(
    backbone: str = "vit_small",
    decoder: str = "linear",
    image_size=512,
    n_cls: int = 150,
    seed: int = 0,
    normalization: Optional[str] = None,
    window=(2, 2),
) -> Segmenter:
    """A standard Segmenter config with seeded random weights, in eval mode.

    The image size must be a multiple of patch x window (so that CLAP windows tile the grid).
    """
    cfg = make_config(backbone, decoder, image_size, n_cls, normalization=normalization)
    wh, ww = window
    for side, v in zip(("height", "width"), cfg.image_size):
        if v % (cfg.patch_size * (wh if side == "height" else ww)):
            raise ConfigError(
                f"image {side} {v} is not a multiple of patch x window "
                f"({cfg.patch_size} x {wh if side == 'height' else ww}); use e.g. "
                f"{math.ceil(v / (cfg.patch_size * 2)) * cfg.patch_size * 2}"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Segmenter(cfg)
    return model.eval()


# Published ALGM thresholds per backbone (ADE20K, docs/algorithm.md: decoders and unmerging): the default operating point of builtins.
PUBLISHED_THRESHOLDS = {"vit_tiny_patch16_384": 0.90, "vit_small_patch16_384": 0.88,
                        "vit_base_patch16_384": 0.94, "vit_large_patch16_384": 0.95}

# ----------------------------------------------------------------------------- built-in models

# Seeded random weights with the published architectures: for smoke tests, demos and exports
# when no trained checkpoint is at hand. Segmentations from them are meaningless.
BUILTIN_MODELS: dict[str, dict] = {
    "vit_s16_512": dict(backbone="vit_small", decoder="linear", image_size=512, n_cls=150, seed=0),
    "vit_ti16_512": dict(backbone="vit_tiny", decoder="linear", image_size=512, n_cls=150, seed=0),
    "vit_s16_512_mask": dict(backbone="vit_small", decoder="mask_transformer", image_size=512, n_cls=150, seed=0),
    "deit_s16_512": dict(backbone="deit_small", decoder="linear", image_size=512, n_cls=150, seed=0),
}


def builtin_model(name: str) -> Segmenter:
    """`create_segmenter` with the registry's arguments, plus the published ADE20K settings
    (ALGM threshold of the backbone, layers 1 and 5, 2x2 window; 512 sliding windows)."""
    if name not in BUILTIN_MODELS:
        raise ConfigError(
            f"unknown built-in model {name!r}; choose one of "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
        )
    kw = BUILTIN_MODELS[name]
    model = create_segmenter(**kw)
    cfg = model.cfg
    cfg.algm = {"patch_type": "algm", "threshold": PUBLISHED_THRESHOLDS.get(cfg.backbone, 0.88),
                "selected_layers": [1, 7] if cfg.n_layers >= 24 else [1, 5], "merging_window_size": [2, 2]}
    side = min(cfg.image_size)
    cfg.inference = {"im_size": side, "window_size": side, "window_stride": side}
    model.source = f"builtin:{name}"
    model.checkpoint_path = None
    model.checkpoint_image_size = tuple(cfg.image_size)
    from algm_export.models.formats.published_segmenter import make_variant

    model.variant = make_variant(cfg)
    return model



# ----------------------------------------------------------------------------- registry entry

def _load(files: dict, image_size=None, strict: bool = True, trust_checkpoint: bool = False) -> Segmenter:
    from algm_export.models.formats.published_segmenter import load_segmenter

    return load_segmenter(files["checkpoint"], image_size=image_size, strict=strict,
                          trust_checkpoint=trust_checkpoint, variant_path=files["variant"])


FAMILY = register(Family(
    name="segmenter",
    format="published-segmenter",
    builtins={name: (lambda name=name: builtin_model(name)) for name in BUILTIN_MODELS},
    load=_load,
))
