"""mmsegmentation's checkpoint format, shared by every family trained with it (SETR, SegViT, EVA-02).

A model is a `.pth` holding `{"state_dict": ..., "meta": {...}}` plus its Python config: a file
named with `--config`, the one `.py` file beside the checkpoint (or in the folder passed), or the
config text stored in the checkpoint's `meta` (`cfg` in 1.x, `config` in 0.x). Configs are
parsed, never executed (`algm_export.models.mmseg_config`). Which family a checkpoint belongs to
is read from its config's `model` types (`model_types`), so every mmseg family's `detect` is one
line.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from algm_export.errors import CheckpointError, ConfigError
from algm_export.models.mmseg_config import config_text_from_meta, parse_config

_CACHE: dict = {}


def read_checkpoint(path) -> Any:
    """The one place an mmseg checkpoint file is read (weights only: tensors and plain data)."""
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


def read_model(p: Path, config: Optional[Path]) -> tuple[dict, Optional[Path], Path, Any]:
    """(parsed config, config file or None, checkpoint file, checkpoint object), cached per file state."""
    cfg_path, ckpt = find_files(p, config)

    def stamp(q):
        st = q.stat()
        return (str(q.resolve()), st.st_mtime_ns, st.st_size)

    key = (stamp(ckpt), cfg_path and stamp(cfg_path))
    if key not in _CACHE:
        obj = read_checkpoint(ckpt)
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


def _type(d) -> str:
    return str((d or {}).get("type", "")).split(".")[-1] if isinstance(d, Mapping) else ""


def model_types(cfg: Mapping) -> dict:
    """{"backbone", "neck", "decode_head"} type names of a parsed config's `model`."""
    m = cfg.get("model") or {}
    return {"backbone": _type(m.get("backbone")), "neck": _type(m.get("neck")), "decode_head": _type(m.get("decode_head"))}


def looks_like_mmseg(p: Path, config: Optional[Path]) -> bool:
    """A config named, a config file beside, or a `.pth` that is not a Segmenter `checkpoint.pth`."""
    if config is not None:
        return True
    folder = p if p.is_dir() else p.parent
    return any(folder.glob("*.py")) or (p.is_file() and p.suffix == ".pth" and not (folder / "variant.yml").exists())


def detect_types(p: Path, config: Optional[Path], **want) -> bool:
    """Is this an mmseg checkpoint whose model types match `want` (e.g. decode_head={"ATMHead"})?"""
    if not looks_like_mmseg(p, config):
        return False
    cfg = read_model(p, config)[0]
    types = model_types(cfg)
    return all(types[k] in v for k, v in want.items())


def unknown_mmseg_error(p: Path, config: Optional[Path], known: str) -> CheckpointError:
    cfg = read_model(p, config)[0]
    return CheckpointError(f"{p}: an mmsegmentation model of types {model_types(cfg)}, which algm-export does "
                           f"not support; supported: {known}")
