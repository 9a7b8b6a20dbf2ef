"""The model parts every mmsegmentation-trained family shares (SETR, SegViT, EVA-02): mmseg's ViT built
from a config, the normalisation and inference settings of a config, mmseg's slide inference, the
whole-image finish, and the initialisations (seeded random for tests, upstream for benchmarks).
Reading the files themselves is `models/formats/mmseg.py`.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from algm_export.core.errors import ConfigError
from algm_export.core.names import pair
from algm_export.models.checkpoint_keys import load_checked
from algm_export.models.formats.mmseg import short, typename

# mmseg 1.x / late 0.x `VisionTransformer` arguments (the training-only ones are accepted and ignored).
VIT_ARGS = ("img_size", "patch_size", "patch_pad", "in_channels", "embed_dims", "num_layers", "num_heads",
            "mlp_ratio", "out_origin", "out_indices", "qkv_bias", "drop_rate", "attn_drop_rate",
            "drop_path_rate", "with_cls_token", "output_cls_token", "norm_cfg", "act_cfg", "patch_norm",
            "patch_bias", "pre_norm", "final_norm", "interpolate_mode", "num_fcs", "norm_eval", "with_cp",
            "frozen_exclude", "pretrained", "init_cfg")


def load_state_dict_checked(model, sd: Mapping[str, torch.Tensor], strict: bool = True, where: str = "checkpoint",
                            ignored_prefixes=("auxiliary_head.", "data_preprocessor.")) -> dict:
    """Load `sd` into `model`; keys under `ignored_prefixes` (training-only heads) are ignored.
    Key or shape mismatches raise `CheckpointError` listing them (missing / unexpected only when
    `strict`). Returns {"ignored", "missing", "unexpected"} key lists."""
    ignored = sorted(k for k in sd if k.startswith(tuple(ignored_prefixes)))
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignored_prefixes))}
    missing, unexpected = load_checked(model, sd, strict, f"{where} does not match its config: ", short,
                                       hint="; check that the config belongs to this checkpoint")
    return {"ignored": ignored, "missing": missing, "unexpected": unexpected}


def build_vit(bb_cfg: Mapping):
    """The `MMSegViT` of a config's `model.backbone` (random weights); other backbone types and
    unknown arguments raise `ConfigError`."""
    from algm_export.models.backbones.mmseg_vit import MMSegViT

    bb_cfg = dict(bb_cfg or {})
    if typename(bb_cfg) != "VisionTransformer":
        raise ConfigError(f"backbone type {bb_cfg.get('type')!r} is not supported here; use VisionTransformer")
    kw = {k: v for k, v in bb_cfg.items() if k != "type"}
    unknown = sorted(set(kw) - set(VIT_ARGS))
    if unknown:
        raise ConfigError(f"backbone: unknown VisionTransformer settings {unknown} (mmseg 1.x / late 0.x "
                          "arguments are supported; the pre-v0.17 timm-style ViT is not)")
    return MMSegViT(**kw)


class MMSegViTConfig:
    """Methods shared by the configs of the mmsegmentation-trained families (SETR, SegViT, EVA-02): the
    uniform `grid`, `num_prefix` and `to_dict` (dataclass subclasses hold the fields)."""

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid at the run size (the patch embedding pads up to whole patches)."""
        p = self.patch_size
        return (math.ceil(self.image_size[0] / p), math.ceil(self.image_size[1] / p))

    @property
    def num_prefix(self) -> int:
        return 1 if self.with_cls_token else 0

    LIST_FIELDS = ("image_size", "built_image_size", "decoder_layers")  # tuples written as lists

    def to_dict(self) -> dict:
        d = {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__}
        for k in self.LIST_FIELDS:
            d[k] = list(d[k])
        d["normalization"] = {k: list(v) for k, v in self.normalization.items()}
        d["grid"] = list(self.grid)
        d["num_prefix"] = self.num_prefix
        return d


def encoder_decoder(model_cfg, what: str) -> dict:
    """A deep copy of a config's `model` dict, refused unless it is an `EncoderDecoder` (`what` names
    the family in the message, e.g. "SETR models")."""
    if not isinstance(model_cfg, Mapping):
        raise ConfigError(f"the config's `model` must be a dict, got {type(model_cfg).__name__}")
    model_cfg = copy.deepcopy(dict(model_cfg))
    seg_type = typename(model_cfg) or "EncoderDecoder"
    if seg_type != "EncoderDecoder":
        raise ConfigError(f"model type {model_cfg.get('type')!r} is not supported; {what} are EncoderDecoder")
    return model_cfg


class DecoderUnderHostKeys:
    """For models whose decoder's parameters must keep mmsegmentation's keys (`neck.*`, `decode_head.*`):
    the parts are registered under those names, the decoder object itself is held outside the module
    tree (so its parameters are not registered twice) and follows `train()` / `eval()`."""

    def hold_decoder(self, decoder, **parts) -> None:
        for name, part in parts.items():
            if part is not None:
                setattr(self, name, part)
        object.__setattr__(self, "_held_decoder", decoder)

    @property
    def decoder(self):
        return self.__dict__["_held_decoder"]

    def train(self, mode: bool = True):
        super().train(mode)
        self.decoder.training = mode
        return self


class MMSegWholeInference:
    """`prepare`, `finish` and `inference` shared by the mmseg families whose heads return one map (SETR, SegViT):
    mmseg's whole inference resizes the head's output straight to the input size with the head's
    `align_corners`; `inference` runs whole or slide as the config's `test_cfg` says."""

    def finish(self, logits, padded_hw, out_hw):
        logits = logits.float()
        out_hw = (int(out_hw[0]), int(out_hw[1]))
        if tuple(logits.shape[-2:]) == out_hw:
            return logits
        if not self.cfg.align_corners:
            from algm_export.models.layers import bilinear_upsample

            return bilinear_upsample(logits, out_hw)
        import torch.nn.functional as F

        return F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=True)

    def prepare(self, im):
        """The BGR flip where the network consumes BGR, and the patch embedding's zero padding
        (bottom / right, mmseg's 'corner' `AdaptivePadding`) so that the image is patch-aligned."""
        if self.cfg.channel_order == "bgr":
            im = im.flip(1)
        return self.backbone.patch_embed.pad(im)

    def inference(self, im):
        """mmseg `EncoderDecoder.inference`: whole or slide per the config's `test_cfg`."""
        inf = self.cfg.inference
        if inf["mode"] == "slide":
            return mmseg_slide_inference(self, im, inf["crop_size"], inf["stride"], self.cfg.n_cls)
        return self(im)


# training-only parts of an mmseg checkpoint that inference never reads
TRAINING_ONLY_PREFIXES = ("auxiliary_head.", "data_preprocessor.")
UPSTREAM_SUFFIX = "_upstream_init"  # built-ins initialised as upstream initialises a fresh model

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def normalization_from_config(model_cfg: Mapping, config: Optional[Mapping] = None) -> tuple[dict, str, str]:
    """(normalization in 0..1 RGB order, channel order the network consumes, where it came from)."""
    config = config or {}
    dp = model_cfg.get("data_preprocessor") or config.get("data_preprocessor")
    if isinstance(dp, Mapping) and (dp.get("mean") is not None or "bgr_to_rgb" in dp or "rgb_to_bgr" in dp):
        mean, std = dp.get("mean"), dp.get("std")
        flip = bool(dp.get("bgr_to_rgb", False) or dp.get("rgb_to_bgr", False))
        source = "data_preprocessor"
    elif isinstance(config.get("img_norm_cfg"), Mapping):
        inc = config["img_norm_cfg"]
        mean, std = inc.get("mean"), inc.get("std")
        flip = bool(inc.get("to_rgb", False))
        source = "img_norm_cfg"
    else:
        mean, std, flip, source = None, None, False, "none"
    if mean is None:
        # mmseg's BaseDataPreprocessor: no normalisation, the 0..255 values as loaded
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if std is None or len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"the config's normalisation needs 3 means and 3 stds, got mean={mean!r} std={std!r}")
    mean = tuple(float(m) / 255.0 for m in mean)
    std = tuple(float(s) / 255.0 for s in std)
    # mmseg loads BGR; a flip makes the network's input RGB
    order = "rgb" if flip else "bgr"
    if order == "bgr":
        mean, std = mean[::-1], std[::-1]
    return {"mean": mean, "std": std}, order, source


def inference_from_config(model_cfg: Mapping, config: Mapping) -> dict:
    tc = model_cfg.get("test_cfg") or config.get("test_cfg") or {}
    mode = tc.get("mode", "whole")
    if mode not in ("whole", "slide"):
        raise ConfigError(f"test_cfg mode {mode!r} is not supported; use 'whole' or 'slide' (as mmseg)")
    out = {"mode": mode, "crop_size": None, "stride": None}
    if mode == "slide":
        if "crop_size" not in tc or "stride" not in tc:
            raise ConfigError("test_cfg mode 'slide' needs crop_size and stride")
        out["crop_size"] = list(pair(tc["crop_size"], "test_cfg.crop_size"))
        out["stride"] = list(pair(tc["stride"], "test_cfg.stride"))
        # the keys `predict` reads (models/inference.py): windows of crop_size every stride, on
        # the image resized to a short side of min(crop_size), as the ADE20K test pipelines do
        out.update(window_size=out["crop_size"], window_stride=out["stride"], im_size=min(out["crop_size"]))
    return out


def mmseg_slide_inference(fn: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, crop, stride,
                          n_cls: int) -> torch.Tensor:
    """mmseg `EncoderDecoder.slide_inference`: windows every `stride`, the last ones flush with the
    border (a window larger than the image shrinks to it), logits summed and divided by the count.

    `fn` maps a crop `[B, 3, h, w]` to logits `[B, n_cls, h, w]` at the crop's size.
    """
    h_stride, w_stride = pair(stride, "stride")
    h_crop, w_crop = pair(crop, "crop size")
    B, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((B, n_cls, h_img, w_img), dtype=torch.float32)
    count = img.new_zeros((B, 1, h_img, w_img), dtype=torch.float32)
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * h_stride, wi * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            out = torch.as_tensor(fn(img[:, :, y1:y2, x1:x2])).float()
            preds += F.pad(out, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BatchNorm statistic drawn at random (seeded, by sorted name), so that
    nothing is an identity by accident: weights N(0, 1/fan_in), norm scales U(0.5, 1.5), biases
    N(0, 0.05^2), cls / position embeddings N(0, 0.5^2), running means N(0, 0.1^2), running
    variances U(0.5, 1.5). Works on any module with mmseg's names (ours or mmseg's own)."""
    g = torch.Generator().manual_seed(int(seed))
    norm_params = set()
    for name, m in module.named_modules():
        if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            norm_params |= {f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False)}
    tensors = dict(module.named_parameters())
    tensors.update({k: v for k, v in module.named_buffers() if k.endswith(("running_mean", "running_var"))})
    for name in sorted(tensors):
        t = tensors[name]
        shape = t.shape
        if name.endswith("running_var"):
            v = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("running_mean"):
            v = torch.randn(shape, generator=g) * 0.1
        elif name in norm_params and name.endswith("weight"):
            v = torch.rand(shape, generator=g) + 0.5
        elif name.endswith(("cls_token", "pos_embed")):
            v = torch.randn(shape, generator=g) * 0.5
        elif t.dim() >= 2:
            fan_in = t[0].numel()
            v = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            v = torch.randn(shape, generator=g) * 0.05
        t.copy_(v.to(t.dtype))
    return module


INITS = ("random", "upstream")


def check_init(init: str) -> str:
    if init not in INITS:
        raise ConfigError(f"unknown initialisation {init!r}; use one of {list(INITS)}")
    return init


class seeded_construction:
    """`with seeded_construction(seed): model = build(...)`: the constructors' default initialisation
    (PyTorch's layer defaults, timm's `Eva` init) drawn from a seeded global RNG, which is restored
    afterwards, so an `init="upstream"` built-in is the same model on every call."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def __enter__(self):
        self._rng = torch.random.fork_rng(devices=[])
        self._rng.__enter__()
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self._rng.__exit__(*exc)


@torch.no_grad()
def init_upstream_(model: torch.nn.Module, seed: int = 0, mmseg_vit: bool = True,
                   head_linear_trunc: bool = False) -> torch.nn.Module:
    """The weights a fresh model gets from its upstream code's `init_weights()`, on top of the
    constructors' defaults (build the model inside `seeded_construction(seed)`):

    * `mmseg_vit`: mmsegmentation's `VisionTransformer.init_weights` without a pretrained
      checkpoint (its 'jax_impl'-style branch): `pos_embed`, `cls_token` and every `nn.Linear`
      weight truncated normal, std 0.02; Linear biases 0, except the FFN's (N(0, 1e-6^2)); the
      patch-embedding conv Kaiming normal (fan_in, bias 0); LayerNorms (1, 0). The attention's
      packed `in_proj_weight` is not an `nn.Linear`: it keeps `nn.MultiheadAttention`'s Xavier
      uniform (bias 0), as upstream. A timm backbone (EVA-02) keeps timm's constructor init.
    * decode head and neck (mmcv / mmengine): every `ConvModule`'s conv Kaiming normal (fan_out,
      ReLU gain, bias 0) and its norm (1, 0); `conv_seg` N(0, 0.01^2), bias 0; LayerNorms (1, 0)
      (SETR's head `init_cfg`); with `head_linear_trunc` (SegViT's `ATMHead.init_weights`) the
      head's Linear weights truncated normal 0.02, biases 0. Everything else (upsampling convs,
      `ConvTranspose2d` of the neck) keeps PyTorch's defaults; BatchNorm statistics (0, 1).
    Draws come from a generator seeded with `seed`, in sorted module-name order."""
    from torch import nn

    from algm_export.models.mmseg_bricks import ConvModule

    g = torch.Generator().manual_seed(int(seed) + 1)

    def trunc(t, std):
        nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0, generator=g)   # mmengine's bounds (absolute)

    def norm_(m):
        if getattr(m, "weight", None) is not None:
            nn.init.ones_(m.weight)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()

    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    mods = dict(model.named_modules())
    for name in sorted(mods):
        m = mods[name]
        in_backbone = name == "backbone" or name.startswith("backbone.")
        if in_backbone:
            if not mmseg_vit:
                continue
            if name == "backbone":
                for p in ("pos_embed", "cls_token"):
                    if getattr(m, p, None) is not None:
                        trunc(getattr(m, p), 0.02)
            elif isinstance(m, nn.Linear):
                trunc(m.weight, 0.02)
                if m.bias is not None:
                    if "ffn" in name:
                        nn.init.normal_(m.bias, 0.0, 1e-6, generator=g)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, norms):
                norm_(m)
            continue
        if isinstance(m, ConvModule):
            nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu", generator=g)
            if m.conv.bias is not None:
                nn.init.zeros_(m.conv.bias)
        elif name.endswith("conv_seg") and isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01, generator=g)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, norms):
            norm_(m)
        elif head_linear_trunc and isinstance(m, nn.Linear) and name.startswith("decode_head."):
            trunc(m.weight, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


# ----------------------------------------------------------------------------- names

_VIT_NAMES = {(192, 12, 3): "vit-ti", (384, 12, 6): "vit-s", (768, 12, 12): "vit-b", (1024, 24, 16): "vit-l",
              (1280, 32, 16): "vit-h"}


def backbone_name(bb: dict) -> str:
    """A short name of mmseg's ViT from its config (`mmseg_vit-s16`), for tables and manifests."""
    key = (int(bb.get("embed_dims", 768)), int(bb.get("num_layers", 12)), int(bb.get("num_heads", 12)))
    name = _VIT_NAMES.get(key, f"vit-d{key[0]}x{key[1]}")
    return f"mmseg_{name}{int(bb.get('patch_size', 16))}"
