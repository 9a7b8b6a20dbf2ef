"""The Segmenter family: timm ViT + linear / mask-transformer decoder, published checkpoint format.

Model: `models/segmenter.py`; backbone `backbones/timm_vit.py`; decoders `decoders/segmenter.py`;
checkpoint format (`checkpoint.pth` + `variant.yml`, spec 1.4) and built-ins: `models/checkpoint.py`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

from algm_export.models import checkpoint as ck
from algm_export.models.registry import Family, register


def detect(p: Path, config: Optional[Path], trust_checkpoint: bool = False) -> bool:
    """checkpoint.pth / variant.yml (or their folder); a named Python config is mmsegmentation's format."""
    if config is not None:
        return False
    if p.is_dir():
        return (p / ck.CHECKPOINT).exists() or (p / ck.VARIANT).exists()
    return p.name == ck.CHECKPOINT or (p.parent / ck.VARIANT).exists()


def load(p: Path, config: Optional[Path], image_size=None, strict: bool = True, trust_checkpoint: bool = False):
    return ck.load_segmenter(p, image_size=image_size, strict=strict, trust_checkpoint=trust_checkpoint)


FAMILY = register(Family(
    name="segmenter",
    formats="checkpoint.pth with variant.yml beside it (the published Segmenter / ALGM format), or its folder",
    builtins={name: partial(ck.builtin_model, name) for name in ck.BUILTIN_MODELS},
    detect=detect,
    load=load,
))
