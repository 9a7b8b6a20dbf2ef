"""timm's EVA-02 (`timm.models.eva.Eva`) as a `Backbone`, with rotary positions for merged tokens.

`Eva02Backbone` *is* a timm `Eva` (subclass + the Backbone mixin), so its state-dict keys are
timm's (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.{i}.attn.{qkv | q_proj, k_proj,
v_proj}`, `attn.q_bias`/`v_bias`, `blocks.{i}.mlp.{fc1 | fc1_g, fc1_x}`, `mlp.norm`, `mlp.fc2`, ...).
It is built the way timm's `features_only=True` wrapper prunes it (what mmsegmentation's
`TIMMBackbone` holds): blocks after the last requested one, the final norm and the classifier
head removed; the features are the raw block outputs (`forward_intermediates(norm=False)`).

What timm does and this module reproduces (timm `Eva._pos_embed`, `EvaAttention.forward`,
`RotaryEmbeddingCat`, `apply_rot_embed_cat`):

* absolute position embedding over class token + patches, resampled by timm's
  `resample_abs_pos_embed` (bicubic, antialiased) when the grid differs from the built one;
* 2-D rotary embedding applied to q and k of the patch tokens (never the class token) in every
  block: per axis, positions `t / grid * ref_feat_shape` (EVA's rescaling to the pre-training
  grid), angles `t * bands` with `bands = temperature ** -(k / (head_dim / 4))`, sin and cos in
  the interleaved layout `[a0, a0, a1, a1, ...]` over `[row bands..., column bands...]`;
* attention written out with an optional additive padding bias (`KeyMask`, one extra channel),
  SwiGLU / packed-GLU MLP with optional sub-LN, optional layer scale.

Rotary positions after merging (docs/algorithm.md: other families): a merged token takes the rotary embedding evaluated at
the centroid of the grid positions of the patches it holds (`rotary_positions`): with the one-hot
assignment matrix `A[b, t, n] = (assign[b, n] == t)`, `centroid = (A @ pos) / size`, a matmul
over integer positions (exact in any summation order) and one division. It is recomputed once
per merge step (cached in `TokenState.cache`, shared by the blocks of that state). Before any
merge the blocks use timm's own table, bit for bit. Padding slots (static mode, size 0) get
position (0, 0): finite, and masked as keys.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat, build_rotary_pos_embed, resample_abs_pos_embed
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat
from timm.models.eva import Eva, EvaAttention, EvaBlock

from algm_export.core.errors import ConfigError
from algm_export.models.base import Backbone, TokenState
from algm_export.models.backbones.timm_vit import TimmShape
from algm_export.models.layers import KeyMask, attend, split_heads

# timm's EVA-02 ImageNet models (the configurations `eva02_*` registers), as Eva kwargs.
_GLU = 4 * 2 / 3
EVA02_MODELS: dict[str, dict] = {
    "eva02_tiny_patch14_224": dict(img_size=224, patch_size=14, embed_dim=192, depth=12, num_heads=3,
                                   mlp_ratio=_GLU, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
    "eva02_small_patch14_224": dict(img_size=224, patch_size=14, embed_dim=384, depth=12, num_heads=6,
                                    mlp_ratio=_GLU, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
    "eva02_base_patch14_224": dict(img_size=224, patch_size=14, embed_dim=768, depth=12, num_heads=12,
                                   qkv_fused=False, mlp_ratio=_GLU, swiglu_mlp=True, scale_mlp=True,
                                   use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
    "eva02_large_patch14_224": dict(img_size=224, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                                    mlp_ratio=_GLU, qkv_fused=False, swiglu_mlp=True, scale_mlp=True,
                                    use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
    "eva02_tiny_patch14_336": dict(img_size=336, patch_size=14, embed_dim=192, depth=12, num_heads=3,
                                   mlp_ratio=_GLU, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
    "eva02_small_patch14_336": dict(img_size=336, patch_size=14, embed_dim=384, depth=12, num_heads=6,
                                    mlp_ratio=_GLU, swiglu_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
    "eva02_base_patch14_448": dict(img_size=448, patch_size=14, embed_dim=768, depth=12, num_heads=12,
                                   qkv_fused=False, mlp_ratio=_GLU, swiglu_mlp=True, scale_mlp=True,
                                   use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
    "eva02_large_patch14_448": dict(img_size=448, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                                    mlp_ratio=_GLU, qkv_fused=False, swiglu_mlp=True, scale_mlp=True,
                                    use_rot_pos_emb=True, ref_feat_shape=(16, 16)),
}
# Eva arguments that the backbone accepts on top of a model's defaults (mmseg passes them through).
EVA_KWARGS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "qkv_bias", "qkv_fused",
              "mlp_ratio", "swiglu_mlp", "scale_mlp", "scale_attn_inner", "drop_rate", "pos_drop_rate",
              "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "init_values", "class_token",
              "use_abs_pos_emb", "use_rot_pos_emb", "rope_grid_offset", "rope_grid_indexing",
              "rope_temperature", "ref_feat_shape", "num_classes", "global_pool", "dynamic_img_size",
              "patch_drop_rate", "attn_type", "rope_type", "use_post_norm", "num_reg_tokens", "no_embed_class",
              "qk_norm", "swiglu_align_to", "norm_layer", "rope_rotate_half", "attn_only_layer_scale",
              "use_pre_transformer_norm", "use_post_transformer_norm", "use_fc_norm")


def eva02_kwargs(model_name: str, **overrides) -> dict:
    """Eva kwargs of timm's `model_name` with `overrides` (e.g. `img_size`, `patch_size`)."""
    if model_name not in EVA02_MODELS:
        raise ConfigError(f"unknown EVA-02 model {model_name!r}; choose one of {sorted(EVA02_MODELS)}")
    bad = sorted(set(overrides) - set(EVA_KWARGS))
    if bad:
        raise ConfigError(f"EVA-02 {model_name}: unsupported timm arguments {bad}")
    kw = dict(EVA02_MODELS[model_name])
    kw.update(overrides)
    return kw


# ----------------------------------------------------------------------------- rotary positions

def grid_positions(grid: Sequence[int], device=None) -> torch.Tensor:
    """[N, 2] float32 (row, column) of every patch in raster order."""
    gh, gw = int(grid[0]), int(grid[1])
    rows = torch.arange(gh, device=device, dtype=torch.int64).to(torch.float32)
    cols = torch.arange(gw, device=device, dtype=torch.int64).to(torch.float32)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(gh * gw, 2)


ROPE_POSITIONS = ("centroid", "nearest", "first")


def token_positions(assign: torch.Tensor, size: torch.Tensor, grid: Sequence[int], num_prefix: int,
                    rule: str = "centroid") -> torch.Tensor:
    """[B, T, 2] the grid position a merged token's rotary embedding is evaluated at.

    `centroid` (the default, docs/algorithm.md: other families): the size-weighted centroid of the held patches;
    `nearest`: that centroid rounded to the nearest grid position; `first`: the position of the
    first (lowest raster index) patch held. The last two exist to measure the choice
    (docs/decisions.md); all three are the patch's own position for an unmerged token.
    """
    if rule == "centroid":
        return token_centroids(assign, size, grid, num_prefix)
    if rule == "nearest":
        return torch.round(token_centroids(assign, size, grid, num_prefix))
    if rule == "first":
        T = size.shape[1] - num_prefix
        pos = grid_positions(grid, assign.device)
        slots = torch.arange(T, device=assign.device, dtype=assign.dtype)
        onehot = (assign.unsqueeze(1) == slots.view(1, T, 1)).to(torch.float32)     # [B, T, N]
        first = onehot.argmax(dim=-1)                                                # lowest held index (0 if none)
        return pos[first]
    raise ConfigError(f"unknown rotary position rule {rule!r}; use one of {ROPE_POSITIONS}")


def token_centroids(assign: torch.Tensor, size: torch.Tensor, grid: Sequence[int], num_prefix: int) -> torch.Tensor:
    """[B, T, 2] size-weighted centroid (row, column) of the patches every patch token holds.

    `assign` [B, N] (token index of every patch), `size` [B, P+T] (patches per token; 0 for
    padding). Standard ops only: a one-hot comparison, one matmul, one division. Every patch has
    weight 1 (its size before any merge), so the sum over held patches is a sum of integers,
    exact in float32 whatever the summation order; a token holding one patch gets its position
    exactly. Padding slots hold nothing and get (0, 0).
    """
    sz = size[:, num_prefix:].to(torch.float32)                                   # [B, T]
    T = sz.shape[1]
    pos = grid_positions(grid, assign.device)                                     # [N, 2]
    slots = torch.arange(T, device=assign.device, dtype=assign.dtype)
    onehot = (assign.unsqueeze(1) == slots.view(1, T, 1)).to(torch.float32)       # [B, T, N]
    sums = onehot @ pos                                                            # [B, T, 2]
    return sums / torch.clamp(sz, min=1.0).unsqueeze(-1)


class RotaryAt:
    """timm's `RotaryEmbeddingCat` ('cat' type, index grid) evaluated at arbitrary grid positions.

    `__call__(pos, grid)`: pos [..., 2] (row, column) in patch units of a `grid` -> [..., 2 * head_dim]
    `[sin, cos]`, the same elementwise arithmetic as timm's table (`t + offset`, `t / grid * ref`,
    `t * bands`, sin / cos, interleaved layout), so integer positions give timm's values.
    """

    def __init__(self, rope: RotaryEmbeddingCat):
        if not isinstance(rope, RotaryEmbeddingCat):
            raise ConfigError(f"EVA-02 rotary embedding {type(rope).__name__} is not supported (only timm's "
                              "RotaryEmbeddingCat, rope_type='cat')")
        if rope.in_pixels or getattr(rope, "grid_type", "index") != "index":
            raise ConfigError("EVA-02 rotary embedding with pixel coordinates is not supported (EVA-02 uses index grids)")
        self.rope = rope

    def __call__(self, pos: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        r = self.rope
        feat = [int(grid[0]), int(grid[1])]
        ref = list(r.ref_feat_shape) if r.ref_feat_shape is not None else None
        t = [pos[..., 0] + r.grid_offset, pos[..., 1] + r.grid_offset]
        if ref is not None:
            t = [x / f * rf for x, f, rf in zip(t, feat, ref)]
        if r.grid_indexing == "xy":          # timm's 'xy' grid lists the column coordinate first
            t = t[::-1]
        coords = torch.stack(t, dim=-1).unsqueeze(-1)                   # [..., 2, 1]
        ang = coords * r.bands.to(torch.float32)                        # [..., 2, nb]
        s, c = ang.sin().flatten(-2), ang.cos().flatten(-2)             # [..., 2 * nb]
        if r.rotate_half:
            s, c = torch.cat([s, s], dim=-1), torch.cat([c, c], dim=-1)
        else:                                                           # [a0, a0, a1, a1, ...]
            s = torch.stack([s, s], dim=-1).flatten(-2)
            c = torch.stack([c, c], dim=-1).flatten(-2)
        return torch.cat([s, c], dim=-1)

    def table(self, grid: Sequence[int]) -> torch.Tensor:
        """timm's own [N, 2 * head_dim] table for `grid` (its cache when the grid is the built one)."""
        r = self.rope
        g = [int(grid[0]), int(grid[1])]
        if r.feat_shape is not None and list(r.feat_shape) == g and r.pos_embed is not None:
            return r.get_embed()
        sin, cos = build_rotary_pos_embed(
            g, bands=r.bands, in_pixels=False, ref_feat_shape=r.ref_feat_shape, grid_offset=r.grid_offset,
            grid_indexing=r.grid_indexing, rotate_half=r.rotate_half, dtype=torch.float32,
        )
        return torch.cat([sin, cos], -1)


# ----------------------------------------------------------------------------- attention and blocks

def eva_attention_forward(attn: EvaAttention, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                          key_mask: Optional[KeyMask] = None) -> torch.Tensor:
    """timm `EvaAttention`, with an additive padding bias on the keys.

    Without padding it calls `scaled_dot_product_attention` exactly as timm does (its fused path);
    with padding (or float16) the attention is written out with the `KeyMask` channel.

    x [B, T, C]; rope [N, 2*hd] (one table) or [B, 1, T-P, 2*hd] (per image), applied to the
    tokens after the `num_prefix_tokens` class tokens.
    """
    B, T, C = x.shape
    H = attn.num_heads
    if key_mask is not None:
        x = key_mask.hide(x)
    gate = attn.gate(x).sigmoid() if attn.gate is not None else None
    if attn.qkv is not None:
        if attn.q_bias is None:
            qkv = attn.qkv(x)
        else:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            if attn.qkv_bias_separate:
                qkv = attn.qkv(x) + bias
            else:
                qkv = F.linear(x, weight=attn.qkv.weight, bias=bias)
        q, k, v = split_heads(qkv, H)
    else:
        q = attn.q_proj(x).reshape(B, T, H, -1).transpose(1, 2)
        k = attn.k_proj(x).reshape(B, T, H, -1).transpose(1, 2)
        v = attn.v_proj(x).reshape(B, T, H, -1).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        npt = attn.num_prefix_tokens
        half = bool(getattr(attn, "rotate_half", False))
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
    if key_mask is None and attn.fused_attn and x.dtype != torch.float16:
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, -1)  # timm's own path
    else:
        out = attend(q, k, v, attn.scale, key_mask)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj(out)


def eva_block_attn(blk: EvaBlock, x: torch.Tensor, rope=None, key_mask=None) -> torch.Tensor:
    """`x + gamma_1 * attn(norm1(x))` of a timm `EvaBlock`."""
    y = eva_attention_forward(blk.attn, blk.norm1(x), rope, key_mask)
    if blk.gamma_1 is not None:
        y = blk.gamma_1 * y
    return x + blk.drop_path1(y)


def eva_block_mlp(blk: EvaBlock, x: torch.Tensor) -> torch.Tensor:
    """`x + gamma_2 * mlp(norm2(x))` of a timm `EvaBlock` (SwiGLU, sub-LN inside `mlp`)."""
    y = blk.mlp(blk.norm2(x))
    if blk.gamma_2 is not None:
        y = blk.gamma_2 * y
    return x + blk.drop_path2(y)


def _mlp_hidden(mlp: nn.Module) -> tuple[int, int]:
    """(hidden width, input projections) of an MLP: SwiGLU 2, packed GLU 2 (fc1 is 2x wide), plain 1."""
    if hasattr(mlp, "fc1_g"):
        return mlp.fc1_g.out_features, 2
    if type(mlp).__name__ == "GluMlp":
        return mlp.fc1.out_features // 2, 2
    return mlp.fc1.out_features, 1


# ----------------------------------------------------------------------------- the backbone

class Eva02Backbone(Eva, TimmShape, Backbone):
    """timm `Eva` (EVA-02 configurations) with the Backbone interface (`num_prefix`, `depth`,
    `patch_size`, `built_grid` as for timm's ViT: `TimmShape`).

    `out_indices` (0-based blocks whose raw outputs a decoder reads) prunes the model as timm's
    `features_only` wrapper does: blocks after the last index, the final norm and the head go.
    """

    def __init__(self, out_indices: Optional[Sequence[int]] = None, **kwargs):
        for k, want in (("attn_type", "eva"), ("rope_type", "cat"), ("use_post_norm", False),
                        ("num_reg_tokens", 0), ("no_embed_class", False), ("class_token", True)):
            if k in kwargs and kwargs[k] != want:
                raise ConfigError(f"EVA-02 backbone: {k}={kwargs[k]!r} is not supported (EVA-02 uses {want!r})")
        kwargs.setdefault("num_classes", 0)
        super().__init__(**kwargs)
        depth = len(self.blocks)
        idx = list(range(depth)) if out_indices is None else [int(i) for i in out_indices]
        if not idx or any(i < -depth or i >= depth for i in idx):
            raise ConfigError(f"EVA-02 backbone: out_indices {list(idx)} outside the {depth} blocks")
        self.out_indices = tuple(i % depth for i in idx)
        self.prune_intermediate_layers(list(self.out_indices), prune_norm=True, prune_head=True)
        self.rope_at = RotaryAt(self.rope) if self.rope is not None else None
        self.rope_position = "centroid"     # where a merged token's rotary embedding is evaluated (ROPE_POSITIONS)
        self.eva_kwargs = dict(kwargs)

    # -- forward pieces
    def embed(self, im: torch.Tensor):
        """Patch embedding, class token, absolute positions (timm's resampling off the built grid)."""
        pe = self.patch_embed
        x = pe.proj(im)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = pe.norm(x.flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if grid != self.built_grid:
                pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(self.built_grid),
                                             num_prefix_tokens=self.num_prefix)
            x = x + pos
        x = self.pos_drop(x)
        return self.norm_pre(x), grid

    def rotary(self, state: TokenState) -> Optional[torch.Tensor]:
        """The rotary embedding of the patch tokens of `state` (cached per state).

        No merge yet: timm's table [N, 2*hd] for the grid. After a merge: [B, 1, T, 2*hd] at the
        centroids of the held patches.
        """
        if self.rope_at is None:
            return None
        if "rope" not in state.cache:
            if not state.merged:
                emb = self.rope_at.table(state.grid).to(self.cls_token.device)
            else:
                pos = token_positions(state.assign, state.size, state.grid, state.num_prefix, self.rope_position)
                emb = self.rope_at(pos, state.grid).unsqueeze(1)
            state.cache["rope"] = emb
        return state.cache["rope"]

    def block_attn(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        return eva_block_attn(self.blocks[i], x, self.rotary(state), state.key_mask(x.dtype))

    def block_mlp(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        return eva_block_mlp(self.blocks[i], x)

    def layer_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return x  # the raw block output (timm features_only: forward_intermediates(norm=False))

    def set_image_size(self, image_size) -> None:
        """timm's `set_input_size`: absolute positions resampled, rotary table rebuilt."""
        new = (int(image_size[0]), int(image_size[1]))
        if tuple(self.patch_embed.img_size) != new:
            self.set_input_size(img_size=new)

    # -- FLOP counting
    def block_macs(self, t_attn: int, t_mlp: int) -> int:
        d = self.embed_dim
        attn = 3 * t_attn * d * d + 2 * t_attn * t_attn * d + t_attn * d * d
        hidden, n_in = _mlp_hidden(self.blocks[0].mlp)
        return int(attn + (n_in + 1) * t_mlp * d * hidden)

    def forward_features_list(self, im: torch.Tensor) -> list[torch.Tensor]:
        """timm's path: `forward_intermediates` at `out_indices`, raw NCHW maps (for checks)."""
        return self.forward_intermediates(im, indices=list(self.out_indices), norm=False, output_fmt="NCHW",
                                          intermediates_only=True)
