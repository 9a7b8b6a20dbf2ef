"""SETR decoders (Zheng et al. 2021) with mmsegmentation's names: naive / PUP heads and MLA.

Written from reading mmseg 1.2.2 `decode_heads/setr_up_head.py`, `decode_heads/setr_mla_head.py`,
`decode_heads/decode_head.py` and `necks/mla_neck.py`; no mmseg import. Parameter names equal the
checkpoint's `decode_head.*` / `neck.*` keys:

    SETRUPHead   conv_seg, norm (LN over the input tokens), up_convs.{i}.0.conv / .bn
                 (naive: num_convs=1, up_scale=4, kernel_size=1; PUP: num_convs=4, up_scale=2,
                 kernel_size=3); each up_conv is ConvModule -> bilinear x up_scale
    MLANeck      norm.{i} (LN per input), mla.channel_proj.{i} (1x1 ConvModule),
                 mla.feat_extract.{i} (3x3 ConvModule); top-down running sums between them
    SETRMLAHead  conv_seg, up_convs.{i}.0 / .1 (two 3x3 ConvModules) -> bilinear x up_scale,
                 outputs concatenated

Each head ends with `cls_seg`: Dropout2d (identity at inference) and the 1x1 `conv_seg`. The
configured `align_corners` is used by every upsampling, and by `SETR.finish`.

`SETRDecoder` is the `FeatureMapDecoder` the SETR model runs: it holds the optional `neck` and the
`decode_head` (so its own `state_dict()` keys are already `neck.*` / `decode_head.*`) and knows
which backbone blocks it reads (`in_layers`, 0-based, from the backbone's `out_indices` and the
head's `in_index`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from algm_export.core.errors import ConfigError
from algm_export.models.base import FeatureMapDecoder
from algm_export.models.mmseg_bricks import ConvModule, build_norm
from algm_export.models.mmseg_bricks import BaseDecodeHead as _DecodeHead
from algm_export.models.mmseg_bricks import head_kwargs as _kwargs

DEFAULT_NORM_LAYER = dict(type="LN", eps=1e-6, requires_grad=True)


def _tokens_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the channels of a [B, C, H, W] map (mmseg: to NLC, norm, back)."""
    n, c, h, w = x.shape
    y = norm(x.reshape(n, c, h * w).transpose(1, 2))
    return y.transpose(1, 2).reshape(n, c, h, w)


def _upsample(x: torch.Tensor, scale: float, align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, scale_factor=float(scale), mode="bilinear", align_corners=align_corners)


class SETRUPHead(_DecodeHead):
    """SETR naive / progressive upsampling head (mmseg `SETRUPHead`)."""

    def __init__(self, norm_layer: dict = DEFAULT_NORM_LAYER, num_convs: int = 1, up_scale: int = 4,
                 kernel_size: int = 3, **kwargs):
        if kernel_size not in (1, 3):
            raise ConfigError(f"SETRUPHead kernel_size must be 1 or 3, got {kernel_size!r}")
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, int):
            raise ConfigError(f"SETRUPHead in_channels must be an int, got {self.in_channels!r}")
        self.num_convs = int(num_convs)
        self.up_scale = up_scale
        self.kernel_size = int(kernel_size)
        self.norm = build_norm(norm_layer, self.in_channels, f"{self.where}.norm_layer")
        self.up_convs = nn.ModuleList()
        c = self.in_channels
        for i in range(self.num_convs):
            self.up_convs.append(nn.Sequential(ConvModule(
                c, self.channels, self.kernel_size, stride=1, padding=(self.kernel_size - 1) // 2,
                conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg,
                where=f"{self.where}.up_convs.{i}")))
            c = self.channels

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        x = _tokens_norm(self.norm, self.transform_inputs(inputs))
        for up in self.up_convs:
            x = _upsample(up[0](x), self.up_scale, self.align_corners)
        return self.cls_seg(x)

    def macs(self, grid: Sequence[int]) -> int:
        h, w = int(grid[0]), int(grid[1])
        total = 0
        for up in self.up_convs:
            total += up[0].macs(h, w)
            h, w = int(h * self.up_scale), int(w * self.up_scale)
        return total + self.conv_seg_macs(h, w)


class MLAModule(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int, norm_cfg=None, act_cfg=None):
        super().__init__()
        self.channel_proj = nn.ModuleList([
            ConvModule(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg, where=f"neck.mla.channel_proj.{i}")
            for i, c in enumerate(in_channels)])
        self.feat_extract = nn.ModuleList([
            ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg,
                       where=f"neck.mla.feat_extract.{i}")
            for i in range(len(in_channels))])

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        feats = [conv(x) for x, conv in zip(inputs, self.channel_proj)][::-1]  # deepest first
        mids = []
        for f in feats:
            mids.append(f if not mids else mids[-1] + f)
        return tuple(conv(m) for m, conv in zip(mids, self.feat_extract))


class MLANeck(nn.Module):
    """SETR multi-level feature aggregation (mmseg `MLANeck`)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, norm_layer: dict = DEFAULT_NORM_LAYER,
                 norm_cfg=None, act_cfg=None, type=None):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)):
            raise ConfigError(f"neck.in_channels must be a list, got {in_channels!r}")
        self.in_channels = list(in_channels)
        self.out_channels = int(out_channels)
        self.norm = nn.ModuleList([build_norm(norm_layer, c, f"neck.norm_layer") for c in self.in_channels])
        self.mla = MLAModule(self.in_channels, self.out_channels, norm_cfg, act_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ConfigError(f"MLANeck expects {len(self.in_channels)} backbone outputs, got {len(inputs)}")
        return self.mla([_tokens_norm(n, x) for n, x in zip(self.norm, inputs)])

    def macs(self, grid: Sequence[int]) -> int:
        h, w = int(grid[0]), int(grid[1])
        return sum(c.macs(h, w) for c in self.mla.channel_proj) + sum(c.macs(h, w) for c in self.mla.feat_extract)


class SETRMLAHead(_DecodeHead):
    """SETR multi-level aggregation head (mmseg `SETRMLAHead`)."""

    def __init__(self, mla_channels: int = 128, up_scale: int = 4, **kwargs):
        kwargs["input_transform"] = "multiple_select"
        super().__init__(**kwargs)
        n = len(self.in_channels)
        self.mla_channels = int(mla_channels)
        self.up_scale = up_scale
        if self.channels != n * self.mla_channels:
            raise ConfigError(f"{self.where}: channels {self.channels} must be len(in_channels) x mla_channels "
                              f"= {n} x {self.mla_channels}")
        self.up_convs = nn.ModuleList()
        for i, c in enumerate(self.in_channels):
            self.up_convs.append(nn.Sequential(
                ConvModule(c, self.mla_channels, 3, padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                           act_cfg=self.act_cfg, where=f"{self.where}.up_convs.{i}.0"),
                ConvModule(self.mla_channels, self.mla_channels, 3, padding=1, conv_cfg=self.conv_cfg,
                           norm_cfg=self.norm_cfg, act_cfg=self.act_cfg, where=f"{self.where}.up_convs.{i}.1")))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        outs = [_upsample(up[1](up[0](x)), self.up_scale, self.align_corners)
                for x, up in zip(self.transform_inputs(inputs), self.up_convs)]
        return self.cls_seg(torch.cat(outs, dim=1))

    def macs(self, grid: Sequence[int]) -> int:
        h, w = int(grid[0]), int(grid[1])
        total = sum(up[0].macs(h, w) + up[1].macs(h, w) for up in self.up_convs)
        return total + self.conv_seg_macs(int(h * self.up_scale), int(w * self.up_scale))


HEADS = {"SETRUPHead": SETRUPHead, "SETRMLAHead": SETRMLAHead}
NECKS = {"MLANeck": MLANeck}


def build_head(cfg: dict, where: str = "decode_head") -> _DecodeHead:
    t = str(cfg.get("type", "")).split(".")[-1]
    if t not in HEADS:
        raise ConfigError(f"{where}: head type {cfg.get('type')!r} is not a SETR head; use one of {sorted(HEADS)}")
    cls = HEADS[t]
    kw = _kwargs(cls, cfg, where)
    if "num_classes" not in kw or "in_channels" not in kw or "channels" not in kw:
        raise ConfigError(f"{where}: in_channels, channels and num_classes are required")
    kw.pop("where", None)
    if cls is SETRMLAHead:
        kw.pop("input_transform", None)
    try:
        return cls(where=where, **kw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def build_neck(cfg: Optional[dict]) -> Optional[MLANeck]:
    if cfg is None:
        return None
    t = str(cfg.get("type", "")).split(".")[-1]
    if t not in NECKS:
        raise ConfigError(f"neck type {cfg.get('type')!r} is not supported here; use one of {sorted(NECKS)}")
    kw = {k: v for k, v in cfg.items() if k != "type"}
    try:
        return NECKS[t](**kw)
    except TypeError as e:
        raise ConfigError(f"neck: {e}") from None


class SETRDecoder(FeatureMapDecoder):
    """Neck (optional) + decode head as one `FeatureMapDecoder` reading backbone blocks `in_layers`.

    `out_indices` are the backbone's output blocks in the order mmseg yields them; the neck (when
    there is one) takes all of them, otherwise the head's `in_index` picks among them.
    """

    def __init__(self, decode_head: _DecodeHead, neck: Optional[MLANeck], out_indices: Sequence[int]):
        super().__init__()
        outs = tuple(int(i) for i in out_indices)
        self.n_cls = decode_head.out_channels
        self.align_corners = decode_head.align_corners
        if neck is not None:
            self.neck = neck
            if len(neck.in_channels) != len(outs):
                raise ConfigError(f"neck.in_channels has {len(neck.in_channels)} entries but the backbone yields "
                                  f"{len(outs)} outputs (out_indices {list(outs)})")
            self.in_layers = outs
            n_feats = len(neck.in_channels)
        else:
            self.neck = None
            n_feats = len(outs)
        self.decode_head = decode_head
        picks = decode_head.in_index if isinstance(decode_head.in_index, (list, tuple)) else [decode_head.in_index]
        for j in picks:
            if not -n_feats <= j < n_feats:
                raise ConfigError(f"decode_head.in_index {decode_head.in_index!r} is out of range for "
                                  f"{n_feats} inputs")
        if neck is None:
            # only the blocks the head reads; forward_maps rebuilds the head's view of all outputs
            self.in_layers = tuple(sorted({outs[j] for j in picks}))
        self._outs = outs

    def _head_inputs(self, maps: Sequence[torch.Tensor]) -> list:
        if self.neck is not None:
            return list(self.neck(list(maps)))
        by_block = dict(zip(self.in_layers, maps))
        return [by_block.get(b) for b in self._outs]  # unread outputs stay None

    def forward_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.decode_head(self._head_inputs(maps))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.forward_maps(maps)

    def macs(self, tokens: Sequence[int], grid: Sequence[int]) -> int:
        """Convolutions at full maps (feature-map decoders unmerge first: `tokens` do not matter)."""
        total = self.neck.macs(grid) if self.neck is not None else 0
        return int(total + self.decode_head.macs(grid))
