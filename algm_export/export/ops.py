"""torch custom ops `algm::clap` and `algm::gbm`: the static merge steps as single graph nodes.

Eager calls run `algm_export.merging.static`; the fake implementations give the exporter the
output shapes (capacity-sized, batch symbolic) without running the merge.
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
