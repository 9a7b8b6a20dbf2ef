"""Segmenter (Strudel et al. 2021): timm ViT encoder + a published decoder, on the family seam.

The encoder is `TimmViT` / `TimmDeiT` (timm's `VisionTransformer` / `VisionTransformerDistilled`
with the `Backbone` interface) built with the published details: LayerNorm eps 1e-5, a
1000-class head that the checkpoint carries but segmentation never uses, and the position
embedding's grid part resized bilinearly (`align_corners=False`) when the run size differs from
the built size. The decoders (`decoders/segmenter.py`) are token decoders. State-dict keys stay
the published ones (`encoder.*`, `decoder.*`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from algm_export.core.errors import ConfigError
from algm_export.models.backbones.timm_vit import (  # noqa: F401  (re-exported)
    TimmDeiT,
    TimmViT,
    attention_forward,
    block_forward,
)
from algm_export.models.base import SegModel, rows_to_map
from algm_export.models.configs import NORMALIZATION, SegmenterConfig
from algm_export.models.decoders.segmenter import LayerNorm, LinearDecoder, MaskTransformer  # noqa: F401
from algm_export.models.layers import (  # noqa: F401  (re-exported)
    KeyMask,
    bilinear_upsample,
    interp_matrix,
    key_bias_from_size,
    resize_pos_embed,
)


def tokens_to_masks(logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, N, n_cls] per-patch logits -> [B, n_cls, Gh, Gw]."""
    return rows_to_map(logits, grid)


# ----------------------------------------------------------------------------- encoder

def build_encoder(cfg: SegmenterConfig):
    kwargs = dict(
        img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.d_model, depth=cfg.n_layers,
        num_heads=cfg.n_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=1000,
        norm_layer=LayerNorm, drop_rate=cfg.dropout, drop_path_rate=cfg.drop_path_rate,
        dynamic_img_size=False,
    )
    return (TimmDeiT if cfg.distilled else TimmViT)(**kwargs)


class Segmenter(SegModel):
    """Segmenter: ViT encoder + decoder. `forward(im)` takes a normalised `[B,3,H,W]` batch."""

    family = "segmenter"

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.encoder = build_encoder(cfg)
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
    from algm_export.models.configs import make_config

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
