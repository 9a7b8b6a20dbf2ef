"""`apply_algm`: run a Segmenter with ALGM merging, dynamic (spec 1) or static (spec 2).

The returned `AlgmSegmenter` shares the weights of the model it was given (nothing is copied)
and drives the same blocks through `block_forward`, inserting CLAP after the attention
residual of the first ALGM layer and GBM in the others. Only the final per-token class logits
are unmerged (`out[b, p] = logits[b, assign[b, p]]`).

After each forward `model.merge_stats` holds, per image and merge step, the real patch-token
count after the step (`tokens`), the merges done (`merges`) and the forced merges (`forced`),
and `model.assignments` the assignment map after every step (for visualisations).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from algm_export.errors import CapacityError, ConfigError, InputError
from algm_export.merging import dynamic
from algm_export.merging.setting import AlgmSetting
from algm_export.merging.static import clap_capacity_bounds, gbm_capacity_min
from algm_export.models.segmenter import KeyMask, Segmenter, block_forward, key_bias_from_size, tokens_to_masks



def unmerge_rows(x: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Row `assign[b, n]` of image b for every patch n: [B, T, C], [B, N] -> [B, N, C].

    A row gather over the flattened batch (an ONNX `Gather`), the same values as
    `torch.gather(x, 1, assign[..., None].expand(-1, -1, C))` without an index per channel.
    """
    B, T, C = x.shape
    flat = assign.long() + torch.arange(B, device=x.device).unsqueeze(1) * T
    return x.reshape(B * T, C)[flat.reshape(-1)].reshape(B, assign.shape[1], C)

def _nonfinite_error(bad: list) -> InputError:
    return InputError(
        f"image batch holds NaN or Inf values (images {bad}); clean or re-normalise the input "
        "(engines give undefined merges on such input, so every backend refuses it)"
    )


def check_finite(im: torch.Tensor) -> None:
    """NaN/Inf in the image would leak into every merge decision: refuse them (documented behaviour)."""
    if not torch.isfinite(im).all():
        raise _nonfinite_error((~torch.isfinite(im)).flatten(1).any(1).nonzero().flatten().tolist())


def check_finite_array(im) -> None:
    """The same refusal for numpy inputs (ONNX Runtime and TensorRT runners), so every backend
    answers NaN/Inf input identically, before any merge decision is made."""
    import numpy as np

    a = np.asarray(im)
    if not np.isfinite(a).all():
        raise _nonfinite_error(np.nonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(1))[0].tolist())


class AlgmSegmenter(nn.Module):
    def __init__(self, model: Segmenter, setting: AlgmSetting, capacities: Optional[Sequence[int]] = None):
        super().__init__()
        self.model = model
        self.setting = setting
        self.capacities = None if capacities is None else tuple(int(c) for c in capacities)
        cfg = model.cfg
        setting.check_model(cfg.n_layers, cfg.grid)
        if self.capacities is not None:
            if setting.policy != "per_image":
                raise ConfigError(
                    "static mode (capacities) runs the per_image policy only: batch_min couples images, "
                    "which a fixed-shape engine cannot reproduce; use policy='per_image'"
                )
            check_capacities(self.capacities, setting, cfg.grid, cfg.num_prefix)
        self.merge_stats: dict = {}
        self.assignments: list[torch.Tensor] = []

    @property
    def cfg(self):
        return self.model.cfg

    def reset_state(self) -> None:
        """Forget the last forward's statistics (export leaves fake tensors there)."""
        self.merge_stats = {}
        self.assignments = []
        self.stats_tensor = None

    @property
    def static(self) -> bool:
        return self.capacities is not None

    def forward(self, im: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            check_finite(im)
        if not self.static and self.setting.policy == "per_image" and im.shape[0] > 1:
            # token counts differ per image: run images one by one (batch of 1 = per_image)
            outs, stats, assigns = [], [], []
            for i in range(im.shape[0]):
                outs.append(self._forward(im[i : i + 1]))
                stats.append(self.merge_stats)
                assigns.append(self.assignments)
            self.merge_stats = {k: torch.cat([s[k] for s in stats]) for k in stats[0]}
            self.assignments = [torch.cat(a) for a in zip(*assigns)]
            return torch.cat(outs)
        return self._forward(im)

    def _forward(self, im: torch.Tensor) -> torch.Tensor:
        m = self.model
        H, W = im.shape[-2:]
        im = im.to(m.encoder.patch_embed.proj.weight.dtype)
        im_p = m.pad(im)
        x, grid = m.embed(im_p)
        self.setting.check_model(m.cfg.n_layers, grid)
        B, P = x.shape[0], m.num_prefix
        N = grid[0] * grid[1]
        if self.static:
            check_capacities(self.capacities, self.setting, grid, P)
        size = torch.ones(B, x.shape[1], dtype=torch.float32, device=x.device)
        assign = torch.arange(N, device=x.device).expand(B, -1)
        state = {"size": size, "assign": assign}
        steps = {l: i for i, l in enumerate(self.setting.layers)}
        tokens, merges, forced, assigns = [], [], [], []
        padded = False

        mask = None  # the padding mask of the current token state, shared by its blocks
        for li, blk in enumerate(m.encoder.blocks, start=1):
            if padded and mask is None:
                mask = KeyMask(key_bias_from_size(state["size"], x.dtype))
            bias = mask if padded else None
            if li in steps:
                step = steps[li]

                def merge(t, step=step):
                    res = self._merge(step, t, state["size"], state["assign"], grid, P)
                    state["size"], state["assign"] = res[1], res[2]
                    merges.append(res[3])
                    forced.append(res[4])
                    return res[0]

                x = block_forward(blk, x, bias, merge)
                padded = padded or self.static
                mask = None  # the merge changed the token state
                tokens.append((state["size"][:, P:] > 0).sum(1))
                assigns.append(state["assign"].long())
            else:
                x = block_forward(blk, x, bias)
        x = m.encoder.norm(x)
        bias = key_bias_from_size(state["size"][:, P:], x.dtype) if padded else None
        logits = m.decoder.forward_tokens(x[:, P:], bias).float()              # [B, T', n_cls]
        logits = unmerge_rows(logits, state["assign"])                        # unmerge: [B, N, n_cls]
        self.stats_tensor = torch.stack([torch.stack(merges, 1), torch.stack(forced, 1)], dim=-1).to(torch.int32)
        self.merge_stats = {
            "tokens": torch.stack(tokens, 1).long(),
            "merges": torch.stack(merges, 1).long(),
            "forced": torch.stack(forced, 1).long(),
        }
        self.assignments = assigns
        return m.finish(tokens_to_masks(logits, grid), im_p.shape[-2:], (H, W))

    def _merge(self, step: int, x, size, assign, grid, P):
        s = self.setting
        if step == 0:
            if self.static:
                y, sz, a, st = torch.ops.algm.clap(x, grid[0], grid[1], s.window[0], s.window[1], P,
                                                   self.capacities[0], s.threshold)
                return y, sz, a, st[:, 0], st[:, 1]
            return dynamic.clap(x, size, grid, s.window, s.threshold, P)
        divisor = float(s.layers[step])
        if self.static:
            y, sz, a, st = torch.ops.algm.gbm(x, size, assign.to(torch.int32), P, self.capacities[step], divisor)
            return y, sz, a, st[:, 0], st[:, 1]
        return dynamic.gbm(x, size, assign, P, divisor)


def check_capacities(caps: Sequence[int], setting: AlgmSetting, grid, num_prefix: int) -> None:
    """Refuse capacities that no image could meet (spec 2: an error at export time)."""
    if len(caps) != setting.steps:
        raise CapacityError(
            f"{len(caps)} capacities given for {setting.steps} merge steps (layers {list(setting.layers)}); "
            "give one per step, e.g. --capacities C1,C2"
        )
    N = grid[0] * grid[1]
    lo, hi = clap_capacity_bounds(N, setting.window)
    if not lo <= caps[0] <= hi:
        raise CapacityError(
            f"CLAP capacity {caps[0]} is outside [{lo}, {hi}] for a {grid[0]}x{grid[1]} grid with window "
            f"{setting.window[0]}x{setting.window[1]}: {lo} is the count when every window merges, {hi} = N; "
            "calibrate again or raise the capacity"
        )
    for i in range(1, len(caps)):
        cmin = gbm_capacity_min(caps[i - 1], num_prefix)
        if not cmin <= caps[i] <= caps[i - 1]:
            raise CapacityError(
                f"GBM capacity {caps[i]} (step {i + 1}, layer {setting.layers[i]}) is outside [{cmin}, {caps[i - 1]}]: "
                f"at most half of the {caps[i - 1]} incoming tokens can merge, and a step never adds tokens; "
                "raise the capacity or calibrate again"
            )


def apply_algm(model: Segmenter, setting: AlgmSetting, capacities: Optional[Sequence[int]] = None) -> AlgmSegmenter:
    """Wrap `model` (weights shared) so that its forward runs ALGM with `setting`.

    capacities=None: dynamic mode (spec 1). capacities=(C1, C2, ...): static mode (spec 2).
    """
    from algm_export.export import ops  # noqa: F401  (registers torch.ops.algm.*)

    return AlgmSegmenter(model, setting, capacities).eval()
