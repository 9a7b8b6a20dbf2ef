"""`apply_algm`: run any `SegModel` with ALGM merging, in one of three token modes:

* ``"reference"`` (no capacities): the published method (docs/algorithm.md: the published method), token counts per image, a
  batch run image by image;
* ``"static"`` (capacities): fixed token slots per merge step (docs/algorithm.md: the static form), what fixed-shape
  engines run;
* ``"dynamic"``: as many slots as the batch needs, computed at run time (docs/algorithm.md: dynamic token mode): the static
  ops with capacity = every slot (never a forced merge) and the token axis cut to the largest
  real count of the batch. Batched, padded and masked like static; exports to ONNX with a
  data-dependent token dimension, optionally with the CLAP threshold as a graph input.

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

from algm_export.core.errors import CapacityError, ConfigError, InputError
from algm_export.merging import reference
from algm_export.core.setting import AlgmSetting
from algm_export.merging.static import clap_capacity_bounds, gbm_capacity_min
from algm_export.models.layers import one_image
from algm_export.models.base import SegModel, TokenState, unmerge_rows  # noqa: F401  (unmerge_rows re-exported)
from algm_export.core.names import TOKEN_MODES



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

    def __init__(self, model: SegModel, setting: AlgmSetting, capacities: Optional[Sequence[int]] = None,
                 token_mode: Optional[str] = None):
        super().__init__()
        self.model = model
        self.setting = setting
        self.capacities = None if capacities is None else tuple(int(c) for c in capacities)
        self.token_mode = _token_mode(token_mode, self.capacities)
        cfg = model.cfg
        model.check_setting(setting)
        if self.token_mode != "reference" and setting.policy != "per_image":
            raise ConfigError(
                f"{self.token_mode} token mode runs the per_image policy only: batch_min couples images, "
                "which an engine with a dynamic batch cannot reproduce; use policy='per_image'"
            )
        if self.capacities is not None:
            check_capacities(self.capacities, setting, cfg.grid, model.num_prefix)
        self.merge_stats: dict = {}
        self.assignments: list[torch.Tensor] = []
        self.stats_tensor = None
        self._threshold: Optional[torch.Tensor] = None
        #: set True to keep, after each forward, the token state entering every merge step in
        #: `merge_inputs` ([{"x": [B, T, D], "size": [B, T]}] per step; `merging.margins` reads them;
        #: the reference mode records batches of one image only)
        self.record_inputs = False
        self.merge_inputs: list[dict] = []

    @property
    def cfg(self):
        return self.model.cfg

    def reset_state(self) -> None:
        """Forget the last forward's statistics (export leaves fake tensors there)."""
        self.merge_stats = {}
        self.assignments = []
        self.stats_tensor = None
        self._threshold = None
        self.merge_inputs = []

    @property
    def static(self) -> bool:
        return self.token_mode == "static"

    @property
    def dynamic(self) -> bool:
        """Dynamic token mode (docs/algorithm.md: dynamic token mode): data-dependent token slots, batched."""
        return self.token_mode == "dynamic"

    @property
    def exportable(self) -> bool:
        """Whether `export_onnx` can write this model (static or dynamic token mode)."""
        return self.token_mode in TOKEN_MODES

    def forward(self, im: torch.Tensor, threshold=None) -> torch.Tensor:
        """Logits [B, n_cls, H, W]. `threshold` (dynamic token mode only): the CLAP threshold,
        a float or a float32 tensor [B] (one per image); default the setting's."""
        compiling = torch.compiler.is_compiling()
        if not compiling:
            check_finite(im)
        if threshold is not None and not self.dynamic:
            raise ConfigError(
                f"a threshold argument needs dynamic token mode (this model is {self.token_mode}); in "
                "other modes the threshold is part of the setting: apply_algm(model, setting.with_threshold(t), ...)"
            )
        if self.dynamic:
            self._threshold = _threshold_tensor(threshold, self.setting.threshold, im, check=not compiling)
            return self._forward(im)
        if not self.static and self.setting.policy == "per_image" and im.shape[0] > 1:
            # token counts differ per image: run images one by one (batch of 1 = per_image)
            outs, stats, assigns = [], [], []
            for i in range(im.shape[0]):
                outs.append(self._forward(im[i : i + 1]))
                stats.append(self.merge_stats)
                assigns.append(self.assignments)
            self.merge_stats = {k: torch.cat([s[k] for s in stats]) for k in stats[0]}
            self.assignments = [torch.cat(a) for a in zip(*assigns)]
            self.merge_inputs = []   # token counts differ per image: recorded for batches of one image only
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
        self.merge_inputs = hook.inputs
        return out

    def _merge(self, step: int, x, size, assign, grid, P):
        s = self.setting
        if self.dynamic:
            if step == 0:
                y, sz, a, st = torch.ops.algm.clap_dyn(x, self._threshold, grid[0], grid[1], s.window[0],
                                                       s.window[1], P)
            else:
                y, sz, a, st = torch.ops.algm.gbm_dyn(x, size, assign.to(torch.int32), P, float(s.layers[step]))
            return y, sz, a, st[:, 0], st[:, 1]
        if step == 0:
            if self.static:
                y, sz, a, st = torch.ops.algm.clap(x, grid[0], grid[1], s.window[0], s.window[1], P,
                                                   self.capacities[0], s.threshold)
                return y, sz, a, st[:, 0], st[:, 1]
            return reference.clap(x, size, grid, s.window, s.threshold, P)
        divisor = float(s.layers[step])
        if self.static:
            y, sz, a, st = torch.ops.algm.gbm(x, size, assign.to(torch.int32), P, self.capacities[step], divisor)
            return y, sz, a, st[:, 0], st[:, 1]
        return reference.gbm(x, size, assign, P, divisor)


class _MergeHook:
    """The merge steps of one forward: CLAP / GBM after the attention residual of their blocks."""

    def __init__(self, owner: AlgmModel):
        self.owner = owner
        self.steps = {l - 1: i for i, l in enumerate(owner.setting.layers)}   # 0-based block -> step
        self.layers = frozenset(self.steps)
        self.tokens, self.merges, self.forced, self.assigns = [], [], [], []
        self.inputs: list[dict] = []

    def merge(self, i: int, x: torch.Tensor, state: TokenState):
        owner = self.owner
        grid, P = state.grid, state.num_prefix
        if i == min(self.steps):
            owner.model.check_setting(owner.setting, grid)
            if owner.static:
                check_capacities(owner.capacities, owner.setting, grid, P)
        if owner.record_inputs and not torch.compiler.is_compiling():
            self.inputs.append({"x": x.detach().float(), "size": state.size.detach().float()})
        y, size, assign, merges, forced = owner._merge(self.steps[i], x, state.size, state.assign, grid, P)
        # static: padding slots; dynamic: padding where a batch mixes counts, none for one image
        padded = owner.exportable and not (owner.dynamic and one_image(y))
        state = state.replace(size, assign, padded=padded)
        self.merges.append(merges)
        self.forced.append(forced)
        self.tokens.append((size[:, P:] > 0).sum(1))
        self.assigns.append(assign.long())
        return y, state




def check_capacities(caps: Sequence[int], setting: AlgmSetting, grid, num_prefix: int) -> None:
    """Refuse capacities that no image could meet (docs/algorithm.md: the static form: an error at export time)."""
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


def _token_mode(token_mode: Optional[str], capacities) -> str:
    if token_mode is None:
        return "reference" if capacities is None else "static"
    if token_mode not in TOKEN_MODES:
        raise ConfigError(f"token mode {token_mode!r} unknown; use one of {TOKEN_MODES} (or none for the reference)")
    if token_mode == "static" and capacities is None:
        raise ConfigError("static token mode needs capacities (one per merge step): calibrate them "
                          "(algm_export.merging.calibrate) or pass capacities=(C1, C2, ...)")
    if token_mode == "dynamic" and capacities is not None:
        raise ConfigError("dynamic token mode has no capacities: every step outputs as many slots as the batch "
                          "needs; drop capacities or use token_mode='static'")
    return token_mode


def _threshold_tensor(threshold, default: float, im: torch.Tensor, check: bool) -> torch.Tensor:
    """The CLAP threshold of every image, float32 [B] (a float, a scalar tensor or [B])."""
    B = im.shape[0]
    if threshold is None:
        threshold = default
    if not isinstance(threshold, torch.Tensor):
        threshold = torch.tensor(float(threshold))
    t = threshold.to(device=im.device, dtype=torch.float32)
    if t.dim() == 0:
        t = t.expand(B)
    if check:
        if t.dim() != 1 or t.shape[0] != B:
            raise InputError(f"threshold must be a float or a tensor of shape [{B}] (one per image), got "
                             f"shape {list(t.shape)}")
        if not (torch.isfinite(t).all() and (t.abs() <= 1).all()):
            raise InputError(f"thresholds {t.tolist()} must be finite and within [-1, 1] (cosine similarities)")
    return t


def apply_algm(model: SegModel, setting: AlgmSetting, capacities: Optional[Sequence[int]] = None,
               token_mode: Optional[str] = None) -> AlgmModel:
    """Wrap `model` (weights shared) so that its forward runs ALGM with `setting`.

    token_mode None: capacities=None -> the reference (docs/algorithm.md: the published method), capacities=(C1, C2, ...) ->
    static (docs/algorithm.md: the static form). token_mode="static" (needs capacities) or "dynamic" (docs/algorithm.md: dynamic token mode, no
    capacities) name the exportable modes explicitly.
    """
    from algm_export.merging import ops  # noqa: F401  (registers torch.ops.algm.*)

    return AlgmModel(model, setting, capacities, token_mode).eval()


class _StopAfterClap(Exception):
    pass


class _ClapProbe:
    """A merge hook that runs CLAP (the dynamic op: exact per-image counts) and stops the forward."""

    def __init__(self, setting: AlgmSetting, threshold: torch.Tensor):
        self.setting, self.threshold = setting, threshold
        self.layers = frozenset({setting.layers[0] - 1})
        self.counts: Optional[torch.Tensor] = None

    def merge(self, i: int, x: torch.Tensor, state: TokenState):
        s, P = self.setting, state.num_prefix
        _, size, _, _ = torch.ops.algm.clap_dyn(x, self.threshold, state.grid[0], state.grid[1], s.window[0],
                                                s.window[1], P)
        self.counts = (size[:, P:] > 0).sum(1)
        raise _StopAfterClap


def clap_counts(model: SegModel, setting: AlgmSetting, images: torch.Tensor, threshold=None) -> list[int]:
    """The real patch-token count after CLAP of every image of `images` [B, 3, H, W]: the patch
    embedding and the blocks up to the first ALGM layer only (a cheap probe: layer 1 of 12 is ~1/12
    of the encoder), the same counts the dynamic token mode's first step gives. For grouping images
    of similar cost into batches (`algm_export.runtimes.batching.group_by_tokens`)."""
    from algm_export.merging import ops  # noqa: F401  (registers torch.ops.algm.*)

    check_finite(images)
    setting.check_model(model.cfg.n_layers, model.cfg.grid)
    hook = _ClapProbe(setting, _threshold_tensor(threshold, setting.threshold, images, check=True))
    with torch.no_grad():
        try:
            model.forward_tokens(images, hook)
        except _StopAfterClap:
            pass
    if hook.counts is None:
        raise ConfigError(f"the model ran no merge step at layer {setting.layers[0]}")
    return [int(c) for c in hook.counts]
