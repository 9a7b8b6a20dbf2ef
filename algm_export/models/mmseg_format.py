"""What every mmsegmentation-format family shares: configs to settings, checkpoints, random weights.

Moved here from the SETR family (`families/setr.py`) so that SETR and EVA-02 (and any later
mmseg family) read the same things the same way:

* `normalization_from_config`: 1.x `data_preprocessor` / 0.x `img_norm_cfg` -> mean / std in 0..1
  RGB units and the channel order the network consumes;
* `inference_from_config`: `test_cfg` (whole / slide, crop size, stride); `mmseg_slide_inference`;
* `read_mmseg_checkpoint`: a `.pth` (`{'state_dict', 'meta'}`, read with `weights_only=True`) and its
  config (a `.py` file, config text, or the text the checkpoint's `meta` carries), parsed never
  executed (`mmseg_config`); `load_state_dict_checked` lists missing / unexpected / misshapen keys;
* `format_config` / `save_mmseg_checkpoint`: write both back as mmseg 1.x does;
* `randomize_`: seeded random values for every parameter and BatchNorm statistic.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from algm_export.errors import CheckpointError, ConfigError
from algm_export.models.backbones.mmseg_vit import _pair
from algm_export.models.mmseg_config import config_text_from_meta, parse_config

# Checkpoint keys that inference never uses (training-only heads, the preprocessor's buffers).
IGNORED_PREFIXES = ("auxiliary_head.", "data_preprocessor.")
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def typename(cfg: Optional[dict]) -> str:
    return str((cfg or {}).get("type", "")).split(".")[-1]


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



def read_checkpoint_file(path) -> Any:
    """The one place a checkpoint file is read (a safe loader will replace this)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"the checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read the checkpoint {path}: {first} (it is read with "
                              "torch.load(weights_only=True): tensors and plain data only)") from None


def state_dict_of(obj: Any, where: str) -> dict:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{where} holds no state_dict (found {keys}); an mmseg checkpoint is "
                              "{'state_dict': ..., 'meta': ...}")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{where}: state_dict entry {k!r} is not a tensor")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def short_list(keys, n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_dict_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True,
                            where: str = "checkpoint") -> dict:
    """Load `sd` into `model`; auxiliary-head keys are ignored. Key or shape mismatches raise
    `CheckpointError` listing them (missing / unexpected only when `strict`)."""
    ignored = sorted(k for k in sd if k.startswith(IGNORED_PREFIXES))
    sd = {k: v for k, v in sd.items() if not k.startswith(IGNORED_PREFIXES)}
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k} {tuple(sd[k].shape)} (model {tuple(own[k].shape)})"
                    for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    problems = []
    if shapes:
        problems.append(f"shape mismatches: {short_list(shapes, 6)}")
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {short_list(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {short_list(unexpected)}")
    if problems:
        raise CheckpointError(f"{where} does not match its config: " + "; ".join(problems)
                              + (" (pass strict=False to load the matching keys only)" if not shapes else ""))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"ignored": ignored, "missing": missing, "unexpected": unexpected}



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


def read_mmseg_checkpoint(config_path_or_text=None, checkpoint_path=None) -> tuple[dict, dict, Optional[str], list]:
    """(state_dict, parsed config, config path or None, notes) of an mmseg checkpoint.

    The config is a `.py` file or config text, or None: then the text the checkpoint's `meta`
    carries (`cfg` in 1.x, `config` in 0.x)."""
    if checkpoint_path is None:
        raise CheckpointError("an mmseg model needs a checkpoint path (an mmseg .pth)")
    ckpt = read_checkpoint_file(checkpoint_path)
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
    return sd, config, (None if config_path is None else str(config_path)), notes


def save_mmseg_checkpoint(state_dict: Mapping[str, torch.Tensor], path, config: Mapping,
                          meta: Optional[dict] = None) -> Path:
    """Write `{'state_dict', 'meta': {'cfg': config text}}` as mmseg 1.x does, and the config `.py`
    beside it (same stem)."""
    path = Path(path)
    text = format_config(dict(config))
    m = {"cfg": text}
    m.update(meta or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "meta": m}, path)
    path.with_suffix(".py").write_text(text)
    return path
