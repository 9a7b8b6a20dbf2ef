"""EoMT's head: what reads the query tokens and the patch tokens after the last encoder block.

EoMT ("Your ViT is Secretly an Image Segmentation Model", CVPR 2025) has no decoder of its
own: `num_q` learned queries are put in front of the tokens for the last `num_blocks` encoder
blocks (the model does that, `families/eomt.py`), and after the final norm this head turns

* each query into class logits (`class_head`, `n_cls + 1` rows: the last one is "no object"),
* each query into a mask embedding (`mask_head`: Linear, GELU, Linear, GELU, Linear),
* the patch tokens, as a `[B, D, Gh, Gw]` map, into a map at `2 ** len(upscale)` times the grid
  (`upscale`: `ScaleBlock`s = 2x2 transposed conv, GELU, depthwise 3x3 conv, channel LayerNorm),

and the mask logits are `mask_embed . upscaled map` per query and pixel. The published
semantic inference then takes `sigmoid(mask logits bilinearly resized to the image)` weighted
by `softmax(class logits)` without the no-object column, summed over the queries
(`semantic_logits`). Module and parameter names are the published ones (`q`, `class_head`,
`mask_head.{0,2,4}`, `upscale.{i}.conv1 / conv2 / norm`).

With ALGM the patch tokens are read unmerged to the grid with the assignment map valid at the
end of the encoder (`Level.as_map`); the queries are never merged.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from algm_export.models.base import Level, TokenDecoder
from algm_export.models.layers import one_image


def num_upscale_blocks(patch_size: int) -> int:
    """The published rule: `max(1, int(log2(patch)) - 2)` ScaleBlocks (patch 16: 2, i.e. 4x the grid; 14: 1)."""
    return max(1, int(math.log2(int(patch_size))) - 2)


class ScaleBlock(nn.Module):
    """2x upsampling: ConvTranspose 2x2 stride 2, GELU, depthwise 3x3 (no bias), LayerNorm over channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv2(self.act(self.conv1(x))))


class EomtHead(TokenDecoder):
    """Queries -> class logits and mask logits over the upscaled patch map (see the module doc).

    `decode` returns the pair `(mask_logits [B, Q, s*Gh, s*Gw], class_logits [B, Q, n_cls + 1])`;
    the model's `finish` turns it into per-pixel class scores at the image size (`semantic_logits`).
    """

    def __init__(self, embed_dim: int, n_cls: int, num_q: int, patch_size: int, depth: int, num_blocks: int):
        super().__init__()
        d = int(embed_dim)
        self.n_cls = int(n_cls)
        self.num_q = int(num_q)
        self.num_blocks = int(num_blocks)
        self.patch_size = int(patch_size)
        self.in_layers = (int(depth) - 1,)
        self.q = nn.Embedding(self.num_q, d)
        self.class_head = nn.Linear(d, self.n_cls + 1)
        self.mask_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.upscale = nn.Sequential(*[ScaleBlock(d) for _ in range(num_upscale_blocks(patch_size))])

    @property
    def scale(self) -> int:
        """Mask resolution / grid."""
        return 2 ** len(self.upscale)

    def queries(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.q.weight[None].expand(batch, -1, -1).to(dtype)

    def predict(self, queries: torch.Tensor, patch_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed query tokens [B, Q, D] and patch map [B, D, Gh, Gw] -> (mask logits, class logits)."""
        class_logits = self.class_head(queries)
        up = self.upscale(patch_map)
        B, D, h, w = up.shape
        mask_logits = torch.bmm(self.mask_head(queries), up.reshape(B, D, h * w)).reshape(B, -1, h, w)
        return mask_logits, class_logits

    def decode(self, levels: Sequence[Level]):
        lv = levels[-1]
        queries = lv.prefix[:, : self.num_q]     # the queries lead the prefix (queries, cls, registers)
        return self.predict(queries, lv.as_map())

    def macs(self, tokens, grid) -> int:
        """Class head, mask MLP, the upscaling convolutions, the mask products and the per-pixel
        sum over the queries of `semantic_logits` at the image size (grid x patch); not the
        bilinear resize of the mask logits (as fvcore)."""
        d, q = self.q.weight.shape[1], self.num_q
        gh, gw = int(grid[0]), int(grid[1])
        n = q * d * (self.n_cls + 1) + 3 * q * d * d
        for _ in self.upscale:
            gh, gw = 2 * gh, 2 * gw
            n += gh * gw * d * d + gh * gw * d * 9        # transposed 2x2 / stride 2: one tap per output; depthwise 3x3
        n += q * d * gh * gw
        return int(n + semantic_macs(self.n_cls, q, (int(grid[0]) * self.patch_size, int(grid[1]) * self.patch_size)))


def semantic_logits(mask_logits: torch.Tensor, class_logits: torch.Tensor, size) -> torch.Tensor:
    """The published per-pixel semantic scores [B, n_cls, H, W]:
    `einsum("bqhw, bqc -> bchw", sigmoid(resize(mask_logits, size)), softmax(class_logits)[..., :-1])`
    with a bilinear resize (align_corners=False), the published code's `F.interpolate`."""
    size = (int(size[0]), int(size[1]))
    m = mask_logits if mask_logits.dtype == torch.float64 else mask_logits.float()   # half precision: sum in fp32
    if tuple(m.shape[-2:]) != size:
        # the runtime's own resize: at 100 x 128 x 128 -> 512 x 512 ONNX Runtime's Resize takes 18.5 ms,
        # the matmul form (`layers.bilinear_upsample`, 4.2 GMACs here) 26.6 ms
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    B, Q, H, W = m.shape
    probs = class_logits.to(m.dtype).softmax(dim=-1)[..., :-1]               # [B, Q, C]
    if one_image(m):
        # one image: a 1x1 convolution with its class weights writes [1, C, H, W] directly (the batched
        # product's [B, C, H*W] costs ONNX Runtime a copy into the graph output, docs/decisions.md item 59)
        return F.conv2d(m.sigmoid(), probs[0].transpose(0, 1)[:, :, None, None])
    out = torch.bmm(probs.transpose(1, 2), m.sigmoid().reshape(B, Q, H * W))
    return out.reshape(B, -1, H, W)


def semantic_macs(n_cls: int, num_q: int, size) -> int:
    """The per-pixel sum over the queries of `semantic_logits`."""
    return int(n_cls * num_q * int(size[0]) * int(size[1]))


__all__ = ["EomtHead", "ScaleBlock", "num_upscale_blocks", "semantic_logits", "semantic_macs"]
