"""timm's DINOv2 ViTs (`vit_*_patch14[_reg4]_dinov2`) as a `Backbone`: class token + register tokens.

`DinoV2ViT` *is* a timm `VisionTransformer` built with the arguments timm registers for the
DINOv2 models (`DINOV2_MODELS`, checked against timm's registry by the tests), so the state-dict
keys stay timm's (`cls_token`, `reg_token`, `pos_embed`, `blocks.{i}.ls1.gamma`, ...). The
register variants keep the position embedding for the patches only (`no_embed_class`): the
tokens are `[cls, reg_1..reg_4, patches]`, P = 5 prefix tokens that ALGM never merges.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import SwiGLUPacked

from algm_export.core.errors import ConfigError
from algm_export.models.backbones.timm_vit import TimmViT
from algm_export.models.layers import resize_pos_embed

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


class DinoV2ViT(TimmViT):
    """timm `VisionTransformer` with register tokens and a patch-only position embedding, as a Backbone."""

    def __init__(self, name: str, img_size, patch_size: int):
        super().__init__(**dinov2_kwargs(name, img_size, patch_size))
        self.timm_name = name
        arch = DINOV2_MODELS[name]
        self.mlp_ratio = float(arch.get("mlp_ratio", 4.0)) if "mlp_layer" not in arch else 4.0   # SwiGLU: 3*H = 4*D MACs

    @property
    def _pos_prefix(self) -> int:
        """Prefix tokens that carry a position embedding (none with `no_embed_class`)."""
        return 0 if self.no_embed_class else self.num_prefix

    def embed(self, im: torch.Tensor):
        """timm's `patch_embed` + `_pos_embed`: patches (+ position), then `[cls, registers, patches]`."""
        x = self.patch_embed.proj(im)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        B = x.shape[0]
        pos = resize_pos_embed(self.pos_embed, self._pos_prefix, self.built_grid, grid)
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:
            x = torch.cat(prefix + [x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + pos
        return self.pos_drop(x), grid

    def set_image_size(self, image_size) -> None:
        p = self.patch_size
        new_grid = (image_size[0] // p, image_size[1] // p)
        if new_grid == self.built_grid:
            return
        with torch.no_grad():
            pe = resize_pos_embed(self.pos_embed.data, self._pos_prefix, self.built_grid, new_grid)
        self.pos_embed = nn.Parameter(pe, requires_grad=self.pos_embed.requires_grad)
        pm = self.patch_embed
        for attr, val in (("img_size", tuple(image_size)), ("grid_size", new_grid),
                          ("num_patches", new_grid[0] * new_grid[1])):
            if hasattr(pm, attr):
                setattr(pm, attr, val)


__all__ = ["DINOV2_MODELS", "DinoV2ViT", "dinov2_kwargs"]
