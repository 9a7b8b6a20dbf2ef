"""The seam every model family plugs into: a backbone, a decoder, and the token state between them.

A segmentation model here is `SegModel(backbone, decoder)`. The backbone turns a normalised
image into tokens and runs its blocks in two halves (attention residual, MLP residual) so that
ALGM can merge between them (docs/algorithm.md: the published method: `x = x + attn(norm1(x))`; merge; `x = x + mlp(norm2(x))`).
The decoder reads the outputs of some blocks (`in_layers`, 0-based) as `Level`s:

* token decoders (Segmenter linear / mask transformer, SegViT's ATM) run on `level.patches`
  (merged tokens, padding hidden by `level.key_bias`) and unmerge only their per-token outputs
  with `level.unmerge`;
* feature-map decoders (SETR naive / PUP / MLA, UperNet) read `level.as_map()`, the full
  `[B, D, Gh, Gw]` map unmerged with the assignment map valid at that layer.

`SegModel.forward_tokens(im, hook)` is the one loop over the blocks (a family that adds tokens
inside the encoder, EoMT's queries, does it in `SegModel.enter_block`); the ALGM driver
(`algm_export.merging.driver`) passes a `hook` that merges after the attention residual of
its layers, the baseline passes none. With no merge every `Level.unmerge` is the identity.

Shapes: tokens `x [B, P+T, D]` (P prefix tokens first), `size [B, P+T]` float32 (0 for
padding slots), `assign [B, N]` int64 (for every patch, the index inside the patch part of
the token holding it), `grid = (Gh, Gw)`, `N = Gh*Gw`.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, Sequence

import torch
import torch.nn as nn

from algm_export.models.layers import KeyMask, key_bias_from_size


class TokenState:
    """The merge state of a token sequence: sizes, the assignment map, and derived per-state data.

    `cache` holds what every block of one state shares (the padding `KeyMask`, rotary tables):
    it is dropped whenever the state changes (`replace`).
    """

    def __init__(self, size: torch.Tensor, assign: torch.Tensor, grid: tuple[int, int], num_prefix: int,
                 padded: bool = False, merged: bool = False):
        self.size = size
        self.assign = assign
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_prefix = int(num_prefix)
        self.padded = padded    # may hold padding slots (static mode): attention must mask them
        self.merged = merged    # some merge step ran: unmerging is not the identity
        self.cache: dict = {}

    @classmethod
    def initial(cls, x: torch.Tensor, grid, num_prefix: int) -> "TokenState":
        B, T = x.shape[:2]
        N = grid[0] * grid[1]
        size = torch.ones(B, T, dtype=torch.float32, device=x.device)
        assign = torch.arange(N, device=x.device).expand(B, -1)
        return cls(size, assign, grid, num_prefix)

    def replace(self, size: torch.Tensor, assign: torch.Tensor, padded: bool) -> "TokenState":
        return TokenState(size, assign, self.grid, self.num_prefix, self.padded or padded, True)

    def with_prefix(self, n: int) -> "TokenState":
        """The state after `n` real tokens were put in front of the sequence (they join the prefix)."""
        B = self.size.shape[0]
        size = torch.cat([torch.ones(B, int(n), dtype=self.size.dtype, device=self.size.device), self.size], dim=1)
        return TokenState(size, self.assign, self.grid, self.num_prefix + int(n), self.padded, self.merged)

    def key_mask(self, dtype: torch.dtype) -> Optional[KeyMask]:
        """The padding mask over all tokens (prefix included), or None when nothing is padded."""
        if not self.padded:
            return None
        key = ("key_mask", dtype)
        if key not in self.cache:
            self.cache[key] = KeyMask(self.size > 0)
        return self.cache[key]

    def patch_key_bias(self, dtype: torch.dtype) -> Optional[torch.Tensor]:
        """[B, 1, 1, T] additive bias over the patch part only (for token decoders), or None."""
        if not self.padded:
            return None
        return key_bias_from_size(self.size[:, self.num_prefix:], dtype)


def unmerge_rows(x: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Row `assign[b, n]` of image b for every patch n: [B, T, C], [B, N] -> [B, N, C].

    A row gather over the flattened batch (an ONNX `Gather`), the same values as
    `torch.gather(x, 1, assign[..., None].expand(-1, -1, C))` without an index per channel.
    """
    B, T, C = x.shape
    flat = assign.long() + torch.arange(B, device=x.device).unsqueeze(1) * T
    return x.reshape(B * T, C)[flat.reshape(-1)].reshape(B, assign.shape[1], C)


class Level:
    """The output of one encoder block as a decoder sees it (docs/algorithm.md: other families)."""

    def __init__(self, index: int, tokens: torch.Tensor, state: TokenState):
        self.index = index          # 0-based block index
        self.tokens = tokens        # [B, P+T, D], after the backbone's output norm
        self.state = state

    @property
    def grid(self) -> tuple[int, int]:
        return self.state.grid

    @property
    def prefix(self) -> torch.Tensor:
        return self.tokens[:, : self.state.num_prefix]

    @property
    def patches(self) -> torch.Tensor:
        """[B, T, D] merged patch tokens (padding slots last, hidden by `key_bias`)."""
        return self.tokens[:, self.state.num_prefix:]

    def key_bias(self, dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
        return self.state.patch_key_bias(dtype or self.tokens.dtype)

    def unmerge(self, t: torch.Tensor) -> torch.Tensor:
        """Per-token rows [B, T, C] -> per-patch rows [B, N, C] (identity before any merge)."""
        if not self.state.merged:
            return t
        return unmerge_rows(t, self.state.assign)

    def as_map(self) -> torch.Tensor:
        """[B, D, Gh, Gw] feature map of the patches (unmerged)."""
        return rows_to_map(self.unmerge(self.patches), self.grid)


def rows_to_map(rows: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """[B, N, C] per-patch rows in raster order -> [B, C, Gh, Gw]."""
    B, N, C = rows.shape
    return rows.transpose(1, 2).reshape(B, C, int(grid[0]), int(grid[1]))


class Backbone(nn.Module):
    """A plain ViT as ALGM drives it. Subclasses set `num_prefix`, `depth`, `embed_dim`,
    `patch_size` and `built_grid`, and implement the methods below."""

    num_prefix: int
    depth: int
    embed_dim: int
    patch_size: int
    built_grid: tuple[int, int]

    def embed(self, im: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised, patch-aligned image [B, 3, H, W] -> tokens [B, P+N, D] and the grid."""
        raise NotImplementedError

    def block_attn(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        """Block i (0-based), first half: `x + attn(norm1(x))`, padding keys masked by `state`."""
        raise NotImplementedError

    def block_mlp(self, i: int, x: torch.Tensor, state: TokenState) -> torch.Tensor:
        """Block i, second half: `x + mlp(norm2(x))`."""
        raise NotImplementedError

    def layer_output(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """What a decoder reading block i gets (e.g. the final norm after the last block)."""
        return x

    def set_image_size(self, image_size: tuple[int, int]) -> None:
        """Re-target the position embedding to another run size (bilinear, prefix kept)."""
        raise NotImplementedError

    # FLOP counting (multiply-accumulates)
    def embed_macs(self, grid: Sequence[int]) -> int:
        return int(grid[0] * grid[1] * 3 * self.patch_size ** 2 * self.embed_dim)

    def block_macs(self, t_attn: int, t_mlp: int) -> int:
        """One block with `t_attn` tokens in the attention half and `t_mlp` in the MLP half."""
        d = self.embed_dim
        attn = 3 * t_attn * d * d + 2 * t_attn * t_attn * d + t_attn * d * d
        return int(attn + 2 * getattr(self, "mlp_ratio", 4.0) * t_mlp * d * d)


class Decoder(nn.Module):
    """Reads `Level`s of the blocks in `in_layers` (0-based) and returns class logits at its own
    output resolution ([B, n_cls, h, w]); `SegModel.finish` resizes them to the image."""

    kind = "token"  # "token" | "feature"
    in_layers: tuple[int, ...]
    n_cls: int

    def decode(self, levels: Sequence[Level]) -> torch.Tensor:
        raise NotImplementedError

    def macs(self, tokens: Sequence[int], grid: Sequence[int]) -> int:
        """Multiply-accumulates given the patch-token count of each level (slots, for static)."""
        raise NotImplementedError


class FeatureMapDecoder(Decoder):
    """A decoder that needs full maps: every level is unmerged before it runs (docs/algorithm.md: other families)."""

    kind = "feature"

    def decode(self, levels: Sequence[Level]) -> torch.Tensor:
        return self.forward_maps([lv.as_map() for lv in levels])

    def forward_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class TokenDecoder(Decoder):
    """A decoder that runs on merged tokens; it unmerges only its per-token outputs."""

    kind = "token"


class MergeHook(Protocol):
    """What the ALGM driver passes to `SegModel.forward_tokens`."""

    layers: frozenset  # 0-based blocks after whose attention residual `merge` runs

    def merge(self, i: int, x: torch.Tensor, state: TokenState) -> tuple[torch.Tensor, TokenState]: ...


class SegModel(nn.Module):
    """Backbone + decoder. `cfg` carries the family's configuration with the uniform fields
    `n_cls, image_size, patch_size, grid, num_prefix, n_layers, d_model, normalization,
    backbone, decoder_name, algm, inference` (see docs/models.md)."""

    family = "?"
    backbone: Backbone
    decoder: Decoder
    # True: the family's own evaluation windows every image (`inference(im, fn=, batch_size=, on_batch=)`,
    # e.g. EoMT's); predict uses it instead of the published Segmenter sliding windows
    own_windows = False

    @property
    def num_prefix(self) -> int:
        return self.backbone.num_prefix

    @property
    def n_cls(self) -> int:
        return self.cfg.n_cls

    def prepare(self, im: torch.Tensor) -> torch.Tensor:
        """The image as the backbone embeds it (e.g. padded to a multiple of the patch size)."""
        return im

    def finish(self, logits: torch.Tensor, padded_hw, out_hw) -> torch.Tensor:
        """Decoder logits -> [B, n_cls, H, W] at the input size (what whole-image inference returns)."""
        raise NotImplementedError

    def enter_block(self, i: int, x: torch.Tensor, state: TokenState) -> tuple[torch.Tensor, TokenState]:
        """Before block i: a family that adds tokens inside the encoder (EoMT's queries) returns
        the longer sequence and its state (the added tokens join the prefix); default: unchanged."""
        return x, state

    def check_setting(self, setting, grid=None) -> None:
        """Refuse an ALGM setting this model cannot run: layers outside the model, a window that does
        not divide the grid (`AlgmSetting.check_model`); families add their own rules (EoMT: no merge
        in its query blocks)."""
        setting.check_model(self.cfg.n_layers, self.cfg.grid if grid is None else grid)

    def added_tokens(self, i: int) -> int:
        """How many tokens `enter_block(i, ...)` adds (for FLOP counting); default 0."""
        return 0

    def forward_tokens(self, im: torch.Tensor, hook: Optional[MergeHook] = None,
                       on_state: Optional[Callable[[int, TokenState], None]] = None) -> torch.Tensor:
        """The one loop over the blocks: embed, blocks (with `hook` merging), decoder, finish."""
        H, W = im.shape[-2:]
        im = im.to(self.dtype_of_input())
        im_p = self.prepare(im)
        bb = self.backbone
        x, grid = bb.embed(im_p)
        state = TokenState.initial(x, grid, bb.num_prefix)
        wanted = set(self.decoder.in_layers)
        levels = []
        merge_at = hook.layers if hook is not None else ()
        for i in range(bb.depth):
            x, state = self.enter_block(i, x, state)
            x = bb.block_attn(i, x, state)
            if i in merge_at:
                x, state = hook.merge(i, x, state)
                if on_state is not None:
                    on_state(i, state)
            x = bb.block_mlp(i, x, state)
            if i in wanted:
                levels.append(Level(i, bb.layer_output(i, x), state))
        logits = self.decoder.decode(levels)
        return self.finish(logits, im_p.shape[-2:], (H, W))

    def set_image_size(self, image_size) -> "SegModel":
        """Re-target the model to another run size (position embedding resized, cfg updated)."""
        from algm_export.core.errors import ConfigError

        new = tuple(int(v) for v in ((image_size, image_size) if isinstance(image_size, int) else image_size))
        p = self.cfg.patch_size
        if len(new) != 2 or new[0] % p or new[1] % p or min(new) <= 0:
            raise ConfigError(f"image size {list(new)} is not a positive multiple of the patch size {p}")
        if new != tuple(self.cfg.image_size):
            self.backbone.set_image_size(new)
            self.cfg.image_size = new
        return self

    def describe(self) -> dict:
        """What the model is, for tables, JSON files and manifests (no weights)."""
        cfg = self.cfg
        return {
            "family": self.family, "source": getattr(self, "source", None),
            "config_file": getattr(self, "config_path", None) and str(self.config_path),
            "backbone": cfg.backbone, "decoder": cfg.decoder_name, "n_cls": cfg.n_cls,
            "image_size": list(cfg.image_size), "patch_size": cfg.patch_size, "grid": list(cfg.grid),
            "num_prefix": self.num_prefix, "n_layers": cfg.n_layers, "normalization": cfg.normalization,
            "decoder_kind": self.decoder.kind, "decoder_layers": list(self.decoder.in_layers),
            "algm": cfg.algm, "inference": cfg.inference,
            "params_m": round(sum(p.numel() for p in self.parameters()) / 1e6, 2),
        }

    def dtype_of_input(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(im)


def build_with_weights(build: Callable[[], nn.Module], state: dict) -> nn.Module:
    """`build()` with `state` (a checked state dict: every key the model's, every shape its) as its
    weights, without a second copy of them: the network is built on the meta device (no memory,
    no random init) and takes the tensors of `state` as its parameters (`assign`), each cast to the
    dtype the network declares. What `state` lacks (keys a format allows to be absent) is built for
    real (seeded by the caller) and copied over; `state` is emptied as the tensors move.

    A ViT-L checkpoint (1.2 GB) loads at 1x its size instead of 2x (random init + checkpoint)."""
    try:
        with torch.device("meta"):
            model = build()
    except (RuntimeError, NotImplementedError):
        # a network whose construction reads tensor values (`.item()`): build it for real (2x peak)
        model = build()
        model.load_state_dict(state, strict=False)
        state.clear()
        return model
    want = model.state_dict(keep_vars=True)
    load = {}
    for k in list(state):
        v = state.pop(k)
        ref = want.get(k)
        if ref is not None and v.dtype != ref.dtype:
            v = v.to(ref.dtype)
        load[k] = v if v.is_contiguous() else v.contiguous()
    model.load_state_dict(load, strict=False, assign=True)
    del load
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        real = build().state_dict()
        model.load_state_dict({n: real[n] for n in left if n in real}, strict=False, assign=True)
        del real
        still = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if still:
            raise RuntimeError(f"tensors left unmaterialised after loading: {still[:5]}")
    return model
