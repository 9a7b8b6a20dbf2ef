"""UperNet for plain ViTs: mmsegmentation's `Feature2Pyramid` neck + `UPerHead`, with mmseg's names.

Written from reading mmseg 1.2.2 `necks/featurepyramid.py`, `decode_heads/uper_head.py`,
`decode_heads/psp_head.py` (PPM) and `decode_heads/decode_head.py`; no mmseg import. Parameter
names equal the checkpoint's `neck.*` / `decode_head.*` keys:

    Feature2Pyramid  rescales (default 4, 2, 1, 0.5): upsample_4x = ConvTranspose 2x2/2 (`.0`),
                     norm (`.1`, SyncBN -> BatchNorm at inference), GELU, ConvTranspose 2x2/2
                     (`.3`); upsample_2x = ConvTranspose (`.0`); identity; downsample_2x /
                     downsample_4x = max pooling. As in mmseg, the i-th input goes through the
                     i-th of [4x, 2x, 1x, 0.5x] when the 4x branch exists, else [2x, 1x, 0.5x, 0.25x].
    UPerHead         psp_modules.{i}.1 (adaptive average pool to s x s, 1x1 ConvModule), bottleneck
                     (3x3), lateral_convs.{i} (1x1) and fpn_convs.{i} (3x3) for all but the last
                     level, fpn_bottleneck (3x3), conv_seg (1x1); ConvModules are `conv` + `bn` + ReLU.

Arithmetic kept export-friendly without changing what is computed: the bilinear resizes are
matmuls with PyTorch's own interpolation weights (`align_corners` either way), the adaptive
average pools matmuls with PyTorch's bins (`[floor(i L / s), ceil((i + 1) L / s))`). Both agree
with `F.interpolate` / `F.adaptive_avg_pool2d` to float rounding (~1e-7 relative).

`UperNetDecoder` is a `FeatureMapDecoder`: it reads the backbone blocks `in_layers` as full
`[B, D, Gh, Gw]` maps, each unmerged with the assignment map valid at that block (docs/algorithm.md: other families).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from algm_export.core.errors import ConfigError
from algm_export.models.base import FeatureMapDecoder
from algm_export.models.mmseg_bricks import BaseDecodeHead, ConvModule, build_norm, head_kwargs

DEFAULT_NECK_NORM = dict(type="SyncBN", requires_grad=True)


# ----------------------------------------------------------------------------- resize / pool as matmuls

def _interp_weights(n_in: int, n_out: int, align_corners: bool, device=None) -> torch.Tensor:
    """[n_out, n_in] weights of PyTorch's 1-D linear interpolation (built per call, never cached:
    a cached tensor made while tracing for export would leak into eager runs)."""
    eye = torch.eye(n_in, device=device).unsqueeze(0)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)[0].transpose(0, 1)


def resize_bilinear(x: torch.Tensor, size: Sequence[int], align_corners: bool) -> torch.Tensor:
    """mmseg `resize(x, size, mode='bilinear', align_corners)` as two matmuls (upsampling).

    Downsampling falls back to `F.interpolate` (never needed by UperNet)."""
    h, w = x.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if (H, W) == (h, w):
        return x
    if H < h or W < w:
        return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=align_corners)
    ry = _interp_weights(int(h), H, bool(align_corners), x.device).to(x.dtype)
    rx = _interp_weights(int(w), W, bool(align_corners), x.device).to(x.dtype)
    return ry @ x @ rx.transpose(0, 1)


@lru_cache(maxsize=256)
def _pool_rows(n_in: int, n_out: int) -> tuple:
    """Averaging weights of PyTorch's adaptive pooling bins, as plain numbers (safe to cache)."""
    rows = []
    for i in range(n_out):
        lo = (i * n_in) // n_out
        hi = -((-(i + 1) * n_in) // n_out)
        rows.append(tuple(1.0 / (hi - lo) if lo <= j < hi else 0.0 for j in range(n_in)))
    return tuple(rows)


def _pool_weights(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """[n_out, n_in] averaging weights of PyTorch's adaptive pooling bins."""
    return torch.tensor(_pool_rows(n_in, n_out), dtype=torch.float32, device=device)


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, size)` as two matmuls (any input size, exportable)."""
    h, w = x.shape[-2:]
    py = _pool_weights(int(h), int(size), x.device).to(x.dtype)
    px = _pool_weights(int(w), int(size), x.device).to(x.dtype)
    return py @ x @ px.transpose(0, 1)


# ----------------------------------------------------------------------------- the neck

class Feature2Pyramid(nn.Module):
    """mmseg `Feature2Pyramid`: one ViT map per level, rescaled by deconvolution / identity / pooling."""

    def __init__(self, embed_dim: int, rescales=(4, 2, 1, 0.5), norm_cfg: dict = DEFAULT_NECK_NORM):
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.rescales = [float(r) if r not in (4, 2, 1) else int(r) for r in rescales]
        self.upsample_4x = None
        for k in self.rescales:
            if k == 4:
                self.upsample_4x = nn.Sequential(
                    nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
                    build_norm(norm_cfg, embed_dim, "neck.norm_cfg"),
                    nn.GELU(),
                    nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
                )
            elif k == 2:
                self.upsample_2x = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
            elif k == 1:
                self.identity = nn.Identity()
            elif k == 0.5:
                self.downsample_2x = nn.MaxPool2d(kernel_size=2, stride=2)
            elif k == 0.25:
                self.downsample_4x = nn.MaxPool2d(kernel_size=4, stride=4)
            else:
                raise ConfigError(f"neck: invalid rescale {k!r} for Feature2Pyramid (use 4, 2, 1, 0.5, 0.25)")
        # mmseg's op order: a fixed list, chosen by whether the 4x branch exists
        names = (["upsample_4x", "upsample_2x", "identity", "downsample_2x"] if self.upsample_4x is not None
                 else ["upsample_2x", "identity", "downsample_2x", "downsample_4x"])
        missing = [n for n in names if not hasattr(self, n)]
        if missing or len(self.rescales) > 4:
            raise ConfigError(f"neck: Feature2Pyramid rescales {list(rescales)} leave {missing} undefined; mmseg "
                              "applies [4, 2, 1, 0.5] (or [2, 1, 0.5, 0.25] without 4) to its inputs in order")
        self.op_names = names[: len(self.rescales)]
        self.scales = ([4, 2, 1, 0.5] if self.upsample_4x is not None else [2, 1, 0.5, 0.25])[: len(self.rescales)]

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.rescales):
            raise ConfigError(f"Feature2Pyramid got {len(inputs)} maps for {len(self.rescales)} rescales")
        return tuple(getattr(self, n)(x) for n, x in zip(self.op_names, inputs))

    def out_sizes(self, grid: Sequence[int]) -> list[tuple[int, int]]:
        out = []
        for s in self.scales:
            if s >= 1:
                out.append((int(grid[0] * s), int(grid[1] * s)))
            else:
                k = int(round(1 / s))
                out.append((int(grid[0]) // k, int(grid[1]) // k))
        return out

    def macs(self, grid: Sequence[int]) -> int:
        """Deconvolutions (each input pixel spreads over 2x2 outputs: h*w*C*C*4)."""
        d2 = self.embed_dim * self.embed_dim * 4
        h, w = int(grid[0]), int(grid[1])
        total = 0
        for n in self.op_names:
            if n == "upsample_4x":
                total += h * w * d2 + (2 * h) * (2 * w) * d2
            elif n == "upsample_2x":
                total += h * w * d2
        return int(total)


# ----------------------------------------------------------------------------- the head

class UPerHead(BaseDecodeHead):
    """mmseg `UPerHead`: PPM on the last level, FPN over all levels, fused 3x3, 1x1 classifier."""

    def __init__(self, pool_scales=(1, 2, 3, 6), **kwargs):
        kwargs.pop("input_transform", None)          # UPerHead always selects several inputs
        super().__init__(input_transform="multiple_select", **kwargs)
        self.pool_scales = tuple(int(s) for s in pool_scales)
        cc = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        last = self.in_channels[-1]
        self.psp_modules = nn.ModuleList([
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(last, self.channels, 1, **cc, where="psp_modules"))
            for s in self.pool_scales
        ])
        self.bottleneck = ConvModule(last + len(self.pool_scales) * self.channels, self.channels, 3, padding=1,
                                     **cc, where="bottleneck")
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for c in self.in_channels[:-1]:
            self.lateral_convs.append(ConvModule(c, self.channels, 1, **cc, where="lateral_convs"))
            self.fpn_convs.append(ConvModule(self.channels, self.channels, 3, padding=1, **cc, where="fpn_convs"))
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * self.channels, self.channels, 3, padding=1,
                                         **cc, where="fpn_bottleneck")

    def _resize(self, x: torch.Tensor, size) -> torch.Tensor:
        return resize_bilinear(x, size, self.align_corners)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for s, ppm in zip(self.pool_scales, self.psp_modules):
            outs.append(self._resize(ppm[1](adaptive_avg_pool(x, s)), x.shape[2:]))
        return self.bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        inputs = self.transform_inputs(inputs)
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        n = len(laterals)
        for i in range(n - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n - 1)]
        outs.append(laterals[-1])
        for i in range(n - 1, 0, -1):
            outs[i] = self._resize(outs[i], outs[0].shape[2:])
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))

    def macs(self, sizes: Sequence[tuple[int, int]]) -> int:
        """Convolutions, given the spatial size of every selected input level."""
        total = 0
        for (h, w), conv in zip(sizes[:-1], self.lateral_convs):
            total += conv.macs(h, w)
        for (h, w), conv in zip(sizes[:-1], self.fpn_convs):
            total += conv.macs(h, w)
        h, w = sizes[-1]
        total += sum(ppm[1].macs(s, s) for s, ppm in zip(self.pool_scales, self.psp_modules))
        total += self.bottleneck.macs(h, w)
        h0, w0 = sizes[0]
        total += self.fpn_bottleneck.macs(h0, w0) + self.conv_seg_macs(h0, w0)
        return int(total)


def build_uper_head(cfg: dict, where: str = "decode_head") -> UPerHead:
    t = str(cfg.get("type", "")).split(".")[-1]
    if t != "UPerHead":
        raise ConfigError(f"{where}: head type {cfg.get('type')!r} is not supported here; use UPerHead")
    kw = head_kwargs(UPerHead, cfg, where)
    kw.pop("where", None)
    for k in ("in_channels", "channels", "num_classes"):
        if k not in kw:
            raise ConfigError(f"{where}: {k} is required")
    kw.setdefault("in_index", list(range(len(kw["in_channels"]))) if isinstance(kw["in_channels"], (list, tuple))
                  else -1)
    try:
        return UPerHead(where=where, **kw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def build_feature2pyramid(cfg: Optional[dict]) -> Feature2Pyramid:
    if cfg is None:
        raise ConfigError("an EVA-02 UperNet needs a neck (Feature2Pyramid)")
    t = str(cfg.get("type", "")).split(".")[-1]
    if t != "Feature2Pyramid":
        raise ConfigError(f"neck type {cfg.get('type')!r} is not supported here; use Feature2Pyramid")
    kw = {k: v for k, v in cfg.items() if k != "type"}
    bad = sorted(set(kw) - {"embed_dim", "rescales", "norm_cfg"})
    if bad or "embed_dim" not in kw:
        raise ConfigError(f"neck: Feature2Pyramid takes embed_dim, rescales, norm_cfg (got {sorted(kw)})")
    return Feature2Pyramid(**kw)


# ----------------------------------------------------------------------------- as a decoder

class UperNetDecoder(FeatureMapDecoder):
    """Feature2Pyramid + UPerHead as one `FeatureMapDecoder` reading backbone blocks `out_indices`."""

    def __init__(self, neck: Feature2Pyramid, decode_head: UPerHead, out_indices: Sequence[int]):
        super().__init__()
        outs = tuple(int(i) for i in out_indices)
        if len(set(outs)) != len(outs):
            raise ConfigError(f"backbone out_indices {list(outs)} repeat a block")
        if len(outs) != len(neck.rescales):
            raise ConfigError(f"the neck rescales {len(neck.rescales)} maps but the backbone yields {len(outs)} "
                              f"(out_indices {list(outs)})")
        for j in decode_head.in_index:
            if not -len(outs) <= j < len(outs):
                raise ConfigError(f"decode_head.in_index {list(decode_head.in_index)} is out of range for "
                                  f"{len(outs)} inputs")
        for j, c in zip(decode_head.in_index, decode_head.in_channels):
            if c != neck.embed_dim:
                raise ConfigError(f"decode_head.in_channels {list(decode_head.in_channels)} must equal the "
                                  f"neck's embed_dim {neck.embed_dim}")
        self.neck = neck
        self.decode_head = decode_head
        self.in_layers = tuple(sorted(outs))      # timm yields the blocks in ascending order
        self.n_cls = decode_head.out_channels
        self.align_corners = decode_head.align_corners

    def forward_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.decode_head(list(self.neck(list(maps))))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.forward_maps(maps)

    def macs(self, tokens: Sequence[int], grid: Sequence[int]) -> int:
        """Neck and head at full maps (feature-map decoders unmerge first: `tokens` do not matter)."""
        sizes = self.neck.out_sizes(grid)
        picked = [sizes[j] for j in self.decode_head.in_index]
        return int(self.neck.macs(grid) + self.decode_head.macs(picked))
