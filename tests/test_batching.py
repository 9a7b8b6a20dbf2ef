"""Batches of similar token counts (`runtimes.batching`) and the CLAP probe (`merging.driver.clap_counts`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.merging.driver import clap_counts
from algm_export.runtimes.batching import group_by_tokens, order_of, padded_counts


def _cost(counts, groups):
    return sum(sum(c) for c in padded_counts(counts, groups))


def test_groups_sorted_consecutive_and_ties_by_index():
    counts = [50, 10, 40, 10, 30, 20]
    assert group_by_tokens(counts, 2) == [[1, 3], [5, 4], [2, 0]]
    assert group_by_tokens(counts, 1) == [[1], [3], [5], [4], [2], [0]]
    assert group_by_tokens(counts, 6) == [[1, 3, 5, 4, 2, 0]]
    assert group_by_tokens([7, 7, 7, 7], 2) == [[0, 1], [2, 3]]
    assert group_by_tokens([], 4) == []
    # deterministic whatever the container: numpy ints and arrays, per-step rows
    assert group_by_tokens(np.array(counts), 2) == group_by_tokens(counts, 2)
    assert group_by_tokens(np.array([[5, 3], [5, 2], [1, 9]]), 2) == [[2], [1, 0]]   # step order: (1, 9) first
    with pytest.raises(ValueError, match="batch_size"):
        group_by_tokens(counts, 0)


def test_the_short_batch_goes_where_it_costs_least():
    # [1, 5, 6] in twos: {1} alone and {5, 6} together costs 1 + 12; {1, 5} + {6} costs 16
    assert group_by_tokens([6, 1, 5], 2) == [[1], [2, 0]]
    # [1, 2, 6]: {1, 2} + {6} costs 10, {1} + {2, 6} costs 13
    assert group_by_tokens([6, 1, 2], 2) == [[1, 2], [0]]


def test_grouping_is_optimal_among_all_partitions_on_small_sets():
    """Brute force: no split of the images into batches of `bs` (one short one) pays less padding."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, bs = int(rng.integers(2, 8)), int(rng.integers(2, 4))
        counts = rng.integers(100, 800, n).tolist()
        got = group_by_tokens(counts, bs)
        assert sorted(i for g in got for i in g) == list(range(n))
        assert all(len(g) == bs for g in got if len(g) != n % bs) and len(got) == -(-n // bs)
        best = None
        for perm in itertools.permutations(range(n)):
            sizes_ok = [list(perm[s:s + bs]) for s in range(0, n, bs)]
            c = _cost(counts, sizes_ok)
            best = c if best is None else min(best, c)
        assert _cost(counts, got) == best


def test_padded_counts_and_order():
    counts = [[30, 20], [10, 5], [25, 21], [12, 4]]
    groups = group_by_tokens(counts, 2)
    assert groups == [[1, 3], [2, 0]]
    assert padded_counts(counts, groups) == [(30, 21), (12, 5), (30, 21), (12, 5)]
    flat = [i for g in groups for i in g]
    assert [flat[p] for p in order_of(groups)] == [0, 1, 2, 3]


def test_grouping_saves_padding_on_real_counts():
    """The CLAP counts of docs/performance.md (Segmenter ViT-S/16 512 at 0.88, six photos) in batches of 4:
    in image order the batches pay 1.15x the per-image tokens, grouped 1.07x (the short batch first)."""
    counts = [754, 550, 733, 397, 793, 784]
    ideal = sum(counts)
    in_order = _cost(counts, [[0, 1, 2, 3], [4, 5]])
    groups = group_by_tokens(counts, 4)
    assert groups == [[3, 1], [2, 0, 5, 4]]
    assert round(in_order / ideal, 2) == 1.15 and round(_cost(counts, groups) / ideal, 2) == 1.07


@pytest.fixture(scope="module")
def tiny_model():
    from _helpers.models import tiny_segmenter

    return tiny_segmenter()


def test_clap_probe_gives_the_dynamic_models_first_counts(tiny_model):
    from conftest import PHOTOS, photo
    from algm_export.models.images import to_model_input

    cfg = tiny_model.cfg
    xs = torch.cat([to_model_input(photo(n), cfg.image_size, cfg.normalization) for n in PHOTOS])
    setting = AlgmSetting(0.88, (2, 2), (1, 5))
    dyn = apply_algm(tiny_model, setting, token_mode="dynamic")
    with torch.no_grad():
        dyn(xs)
    want = dyn.merge_stats["tokens"][:, 0].tolist()
    assert clap_counts(tiny_model, setting, xs) == want
    assert len(set(want)) > 2                                 # the photos differ: the check can fail
    # per image, and at another threshold (a threshold-input entry's operating points)
    assert [clap_counts(tiny_model, setting, x[None])[0] for x in xs] == want
    low = clap_counts(tiny_model, setting, xs, threshold=0.5)
    dyn.forward(xs, threshold=0.5)
    assert low == dyn.merge_stats["tokens"][:, 0].tolist() and sum(low) < sum(want)
