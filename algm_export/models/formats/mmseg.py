"""mmsegmentation's checkpoint format (format `mmsegmentation`), shared by every family trained with it.

A model is a `.pth` holding `{"state_dict": ..., "meta": {...}}` plus its Python config: a file
named with `--config`, the one `.py` file beside the checkpoint (or in the folder passed), or the
config text stored in the checkpoint's `meta` (`cfg` in 1.x, `config` in 0.x). Configs are
parsed, never executed (`models/formats/mmseg_config.py`). Which family a checkpoint belongs to
is read from its config's `model` types (`model_types`, `accepts_types`). The model parts every
mmseg family shares (mmseg's ViT from a config, normalisation, slide inference, upstream
initialisation) are in `models/mmseg_common.py`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.formats import Format, register_format
from algm_export.models.formats.mmseg_config import config_text_from_meta, parse_config

_CACHE: dict = {}    # the last checkpoint read
_CONFIGS: dict = {}  # the last (config, config file, checkpoint file, checkpoint) read
PATCH_BIAS_KEY = "backbone.patch_embed.projection.bias"


def _stamp(q: Path) -> tuple:
    st = q.stat()
    return (str(q.resolve()), st.st_mtime_ns, st.st_size)


def read_checkpoint_cached(path, trust: bool = False) -> Any:
    """`read_checkpoint`, remembered for the last file (by path, mtime and size): detecting the format,
    choosing the family and loading read a checkpoint once."""
    if not Path(path).is_file():
        return read_checkpoint(path, trust)  # says what is wrong
    key = ("checkpoint", _stamp(Path(path)), trust)
    if key not in _CACHE:
        obj = read_checkpoint(path, trust)
        _CACHE.clear()  # one entry: a checkpoint can be large
        _CACHE[key] = obj
    return _CACHE[key]


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


def read_mmseg(config_path_or_text=None, checkpoint_path=None, who: str = "the mmseg loader", trust: bool = False):
    """What every mmseg family's loader reads: (config, model_cfg, state_dict, notes, config_path, where).

    `config_path_or_text`: a config file, its text, or None (the checkpoint's `meta` text).
    `model_cfg` is a copy of the config's `model` whose backbone `patch_bias` follows the checkpoint
    when the config does not set it (0.x's ViT always had the bias, 1.x defaults to none)."""
    if checkpoint_path is None:
        raise CheckpointError(f"{who} needs a checkpoint path (an mmseg .pth)")
    ckpt = read_checkpoint_cached(checkpoint_path, trust)
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


def typename(d) -> str:
    """The short type name of a config dict (`mmseg.VisionTransformer` -> `VisionTransformer`; "" if none)."""
    return str((d or {}).get("type", "")).split(".")[-1] if isinstance(d, Mapping) else ""



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
    key = ("model", _stamp(ckpt), cfg_path and _stamp(cfg_path), trust)
    if key not in _CONFIGS:
        obj = read_checkpoint_cached(ckpt, trust)
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
        _CONFIGS.clear()
        _CONFIGS[key] = (cfg, cfg_path, ckpt, obj)
    return _CONFIGS[key]


def model_types(cfg: Mapping) -> dict:
    """{"backbone", "neck", "decode_head"} type names of a parsed config's `model`."""
    m = cfg.get("model") or {}
    return {"backbone": typename(m.get("backbone")), "neck": typename(m.get("neck")), "decode_head": typename(m.get("decode_head"))}


def accepts_types(files: dict, trust: bool = False, **want) -> bool:
    """Whether the model in an mmseg checkpoint's files has config `model` types in `want`
    (e.g. decode_head={"ATMHead"}): how each mmseg family recognises its own."""
    cfg = read_model(files["checkpoint"], files.get("config"), trust)[0]
    types = model_types(cfg)
    return all(types[k] in v for k, v in want.items())


def find(p: Path, config: Optional[Path] = None, trust: bool = False) -> Optional[dict]:
    """{"checkpoint", "config"} when `p` is an mmseg checkpoint (or a folder holding one): a `.py` config
    named or beside it, or config text in its `meta` ("config" None then); else None."""
    if config is not None:
        if config.suffix != ".py":
            return None
        return {"checkpoint": find_files(p, config)[1], "config": config}
    folder = p if p.is_dir() else p.parent
    if p.is_dir():
        if not any(p.glob("*.pth")):
            return None
    elif p.suffix != ".pth":
        return None
    cfg_path, ckpt = find_files(p, None)
    if cfg_path is not None:
        return {"checkpoint": ckpt, "config": cfg_path}
    if (folder / "variant.yml").is_file():  # the published Segmenter format's; its pickle stays unread here
        return None
    obj = read_checkpoint_cached(ckpt, trust)
    if config_text_from_meta(obj.get("meta") if isinstance(obj, Mapping) else None) is None:
        return None
    return {"checkpoint": ckpt, "config": None}


FORMAT = register_format(Format(
    name="mmsegmentation",
    describe="an mmsegmentation checkpoint (.pth holding state_dict) with its config .py (--config, beside it, or "
             "in the checkpoint's meta), or a folder holding both",
    find=find,
))
