"""Reusable pieces shared by every model family: padding masks, upsampling, position resizing.

* `KeyMask`: hides padding slots from self-attention (docs/algorithm.md, the static form), cheaply (docs/decisions.md items 43 and 60)
* `split_heads` / `attend`: the written-out self-attention every backbone shares (q/k/v split, the
  `KeyMask` channel, softmax in float32 for float16)
* `key_bias_from_size`, `hide_rows`, `floor_scores`: the same for cross-attention (token decoders)
* `interp_matrix` / `bilinear_upsample`: bilinear resizing (align_corners=False) as matmuls
* `resize_pos_embed`: the grid part of a position embedding resized, prefix kept
* `one_image`: whether a batch is known to hold one image (graphs exported for batch 1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# The score a padded key gets: the row's lower bound (see `KeyMask`) minus this. e^-32 = 1.3e-14 per
# padded key, below float32's resolution next to the row's largest weight (1) even for 4096 padded
# keys, and softmax arguments stay above float32's normal-range limit (-87.3) unless a row's best
# key beats its lower bound by more than 55 (docs/decisions.md item 43).
PAD_MARGIN = 32.0


class KeyMask:
    """The padding mask of one token state, prepared once and shared by every block.

    Padding slots (size 0) must be invisible to the real tokens whatever they hold, and must not
    push the softmax into `exp` arguments below float32's normal range (ONNX Runtime's CPU softmax
    takes a several times slower path there, docs/decisions.md items 33 and 43). Two steps:

    * `hide(x)`: the attention's input [B, T, C] with the padded rows set to 0, one select per
      block, so whatever a slot holds (NaN and Inf included) is gone and every projection of it
      (a bias, a norm, rotary positions) is finite;
    * `attend(q, k, v, scale)`: q, k, v computed row by row from `hide(x)`. It zeroes the padded
      rows of k and v (a product with a 0/1 mask: exact on finite rows, and four times cheaper than
      a select in ONNX Runtime) and gives every padded key, in query row i, the score
      `max(s_ii, s_i0) - PAD_MARGIN`: s_ii (the query's own key) and s_i0 (slot 0, always real: real
      tokens come first; a padded query row uses s_i0 alone) are real scores of that row, so the padded
      score lies at least PAD_MARGIN below the row's maximum (weight < e^-32 each, and v is zero
      there: nothing of a padded slot reaches a real token), and usually within ~55 of it (exp
      stays normal). The padded score rides in one extra attention channel (q: the per-row value /
      scale, k: 1 at padded keys, 0 at real ones), so it costs O(T) per block, no pass over the
      [B, H, T, T] scores, and a real key's score is exactly what it is without padding.

    A padded query row computes a finite row of its own; nothing reads it but its own slot.
    """

    def __init__(self, real: torch.Tensor):
        self.real = real  # [B, T] bool: True for real slots
        self._cache: dict = {}

    @classmethod
    def from_bias(cls, bias: torch.Tensor) -> "KeyMask":
        """From an additive bias [B, 1, 1, T] (0 real, negative padding)."""
        return cls(bias.reshape(bias.shape[0], bias.shape[-1]) == 0)

    def _pad_channel(self, heads: int, dtype: torch.dtype) -> torch.Tensor:
        key = ("pad", heads, dtype)
        if key not in self._cache:
            B, T = self.real.shape
            self._cache[key] = (~self.real).to(dtype).reshape(B, 1, T, 1).expand(B, heads, T, 1)
        return self._cache[key]

    def _real_as(self, layout: str) -> torch.Tensor:
        """`real` [B, T] viewed as "rows" [B, T, 1] (token rows) or "keys" [B, 1, T, 1] (per head),
        made once per state: every block of it shares the view (keyed by name: under a dynamic batch
        axis the sizes are symbolic and cannot key a cache)."""
        key = ("real", layout)
        if key not in self._cache:
            B, T = self.real.shape
            self._cache[key] = self.real.reshape(B, T, 1) if layout == "rows" else self.real.reshape(B, 1, T, 1)
        return self._cache[key]

    def _keep(self, dtype: torch.dtype) -> torch.Tensor:
        key = ("keep", dtype)
        if key not in self._cache:
            self._cache[key] = self._real_as("keys").to(dtype)
        return self._cache[key]

    def hide(self, x: torch.Tensor) -> torch.Tensor:
        """The attention input x [B, T, C] with the padded rows set to 0 (a select: whatever a slot
        holds is gone)."""
        return hide_rows(x, self._real_as("rows"))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        """q, k, v [B, H, T, hd], finite in the padded rows (computed from `hide(x)`) -> (q', k', v')
        such that `softmax((q' @ k'^T) * scale) @ v'` is the attention over the real keys only (see
        the class doc)."""
        H = q.shape[1]
        keep = self._keep(k.dtype)
        k, v = k * keep, v * keep
        first = q @ k[:, :, :1].transpose(-2, -1)                     # q_i . k_0
        own = (q * k).sum(dim=-1, keepdim=True)                      # q_i . k_i (a real row)
        own = torch.where(self._real_as("keys"), own, first)          # a padded row's own key is no score
        low = torch.maximum(own, first) - PAD_MARGIN / scale
        return torch.cat([q, low], dim=-1), torch.cat([k, self._pad_channel(H, k.dtype)], dim=-1), v


def one_image(x: torch.Tensor) -> bool:
    """True when `x`'s batch is known to be 1 while the graph is made: an eager run on one image, or
    a graph exported for one image per run (`export --batch 1`). Not under a dynamic batch axis (a
    symbolic size). Then dynamic token mode has no padding slots to mask and per-image weights can
    be a convolution's (docs/decisions.md item 59)."""
    b = x.shape[0]
    return isinstance(b, int) and b == 1


def split_heads(qkv: torch.Tensor, heads: int):
    """A fused q/k/v projection [B, T, 3 * H * hd] -> (q, k, v), each [B, H, T, hd]."""
    B, T = qkv.shape[:2]
    return qkv.reshape(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           key_mask: KeyMask | None = None) -> torch.Tensor:
    """`softmax((q @ k^T) * scale) @ v` written out, heads merged: q, k, v [B, H, T, hd] -> [B, T, H * hd].

    Padding slots ride in `key_mask`'s extra channel; a float16 softmax runs in float32."""
    if key_mask is not None:
        q, k, v = key_mask.attend(q, k, v, scale)
    a = (q @ k.transpose(-2, -1)) * scale
    a = a.float().softmax(dim=-1).to(v.dtype) if a.dtype == torch.float16 else a.softmax(dim=-1)
    B, H, T = q.shape[:3]
    return (a @ v).transpose(1, 2).reshape(B, T, -1)


def hide_rows(t: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """`t` with the rows of padding slots set to 0 (`real` broadcasts against `t`, True = real slot);
    a select, not a product, so whatever a padding slot holds (NaN and Inf included) is gone."""
    return torch.where(real, t, torch.zeros((), dtype=t.dtype, device=t.device))


# Attention scores are raised to at least (row maximum - SCORE_FLOOR) by `floor_scores`: e^-80 =
# 1.8e-35, a float32 normal number, so no exp argument leaves float32's normal range.
SCORE_FLOOR = 80.0


def floor_scores(a: torch.Tensor) -> torch.Tensor:
    """Scores [..., keys] (padding bias added) raised to at least the row maximum - SCORE_FLOOR:
    a padded key's weight stays <= e^-80 (invisible), and ONNX Runtime's softmax stays on its fast
    `exp` path (docs/decisions.md item 43). Two passes over the scores: for attention with few
    query rows (cross-attention); self-attention uses `KeyMask.attend`, which needs none."""
    return torch.maximum(a, a.amax(dim=-1, keepdim=True) - SCORE_FLOOR)


def key_bias_from_size(size: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] sizes -> additive attention bias [B, 1, 1, T]: 0 for real tokens, a large negative
    value for padding (-3e4 in float16, -1e9 in float32), for cross-attention: add it to the scores,
    then `floor_scores` (which keeps exp's arguments in range); `KeyMask.from_bias` reads it back."""
    low = -3.0e4 if dtype == torch.float16 else -1.0e9
    bias = torch.where(size > 0, torch.zeros((), dtype=dtype, device=size.device),
                       torch.full((), low, dtype=dtype, device=size.device))
    return bias[:, None, None, :]


def interp_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """[n_out, n_in] weights of 1-D linear interpolation, align_corners=False (PyTorch's rule)."""
    eye = torch.eye(n_in, device=device).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].transpose(0, 1)


def bilinear_upsample(x: torch.Tensor, size) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bilinear", align_corners=False)` as two matmuls.

    Separable and exact up to float rounding; 4x faster than ONNX Runtime's Resize at
    150 x 32 x 32 -> 512 x 512, and a plain MatMul for every backend.
    """
    h, w = x.shape[-2:]
    H, W = size
    if H < h or W < w:  # downsampling: the matrix form would skip PyTorch's rule, use the op
        return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    ry = interp_matrix(h, H, x.device).to(x.dtype)
    rx = interp_matrix(w, W, x.device).to(x.dtype)
    return ry @ x @ rx.transpose(0, 1)


def resize_pos_embed(pos_embed: torch.Tensor, num_prefix: int, old_grid, new_grid) -> torch.Tensor:
    """Bilinear resize of the grid part of `pos_embed` (align_corners=False), prefix kept."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    tok, grid = pos_embed[:, :num_prefix], pos_embed[0, num_prefix:]
    D = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], D)
    return torch.cat([tok, grid], dim=1)
