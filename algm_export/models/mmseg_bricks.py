"""The few mmcv "bricks" the mmsegmentation models here are made of, with mmcv's parameter names.

Written from reading mmcv 2.x `mmcv/cnn/bricks` (`build_norm_layer`, `build_activation_layer`,
`ConvModule`); only what inference needs, no mmcv import:

* `build_norm(cfg, C)`: `LN` -> `nn.LayerNorm`, `BN` / `BN2d` / `SyncBN` -> `nn.BatchNorm2d`
  (a `SyncBN` synchronises statistics only while training: at inference it is a BatchNorm).
  mmcv's default `eps=1e-5` applies when the config names none.
* `build_act(cfg)`: `ReLU`, `GELU` (exact, erf), `SiLU`/`Swish`, `Sigmoid`, `Tanh`, `LeakyReLU`.
* `BaseDecodeHead`: mmseg `BaseDecodeHead`'s inference part (`conv_seg`, `dropout`, input
  selection), the base of every decode head here; `head_kwargs` checks a head's settings.
* `ConvModule`: conv -> norm -> activation, submodules `conv`, `bn` (the norm's mmcv
  abbreviation) and `activate`; the conv has a bias only without a norm (`bias='auto'`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from algm_export.core.errors import ConfigError

# BaseDecodeHead settings that only matter for training: accepted and ignored.
TRAINING_ONLY = ("loss_decode", "ignore_index", "sampler", "init_cfg", "threshold", "type")
_BN_TYPES = ("BN", "BN2d", "SyncBN", "MMSyncBN")
_IGNORED_NORM_KEYS = ("type", "requires_grad")


def _type(cfg, where: str) -> str:
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"{where}: expected a dict with a 'type', got {cfg!r}")
    t = cfg["type"]
    if not isinstance(t, str):
        raise ConfigError(f"{where}: 'type' must be a name, got {t!r}")
    return t.split(".")[-1]  # 'mmseg.SyncBN' -> 'SyncBN'


def _extra(cfg: dict, allowed: tuple, where: str) -> dict:
    extra = {k: v for k, v in cfg.items() if k not in _IGNORED_NORM_KEYS}
    bad = sorted(set(extra) - set(allowed))
    if bad:
        raise ConfigError(f"{where}: unsupported settings {bad} in {cfg!r}")
    return extra


def norm_abbr(cfg: dict, where: str = "norm_cfg") -> str:
    """mmcv's name for the norm layer of a ConvModule ('bn', 'ln')."""
    t = _type(cfg, where)
    if t in _BN_TYPES:
        return "bn"
    if t == "LN":
        return "ln"
    raise ConfigError(f"{where}: norm type {t!r} is not supported here; use LN, BN or SyncBN")


def build_norm(cfg: dict, num_features: int, where: str = "norm_cfg") -> nn.Module:
    t = _type(cfg, where)
    if t == "LN":
        kw = _extra(cfg, ("eps", "elementwise_affine", "bias"), where)
        kw.setdefault("eps", 1e-5)
        return nn.LayerNorm(num_features, **kw)
    if t in _BN_TYPES:
        kw = _extra(cfg, ("eps", "momentum", "affine", "track_running_stats"), where)
        kw.setdefault("eps", 1e-5)
        return nn.BatchNorm2d(num_features, **kw)
    raise ConfigError(f"{where}: norm type {t!r} is not supported here; use LN, BN or SyncBN")


def build_act(cfg: Optional[dict], where: str = "act_cfg") -> nn.Module:
    if cfg is None:
        return nn.Identity()
    t = _type(cfg, where)
    kw = {k: v for k, v in cfg.items() if k != "type"}
    kw.pop("inplace", None)  # in-place or not gives the same values
    makers = {"ReLU": nn.ReLU, "GELU": nn.GELU, "SiLU": nn.SiLU, "Swish": nn.SiLU, "Sigmoid": nn.Sigmoid,
              "Tanh": nn.Tanh, "LeakyReLU": nn.LeakyReLU, "PReLU": nn.PReLU, "ReLU6": nn.ReLU6}
    if t not in makers:
        raise ConfigError(f"{where}: activation {t!r} is not supported here; use one of {sorted(makers)}")
    try:
        return makers[t](**kw)
    except TypeError as e:
        raise ConfigError(f"{where}: {cfg!r}: {e}") from None


class ConvModule(nn.Module):
    """mmcv `ConvModule` with the default order (conv, norm, act), as inference sees it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias="auto", conv_cfg: Optional[dict] = None, norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = dict(type="ReLU"), where: str = "ConvModule"):
        super().__init__()
        if conv_cfg is not None and _type(conv_cfg, f"{where}.conv_cfg") != "Conv2d":
            raise ConfigError(f"{where}: conv_cfg {conv_cfg!r} is not supported here (only Conv2d)")
        with_norm = norm_cfg is not None
        if bias == "auto":
            bias = not with_norm
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bool(bias))
        self.norm_name = None
        if with_norm:
            self.norm_name = norm_abbr(norm_cfg, f"{where}.norm_cfg")
            if self.norm_name != "bn":
                raise ConfigError(f"{where}: a ConvModule norm must be BN or SyncBN here, got {norm_cfg!r}")
            self.add_module(self.norm_name, build_norm(norm_cfg, out_channels, f"{where}.norm_cfg"))
        self.with_activation = act_cfg is not None
        if self.with_activation:
            self.activate = build_act(act_cfg, f"{where}.act_cfg")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        if self.with_activation:
            x = self.activate(x)
        return x

    def macs(self, h: int, w: int) -> int:
        """Multiply-accumulates of the convolution on an `h x w` input."""
        c = self.conv
        kh, kw = c.kernel_size
        oh = (h + 2 * c.padding[0] - c.dilation[0] * (kh - 1) - 1) // c.stride[0] + 1
        ow = (w + 2 * c.padding[1] - c.dilation[1] * (kw - 1) - 1) // c.stride[1] + 1
        return int(oh * ow * c.out_channels * (c.in_channels // c.groups) * kh * kw)


class BaseDecodeHead(nn.Module):
    """mmseg `BaseDecodeHead`'s inference part: `conv_seg` (+ `dropout`) and `_transform_inputs`."""

    def __init__(self, in_channels, channels: int, *, num_classes: int, out_channels: Optional[int] = None,
                 dropout_ratio: float = 0.1, conv_cfg=None, norm_cfg=None, act_cfg=dict(type="ReLU"),
                 in_index=-1, input_transform=None, align_corners: bool = False, where: str = "decode_head"):
        super().__init__()
        if input_transform not in (None, "multiple_select"):
            raise ConfigError(f"{where}: input_transform {input_transform!r} is not supported here")
        if input_transform is None:
            if not isinstance(in_channels, int) or not isinstance(in_index, int):
                raise ConfigError(f"{where}: in_channels and in_index must be ints without input_transform, "
                                  f"got {in_channels!r}, {in_index!r}")
        else:
            if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)) \
                    or len(in_channels) != len(in_index):
                raise ConfigError(f"{where}: in_channels and in_index must be lists of one length with "
                                  f"input_transform='multiple_select', got {in_channels!r}, {in_index!r}")
        if out_channels is None:
            out_channels = num_classes
        if out_channels != num_classes and out_channels != 1:
            raise ConfigError(f"{where}: out_channels {out_channels} must equal num_classes {num_classes} "
                              "(or be 1 for binary segmentation)")
        self.where = where
        self.in_channels = in_channels
        self.channels = int(channels)
        self.num_classes = int(num_classes)
        self.out_channels = int(out_channels)
        self.in_index = in_index
        self.input_transform = input_transform
        self.align_corners = bool(align_corners)
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        self.conv_seg = nn.Conv2d(self.channels, self.out_channels, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def transform_inputs(self, inputs: Sequence[torch.Tensor]):
        if self.input_transform == "multiple_select":
            return [inputs[i] for i in self.in_index]
        return inputs[self.in_index]

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)

    def conv_seg_macs(self, h: int, w: int) -> int:
        return int(h * w * self.channels * self.out_channels)


def head_kwargs(cls, cfg: dict, where: str) -> dict:
    """The settings of `cfg` that `cls.__init__` (or a base) accepts; training-only ones dropped,
    unknown ones a ConfigError."""
    import inspect

    params = set()
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            continue
        params |= {p for p in inspect.signature(klass.__init__).parameters if p not in ("self", "kwargs")}
    kw = {k: v for k, v in cfg.items() if k not in TRAINING_ONLY}
    unknown = sorted(set(kw) - params)
    if unknown:
        raise ConfigError(f"{where}: unknown settings {unknown} for {cls.__name__}")
    return kw
