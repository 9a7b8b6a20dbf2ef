"""Our ALGM against frozen outputs of the published ALGM code (the authors' Segmenter + ALGM repository).

tests/data/published_algm/ holds what the published code computed (scripts/reference/algm_published_check.py
ran it in its own environment): a seeded ViT-Ti/16 Segmenter at 512 x 512 with a linear decoder,
regenerated here from its recipe (meta.json), four photos bundled with scikit-image, ALGM at the
published layers (1, 5) with window 2 x 2 and a threshold that merges. Each photo alone (the
published coupling on a batch of one = our per_image policy) and the four as one batch (the
published batch_min coupling). Compared: the patch tokens left after each merge step (exactly), the
decoder's logits on the patch grid and the model's output logits at seeded pixel positions (within
1e-4). meta.json's `margins` say how far every merge decision was from flipping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers.published_algm import inputs, load_frozen, model_from_recipe, run_ours, state_sha256, tensor_sha256

TOL = 1e-4
REGENERATE = "regenerate with scripts/reference/algm_published_check.py (docs/models.md)"


@pytest.fixture(scope="module")
def frozen():
    return load_frozen()


@pytest.fixture(scope="module")
def model(frozen):
    return model_from_recipe(frozen[0]["recipe"])


@pytest.fixture(scope="module")
def images(frozen):
    meta = frozen[0]
    return inputs(meta["photos"], meta["recipe"]["image_size"])


def check(ours: dict, arrays: dict, key: str) -> None:
    np.testing.assert_array_equal(ours["tokens"].numpy(), arrays[f"tokens_{key}"])
    assert int(ours["forced"].sum()) == 0
    for name, want in (("grid", arrays[f"grid_logits_{key}"]), ("samples", arrays[f"sample_logits_{key}"])):
        got = ours[name].numpy()
        assert got.shape == want.shape
        worst = float(np.abs(got - want).max())
        assert worst <= TOL, f"{name} logits differ from the published ones by {worst:.2e} (> {TOL})"


def test_inputs_and_weights_are_the_frozen_runs(frozen, model, images):
    meta, arrays = frozen
    assert state_sha256(model.state_dict()) == meta["recipe"]["weights_sha256"], (
        f"create_segmenter no longer makes the frozen run's weights from its seed; {REGENERATE}")
    for i, name in enumerate(meta["photos"]):
        assert tensor_sha256(images[i:i + 1]) == meta["input_sha256"][name], (
            f"photo {name} is no longer preprocessed as in the frozen run; {REGENERATE}")
    # the frozen run is one that exercises the merging: both steps merge, by amounts that differ between
    # photos, and the batch is coupled by its least mergeable photo (batch_min)
    tokens, batch = arrays["tokens_per_image"], arrays["tokens_batch"]
    n = (meta["recipe"]["image_size"] // 16) ** 2
    assert (tokens[:, 0] < n).all() and (tokens[:, 1] < tokens[:, 0]).all()
    assert len(set(tokens[:, 0].tolist())) > 1 and len(set(tokens[:, 1].tolist())) > 1
    assert (batch == batch[0]).all() and batch[0, 0] == tokens[:, 0].max()
    # the decisions that set token counts were far from flipping (float32 rounding of the features is
    # ~1e-6); which of two near-equal destinations a GBM token joins can be closer (meta.json
    # "gbm_destination"), which moves the logits by less than the rounding (docs/models.md)
    for m in meta["margins"].values():
        assert min(m["clap_threshold"], m["gbm_threshold"], m["batch_min_rank_boundary"] or 1.0) > 1e-5


def test_reference_per_image_matches_published(frozen, model, images):
    meta, arrays = frozen
    pos = torch.as_tensor(arrays["sample_positions"])
    check(run_ours(model, images, meta["setting"], "per_image", positions=pos), arrays, "per_image")


def test_reference_batch_min_matches_published(frozen, model, images):
    meta, arrays = frozen
    pos = torch.as_tensor(arrays["sample_positions"])
    check(run_ours(model, images, meta["setting"], "batch_min", positions=pos), arrays, "batch")


def test_static_matches_published(frozen, model, images):
    """Static token mode, capacities = the per-image maximum of the published counts (what an export's
    calibration on these photos gives): the same tokens and logits, padding slots aside."""
    meta, arrays = frozen
    pos = torch.as_tensor(arrays["sample_positions"])
    caps = [int(c) for c in arrays["tokens_per_image"].max(0)]
    check(run_ours(model, images, meta["setting"], "per_image", caps, positions=pos), arrays, "per_image")
