"""mmsegmentation 1.x `VisionTransformer` behind the `Backbone` interface, with mmseg's names.

Written from reading mmseg 1.2.2 `mmseg/models/backbones/vit.py`, `mmseg/models/utils/embed.py`
and mmcv's `MultiheadAttention` / `FFN` (`mmcv/cnn/bricks/transformer.py`); no mmcv / mmseg
import. `state_dict()` keys are the checkpoint's `backbone.*` keys without the prefix:

    cls_token, pos_embed [1, 1 + Gh*Gw, D]          (Gh, Gw from `img_size`, the built grid)
    patch_embed.projection.{weight,bias}            (bias only with `patch_bias=True`)
    patch_embed.norm.*                              (`patch_norm=True`)
    ln_pre.*                                        (`pre_norm=True`; mmcv names it 'ln' + '_pre')
    layers.{i}.ln1.*, layers.{i}.ln2.*
    layers.{i}.attn.attn.in_proj_weight, .in_proj_bias, .out_proj.{weight,bias}
                                                    (`qkv_bias=False` drops both biases, as
                                                     torch's MultiheadAttention(bias=False) does)
    layers.{i}.ffn.layers.0.0.*, ..., layers.{i}.ffn.layers.{num_fcs-1}.*
    ln1.*                                           (`final_norm=True`)

What a forward does (mmseg `VisionTransformer.forward`):

1. patch embedding: zero padding at the bottom / right to a multiple of the patch size
   (`patch_pad='corner'`, mmseg's `AdaptivePadding`; 'same' pads both sides), the conv, the
   optional patch norm;
2. the cls token is prepended and the position embedding added; when the token count differs
   from the stored one, the stored grid part is resized to the run grid with `interpolate_mode`
   (`align_corners=False`) first, cls part kept (mmseg resizes only when the *count* differs, so
   a 32x32 table on a 16x64 grid is added as stored: reproduced);
3. `with_cls_token=False` drops the cls token again (so `num_prefix = 0`); `pre_norm` applies
   `ln_pre`;
4. blocks: `x = x + attn(ln1(x))`, `x = x + ffn(ln2(x))` (mmcv's FFN adds its `identity`, the
   block input, itself: no second shortcut);
5. `final_norm` applies `ln1` after the last block, before its output is collected; the outputs
   of `out_indices` are the patch tokens as `[B, D, Gh, Gw]` maps, in block order.

Only inference is modelled: dropout, attention dropout and drop-path are identities;
`norm_eval`, `with_cp`, `frozen_exclude`, `pretrained` and `init_cfg` are accepted and ignored
(the checkpoint supplies the weights). `output_cls_token=True` and `out_origin=True` are refused.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from algm_export.core.errors import ConfigError
from algm_export.models.base import Backbone, TokenState
from algm_export.models.layers import KeyMask, attend, split_heads
from algm_export.models.mmseg_bricks import build_act, build_norm, norm_abbr
from algm_export.core.names import pair

INTERPOLATE_MODES = ("bilinear", "bicubic")




class PatchEmbed(nn.Module):
    """mmseg `PatchEmbed` for the ViT: a `projection` conv, optional `norm` on the tokens."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, padding, bias: bool,
                 norm_cfg: Optional[dict]):
        super().__init__()
        self.patch_size = patch_size
        if isinstance(padding, str):
            if padding not in ("corner", "same"):
                raise ConfigError(f"patch_pad {padding!r} is not supported; use 'corner' or 'same'")
            self.adaptive = padding
            conv_pad = 0
        else:
            self.adaptive = None
            conv_pad = int(padding)
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, patch_size, conv_pad, bias=bias)
        if norm_cfg is not None:
            self.norm = build_norm(norm_cfg, embed_dims, "backbone.norm_cfg")
        else:
            self.norm = None

    def pad_shape(self, h: int, w: int) -> tuple[int, int]:
        p = self.patch_size
        return (max(math.ceil(h / p) * p - h, 0), max(math.ceil(w / p) * p - w, 0))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.adaptive is None:
            return x
        ph, pw = self.pad_shape(x.shape[-2], x.shape[-1])
        if ph or pw:
            if self.adaptive == "corner":
                x = F.pad(x, [0, pw, 0, ph])
            else:
                x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(self.pad(x))
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, grid


class MultiheadAttention(nn.Module):
    """mmcv's `MultiheadAttention` wrapper: the parameters live in `attn` (torch's module)."""

    def __init__(self, embed_dims: int, num_heads: int, bias: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, bias=bias)


class FFN(nn.Module):
    """mmcv's `FFN` layers: `num_fcs - 1` (Linear, act, Dropout) groups, then Linear, Dropout."""

    def __init__(self, embed_dims: int, feedforward_channels: int, num_fcs: int, act_cfg: dict):
        super().__init__()
        if num_fcs < 2:
            raise ConfigError(f"num_fcs must be at least 2, got {num_fcs}")
        layers = []
        c = embed_dims
        for _ in range(num_fcs - 1):
            layers.append(nn.Sequential(nn.Linear(c, feedforward_channels), build_act(act_cfg, "backbone.act_cfg"),
                                        nn.Dropout(0.0)))
            c = feedforward_channels
        layers.append(nn.Linear(feedforward_channels, embed_dims))
        layers.append(nn.Dropout(0.0))
        self.layers = nn.Sequential(*layers)


class TransformerEncoderLayer(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, num_fcs: int,
                 qkv_bias: bool, act_cfg: dict, norm_cfg: dict):
        super().__init__()
        self.ln1 = build_norm(norm_cfg, embed_dims, "backbone.norm_cfg")
        self.attn = MultiheadAttention(embed_dims, num_heads, qkv_bias)
        self.ln2 = build_norm(norm_cfg, embed_dims, "backbone.norm_cfg")
        self.ffn = FFN(embed_dims, feedforward_channels, num_fcs, act_cfg)


def attention(mha: nn.MultiheadAttention, x: torch.Tensor, key_mask: Optional[KeyMask] = None) -> torch.Tensor:
    """torch's `MultiheadAttention` (self-attention, eval) written out from its fused weights,
    with the padding mask riding in one extra q/k channel (`KeyMask`); softmax in float32 for fp16."""
    H = mha.num_heads
    if key_mask is not None:
        x = key_mask.hide(x)
    q, k, v = split_heads(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), H)
    scale = (x.shape[-1] // H) ** -0.5
    return mha.out_proj(attend(q, k, v, scale, key_mask))


class MMSegViT(Backbone):
    """mmsegmentation's `VisionTransformer` (1.x arguments and defaults)."""

    def __init__(self, img_size=224, patch_size: int = 16, patch_pad="corner", in_channels: int = 3,
                 embed_dims: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_ratio=4,
                 out_origin: bool = False, out_indices=-1, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, with_cls_token: bool = True,
                 output_cls_token: bool = False, norm_cfg: dict = dict(type="LN"),
                 act_cfg: dict = dict(type="GELU"), patch_norm: bool = False, patch_bias: bool = False,
                 pre_norm: bool = False, final_norm: bool = False, interpolate_mode: str = "bicubic",
                 num_fcs: int = 2, norm_eval: bool = False, with_cp: bool = False, frozen_exclude=("all",),
                 pretrained=None, init_cfg=None):
        super().__init__()
        if output_cls_token:
            raise ConfigError("backbone output_cls_token=True is not supported here (no SETR head reads the "
                              "cls token); set it to False")
        if out_origin:
            raise ConfigError("backbone out_origin=True is not supported here; set it to False")
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ConfigError(f"backbone interpolate_mode {interpolate_mode!r} is not supported; use one of "
                              f"{INTERPOLATE_MODES} (mmseg resizes with align_corners=False)")
        if embed_dims % num_heads:
            raise ConfigError(f"embed_dims {embed_dims} is not a multiple of num_heads {num_heads}")
        if norm_abbr(norm_cfg, "backbone.norm_cfg") != "ln":
            raise ConfigError(f"backbone.norm_cfg must be LN, got {norm_cfg!r}")
        self.img_size = pair(img_size, "backbone img_size")
        self.patch_size = int(patch_size)
        self.in_channels = int(in_channels)
        self.embed_dim = int(embed_dims)
        self.num_heads = int(num_heads)
        self.depth = int(num_layers)
        self.mlp_ratio = mlp_ratio
        self.num_fcs = int(num_fcs)
        self.feedforward_channels = int(mlp_ratio * embed_dims)
        self.with_cls_token = bool(with_cls_token)
        self.num_prefix = 1 if self.with_cls_token else 0
        self.interpolate_mode = interpolate_mode
        self.pre_norm = bool(pre_norm)
        self.final_norm = bool(final_norm)
        self.built_grid = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        self.image_size = self.img_size  # the run size (set_image_size); the tables stay as built
        self.out_indices = self._out_indices(out_indices, self.depth)

        self.patch_embed = PatchEmbed(in_channels, embed_dims, self.patch_size, patch_pad, bool(patch_bias),
                                      norm_cfg if patch_norm else None)
        n = self.built_grid[0] * self.built_grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dims))
        if self.pre_norm:
            self.ln_pre = build_norm(norm_cfg, embed_dims, "backbone.norm_cfg")
        self.layers = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, self.feedforward_channels, self.num_fcs, bool(qkv_bias),
                                    act_cfg, norm_cfg)
            for _ in range(self.depth)
        ])
        if self.final_norm:
            self.ln1 = build_norm(norm_cfg, embed_dims, "backbone.norm_cfg")

    @staticmethod
    def _out_indices(out_indices, depth: int) -> tuple[int, ...]:
        """The blocks whose outputs mmseg collects, in block order (as its forward loop yields them)."""
        if isinstance(out_indices, bool):
            raise ConfigError(f"backbone out_indices must be an int or a list, got {out_indices!r}")
        if isinstance(out_indices, int):
            idx = [depth - 1 if out_indices == -1 else out_indices]
        elif isinstance(out_indices, (list, tuple)):
            idx = list(out_indices)
        else:
            raise ConfigError(f"backbone out_indices must be an int or a list, got {out_indices!r}")
        bad = [i for i in idx if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < depth]
        if bad:
            raise ConfigError(f"backbone out_indices {list(idx)}: {bad} are not blocks 0..{depth - 1} "
                              "(mmseg matches block numbers literally: a negative entry in a list yields no output)")
        return tuple(sorted(set(idx)))

    # -- Backbone interface
    def _pos_embed(self, n_tokens: int, grid: tuple[int, int]) -> torch.Tensor:
        pe = self.pos_embed
        if n_tokens == pe.shape[1]:
            return pe
        gh, gw = self.built_grid
        cls_pos = pe[:, :1]
        table = pe[:, -gh * gw:].reshape(1, gh, gw, pe.shape[2]).permute(0, 3, 1, 2)
        dtype = table.dtype
        if dtype == torch.float16:  # bicubic in float16 is not available everywhere
            table = table.float()
        table = F.interpolate(table, size=tuple(grid), mode=self.interpolate_mode, align_corners=False)
        table = table.to(dtype).flatten(2).transpose(1, 2)
        return torch.cat([cls_pos, table], dim=1)

    def embed(self, im: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = self.patch_embed(im)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)
        x = x + self._pos_embed(x.shape[1], grid)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.ln_pre(x)
        return x, grid

    def block_attn(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        layer = self.layers[i]
        return x + attention(layer.attn.attn, layer.ln1(x), state.key_mask(x.dtype))

    def block_mlp(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        layer = self.layers[i]
        return x + layer.ffn.layers(layer.ln2(x))

    def layer_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.final_norm and i == self.depth - 1:
            return self.ln1(x)
        return x

    def set_image_size(self, image_size) -> None:
        """Record the run size. Nothing is re-sampled: mmseg resizes the stored position table to
        the run grid at every forward (step 2 above), and so does `embed`; the parameters keep
        the checkpoint's shapes (`built_grid`)."""
        self.image_size = pair(image_size, "image size")

    def run_grid(self, image_size=None) -> tuple[int, int]:
        """The token grid for an image size (the patch embedding pads up to a whole patch)."""
        h, w = pair(image_size, "image size") if image_size is not None else self.image_size
        p = self.patch_size
        if self.patch_embed.adaptive is None:
            pad = self.patch_embed.projection.padding
            return ((h + 2 * pad[0] - p) // p + 1, (w + 2 * pad[1] - p) // p + 1)
        return (math.ceil(h / p), math.ceil(w / p))

    def embed_macs(self, grid: Sequence[int]) -> int:
        return int(grid[0] * grid[1] * self.in_channels * self.patch_size ** 2 * self.embed_dim)

    def block_macs(self, t_attn: int, t_mlp: int) -> int:
        d, f = self.embed_dim, self.feedforward_channels
        attn = 3 * t_attn * d * d + 2 * t_attn * t_attn * d + t_attn * d * d
        mlp = t_mlp * (d * f + (self.num_fcs - 2) * f * f + f * d)
        return int(attn + mlp)

    # -- plain forward (mmseg's tuple of maps)
    def forward(self, im: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, grid = self.embed(im)
        state = TokenState.initial(x, grid, self.num_prefix)
        outs = []
        for i in range(self.depth):
            x = self.block_attn(i, x, state)
            x = self.block_mlp(i, x, state)
            if i in self.out_indices:
                y = self.layer_output(i, x)[:, self.num_prefix:]
                outs.append(y.transpose(1, 2).reshape(y.shape[0], y.shape[2], grid[0], grid[1]))
        return tuple(outs)
