"""Segmenter (Strudel et al. 2021) on a timm VisionTransformer, with both published decoders.

The encoder is timm's `VisionTransformer` (or `VisionTransformerDistilled` for DeiT-distilled
backbones) built with the published details: LayerNorm eps 1e-5, a 1000-class head that the
checkpoint carries but segmentation never uses, and the position embedding's grid part
resized bilinearly (`align_corners=False`) when the run size differs from the built size.

Token-level pieces are exposed so that ALGM (`algm_export.merging`) can run the same blocks on
merged, padded token sets:

* `Segmenter.embed(im)`           -> tokens `[B, P+N, D]` and the grid `(Gh, Gw)`
* `block_forward(blk, x, bias)`   -> one transformer block with an additive key bias
* `Segmenter.decoder.forward_tokens(x, bias)` -> per-token class logits `[B, T, n_cls]`
* `tokens_to_masks(logits, grid)` -> `[B, n_cls, Gh, Gw]`
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer

from algm_export.errors import ConfigError
from algm_export.models.configs import NORMALIZATION, SegmenterConfig
from algm_export.models.layers import (  # noqa: F401  (re-exported)
    KeyMask,
    bilinear_upsample,
    interp_matrix,
    key_bias_from_size,
    resize_pos_embed,
)

LayerNorm = partial(nn.LayerNorm, eps=1e-5)  # the published ViT uses PyTorch's default eps


# ----------------------------------------------------------------------------- blocks

def attention_forward(attn: nn.Module, x: torch.Tensor, key_bias=None) -> torch.Tensor:
    """timm `Attention` written out (as the published Segmenter does), with an additive key bias.

    x: [B, T, C]; key_bias: a `KeyMask`, a [B, 1, 1, T] bias (0 for real keys, very negative for
    padding), or None.
    """
    B, T, C = x.shape
    H = attn.num_heads
    qkv = attn.qkv(x).reshape(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if key_bias is not None:
        mask = key_bias if isinstance(key_bias, KeyMask) else KeyMask(key_bias)
        q_one, k_bias = mask.channels(H, attn.scale, k.dtype)
        q = torch.cat([q, q_one], dim=-1)
        k = torch.cat([k, k_bias], dim=-1)
    a = (q @ k.transpose(-2, -1)) * attn.scale
    a = a.float().softmax(dim=-1).to(v.dtype) if a.dtype == torch.float16 else a.softmax(dim=-1)
    out = (a @ v).transpose(1, 2).reshape(B, T, C)
    out = attn.norm(out)
    return attn.proj(out)


def block_forward(
    blk: Block,
    x: torch.Tensor,
    key_bias: Optional[torch.Tensor] = None,
    merge: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """`x = x + attn(norm1(x))`; optional `x = merge(x)`; `x = x + mlp(norm2(x))` (spec 1)."""
    x = x + blk.drop_path1(blk.ls1(attention_forward(blk.attn, blk.norm1(x), key_bias)))
    if merge is not None:
        x = merge(x)
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


# ----------------------------------------------------------------------------- decoders

class LinearDecoder(nn.Module):
    """`decoder.head`: a linear map from encoder features to class logits, per token."""

    def __init__(self, n_cls: int, d_encoder: int):
        super().__init__()
        self.n_cls = n_cls
        self.head = nn.Linear(d_encoder, n_cls)

    def forward_tokens(self, x: torch.Tensor, key_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(x)


class MaskTransformer(nn.Module):
    """Segmenter's mask transformer: class embeddings attend jointly with patch tokens.

    `n_heads = d_model // 64`, `d_ff = 4 * d_model`; masks are
    `L2norm(patches @ proj_patch) @ L2norm(cls @ proj_classes)^T`, then `mask_norm`.
    """

    def __init__(self, n_cls: int, d_encoder: int, n_layers: int, d_model: int,
                 drop_path_rate: float = 0.0, dropout: float = 0.1):
        super().__init__()
        self.n_cls = n_cls
        self.d_model = d_model
        n_heads = max(1, d_model // 64)
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, n_layers)] if n_layers else []
        self.blocks = nn.ModuleList([
            Block(d_model, n_heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=dropout,
                  drop_path=dpr[i], norm_layer=LayerNorm)
            for i in range(n_layers)
        ])
        self.cls_emb = nn.Parameter(torch.randn(1, n_cls, d_model))
        self.proj_dec = nn.Linear(d_encoder, d_model)
        scale = d_model ** -0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.decoder_norm = LayerNorm(d_model)
        self.mask_norm = LayerNorm(n_cls)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def forward_tokens(self, x: torch.Tensor, key_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, _ = x.shape
        x = self.proj_dec(x)
        x = torch.cat((x, self.cls_emb.expand(B, -1, -1).to(x.dtype)), dim=1)
        bias = None
        if key_bias is not None:  # class embeddings are always real keys
            bias = KeyMask(F.pad(key_bias, (0, self.n_cls), value=0.0))
        for blk in self.blocks:
            x = block_forward(blk, x, bias)
        x = self.decoder_norm(x)
        patches, cls_feat = x[:, :T], x[:, T:]
        patches = patches @ self.proj_patch
        cls_feat = cls_feat @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        cls_feat = cls_feat / cls_feat.norm(dim=-1, keepdim=True)
        masks = patches @ cls_feat.transpose(1, 2)
        return self.mask_norm(masks)


def tokens_to_masks(logits: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, N, n_cls] per-patch logits -> [B, n_cls, Gh, Gw]."""
    B, N, C = logits.shape
    return logits.transpose(1, 2).reshape(B, C, grid[0], grid[1])


# ----------------------------------------------------------------------------- encoder

def build_encoder(cfg: SegmenterConfig) -> VisionTransformer:
    kwargs = dict(
        img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.d_model, depth=cfg.n_layers,
        num_heads=cfg.n_heads, mlp_ratio=4.0, qkv_bias=True, num_classes=1000,
        norm_layer=LayerNorm, drop_rate=cfg.dropout, drop_path_rate=cfg.drop_path_rate,
        dynamic_img_size=False,
    )
    if cfg.distilled:
        from timm.models.deit import VisionTransformerDistilled

        return VisionTransformerDistilled(**kwargs)
    return VisionTransformer(**kwargs)


class Segmenter(nn.Module):
    """Segmenter: ViT encoder + decoder. `forward(im)` takes a normalised `[B,3,H,W]` batch."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.n_cls = cfg.n_cls
        self.num_prefix = cfg.num_prefix
        self.encoder = build_encoder(cfg)
        if cfg.decoder.name == "linear":
            self.decoder = LinearDecoder(cfg.n_cls, cfg.d_model)
        elif cfg.decoder.name == "mask_transformer":
            self.decoder = MaskTransformer(cfg.n_cls, cfg.d_model, cfg.decoder.n_layers, cfg.d_model,
                                           cfg.decoder.drop_path_rate, cfg.decoder.dropout)
        else:
            raise ConfigError(f"unknown decoder {cfg.decoder.name!r}; use 'linear' or 'mask_transformer'")

    # -- pieces used by ALGM
    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.blocks

    @property
    def built_grid(self) -> tuple[int, int]:
        return self.cfg.grid

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

    def embed(self, im: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding + prefix tokens + position embedding. im must be patch-aligned."""
        enc = self.encoder
        x = enc.patch_embed.proj(im)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        B = x.shape[0]
        prefix = [enc.cls_token.expand(B, -1, -1)]
        if self.num_prefix == 2:
            prefix.append(enc.dist_token.expand(B, -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        pos = resize_pos_embed(enc.pos_embed, self.num_prefix, self.built_grid, grid)
        x = enc.pos_drop(x + pos)
        return x, grid

    def finish(self, masks: torch.Tensor, padded_hw, out_hw) -> torch.Tensor:
        """Upsample grid logits to the padded image size, crop the padding off."""
        masks = bilinear_upsample(masks.float(), tuple(padded_hw))
        return masks[..., : out_hw[0], : out_hw[1]]

    # -- baseline forward
    def forward(self, im: torch.Tensor) -> torch.Tensor:
        H, W = im.shape[-2:]
        im = im.to(self.encoder.patch_embed.proj.weight.dtype)
        im_p = self.pad(im)
        x, grid = self.embed(im_p)
        for blk in self.encoder.blocks:
            x = block_forward(blk, x)
        x = self.encoder.norm(x)
        logits = self.decoder.forward_tokens(x[:, self.num_prefix:])
        return self.finish(tokens_to_masks(logits, grid), im_p.shape[-2:], (H, W))


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
