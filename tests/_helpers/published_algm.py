"""Our side of the comparison with the published ALGM code's frozen outputs (tests/data/published_algm/):
shared by tests/test_published_frozen.py and scripts/reference/algm_published_check.py.

Only torch / numpy at import time: the script's published-side process (another environment) uses
`take_samples` too."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "data" / "published_algm"


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's shape and float32 bytes (C order)."""
    a = np.ascontiguousarray(t.detach().cpu().float().numpy())
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def state_sha256(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(tensor_sha256(state[k]).encode())
    return h.hexdigest()


def sample_positions(batch: int, size: int, count: int, seed: int) -> torch.Tensor:
    """[batch, count] seeded flat pixel indices into a size x size output."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, size * size, (batch, count), generator=g)


def take_samples(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """logits [B, C, H, W], pos [B, S] flat pixel indices -> [B, C, S]."""
    B, C = logits.shape[:2]
    return logits.reshape(B, C, -1).gather(2, pos[:, None, :].expand(B, C, pos.shape[1]))


def load_frozen(folder: Path = DATA) -> tuple[dict, dict]:
    """(meta.json, the arrays of published.npz)."""
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "published.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def model_from_recipe(recipe: dict):
    """The frozen run's model: `create_segmenter` with the recipe's config and seed."""
    from algm_export import create_segmenter

    return create_segmenter(recipe["backbone"], recipe["decoder"], recipe["image_size"], n_cls=recipe["n_cls"],
                            seed=recipe["seed"])


def inputs(photos, size: int) -> torch.Tensor:
    """The photos bundled with scikit-image, preprocessed as tests/conftest.py does: [n, 3, size, size]."""
    from conftest import photo, prep

    return torch.cat([prep(photo(n), size) for n in photos])


def algm_setting(setting: dict, policy: str):
    from algm_export import AlgmSetting

    return AlgmSetting(setting["threshold"], tuple(setting["window"]), tuple(setting["layers"]), policy)


def run_ours(model, images: torch.Tensor, setting: dict, policy: str = "per_image", capacities=None,
             positions=None) -> dict:
    """Our ALGM on `images` (`apply_algm`: no token mode and no capacities = the reference method of
    merging/reference.py; capacities = static token mode): {"grid": the decoder's logits on the patch
    grid [B, C, gh, gw] (before the final upsampling), "tokens" / "forced" [B, steps], "samples": the
    output logits at `positions` [B, C, S]}."""
    from algm_export import apply_algm

    m = apply_algm(model, algm_setting(setting, policy), capacities)
    grid = []
    finish = model.finish

    def keep(masks, padded_hw, out_hw):
        grid.append(masks.float())
        return finish(masks, padded_hw, out_hw)

    model.finish = keep
    try:
        with torch.no_grad():
            out = m(images)
    finally:
        del model.finish
    res = {"grid": torch.cat(grid), "tokens": m.merge_stats["tokens"].clone(),
           "forced": m.merge_stats["forced"].clone()}
    if positions is not None:
        res["samples"] = take_samples(out.float(), positions)
    return res
