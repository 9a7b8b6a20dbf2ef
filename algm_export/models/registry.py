"""The family registry: every command builds, loads and describes models through it.

A family (`families/<name>.py`) registers a `Family`: its built-in models and how to recognise
and load its checkpoint format. Nothing outside a family module branches on the family.

    resolve_model("builtin:vit_s16_512")                      # a built-in of any family
    resolve_model("run/checkpoint.pth")                       # Segmenter: variant.yml beside it
    resolve_model("setr.pth", config="setr_config.py")        # mmsegmentation: config + checkpoint
    resolve_model("folder/")                                  # a folder holding either
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from algm_export.core.errors import CheckpointError, ConfigError

# Family modules, imported on first use (each calls `register`).
FAMILY_MODULES = ("segmenter", "setr", "segvit", "eva02")
DEFAULT_MODEL = "builtin:vit_s16_512"


@dataclass(frozen=True)
class Family:
    """name: the manifest's `model.family`; formats: one line for error messages;
    builtins: name -> factory of a seeded-random model; detect(path, config, trust_checkpoint) -> bool:
    is this a checkpoint of ours; load(path, config, image_size, strict, trust_checkpoint) -> SegModel."""

    name: str
    formats: str
    builtins: Mapping[str, Callable[[], object]] = field(default_factory=dict)
    detect: Optional[Callable[[Path, Optional[Path], bool], bool]] = None
    load: Optional[Callable[..., object]] = None


_FAMILIES: dict[str, Family] = {}
_loaded = False


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in FAMILY_MODULES:
            importlib.import_module(f"algm_export.models.families.{name}")
    return dict(_FAMILIES)


def family(name: str) -> Family:
    fams = families()
    if name not in fams:
        raise ConfigError(f"unknown model family {name!r}; known: {sorted(fams)}")
    return fams[name]


def builtin_names() -> list[str]:
    return [f"builtin:{n}" for f in families().values() for n in f.builtins]


def builtin_model(name: str):
    """A built-in model (seeded random weights) of any family, by name (with or without `builtin:`)."""
    name = name[len("builtin:"):] if name.startswith("builtin:") else name
    for f in families().values():
        if name in f.builtins:
            model = f.builtins[name]()
            model.source = f"builtin:{name}"
            return model
    raise ConfigError(f"unknown built-in model {name!r}; choose one of {', '.join(builtin_names())}")


def resolve_model(spec=None, config=None, image_size=None, strict: bool = True, trust_checkpoint: bool = False):
    """A model from `builtin:NAME`, a checkpoint file or folder (with `config` for formats that
    keep the network description in a separate file), or a model (returned as is)."""
    from algm_export.models.base import SegModel

    if isinstance(spec, SegModel):
        model = spec
    else:
        s = str(spec if spec is not None else DEFAULT_MODEL)
        is_builtin = s.startswith("builtin:") or (
            not Path(s).exists() and any(s in f.builtins for f in families().values()))
        if is_builtin:
            if config is not None:
                raise ConfigError(f"--config {config} goes with a checkpoint file, not with the built-in {s}")
            model = builtin_model(s)
        else:
            model = load_checkpoint(s, config, image_size=image_size, strict=strict,
                                    trust_checkpoint=trust_checkpoint)
            return model
    if image_size is not None:
        model.set_image_size(image_size)
    return model


def load_checkpoint(path, config=None, image_size=None, strict: bool = True, trust_checkpoint: bool = False):
    p = Path(path).expanduser()
    c = Path(config).expanduser() if config is not None else None
    if c is not None and not c.is_file():
        raise CheckpointError(f"config file {c} does not exist; pass the model's config file (.py) with --config")
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {p} does not exist; pass a checkpoint file or its folder ({formats_line()}), "
            f"or a built-in model ({', '.join(builtin_names())})"
        )
    for f in families().values():
        if f.detect is not None and f.detect(p, c, trust_checkpoint):
            return f.load(p, c, image_size=image_size, strict=strict, trust_checkpoint=trust_checkpoint)
    raise CheckpointError(
        f"{p} is not a checkpoint format algm-export knows; expected {formats_line()}"
    )


def formats_line() -> str:
    return "; ".join(f"{f.name}: {f.formats}" for f in families().values())
