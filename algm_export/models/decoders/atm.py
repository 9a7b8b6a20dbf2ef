"""SegViT's ATM (attention-to-mask) decoder as a token decoder (docs/algorithm.md: other families).

Written from reading SegViT's `decode_heads/atm_head.py` (`ATMHead`, `TPN_Decoder`,
`TPN_DecoderLayer`, `Attention`; github.com/zbwxp/SegVit), not copied. `state_dict()` keys are
the checkpoint's `decode_head.*` keys without the prefix:

    input_proj_{s}.{weight,bias}       Linear(in_channels, dim)        (s = 1..use_stages)
    proj_norm_{s}.{weight,bias}        LayerNorm(dim), eps 1e-5
    decoder_{s}.layers.{j}.self_attn.in_proj_weight, .in_proj_bias, .out_proj.{weight,bias}
    decoder_{s}.layers.{j}.multihead_attn.{q,k,v,proj}.{weight,bias}
    decoder_{s}.layers.{j}.linear1.*, .linear2.*, .norm1.*, .norm2.*, .norm3.*
    q.weight                           Embedding(n_cls, dim): the class queries
    class_embed.{weight,bias}          Linear(dim, n_cls + 1): the last class is "no object"

What `ATMHead.forward` does at inference, and how it runs on merged tokens here:

1. The backbone's outputs (`out_indices`, block order), the first `use_stages` of them, are
   taken *deepest first*: stage s = 1 reads the deepest block, with `input_proj_1` /
   `proj_norm_1` / `decoder_1`.
2. Per stage: `lateral = proj_norm(input_proj(tokens))`; the class queries (initially
   `q.weight`, then the previous stage's output queries) run the stage's stack of TPN layers:
   post-norm `TransformerDecoderLayer`s (self-attention of the queries, `norm1`; cross-attention
   of the queries to the lateral, `norm2`; ReLU FFN of width 4*dim, `norm3`). The cross-attention
   is separate q / k / v / proj linears; its pre-softmax logits `q.k * head_dim^-0.5`, averaged
   over the heads, *of the stack's last layer* are the stage's mask logits `[B, Q, T]`.
   Here the lateral is computed on the merged tokens of the stage's block (`level.patches`),
   padding keys are zeroed, get an additive `-1e9` bias and are then raised to the row maximum
   - 80 (`layers.floor_scores`: weight <= e^-80, no exp argument below float32's normal range), and only
   the mask logits are unmerged (`level.unmerge`, the assignment map valid at that block).
3. SegViT does **not** add the laterals of consecutive stages: the branch that would
   (`laterals.append(lateral + laterals[idx - 1])`) sits behind `if True:` and never runs, so
   every stage attends to its own lateral only. What links the stages is the queries, which
   have no token axis; so merged token sets of different stages never meet, and the per-stage
   unmerge is exact. (docs/decisions.md: "SegViT stages".)
4. The stages' mask maps are summed in stage order (each bilinearly resized to the last stage's
   map size first, which for a plain ViT is the same grid: an exact identity, skipped here).
5. `pred_masks` = the sum bilinearly upsampled (`align_corners=False`) to the head's
   `img_size` x `img_size`; class logits = `class_embed` of the last stage's queries.
6. `semantic_inference`: `softmax(class logits)[..., :-1]` (the "no object" class dropped
   after the softmax) times `sigmoid(pred_masks)`, summed over the queries:
   `[B, n_cls, img_size, img_size]`. That is what `decode` returns.

SegViT's `d3_to_d4` reshapes to a square (`h = w = sqrt(T)`, dropping a first token when T is
odd): it only runs square grids. Here a square grid upsamples to `img_size` as SegViT does; a
non-square grid (our extension) upsamples to the patch-aligned input size `grid * patch_size`.
Only inference is modelled: every dropout is the identity.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from algm_export.core.errors import ConfigError
from algm_export.models.base import Level, TokenDecoder, rows_to_map
from algm_export.models.layers import bilinear_upsample, floor_scores, hide_rows


class CrossAttention(nn.Module):
    """SegViT's `Attention`: separate q / k / v / proj linears (biases on)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, xq: torch.Tensor, xk: torch.Tensor,
                key_bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """xq [B, Q, C], xk [B, T, C], key_bias [B, 1, 1, T] or None ->
        (output [B, Q, C], mask logits [B, Q, T] = head mean of the pre-softmax logits)."""
        B, Q, C = xq.shape
        T = xk.shape[1]
        H = self.num_heads
        q = self.q(xq).reshape(B, Q, H, C // H).transpose(1, 2)
        k = self.k(xk).reshape(B, T, H, C // H).transpose(1, 2)
        v = self.v(xk).reshape(B, T, H, C // H).transpose(1, 2)
        if key_bias is not None:   # padding keys: zero k and v, whatever the slots hold
            real = (key_bias == 0).reshape(B, 1, T, 1)
            k, v = hide_rows(k, real), hide_rows(v, real)
        logits = (q @ k.transpose(-2, -1)) * self.scale          # [B, H, Q, T]
        masks = logits.sum(dim=1) / H                             # SegViT: attn.sum(1) / num_heads
        a = logits if key_bias is None else floor_scores(logits + key_bias.to(logits.dtype))
        a = a.float().softmax(dim=-1).to(v.dtype) if a.dtype == torch.float16 else a.softmax(dim=-1)
        out = (a @ v).transpose(1, 2).reshape(B, Q, C)
        return self.proj(out), masks


def self_attention(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """torch's `MultiheadAttention(x, x, x)` (eval, no masks) written out from its fused weights."""
    B, Q, C = x.shape
    H = mha.num_heads
    hd = C // H
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).reshape(B, Q, 3, H, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    a = (q * hd ** -0.5) @ k.transpose(-2, -1)
    a = a.float().softmax(dim=-1).to(v.dtype) if a.dtype == torch.float16 else a.softmax(dim=-1)
    return mha.out_proj((a @ v).transpose(1, 2).reshape(B, Q, C))


class TPNLayer(nn.Module):
    """SegViT's `TPN_DecoderLayer`: torch's post-norm `TransformerDecoderLayer` (ReLU, eps 1e-5)
    with the cross-attention replaced by `CrossAttention`; returns its mask logits too."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads)
        self.multihead_attn = CrossAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, key_bias: Optional[torch.Tensor] = None):
        tgt = self.norm1(tgt + self_attention(self.self_attn, tgt))
        t2, masks = self.multihead_attn(tgt, memory, key_bias)
        tgt = self.norm2(tgt + t2)
        tgt = self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))
        return tgt, masks


class TPNStack(nn.Module):
    """SegViT's `TPN_Decoder` (no final norm): the mask logits are those of the last layer."""

    def __init__(self, n_layers: int, dim: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        if n_layers < 1:
            raise ConfigError(f"decode_head num_layers must be at least 1, got {n_layers}")
        self.layers = nn.ModuleList([TPNLayer(dim, num_heads, dim_feedforward) for _ in range(n_layers)])

    def forward(self, tgt, memory, key_bias=None):
        masks = None
        for layer in self.layers:
            tgt, masks = layer(tgt, memory, key_bias)
        return tgt, masks


class ATMDecoder(TokenDecoder):
    """SegViT's `ATMHead` (inference). `in_layers`: the 0-based blocks it reads, block order
    (the backbone's first `use_stages` `out_indices`); `img_size`: the head's `img_size`."""

    def __init__(self, n_cls: int, in_layers: Sequence[int], in_channels: int, embed_dims: int = 768,
                 num_layers: int = 3, num_heads: int = 8, img_size=640, patch_size: int = 16,
                 use_proj: bool = True):
        super().__init__()
        if not in_layers:
            raise ConfigError("the ATM head reads at least one backbone output (use_stages >= 1)")
        if embed_dims % num_heads:
            raise ConfigError(f"decode_head embed_dims {embed_dims} is not a multiple of num_heads {num_heads}")
        if not use_proj and in_channels != embed_dims:
            raise ConfigError(f"use_proj=False needs in_channels == embed_dims, got {in_channels} and {embed_dims}")
        self.n_cls = int(n_cls)
        self.in_layers = tuple(int(i) for i in in_layers)
        self.use_stages = len(self.in_layers)
        self.dim = int(embed_dims)
        self.num_heads = int(num_heads)
        self.n_layers = int(num_layers)
        self.in_channels = int(in_channels)
        self.img_size = int(img_size[0] if isinstance(img_size, (list, tuple)) else img_size)
        self.patch_size = int(patch_size)
        self.use_proj = bool(use_proj)
        for s in range(1, self.use_stages + 1):
            self.add_module(f"input_proj_{s}", nn.Linear(in_channels, self.dim) if use_proj else nn.Identity())
            self.add_module(f"proj_norm_{s}", nn.LayerNorm(self.dim) if use_proj else nn.Identity())
            self.add_module(f"decoder_{s}", TPNStack(self.n_layers, self.dim, self.num_heads, 4 * self.dim))
        self.q = nn.Embedding(self.n_cls, self.dim)
        self.class_embed = nn.Linear(self.dim, self.n_cls + 1)

    def stage(self, s: int) -> tuple[nn.Module, nn.Module, TPNStack]:
        """(input_proj, proj_norm, decoder) of stage s (1-based, 1 = deepest block)."""
        return getattr(self, f"input_proj_{s}"), getattr(self, f"proj_norm_{s}"), getattr(self, f"decoder_{s}")

    def out_size(self, grid: Sequence[int]) -> tuple[int, int]:
        """Where `pred_masks` is upsampled to: the head's img_size for a square grid (SegViT)."""
        gh, gw = int(grid[0]), int(grid[1])
        if gh == gw:
            return (self.img_size, self.img_size)
        return (gh * self.patch_size, gw * self.patch_size)

    def stage_masks(self, levels: Sequence[Level]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last stage's queries [B, Q, dim] and every stage's unmerged mask logits [B, N, Q]
        (deepest stage first)."""
        levels = list(levels)
        if len(levels) != self.use_stages:
            raise ConfigError(f"the ATM head reads {self.use_stages} levels, got {len(levels)}")
        B = levels[0].tokens.shape[0]
        dtype = levels[0].tokens.dtype
        q = self.q.weight.to(dtype).unsqueeze(0).expand(B, -1, -1)
        masks = []
        for s, lv in enumerate(reversed(levels), start=1):
            proj, norm, stack = self.stage(s)
            lateral = norm(proj(lv.patches))
            q, m = stack(q, lateral, lv.key_bias(lateral.dtype))
            masks.append(lv.unmerge(m.transpose(1, 2)))            # [B, N, Q], padding never read
        return q, masks

    def decode(self, levels: Sequence[Level]) -> torch.Tensor:
        q, masks = self.stage_masks(levels)
        total = masks[0]
        for m in masks[1:]:
            total = total + m                                      # SegViT's running sum, stage order
        grid = levels[0].grid
        pred_masks = bilinear_upsample(rows_to_map(total.float(), grid), self.out_size(grid))
        return semantic_inference(self.class_embed(q).float(), pred_masks)

    def macs(self, tokens: Sequence[int], grid: Sequence[int]) -> int:
        """Multiply-accumulates: per stage the input projection of its tokens and its TPN layers
        (query self-attention, cross-attention to the stage's tokens, FFN), the class embedding,
        the upsampling of the summed masks (two matmuls) and the query-class product."""
        Qn, C = self.n_cls, self.dim
        total = 0
        for t in tokens:
            t = int(t)
            total += t * self.in_channels * C if self.use_proj else 0
            per_layer = (3 * Qn * C * C + 2 * Qn * Qn * C + Qn * C * C      # self-attention
                         + Qn * C * C + 2 * t * C * C + 2 * Qn * t * C + Qn * C * C  # cross-attention
                         + 2 * Qn * C * 4 * C)                                       # FFN
            total += self.n_layers * per_layer
        total += Qn * C * (self.n_cls + 1)
        gh, gw = int(grid[0]), int(grid[1])
        H, W = self.out_size(grid)
        total += Qn * (H * gh * gw + H * gw * W)                  # Ry @ M @ Rx^T
        total += self.n_cls * Qn * H * W                          # einsum bqc,bqhw->bchw
        return int(total)


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """SegViT's `semantic_inference`: `einsum('bqc,bqhw->bchw', softmax(cls)[..., :-1], sigmoid(masks))`
    (written as a batched matmul)."""
    cls = class_logits.softmax(dim=-1)[..., :-1]                   # [B, Q, n_cls]
    B, Q, H, W = mask_logits.shape
    seg = cls.transpose(1, 2) @ mask_logits.sigmoid().reshape(B, Q, H * W)
    return seg.reshape(B, cls.shape[-1], H, W)
