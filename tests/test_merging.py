"""The PyTorch reference: dynamic (docs/algorithm.md: the published method) vs static (docs/algorithm.md: the static form), forced merges, batching, invariants."""

import math

import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.core.errors import CapacityError, ConfigError, InputError
from algm_export.merging import reference
from algm_export.merging.driver import check_capacities
from algm_export.merging.static import clap_static, gbm_capacity_min, gbm_static, rank_desc
from conftest import smooth_image
from _helpers.plugins import (NODE_MAX_VALUES, expected_gbm_sources, gbm_sources, node_max_tokens,
                                  separated_tokens)

SET = AlgmSetting(0.88, (2, 2), (1, 5))


def _run(model, x):
    with torch.no_grad():
        out = model(x)
    return out, {k: v.clone() for k, v in model.merge_stats.items()}


@pytest.mark.parametrize("fixture", [pytest.param("tiny_linear", marks=pytest.mark.slow),
                                     pytest.param("tiny_mask", marks=pytest.mark.slow), "tiny_deit"])
def test_static_equals_dynamic_on_photos(request, fixture, photos_128):
    model = request.getfixturevalue(fixture)
    N = 64
    dyn = apply_algm(model, SET)
    sta = apply_algm(model, SET, capacities=(N, N))
    same_counts, close, merged = 0, 0, 0
    for x in photos_128:
        a, sa = _run(dyn, x)
        b, sb = _run(sta, x)
        merged += int(sa["merges"].sum() > 0)
        same_counts += int(torch.equal(sa["tokens"], sb["tokens"]))
        close += int((a - b).abs().max() <= 1e-4)
        assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.995
        assert int(sb["forced"].sum()) == 0
    n = len(photos_128)
    assert merged == n, "merging must happen on real photos"
    assert same_counts >= n - 1
    assert close >= n - 1


def test_forced_merges_when_capacity_is_tight(tiny_linear, photos_128):
    x = torch.cat(photos_128[:3])
    dyn = apply_algm(tiny_linear, SET)
    _, sd = _run(dyn, x)
    c1 = int(sd["tokens"][:, 0].min()) - 4          # below every image's real count
    c2 = max(int(sd["tokens"][:, 1].min()) - 4, math.ceil(c1 / 2))
    sta = apply_algm(tiny_linear, SET, capacities=(c1, c2))
    out, st = _run(sta, x)
    assert out.shape == (3, 21, 128, 128)
    assert torch.isfinite(out).all()
    assert (st["forced"][:, 0] > 0).all()
    assert (st["tokens"][:, 0] <= c1).all() and (st["tokens"][:, 1] <= c2).all()
    # forced merges are exactly the extra merges the capacity demands
    need = math.ceil((64 - c1) / 3)
    assert torch.equal(st["merges"][:, 0], torch.maximum(sd["merges"][:, 0], torch.tensor(need)))


def test_capacity_errors(tiny_linear):
    with pytest.raises(CapacityError, match="outside"):
        apply_algm(tiny_linear, SET, capacities=(10, 10))        # below W = 16
    with pytest.raises(CapacityError, match="outside"):
        apply_algm(tiny_linear, SET, capacities=(65, 60))        # above N
    with pytest.raises(CapacityError, match="GBM capacity"):
        apply_algm(tiny_linear, SET, capacities=(64, 20))        # more than half cannot merge
    with pytest.raises(CapacityError, match="capacities given"):
        apply_algm(tiny_linear, SET, capacities=(64,))
    with pytest.raises(ConfigError, match="per_image"):
        apply_algm(tiny_linear, AlgmSetting(0.9, policy="batch_min"), capacities=(64, 64))


def test_setting_errors(tiny_linear):
    with pytest.raises(ConfigError, match="outside"):
        AlgmSetting(1.5)
    with pytest.raises(ConfigError, match="layer 13"):
        apply_algm(tiny_linear, AlgmSetting(0.9, layers=(1, 13)))
    with pytest.raises(ConfigError, match="increasing"):
        AlgmSetting(0.9, layers=(5, 1))
    with pytest.raises(ConfigError, match="does not divide"):
        apply_algm(tiny_linear, AlgmSetting(0.9, window=(3, 3)))


def test_nan_input_is_refused(tiny_linear):
    x = smooth_image(128)
    x[0, 0, 3, 3] = float("nan")
    for caps in (None, (64, 64)):
        with pytest.raises(InputError, match="NaN"):
            apply_algm(tiny_linear, SET, caps)(x)


def test_per_image_is_batch_independent(tiny_linear, photos_128):
    sta = apply_algm(tiny_linear, SET, capacities=(64, 64))
    batch = torch.cat(photos_128[:4])
    out_b, st_b = _run(sta, batch)
    for i in range(4):
        out_i, st_i = _run(sta, photos_128[i])
        assert torch.equal(st_b["merges"][i], st_i["merges"][0])
        assert (out_b[i] - out_i[0]).abs().max() < 1e-3
    dyn = apply_algm(tiny_linear, SET)
    out_d, st_d = _run(dyn, batch)
    assert torch.equal(st_d["merges"], st_b["merges"])


def test_batch_min_merges_the_batch_minimum(tiny_linear, photos_128):
    batch = torch.cat(photos_128[:4])
    per = apply_algm(tiny_linear, SET)
    _, sp = _run(per, batch)
    bmin = apply_algm(tiny_linear, AlgmSetting(0.88, policy="batch_min"))
    _, sb = _run(bmin, batch)
    assert len(set(sp["merges"][:, 0].tolist())) > 1, "photos should differ in CLAP merges"
    assert (sb["merges"][:, 0] == sp["merges"][:, 0].min()).all()
    assert (sb["merges"][:, 1] == sb["merges"][0, 1]).all()        # one r for the whole batch


# ----------------------------------------------------------------------------- op level

@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_clap_exact_decisions_and_invariants(P):
    x = separated_tokens(P=P)
    B, T, D = x.shape
    N = T - P
    score = reference.window_scores(x[:, P:], (4, 4), (2, 2))
    thr = float(score.median())
    y, size, assign, stats = clap_static(x, 4, 4, 2, 2, P, N, thr)
    m = (score >= thr).sum(1)
    assert torch.equal(stats[:, 0].long(), m) and (stats[:, 1] == 0).all()
    # identical to the dynamic reference, image by image
    for b in range(B):
        d = reference.clap(x[b:b + 1], torch.ones(1, T), (4, 4), (2, 2), thr, P)
        n = d.x.shape[1]
        assert torch.equal(d.assign[0], assign[b].long())
        assert torch.allclose(d.x[0], y[b, :n], atol=1e-6)
        assert (size[b, n:] == 0).all() and (y[b, n:] == 0).all()
    _check_invariants(x, torch.ones(B, T), y, size, assign, P, N)


def _check_invariants(x_in, size_in, y, size, assign, P, N, assign_in=None):
    B = x_in.shape[0]
    for b in range(B):
        n_real = int((size[b] > 0).sum())
        assert (size[b, :n_real] > 0).all() and (size[b, n_real:] == 0).all()   # real tokens first
        assert float(size[b, P:].sum()) == pytest.approx(N)                       # sizes sum to N
        assert int(assign[b].max()) < n_real - P and int(assign[b].min()) >= 0    # never points at padding
        # a merged token is the size-weighted mean of the original patches it holds
        src = x_in[b, P:] if assign_in is None else None
        if src is not None:
            for t in range(n_real - P):
                held = (assign[b] == t).nonzero().flatten()
                assert len(held) == int(size[b, P + t])
                assert torch.allclose(y[b, P + t], src[held].mean(0), atol=1e-5)


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_gbm_invariants_and_weighted_mean(P):
    x = separated_tokens(P=P, seed=3)
    B, T, D = x.shape
    N = T - P
    y1, s1, a1, _ = clap_static(x, 4, 4, 2, 2, P, N, 0.5)
    y2, s2, a2, st = gbm_static(y1, s1, a1, P, N, 5.0)
    _check_invariants(x, torch.ones(B, T), y2, s2, a2, P, N, assign_in=a1)
    for b in range(B):
        n_real = int((s2[b] > 0).sum())
        for t in range(n_real - P):
            held = (a2[b] == t).nonzero().flatten()            # original patches
            in_tokens = a1[b, held].unique()                   # tokens of the CLAP output it absorbed
            w = s1[b, P + in_tokens]
            want = (y1[b, P + in_tokens] * w[:, None]).sum(0) / w.sum()
            assert torch.allclose(y2[b, P + t], want, atol=1e-5)
        # prefix tokens stay in front, untouched
        assert torch.allclose(y2[b, :P], y1[b, :P])
    assert (st[:, 0] > 0).any()


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_gbm_static_matches_dynamic(P):
    """CLAP then GBM, static (capacities = N) against the published form, image by image (per_image)."""
    grid = (8, 8)
    N = grid[0] * grid[1]
    x = separated_tokens(B=3, P=P, grid=grid, seed=5)
    T = x.shape[1]
    thr = float(reference.window_scores(x[:, P:], grid, (2, 2)).median())
    y1, s1, a1, st1 = clap_static(x, *grid, 2, 2, P, N, thr)
    y2, s2, a2, st2 = gbm_static(y1, s1, a1, P, N, 5.0)
    for b in range(x.shape[0]):
        d = reference.clap(x[b:b + 1], torch.ones(1, T), grid, (2, 2), thr, P)
        dg = reference.gbm(d.x, d.size, d.assign, P, 5.0)
        assert 0 < int(d.merges[0]) < N // 4 and 0 < int(dg.merges[0])   # both steps merge, not everything
        assert int(st1[b, 0]) == int(d.merges[0]) and int(st2[b, 0]) == int(dg.merges[0])
        assert torch.equal(a1[b].long(), d.assign[0]) and torch.equal(a2[b].long(), dg.assign[0])
        n = dg.x.shape[1]
        assert torch.allclose(y2[b, :n], dg.x[0], atol=1e-5)
        assert torch.equal(s2[b, :n], dg.size[0]) and (s2[b, n:] == 0).all()
    assert (st1[:, 1] == 0).all() and (st2[:, 1] == 0).all()


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_gbm_threshold_statistics_cover_all_of_a_without_prefix(P):
    """With no prefix token the GBM threshold runs over all of A, position 0 included (docs/algorithm.md: other families); with a
    class token position 0 is left out. Position 0 is the best match here and moves the threshold past
    another token, so leaving it out (or only counting it) merges a different set."""
    x, size, assign = node_max_tokens(P=P)
    nA = len(NODE_MAX_VALUES)
    want = expected_gbm_sources(NODE_MAX_VALUES, P, 1.0)
    assert want == ([0, 9] if P == 0 else [8, 9])
    C = x.shape[1] - P
    y, s, a, st = gbm_static(x, size, assign, P, C, 1.0)
    assert st.tolist() == [[len(want), 0]]
    assert gbm_sources(a[0], P, nA) == want
    d = reference.gbm(x, size, assign.long(), P, 1.0)
    assert int(d.merges[0]) == len(want) and torch.equal(d.assign, a.long())


def test_gbm_capacity_bounds_without_prefix():
    """P = 0: every A token is a candidate, so GBM can reach floor(C1 / 2) tokens (with a class token
    ceil((P + C1) / 2) - 1 candidates); the smallest capacity is reached by forced merges."""
    assert [gbm_capacity_min(c, 0) for c in (1, 2, 7, 16, 64)] == [1, 1, 3, 8, 32]
    assert [gbm_capacity_min(c, 1) for c in (7, 16, 64)] == [4, 8, 32]
    assert [gbm_capacity_min(c, 2) for c in (7, 16, 64)] == [3, 8, 32]
    setting = AlgmSetting(0.9, (2, 2), (1, 5))
    check_capacities([17, 8], setting, (8, 8), 0)                  # 9 of 17 tokens are candidates
    with pytest.raises(CapacityError, match="GBM capacity"):
        check_capacities([17, 8], setting, (8, 8), 1)              # 8 of 17 (the class token is not)
    for C1 in (7, 16):
        x = torch.ones(1, C1, 8)                                   # constant tokens: nothing passes on its own
        size = torch.ones(1, C1)
        assign = torch.arange(C1, dtype=torch.int32)[None]
        C2 = gbm_capacity_min(C1, 0)
        y, s, a, st = gbm_static(x, size, assign, 0, C2, 5.0)
        assert int((s > 0).sum()) == C2 and float(s.sum()) == C1      # filled exactly, nothing lost
        assert int(st[0, 0]) == (C1 + 1) // 2                          # every A token is a source


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_gbm_single_slot_is_a_noop(P):
    """Fewer than two slots besides the protected ones (P = 0: a single slot, no B token at all)."""
    x = torch.randn(2, P + 1, 4)
    size = torch.ones(2, P + 1)
    assign = torch.zeros(2, 4, dtype=torch.int32)
    y, s, a, st = gbm_static(x, size, assign, P, 1, 5.0)
    assert torch.equal(y, x) and torch.equal(s, size) and torch.equal(a, assign) and (st == 0).all()
    d = reference.gbm(x, size, assign.long(), P, 5.0)
    assert torch.equal(d.x, x) and int(d.merges.sum()) == 0


def test_ties_are_broken_by_index():
    v = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1]])
    assert rank_desc(v).tolist() == [[2, 0, 3, 1, 4]]
    # constant tokens: every window ties; lower window index merges first, deterministic
    x = torch.ones(1, 1 + 16, 8)
    y, size, assign, stats = clap_static(x, 4, 4, 2, 2, 1, 10, 2.0)   # threshold unreachable -> forced only
    assert stats.tolist() == [[2, 2]]
    assert assign[0, :2].tolist() == [0, 0] and assign[0, 2:4].tolist() == [1, 1]
    y2, *_ = clap_static(x, 4, 4, 2, 2, 1, 10, 2.0)
    assert torch.equal(y, y2)
