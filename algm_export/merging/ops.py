"""torch custom ops `algm::clap` / `algm::gbm` (static token mode) and `algm::clap_dyn` / `algm::gbm_dyn`
(dynamic token mode): the merge steps as single graph nodes.

Eager calls run `algm_export.merging.static`; the fake implementations give the exporter the
output shapes without running the merge: capacity-sized (static) or a data-dependent token
dimension (dynamic), batch symbolic.
"""

from __future__ import annotations

import torch

from algm_export.merging import static


@torch.library.custom_op("algm::clap", mutates_args=())
def clap(x: torch.Tensor, grid_h: int, grid_w: int, window_h: int, window_w: int, num_prefix: int,
         capacity: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return static.clap_static(x, grid_h, grid_w, window_h, window_w, num_prefix, capacity, threshold)


@clap.register_fake
def _clap_fake(x, grid_h, grid_w, window_h, window_w, num_prefix, capacity, threshold):
    B, _, D = x.shape
    T = num_prefix + capacity
    return (x.new_empty(B, T, D), x.new_empty(B, T, dtype=torch.float32),
            x.new_empty(B, grid_h * grid_w, dtype=torch.int32), x.new_empty(B, 2, dtype=torch.int32))


@torch.library.custom_op("algm::gbm", mutates_args=())
def gbm(x: torch.Tensor, size: torch.Tensor, assign: torch.Tensor, num_prefix: int, capacity: int,
        divisor: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return static.gbm_static(x, size, assign, num_prefix, capacity, divisor)


@gbm.register_fake
def _gbm_fake(x, size, assign, num_prefix, capacity, divisor):
    B, _, D = x.shape
    T = num_prefix + capacity
    return (x.new_empty(B, T, D), x.new_empty(B, T, dtype=torch.float32),
            assign.new_empty(assign.shape, dtype=torch.int32), x.new_empty(B, 2, dtype=torch.int32))


# ----------------------------------------------------------------------------- dynamic token mode
# The same merge steps with a data-dependent token axis (docs/algorithm.md: dynamic token mode): the fake implementations
# declare the output token dimension as an unbacked size, so the exported graph carries it as a
# symbol computed at run time. The symbol is the whole token dimension (P + K), because
# torch.export binds an unbacked size only when it appears as a dimension by itself.

@torch.library.custom_op("algm::clap_dyn", mutates_args=())
def clap_dyn(x: torch.Tensor, threshold: torch.Tensor, grid_h: int, grid_w: int, window_h: int, window_w: int,
             num_prefix: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return static.clap_dynamic(x, threshold, grid_h, grid_w, window_h, window_w, num_prefix)


@clap_dyn.register_fake
def _clap_dyn_fake(x, threshold, grid_h, grid_w, window_h, window_w, num_prefix):
    B, _, D = x.shape
    n = grid_h * grid_w
    lo, hi = static.clap_capacity_bounds(n, (window_h, window_w))
    T = torch.library.get_ctx().new_dynamic_size(min=num_prefix + lo, max=num_prefix + hi)
    return (x.new_empty(B, T, D), x.new_empty(B, T, dtype=torch.float32),
            x.new_empty(B, n, dtype=torch.int32), x.new_empty(B, 2, dtype=torch.int32))


@torch.library.custom_op("algm::gbm_dyn", mutates_args=())
def gbm_dyn(x: torch.Tensor, size: torch.Tensor, assign: torch.Tensor, num_prefix: int,
            divisor: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return static.gbm_dynamic(x, size, assign, num_prefix, divisor)


@gbm_dyn.register_fake
def _gbm_dyn_fake(x, size, assign, num_prefix, divisor):
    B, _, D = x.shape
    n = assign.shape[1]
    T = torch.library.get_ctx().new_dynamic_size(min=num_prefix + 1, max=num_prefix + n)
    return (x.new_empty(B, T, D), x.new_empty(B, T, dtype=torch.float32),
            assign.new_empty(assign.shape, dtype=torch.int32), x.new_empty(B, 2, dtype=torch.int32))
