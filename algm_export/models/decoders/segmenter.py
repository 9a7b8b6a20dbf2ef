"""Segmenter's two published decoders, as token decoders (docs/algorithm.md: decoders and unmerging, other families).

Both read the normalised output of the last encoder block and run on the merged patch tokens
(padding masked); only their per-token class logits are unmerged.
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from algm_export.models.backbones.timm_vit import block_forward
from algm_export.models.base import Level, TokenDecoder, rows_to_map
from algm_export.models.layers import KeyMask

LayerNorm = partial(nn.LayerNorm, eps=1e-5)  # the published ViT uses PyTorch's default eps


def block_macs(t: int, d: int, mlp_ratio: float = 4.0) -> int:
    return int(3 * t * d * d + 2 * t * t * d + t * d * d + 2 * mlp_ratio * t * d * d)


class _SegmenterDecoder(TokenDecoder):
    """Shared part: read the last block, run `forward_tokens` on the merged patches, unmerge."""

    def __init__(self, n_cls: int, depth: int):
        super().__init__()
        self.n_cls = n_cls
        self.in_layers = (depth - 1,)

    def decode(self, levels: Sequence[Level]) -> torch.Tensor:
        lv = levels[0]
        logits = self.forward_tokens(lv.patches, lv.key_bias()).float()   # [B, T', n_cls]
        return rows_to_map(lv.unmerge(logits), lv.grid)                  # unmerge: [B, n_cls, Gh, Gw]


class LinearDecoder(_SegmenterDecoder):
    """`decoder.head`: a linear map from encoder features to class logits, per token."""

    def __init__(self, n_cls: int, d_encoder: int, depth: int = 12):
        super().__init__(n_cls, depth)
        self.head = nn.Linear(d_encoder, n_cls)

    def forward_tokens(self, x: torch.Tensor, key_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(x)

    def macs(self, tokens, grid) -> int:
        return int(tokens[0] * self.head.in_features * self.n_cls)


class MaskTransformer(_SegmenterDecoder):
    """Segmenter's mask transformer: class embeddings attend jointly with patch tokens.

    `n_heads = d_model // 64`, `d_ff = 4 * d_model`; masks are
    `L2norm(patches @ proj_patch) @ L2norm(cls @ proj_classes)^T`, then `mask_norm`.
    """

    def __init__(self, n_cls: int, d_encoder: int, n_layers: int, d_model: int,
                 drop_path_rate: float = 0.0, dropout: float = 0.1, depth: int = 12):
        super().__init__(n_cls, depth)
        self.d_model = d_model
        n_heads = max(1, d_model // 64)
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, n_layers, device="cpu")] if n_layers else []
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
            bias = KeyMask.from_bias(F.pad(key_bias, (0, self.n_cls), value=0.0))
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

    def macs(self, tokens, grid) -> int:
        tp, c, dm = int(tokens[0]), self.n_cls, self.d_model
        d = self.proj_dec.in_features
        return int(tp * d * dm + sum(block_macs(tp + c, dm) for _ in self.blocks) + (tp + c) * dm * dm + tp * c * dm)
