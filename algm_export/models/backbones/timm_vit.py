"""timm's `VisionTransformer` (Segmenter, DeiT) as a `Backbone`.

`TimmViT` *is* a timm `VisionTransformer` (and `TimmDeiT` a `VisionTransformerDistilled`):
the state-dict keys stay timm's, and the Backbone methods drive the same `Block`s in two halves
with an additive padding bias. The attention is written out as the published Segmenter does.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block, VisionTransformer

from algm_export.models.base import Backbone, TokenState
from algm_export.models.layers import KeyMask, resize_pos_embed


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
        mask = key_bias if isinstance(key_bias, KeyMask) else KeyMask.from_bias(key_bias)
        q, k, v = mask.attend(q, k, v, attn.scale)
    a = (q @ k.transpose(-2, -1)) * attn.scale
    a = a.float().softmax(dim=-1).to(v.dtype) if a.dtype == torch.float16 else a.softmax(dim=-1)
    out = (a @ v).transpose(1, 2).reshape(B, T, C)
    out = attn.norm(out)
    return attn.proj(out)


def block_attn(blk: Block, x: torch.Tensor, key_bias=None) -> torch.Tensor:
    """`x + attn(norm1(x))` of a timm `Block`."""
    return x + blk.drop_path1(blk.ls1(attention_forward(blk.attn, blk.norm1(x), key_bias)))


def block_mlp(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """`x + mlp(norm2(x))` of a timm `Block`."""
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def block_forward(blk: Block, x: torch.Tensor, key_bias=None,
                  merge: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """`x = x + attn(norm1(x))`; optional `x = merge(x)`; `x = x + mlp(norm2(x))` (spec 1)."""
    x = block_attn(blk, x, key_bias)
    if merge is not None:
        x = merge(x)
    return block_mlp(blk, x)


class _TimmBackbone(Backbone):
    """The Backbone methods on top of a timm ViT (mixed into the timm classes below)."""

    mlp_ratio = 4.0

    @property
    def num_prefix(self) -> int:
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

    def embed(self, im: torch.Tensor):
        """Patch embedding + prefix tokens + position embedding (grid part resized bilinearly)."""
        x = self.patch_embed.proj(im)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        B = x.shape[0]
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.num_prefix == 2:
            prefix.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat(prefix + [x], dim=1)
        pos = resize_pos_embed(self.pos_embed, self.num_prefix, self.built_grid, grid)
        return self.pos_drop(x + pos), grid

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
            pe = resize_pos_embed(self.pos_embed.data, self.num_prefix, self.built_grid, new_grid)
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
