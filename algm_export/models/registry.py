"""The family registry: every command builds, loads and describes models through it.

A family (`families/<name>.py`) registers a `Family`: its built-in models, the checkpoint format it
reads (`models/formats/`: formats are recognised by content), which models of that format are its
own (`accepts`, for formats that several families share, such as mmsegmentation), and how to load
them. Nothing outside a family module branches on the family. A new family: its module under
`families/` and its name in `FAMILY_MODULES`.

    resolve_model("builtin:vit_s16_512")                      # a built-in of any family
    resolve_model("run/checkpoint.pth")                       # published Segmenter: variant.yml beside it
    resolve_model("setr.pth", config="setr_config.py")        # mmsegmentation: config + checkpoint
    resolve_model("folder/")                                  # a folder holding either
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.core.registry import LazyRegistry

# Family modules (imported on first use; each calls `register`) and how help texts name them.
FAMILY_MODULES = {
    "segmenter": "Segmenter (timm ViT; linear / mask-transformer decoder; published checkpoints)",
    "setr": "SETR naive / PUP / MLA (mmsegmentation)",
    "segvit": "SegViT ATM (mmsegmentation)",
    "eva02": "EVA-02 + UperNet (mmsegmentation)",
    "eomt": "EoMT (timm DINOv2 ViT with queries in its last blocks; published pytorch_model.bin / Lightning .ckpt + config.yaml)",
}


def families_line() -> str:
    """Every family, one line, for help texts (no family module is imported)."""
    return "; ".join(FAMILY_MODULES.values())
DEFAULT_MODEL = "builtin:vit_s16_512"


@dataclass(frozen=True)
class Family:
    """name: the manifest's `model.family`; format: the `models.formats` format it reads; describe:
    which models of that format it reads, one line for messages;
    builtins: name -> factory of a seeded-random model; accepts(files, trust_checkpoint) -> bool:
    whether the files of that format hold a model of this family (None: every model of the format);
    load(files, image_size=, strict=, trust_checkpoint=) -> SegModel, with `files` the format's
    {role: path} (roles "checkpoint", and "variant" / "config" where the format has them)."""

    name: str
    format: str
    describe: str = ""
    builtins: Mapping[str, Callable[[], object]] = field(default_factory=dict)
    accepts: Optional[Callable[[dict, bool], bool]] = None
    load: Optional[Callable[..., object]] = None


_REGISTRY: LazyRegistry[Family] = LazyRegistry("algm_export.models.families", FAMILY_MODULES)


def register(family: Family) -> Family:
    return _REGISTRY.register(family.name, family, depth=2)


def families() -> dict[str, Family]:
    """Every registered family, in `FAMILY_MODULES` order (the family modules are imported once)."""
    return _REGISTRY.entries()


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
    """The model in a checkpoint file or folder: its format by content (`formats.identify`), then the
    family of that format that accepts it. The model keeps the files it was read from
    (`model.source_files`, role -> Path), which the export folder records with their sha256."""
    from algm_export.models.formats import identify

    p = Path(path).expanduser()
    c = Path(config).expanduser() if config is not None else None
    if c is not None and not c.is_file():
        raise CheckpointError(f"config file {c} does not exist; pass the model's config file with --config")
    if not p.exists():
        raise CheckpointError(
            f"checkpoint {p} does not exist; pass a checkpoint file or its folder ({formats_line()}), "
            f"or a built-in model ({', '.join(builtin_names())})"
        )
    fmt, files = identify(p, c, trust_checkpoint)
    of_format = [f for f in families().values() if f.format == fmt.name]
    mine = [f for f in of_format if f.accepts is None or f.accepts(files, trust_checkpoint)]
    if not mine:
        raise CheckpointError(
            f"{p}: a {fmt.name} checkpoint that none of its families reads "
            f"({'; '.join(f'{f.name}: {f.describe}' for f in of_format) or 'none'})")
    if len(mine) > 1:
        raise CheckpointError(f"{p}: a {fmt.name} checkpoint that several families claim ({[f.name for f in mine]}); "
                              "report this as a bug")
    model = mine[0].load(files, image_size=image_size, strict=strict, trust_checkpoint=trust_checkpoint)
    model.source_files = {role: Path(v) for role, v in files.items() if v is not None}
    return model


def formats_line() -> str:
    from algm_export.models.formats import formats_line as line

    return line()
