"""`apply_algm`: run any `SegModel` with ALGM merging, dynamic (spec 1) or static (spec 2).

The returned `AlgmModel` shares the weights of the model it was given (nothing is copied) and
runs the model's own loop (`SegModel.forward_tokens`) with a merge hook: CLAP after the
attention residual of the first ALGM layer, GBM in the others. It knows neither the backbone
nor the decoder: token decoders unmerge their per-token outputs, feature-map decoders their
input maps, each with the assignment map valid at the layer they read (`models/base.py`).

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
from algm_export.models.base import SegModel, TokenState, unmerge_rows  # noqa: F401  (unmerge_rows re-exported)



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


class AlgmModel(nn.Module):
    """ALGM around any `SegModel` (weights shared): one driver for every backbone + decoder pair."""

    def __init__(self, model: SegModel, setting: AlgmSetting, capacities: Optional[Sequence[int]] = None):
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
            check_capacities(self.capacities, setting, cfg.grid, model.num_prefix)
        self.merge_stats: dict = {}
        self.assignments: list[torch.Tensor] = []
        self.stats_tensor = None

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
        hook = _MergeHook(self)
        out = self.model.forward_tokens(im, hook)
        self.stats_tensor = torch.stack([torch.stack(hook.merges, 1), torch.stack(hook.forced, 1)],
                                        dim=-1).to(torch.int32)
        self.merge_stats = {
            "tokens": torch.stack(hook.tokens, 1).long(),
            "merges": torch.stack(hook.merges, 1).long(),
            "forced": torch.stack(hook.forced, 1).long(),
        }
        self.assignments = hook.assigns
        return out

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


class _MergeHook:
    """The merge steps of one forward: CLAP / GBM after the attention residual of their blocks."""

    def __init__(self, owner: AlgmModel):
        self.owner = owner
        self.steps = {l - 1: i for i, l in enumerate(owner.setting.layers)}   # 0-based block -> step
        self.layers = frozenset(self.steps)
        self.tokens, self.merges, self.forced, self.assigns = [], [], [], []

    def merge(self, i: int, x: torch.Tensor, state: TokenState):
        owner = self.owner
        grid, P = state.grid, state.num_prefix
        if i == min(self.steps):
            owner.setting.check_model(owner.cfg.n_layers, grid)
            if owner.static:
                check_capacities(owner.capacities, owner.setting, grid, P)
        y, size, assign, merges, forced = owner._merge(self.steps[i], x, state.size, state.assign, grid, P)
        state = state.replace(size, assign, padded=owner.static)
        self.merges.append(merges)
        self.forced.append(forced)
        self.tokens.append((size[:, P:] > 0).sum(1))
        self.assigns.append(assign.long())
        return y, state




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


def apply_algm(model: SegModel, setting: AlgmSetting, capacities: Optional[Sequence[int]] = None) -> AlgmModel:
    """Wrap `model` (weights shared) so that its forward runs ALGM with `setting`.

    capacities=None: dynamic mode (spec 1). capacities=(C1, C2, ...): static mode (spec 2).
    """
    from algm_export.export import ops  # noqa: F401  (registers torch.ops.algm.*)

    return AlgmModel(model, setting, capacities).eval()
