"""Checkpoint formats, recognised by what a path holds, never by the name a family expects.

A format (`register_format`) says which files at a path are its own (`find`): the published
Segmenter format owns a checkpoint with `variant.yml` beside it; mmsegmentation owns a `.pth` with a
config `.py` beside it, named by `--config`, or stored in the checkpoint's `meta`. `identify` asks
every format; a path that no format claims, or that two claim, is refused with what was found and
the formats that exist. A family (`models/registry.py`) names the format it reads, and the files a
format found (role -> path: "checkpoint", "variant", "config") travel with the model as
`model.source_files`, so that the export folder records and checks them without knowing the family.

    fmt, files = identify(Path("run/"), config=None)     # -> published-segmenter, {"checkpoint":..., "variant":...}

A new format: a module here that calls `register_format`, and its name in `FORMAT_MODULES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from algm_export.core.errors import CheckpointError
from algm_export.core.registry import LazyRegistry

FORMAT_MODULES = ("published_segmenter", "mmseg", "eomt")


@dataclass(frozen=True)
class Format:
    """name: what families name in `Family.format`; describe: one line for messages;
    find(path, config, trust_checkpoint) -> {role: Path or None} when the path holds this format
    (roles: "checkpoint" always; "variant", "config" when the format has them), else None."""

    name: str
    describe: str
    find: Callable[[Path, Optional[Path], bool], Optional[dict]]


_REGISTRY: "LazyRegistry[Format]" = LazyRegistry("algm_export.models.formats", FORMAT_MODULES)


def register_format(fmt: Format) -> Format:
    return _REGISTRY.register(fmt.name, fmt, depth=2)


def formats() -> dict[str, Format]:
    """Every registered format, in `FORMAT_MODULES` order (the format modules are imported once)."""
    return _REGISTRY.entries()


def formats_line() -> str:
    return "; ".join(f"{f.name}: {f.describe}" for f in formats().values())


def _listing(p: Path, config: Optional[Path]) -> str:
    folder = p if p.is_dir() else p.parent
    try:
        names = sorted(q.name + ("/" if q.is_dir() else "") for q in folder.iterdir())
    except OSError:
        names = []
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    where = f"{folder} holds {shown or 'nothing'}"
    return where + (f"; --config {config}" if config is not None else "")


def identify(p: Path, config: Optional[Path] = None, trust_checkpoint: bool = False) -> tuple[Format, dict]:
    """(the format of `p`, its files {role: Path or None}); CheckpointError when no format or
    several claim the path."""
    found = []
    for fmt in formats().values():
        files = fmt.find(p, config, trust_checkpoint)
        if files:
            found.append((fmt, files))
    if not found:
        raise CheckpointError(f"{p} is in no checkpoint format algm-export knows ({_listing(p, config)}); "
                              f"the formats: {formats_line()}")
    if len(found) > 1:
        claims = "; ".join(f"{f.name} ({', '.join(str(v) for v in files.values() if v is not None)})"
                           for f, files in found)
        raise CheckpointError(f"{p} matches several checkpoint formats: {claims}; pass the checkpoint file itself "
                              "with --config CONFIG.py for a model whose config is a separate file, or move the other format's files away")
    return found[0]


__all__ = ["FORMAT_MODULES", "Format", "formats", "formats_line", "identify", "register_format"]
