"""Capacity calibration for one threshold setting (docs/algorithm.md: the static form).

Runs the dynamic `per_image` reference on representative images, records the real patch-token
count after every merge step, and sets each capacity to a quantile of those counts (default
1.0 = the maximum, so that no calibration image needs a forced merge). The record returned
here goes into the export manifest.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from algm_export.core.errors import CapacityError, ConfigError
from algm_export.merging.driver import apply_algm, check_capacities
from algm_export.core.setting import AlgmSetting
from algm_export.merging.static import clap_capacity_bounds, gbm_capacity_min
from algm_export.models.base import SegModel


def token_counts(model: SegModel, setting: AlgmSetting, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """[n_images, steps] real patch-token counts after every merge step (dynamic per_image)."""
    dm = apply_algm(model, AlgmSetting(setting.threshold, setting.window, setting.layers, "per_image"))
    rows = []
    with torch.no_grad():
        for x in batches:
            dm(x)
            rows.append(dm.merge_stats["tokens"].cpu().numpy())
    return np.concatenate(rows, axis=0) if rows else np.zeros((0, setting.steps), dtype=np.int64)


def capacities_from_counts(counts: np.ndarray, quantile: float, setting: AlgmSetting, grid, num_prefix: int) -> list[int]:
    """Capacity per step = the `quantile` of the counts (rounded up), made consistent step to step."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"--quantile {quantile} must be in (0, 1]; 1.0 takes the maximum count")
    if counts.shape[0] == 0:
        raise ConfigError("no calibration image: give --calib-images DIR with image files")
    N = grid[0] * grid[1]
    lo, hi = clap_capacity_bounds(N, setting.window)
    caps = []
    for step in range(counts.shape[1]):
        c = int(math.ceil(float(np.quantile(counts[:, step], quantile, method="higher"))))
        if step == 0:
            c = min(max(c, lo), hi)
        else:
            c = min(max(c, gbm_capacity_min(caps[-1], num_prefix)), caps[-1])
        caps.append(c)
    check_capacities(caps, setting, grid, num_prefix)
    return caps


def calibrate(model: SegModel, setting: AlgmSetting, images: Sequence[torch.Tensor], names: Optional[Sequence[str]] = None,
              quantile: float = 1.0, progress=None) -> dict:
    """Calibrate capacities. images: normalised [1, 3, H, W] tensors at the model's input size."""
    batches = images if progress is None else progress(images)
    counts = token_counts(model, setting, batches)
    grid = model.cfg.grid
    caps = capacities_from_counts(counts, quantile, setting, grid, model.num_prefix)
    over = [int((counts[:, s] > caps[s]).sum()) for s in range(counts.shape[1])]
    return {
        "capacities": caps,
        "counts": counts.T.tolist(),           # per step, per image
        "quantile": quantile,
        "images": list(names) if names is not None else [f"image{i}" for i in range(len(images))],
        "images_over_capacity": over,          # per step: images that will need forced merges
        "n_patches": grid[0] * grid[1],
    }


def parse_capacities(text: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise CapacityError(f"--capacities {text!r}: give comma-separated integers, e.g. 700,500") from e
