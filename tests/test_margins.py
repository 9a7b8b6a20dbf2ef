"""Merge-decision margins and the decisions two runs disagree on (algm_export/merging/margins.py).

Built on token states whose decisions are known by construction: a window exactly at the
threshold, two merged windows whose ranks swap, an A token between two near-equal destinations.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from algm_export.core.setting import AlgmSetting
from algm_export.merging.margins import clap_margins, decision_differences, gbm_margins, step_margins
from algm_export.merging.reference import window_scores
from algm_export.merging.static import clap_static, gbm_static

GRID, WIN = (4, 4), (2, 2)


def windows_state(seed=0, D=16):
    """A [1, 1+16, D] state whose 4 windows have distinct, known scores."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 17, D, generator=g)
    base = torch.randn(D, generator=g)
    # window 0 (patches 0, 1, 4, 5) and window 3 (10, 11, 14, 15): near-identical patches, high scores
    for p, eps in zip((0, 1, 4, 5), (0.01, 0.02, 0.03, 0.04)):
        x[0, 1 + p] = base + eps * torch.randn(D, generator=g)
    for p, eps in zip((10, 11, 14, 15), (0.011, 0.021, 0.031, 0.041)):
        x[0, 1 + p] = base + eps * torch.randn(D, generator=g)
    return x


def test_clap_margins_are_the_distances_to_tau_and_between_ranks():
    x = windows_state()
    s = window_scores(x[:, 1:], GRID, WIN)[0].double()
    tau = float(s.sort(descending=True).values[1]) - 1e-3          # two windows merge
    rec = clap_margins(x, GRID, WIN, tau, 1)[0]
    assert rec["merges"] == 2 and rec["forced"] == 0
    assert math.isclose(rec["threshold_margin"], float((s - tau).abs().min()), rel_tol=1e-9)
    top = s.sort(descending=True).values
    assert math.isclose(rec["rank_margin"], float(top[0] - top[1]), rel_tol=1e-9)
    assert rec["margin"] == min(rec["threshold_margin"], rec["rank_margin"])
    forced = clap_margins(x, GRID, WIN, 1.5, 1, capacity=10)[0]   # nothing reaches tau: 2 forced merges
    assert forced["forced"] == 2 and math.isclose(forced["cut_margin"], float(top[1] - top[2]), rel_tol=1e-9)


def test_a_window_exactly_at_tau_is_named_with_margin_zero():
    x = windows_state()
    s = window_scores(x[:, 1:], GRID, WIN)[0]
    w = int(s.argmax())
    tau = float(s[w])                       # s >= tau: merges in PyTorch ...
    a0 = torch.arange(16)[None]
    _, _, at, _ = clap_static(x, *GRID, *WIN, 1, 16, tau)
    _, _, ab, _ = clap_static(x, *GRID, *WIN, 1, 16, float(np.nextafter(np.float32(tau), np.float32(2))))
    setting = AlgmSetting(tau, WIN, (1, 2))
    d = decision_differences(setting, GRID, 1, [at.numpy()], [ab.numpy()], [{"x": x.numpy()}], threshold=tau)
    assert d["step"] == 0 and d["op"] == "clap"
    flips = [e for e in d["decisions"] if e["kind"] == "threshold"]
    assert [e["decision"].split(" (")[0] for e in flips] == [f"window {w}"]
    assert flips[0]["torch"] == "merged" and flips[0]["backend"] == "kept" and flips[0]["torch_margin"] == 0.0
    assert decision_differences(setting, GRID, 1, [at.numpy()], [at.numpy()], [{"x": x.numpy()}]) is None
    assert a0.shape == at.shape


def test_swapped_ranks_of_merged_windows_are_named():
    x = windows_state()
    s = window_scores(x[:, 1:], GRID, WIN)[0]
    order = s.sort(descending=True).indices.tolist()
    tau = float(s[order[1]]) - 1e-3
    _, _, at, _ = clap_static(x, *GRID, *WIN, 1, 16, tau)
    # the "backend": the same merges with the first two ranks swapped
    ab = at.clone()
    ab[at == 0], ab[at == 1] = 1, 0
    d = decision_differences(AlgmSetting(tau, WIN, (1, 2)), GRID, 1, [at.numpy()], [ab.numpy()],
                             [{"x": x.numpy()}], threshold=tau)
    kinds = {e["kind"] for e in d["decisions"]}
    assert kinds == {"rank"} and {e["decision"] for e in d["decisions"]} == {f"rank of window {order[0]}",
                                                                             f"rank of window {order[1]}"}
    gap = float(s[order[0]] - s[order[1]])
    assert any(math.isclose(abs(e["torch_margin"]), gap, rel_tol=1e-6) for e in d["decisions"])


def gbm_state(lean: float):
    """cls + 16 tokens; A token 1 (position 2) lies between B tokens 0 and 1 (positions 1, 3), at the
    point of equal cosine similarity moved by `lean` towards B 0 (> 0) or B 1 (< 0); the others are
    random, so A 1 is the clearest source."""
    g = torch.Generator().manual_seed(3)
    D = 16
    x = torch.randn(1, 17, D, generator=g).double()
    u, v = torch.randn(D, generator=g).double(), torch.randn(D, generator=g).double()
    b0, b1 = u, u + 0.05 * v
    cos = torch.nn.functional.cosine_similarity
    lo, hi = 0.0, 0.05
    for _ in range(80):   # the t where u + t v is as similar to b0 as to b1
        t = (lo + hi) / 2
        if cos(u + t * v, b0, dim=0) > cos(u + t * v, b1, dim=0):
            lo = t
        else:
            hi = t
    x[0, 1], x[0, 3], x[0, 2] = b0, b1, u + (t - lean) * v
    return x.float()


def test_an_argmax_flip_is_named_with_its_gap():
    P, N = 1, 16
    a0 = np.arange(N)[None]
    size = torch.ones(1, 17)
    xt, xb = gbm_state(2e-4), gbm_state(-2e-4)
    at = gbm_static(xt, size, torch.from_numpy(a0), P, 16, 2.0)[2].numpy()
    ab = gbm_static(xb, size, torch.from_numpy(a0), P, 16, 2.0)[2].numpy()
    setting = AlgmSetting(0.9, WIN, (1, 2))
    d = decision_differences(setting, GRID, P, [a0, at], [a0, ab],
                             [{"x": None}, {"x": xt.numpy(), "size": size.numpy()}],
                             [{"x": None}, {"x": xb.numpy(), "size": size.numpy()}])
    assert d["step"] == 1 and d["op"] == "gbm"
    (e,) = d["decisions"]
    assert e["decision"].startswith("A token 1 ") and e["kind"] == "argmax"
    assert e["torch"] == "-> B token 0" and e["backend"] == "-> B token 1"
    assert 0 < e["torch_margin"] < 1e-3 and e["backend_margin"] < 0
    rec = gbm_margins(xt, size, P, 2.0)[0]
    assert rec["argmax_margin"] <= e["torch_margin"] + 1e-12 and rec["argmax_margin_at"].startswith("A token 1 ")


def test_step_margins_per_image_and_step():
    x = windows_state()
    setting = AlgmSetting(0.5, WIN, (1, 2))
    y, size, _, _ = clap_static(x, *GRID, *WIN, 1, 16, 0.5)
    per = step_margins([{"x": x.numpy()}, {"x": y.numpy(), "size": size.numpy()}], setting, GRID, 1)
    assert len(per) == 1 and [m["op"] for m in per[0]] == ["clap", "gbm"] and [m["layer"] for m in per[0]] == [1, 2]
    assert all(m["margin"] is None or m["margin"] >= 0 for m in per[0])
