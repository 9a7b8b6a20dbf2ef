"""mmsegmentation's checkpoint format, shared by every family trained with it (SETR, SegViT, EVA-02).

A model is a `.pth` holding `{"state_dict": ..., "meta": {...}}` plus its Python config: a file
named with `--config`, the one `.py` file beside the checkpoint (or in the folder passed), or the
config text stored in the checkpoint's `meta` (`cfg` in 1.x, `config` in 0.x). Configs are
parsed, never executed (`algm_export.models.formats.mmseg_config`). Which family a checkpoint belongs to
is read from its config's `model` types (`model_types`), so every mmseg family's `detect` is one
line.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.backbones.mmseg_vit import _pair
from algm_export.models.formats.mmseg_config import config_text_from_meta, parse_config

_CACHE: dict = {}
PATCH_BIAS_KEY = "backbone.patch_embed.projection.bias"
# mmseg 1.x / late 0.x `VisionTransformer` arguments (the training-only ones are accepted and ignored).
VIT_ARGS = ("img_size", "patch_size", "patch_pad", "in_channels", "embed_dims", "num_layers", "num_heads",
            "mlp_ratio", "out_origin", "out_indices", "qkv_bias", "drop_rate", "attn_drop_rate",
            "drop_path_rate", "with_cls_token", "output_cls_token", "norm_cfg", "act_cfg", "patch_norm",
            "patch_bias", "pre_norm", "final_norm", "interpolate_mode", "num_fcs", "norm_eval", "with_cp",
            "frozen_exclude", "pretrained", "init_cfg")


def read_checkpoint(path, trust: bool = False) -> Any:
    """The one place an mmseg checkpoint file is read: `models.safe_load` (weights only, plus the
    plain training-state types) unless the user trusts it (`--trust-checkpoint`)."""
    from algm_export.models.formats.safe_load import load_checkpoint_file

    return load_checkpoint_file(path, trust=trust)


def state_dict_of(obj: Any, where: str) -> dict:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{where} holds no state_dict (found {keys}); an mmseg checkpoint is "
                              "{'state_dict': ..., 'meta': ...}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{where}: state_dict entry {k!r} is not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def short(keys, n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_checked(model, sd: Mapping[str, torch.Tensor], strict: bool = True, where: str = "checkpoint",
                            ignored_prefixes=("auxiliary_head.", "data_preprocessor.")) -> dict:
    """Load `sd` into `model`; keys under `ignored_prefixes` (training-only heads) are ignored.
    Key or shape mismatches raise `CheckpointError` listing them (missing / unexpected only when
    `strict`). Returns {"ignored", "missing", "unexpected"} key lists."""
    ignored = sorted(k for k in sd if k.startswith(tuple(ignored_prefixes)))
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(ignored_prefixes))}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k} {tuple(sd[k].shape)} (model {tuple(own[k].shape)})"
                    for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    problems = []
    if shapes:
        problems.append(f"shape mismatches: {short(shapes, 6)}")
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {short(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {short(unexpected)}")
    if problems:
        raise CheckpointError(f"{where} does not match its config: " + "; ".join(problems)
                              + ("; check that the config belongs to this checkpoint" if not shapes else ""))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
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


def read_mmseg(config_path_or_text=None, checkpoint_path=None, who: str = "the mmseg loader", trust: bool = False):
    """What every mmseg family's loader reads: (config, model_cfg, state_dict, notes, config_path, where).

    `config_path_or_text`: a config file, its text, or None (the checkpoint's `meta` text).
    `model_cfg` is a copy of the config's `model` whose backbone `patch_bias` follows the checkpoint
    when the config does not set it (0.x's ViT always had the bias, 1.x defaults to none)."""
    if checkpoint_path is None:
        raise CheckpointError(f"{who} needs a checkpoint path (an mmseg .pth)")
    ckpt = read_checkpoint(checkpoint_path, trust)
    where = str(checkpoint_path)
    sd = state_dict_of(ckpt, where)
    notes = []
    if config_path_or_text is None:
        text = config_text_from_meta(ckpt.get("meta") if isinstance(ckpt, Mapping) else None)
        if text is None:
            raise ConfigError(f"{where} carries no config text in meta['cfg'] / meta['config']; pass the config .py")
        config = parse_config(text, where=f"{where} meta config")
        config_path = None
        notes.append("config read from the checkpoint's meta")
    else:
        config = parse_config(config_path_or_text)
        is_file = isinstance(config_path_or_text, os.PathLike) or (
            isinstance(config_path_or_text, str) and "\n" not in config_path_or_text
            and os.path.isfile(os.path.expanduser(config_path_or_text)))
        config_path = config_path_or_text if is_file else None
    if "model" not in config:
        raise ConfigError("the config defines no `model`")
    model_cfg = copy.deepcopy(config["model"])
    bb = model_cfg.setdefault("backbone", {})
    if isinstance(bb, dict) and "patch_bias" not in bb:
        has_bias = PATCH_BIAS_KEY in sd
        bb["patch_bias"] = has_bias
        notes.append("patch_bias not set in the config: " + (
            "the checkpoint has a patch-embedding bias (mmseg 0.x default), so the conv has one" if has_bias else
            "the checkpoint has no patch-embedding bias (mmseg 1.x default)"))
    return config, model_cfg, sd, notes, config_path, where


class MMSegViTConfig:
    """Methods shared by the configs of the families on mmsegmentation's ViT (SETR, SegViT): the
    uniform `grid`, `num_prefix` and `to_dict` (dataclass subclasses hold the fields)."""

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid at the run size (the patch embedding pads up to whole patches)."""
        p = self.patch_size
        return (math.ceil(self.image_size[0] / p), math.ceil(self.image_size[1] / p))

    @property
    def num_prefix(self) -> int:
        return 1 if self.with_cls_token else 0

    def to_dict(self) -> dict:
        d = {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__}
        for k in ("image_size", "built_image_size", "decoder_layers"):
            d[k] = list(d[k])
        d["normalization"] = {k: list(v) for k, v in self.normalization.items()}
        d["grid"] = list(self.grid)
        d["num_prefix"] = self.num_prefix
        return d


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


# ----------------------------------------------------------------------------- config helpers every mmseg family shares

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def typename(d) -> str:
    """The short type name of a config dict (`mmseg.VisionTransformer` -> `VisionTransformer`; "" if none)."""
    return str((d or {}).get("type", "")).split(".")[-1] if isinstance(d, Mapping) else ""



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
        out["crop_size"] = list(_pair(tc["crop_size"], "test_cfg.crop_size"))
        out["stride"] = list(_pair(tc["stride"], "test_cfg.stride"))
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
    h_stride, w_stride = _pair(stride, "stride")
    h_crop, w_crop = _pair(crop, "crop size")
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


def format_config(cfg: Mapping) -> str:
    """Config text (`name = value` lines, `dict(...)` for identifier-keyed dicts) that
    `parse_config` and mmengine both read back to the same settings."""
    def fmt(v, indent=0) -> str:
        pad = " " * (indent + 4)
        if isinstance(v, dict):
            if not v:
                return "dict()"
            if all(isinstance(k, str) and k.isidentifier() for k in v):
                items = [f"{pad}{k}={fmt(x, indent + 4)}" for k, x in v.items()]
                return "dict(\n" + ",\n".join(items) + ")"
            items = [f"{pad}{k!r}: {fmt(x, indent + 4)}" for k, x in v.items()]
            return "{\n" + ",\n".join(items) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x, indent) for x in v) + "]"
        if isinstance(v, tuple):
            return "(" + ", ".join(fmt(x, indent) for x in v) + ("," if len(v) == 1 else "") + ")"
        if isinstance(v, (str, int, float, bool)) or v is None:
            return repr(v)
        raise ConfigError(f"cannot write a {type(v).__name__} into a config")
    return "\n".join(f"{k} = {fmt(v)}" for k, v in cfg.items()) + "\n"


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


# ----------------------------------------------------------------------------- files and dispatch

def find_files(p: Path, config: Optional[Path]) -> tuple[Optional[Path], Path]:
    """(config file or None = the checkpoint's meta, checkpoint file) for a path and --config."""
    if p.is_dir():
        pths = sorted(p.glob("*.pth"))
        if len(pths) != 1:
            raise CheckpointError(
                f"{p} holds {len(pths)} .pth files ({[q.name for q in pths][:5]}); pass the checkpoint file "
                "itself (and its config with --config)")
        ckpt = pths[0]
    else:
        ckpt = p
    if config is not None:
        return config, ckpt
    pys = sorted(ckpt.parent.glob("*.py"))
    if len(pys) == 1:
        return pys[0], ckpt
    if len(pys) > 1:
        raise CheckpointError(
            f"{ckpt.parent} holds several config files ({[q.name for q in pys][:5]}); name the model's "
            "config with --config CONFIG.py")
    return None, ckpt


def read_model(p: Path, config: Optional[Path], trust: bool = False) -> tuple[dict, Optional[Path], Path, Any]:
    """(parsed config, config file or None, checkpoint file, checkpoint object), cached per file state."""
    cfg_path, ckpt = find_files(p, config)

    def stamp(q):
        st = q.stat()
        return (str(q.resolve()), st.st_mtime_ns, st.st_size)

    key = (stamp(ckpt), cfg_path and stamp(cfg_path), trust)
    if key not in _CACHE:
        obj = read_checkpoint(ckpt, trust)
        if cfg_path is None:
            text = config_text_from_meta(obj.get("meta") if isinstance(obj, Mapping) else None)
            if text is None:
                raise CheckpointError(
                    f"{ckpt} carries no config in meta['cfg'] / meta['config'] and no config file lies beside "
                    "it; pass the model's config with --config CONFIG.py")
            cfg = parse_config(text, where=f"{ckpt} meta config")
        else:
            cfg = parse_config(cfg_path)
        if "model" not in cfg or not isinstance(cfg["model"], Mapping):
            raise ConfigError(f"{cfg_path or ckpt}: the config defines no `model` dict; pass the model's config")
        _CACHE.clear()  # one entry: a checkpoint can be large
        _CACHE[key] = (cfg, cfg_path, ckpt, obj)
    return _CACHE[key]


def model_types(cfg: Mapping) -> dict:
    """{"backbone", "neck", "decode_head"} type names of a parsed config's `model`."""
    m = cfg.get("model") or {}
    return {"backbone": typename(m.get("backbone")), "neck": typename(m.get("neck")), "decode_head": typename(m.get("decode_head"))}


def looks_like_mmseg(p: Path, config: Optional[Path]) -> bool:
    """A config named, a config file beside, or a `.pth` that is not a Segmenter `checkpoint.pth`."""
    if config is not None:
        return True
    folder = p if p.is_dir() else p.parent
    return any(folder.glob("*.py")) or (p.is_file() and p.suffix == ".pth" and not (folder / "variant.yml").exists())


def detect_types(p: Path, config: Optional[Path], trust: bool = False, **want) -> bool:
    """Is this an mmseg checkpoint whose model types match `want` (e.g. decode_head={"ATMHead"})?"""
    if not looks_like_mmseg(p, config):
        return False
    cfg = read_model(p, config, trust)[0]
    types = model_types(cfg)
    return all(types[k] in v for k, v in want.items())


def unknown_mmseg_error(p: Path, config: Optional[Path], known: str, trust: bool = False) -> CheckpointError:
    cfg = read_model(p, config, trust)[0]
    return CheckpointError(f"{p}: an mmsegmentation model of types {model_types(cfg)}, which algm-export does "
                           f"not support; supported: {known}")


# ----------------------------------------------------------------------------- upstream initialisation

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
