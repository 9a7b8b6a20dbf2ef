"""timm's `VisionTransformer` (Segmenter, DeiT, DINOv2 with registers, ...) as a `Backbone`.

`TimmViT` *is* a timm `VisionTransformer` (and `TimmDeiT` a `VisionTransformerDistilled`):
the state-dict keys stay timm's, and the Backbone methods drive the same `Block`s in two halves
with an additive padding bias. The attention is written out as the published Segmenter does.

Prefix tokens, in timm's order: the class token (if any), the distillation token (DeiT), the
register tokens (`reg_tokens`, e.g. DINOv2 with 4 registers: P = 5); `num_prefix` counts them
all and ALGM never merges them (docs/algorithm.md). `no_embed_class` models add the position
embedding to the patches only. Layer scale (`init_values`: `ls1` / `ls2`), any `mlp_ratio` and a
pre-norm (`norm_pre`) are honoured as timm's own forward does. `timm_backbone` turns a timm model
name (built with random weights, any timm arguments) into this Backbone.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Attention, Block, VisionTransformer

from algm_export.core.errors import ConfigError
from algm_export.models.base import Backbone, TokenState
from algm_export.models.layers import KeyMask, attend, resize_pos_embed, split_heads


def attention_forward(attn: nn.Module, x: torch.Tensor, key_bias=None) -> torch.Tensor:
    """timm `Attention` written out (as the published Segmenter does), with an additive key bias.

    x: [B, T, C]; key_bias: a `KeyMask`, a [B, 1, 1, T] bias (0 for real keys, very negative for
    padding), or None.
    """
    mask = key_bias if key_bias is None or isinstance(key_bias, KeyMask) else KeyMask.from_bias(key_bias)
    if mask is not None:
        x = mask.hide(x)
    q, k, v = split_heads(attn.qkv(x), attn.num_heads)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = attend(q, k, v, attn.scale, mask)
    norm = getattr(attn, "norm", None)     # timm < 1.0.16 has no post-attention norm (scale_norm)
    if norm is not None:
        out = norm(out)
    return attn.proj(out)


def block_attn(blk: Block, x: torch.Tensor, key_bias=None) -> torch.Tensor:
    """`x + attn(norm1(x))` of a timm `Block`."""
    return x + blk.drop_path1(blk.ls1(attention_forward(blk.attn, blk.norm1(x), key_bias)))


def block_mlp(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """`x + mlp(norm2(x))` of a timm `Block`."""
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def block_forward(blk: Block, x: torch.Tensor, key_bias=None,
                  merge: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """`x = x + attn(norm1(x))`; optional `x = merge(x)`; `x = x + mlp(norm2(x))` (docs/algorithm.md: the published method)."""
    x = block_attn(blk, x, key_bias)
    if merge is not None:
        x = merge(x)
    return block_mlp(blk, x)


class TimmShape:
    """The Backbone properties every timm ViT-like model answers alike (its `blocks`, `patch_embed`
    and `num_prefix_tokens`): mixed into the timm ViT here and into EVA-02 (`backbones/eva02.py`)."""

    @property
    def num_prefix(self) -> int:
        """Class token + distillation token + register tokens (timm's `num_prefix_tokens`)."""
        return int(self.num_prefix_tokens)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def patch_size(self) -> int:
        return int(self.patch_embed.proj.kernel_size[0])

    @property
    def built_grid(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.patch_embed.grid_size)


class _TimmBackbone(TimmShape, Backbone):
    """The Backbone methods on top of a timm ViT (mixed into the timm classes below)."""

    @property
    def pos_prefix(self) -> int:
        """Prefix entries of `pos_embed`: none for `no_embed_class` models, else one per prefix token."""
        return 0 if getattr(self, "no_embed_class", False) else self.num_prefix

    @property
    def mlp_ratio(self) -> float:
        """The MLP's MACs per token / (2 D^2) (for MAC counts): hidden width / D for timm's `Mlp`;
        a packed gated MLP (fc1 to 2h, fc2 from h) counts as 3h / (2D)."""
        mlp = self.blocks[0].mlp
        return (mlp.fc1.out_features + mlp.fc2.in_features) / (2.0 * self.embed_dim)

    def prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """The prefix token parameters in sequence order, each expanded to [batch, n, D]."""
        tokens = [getattr(self, name, None) for name in ("cls_token", "dist_token", "reg_token")]
        return [t.expand(batch, -1, -1) for t in tokens if t is not None]

    def embed(self, im: torch.Tensor):
        """Patch embedding + prefix tokens + position embedding (grid part resized bilinearly)."""
        x = self.patch_embed.proj(im)
        grid = (x.shape[-2], x.shape[-1])
        x = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        prefix = self.prefix_tokens(x.shape[0])
        pos = resize_pos_embed(self.pos_embed, self.pos_prefix, self.built_grid, grid)
        if self.pos_prefix:
            x = torch.cat(prefix + [x], dim=1) + pos
        else:   # no_embed_class (or no prefix token): positions for the patches only
            x = torch.cat(prefix + [x + pos], dim=1)
        return self.norm_pre(self.pos_drop(x)), grid

    def block_attn(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        return block_attn(self.blocks[i], x, state.key_mask(x.dtype))

    def block_mlp(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        return block_mlp(self.blocks[i], x)

    def layer_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) if i == self.depth - 1 else x

    def set_image_size(self, image_size) -> None:
        p = self.patch_size
        new_grid = (image_size[0] // p, image_size[1] // p)
        if new_grid == self.built_grid:
            return
        with torch.no_grad():
            pe = resize_pos_embed(self.pos_embed.data, self.pos_prefix, self.built_grid, new_grid)
        self.pos_embed = nn.Parameter(pe, requires_grad=self.pos_embed.requires_grad)
        pm = self.patch_embed
        for attr, val in (("img_size", tuple(image_size)), ("grid_size", new_grid),
                          ("num_patches", new_grid[0] * new_grid[1])):
            if hasattr(pm, attr):
                setattr(pm, attr, val)


class TimmViT(VisionTransformer, _TimmBackbone):
    """timm `VisionTransformer` with the Backbone interface (Segmenter ViT-Ti/S/B/L)."""


class TimmDeiT(VisionTransformerDistilled, _TimmBackbone):
    """timm `VisionTransformerDistilled` (class + distillation token) with the Backbone interface."""


def timm_backbone(name: str, **kwargs) -> _TimmBackbone:
    """timm model `name` built with random weights (`timm.create_model(name, pretrained=False,
    **kwargs)`, e.g. `timm_backbone("vit_small_patch14_reg4_dinov2", patch_size=16, img_size=512)`:
    class token + 4 registers, P = 5) as a `TimmViT` (or `TimmDeiT`): the same module, parameters
    and state-dict keys, with the Backbone methods."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:   # timm: unknown model / argument
        raise ConfigError(f"timm cannot build {name!r} with {kwargs}: {e}; use a timm ViT name "
                          "(timm.list_models('vit_*')) and arguments of timm's VisionTransformer") from None
    kinds = {VisionTransformer: TimmViT, VisionTransformerDistilled: TimmDeiT}
    if type(model) not in kinds:
        raise ConfigError(f"timm model {name!r} is a {type(model).__name__}, not a plain VisionTransformer; "
                          "only timm's VisionTransformer and VisionTransformerDistilled are supported")
    if getattr(model, "pos_embed", None) is None:
        raise ConfigError(f"timm model {name!r} has no absolute position embedding; it cannot be driven here "
                          "(rotary-position ViTs are the EVA-02 family)")
    odd = sorted({type(b).__name__ for b in model.blocks if type(b) is not Block or not isinstance(b.attn, Attention)})
    if odd:
        raise ConfigError(f"timm model {name!r} uses blocks {odd}; only timm's Block with its Attention can be split "
                          "around the merge step")
    model.__class__ = kinds[type(model)]
    return model
