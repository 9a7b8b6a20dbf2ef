"""timm's DINOv2 ViTs (`vit_*_patch14[_reg4]_dinov2`) as a `Backbone`: class token + register tokens.

`dinov2_backbone` builds timm's own model (`timm_backbone`, a `TimmViT`), so the state-dict keys
stay timm's (`cls_token`, `reg_token`, `pos_embed`, `blocks.{i}.ls1.gamma`, ...). The register
variants keep the position embedding for the patches only (`no_embed_class`): the tokens are
`[cls, reg_1..reg_4, patches]`, P = 5 prefix tokens that ALGM never merges. `DINOV2_MODELS`
holds the arguments timm registers for each name (checked against timm's registry by the
tests), so a checkpoint's sizes can be checked without building a model.
"""

from __future__ import annotations

import torch.nn as nn
from timm.layers import SwiGLUPacked

from algm_export.core.errors import ConfigError
from algm_export.models.backbones.timm_vit import TimmViT, timm_backbone

_BASE = dict(patch_size=14, init_values=1e-5)
_REG = dict(reg_tokens=4, no_embed_class=True)
_GIANT = dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked,
              act_layer=nn.SiLU)

# timm's registered arguments (timm/models/vision_transformer.py), model name -> VisionTransformer kwargs
DINOV2_MODELS: dict[str, dict] = {
    "vit_small_patch14_dinov2": dict(_BASE, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch14_dinov2": dict(_BASE, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch14_dinov2": dict(_BASE, embed_dim=1024, depth=24, num_heads=16),
    "vit_giant_patch14_dinov2": dict(_BASE, **_GIANT),
    "vit_small_patch14_reg4_dinov2": dict(_BASE, embed_dim=384, depth=12, num_heads=6, **_REG),
    "vit_base_patch14_reg4_dinov2": dict(_BASE, embed_dim=768, depth=12, num_heads=12, **_REG),
    "vit_large_patch14_reg4_dinov2": dict(_BASE, embed_dim=1024, depth=24, num_heads=16, **_REG),
    "vit_giant_patch14_reg4_dinov2": dict(_BASE, **_GIANT, **_REG),
}


def dinov2_kwargs(name: str, img_size, patch_size: int) -> dict:
    """VisionTransformer kwargs of timm's `name` at `img_size` / `patch_size`, no classifier (num_classes=0),
    as `timm.create_model(name, img_size=..., patch_size=..., num_classes=0)` builds it."""
    if name not in DINOV2_MODELS:
        raise ConfigError(f"unknown DINOv2 model {name!r}; choose one of {sorted(DINOV2_MODELS)}")
    kw = dict(DINOV2_MODELS[name])
    img = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
    kw.update(img_size=img, patch_size=int(patch_size), num_classes=0)
    return kw


def dinov2_backbone(name: str, img_size, patch_size: int) -> TimmViT:
    """timm's `name` at `img_size` / `patch_size` without a classifier, random weights (timm's init),
    as the Backbone (`timm_backbone`: the same module and state-dict keys)."""
    if name not in DINOV2_MODELS:
        raise ConfigError(f"unknown DINOv2 model {name!r}; choose one of {sorted(DINOV2_MODELS)}")
    img = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
    return timm_backbone(name, img_size=img, patch_size=int(patch_size), num_classes=0)


__all__ = ["DINOV2_MODELS", "dinov2_backbone", "dinov2_kwargs"]
