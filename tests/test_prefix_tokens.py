"""Any number of prefix tokens (docs/algorithm.md, CLAP and GBM): class, distillation and
register tokens (DINOv2 with 4 registers: P = 5) never merge and never receive a merge.

* P = 0, 1, 2 (no prefix / class token / class + distillation token) are the published rule: the
  outputs of every op are those of the P <= 2 code the general rule replaced, bit for bit
  (digests frozen from that code, on inputs whose arithmetic is exact in any order);
* an independent slow reference (loops over positions, float64, written from the rule) gives
  the decisions of the torch ops, static, dynamic and published, for P = 0..5, 8 and 16;
* property tests (hypothesis) of the op contract for P = 0..5 in both token modes;
* ONNX Runtime runs the function bodies (versions 1 and 2) with the torch ops' decisions;
* a timm DINOv2 ViT with 4 registers keeps its 5 prefix tokens in torch and ONNX Runtime, static
  and dynamic token mode, while merges happen.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from algm_export import AlgmSetting, apply_algm
from algm_export.export.opmodels import clap_dynamic_model, clap_model, gbm_dynamic_model, gbm_model
from algm_export.merging import reference
from algm_export.merging.static import clap_dynamic, clap_static, gbm_capacity_min, gbm_dynamic, gbm_static

MARGIN = 1e-5
DIGESTS = Path(__file__).resolve().parent / "data" / "prefix_p012_digests.json"
HYP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- inputs

def window_tokens(B: int, P: int, grid, D: int, seed: int, dyadic: bool = False) -> torch.Tensor:
    """[B, P+N, D]: the 4 tokens of each 2x2 window share a direction plus noise of a level of
    their own (window scores spread out); prefix tokens random. `dyadic`: every value a multiple
    of 1/32, so that merge sums (and hence the outputs) are exact in any summation order."""
    g = torch.Generator().manual_seed(seed)
    gh, gw = grid
    N = gh * gw
    x = torch.randn(B, P + N, D, generator=g)
    widx = reference.window_patch_index(grid, (2, 2))                           # [W, 4]
    W = widx.shape[0]
    base = torch.randn(B, W, 1, D, generator=g)
    level = 0.05 + 0.6 * torch.rand(B, W, 1, 1, generator=g)
    win = base + level * torch.randn(B, W, 4, D, generator=g) * base.norm(dim=-1, keepdim=True) / math.sqrt(D)
    patches = torch.empty(B, N, D)
    patches[:, widx.reshape(-1)] = win.reshape(B, 4 * W, D)
    x[:, P:] = patches
    return torch.round(x * 32) / 32 if dyadic else x


# ----------------------------------------------------------------------------- the slow reference

class Step(NamedTuple):
    """One image after one merge step (real tokens only): rows float64 [P + n, D], sizes, the
    assignment map, (merges, forced) and the smallest float64 distance of a decision to flipping."""
    rows: torch.Tensor
    sizes: list
    assign: list
    stats: tuple
    margin: float


def slow_clap(x: torch.Tensor, grid, P: int, thresholds, capacity: int, window=(2, 2)) -> list[Step]:
    """CLAP image by image, from the rule: windows over the patches only, scores = mean cosine over
    the ordered pairs, r = max(#{score >= tau}, need) best windows merged (ties: lower index),
    output [prefix, merged windows by decreasing score, unmerged patches ascending]."""
    B = x.shape[0]
    gh, gw = grid
    wh, ww = window
    k, N = wh * ww, gh * gw
    windows = [[(i * wh + a) * gw + j * ww + b for a in range(wh) for b in range(ww)]
               for i in range(gh // wh) for j in range(gw // ww)]
    W = len(windows)
    out = []
    for b in range(B):
        p = x[b, P:].double()
        u = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        score = []
        for w in windows:
            cos = u[w] @ u[w].T
            score.append(float(sum(cos[i, j] for i in range(k) for j in range(k) if i != j)) / (k * (k - 1)))
        tau = float(thresholds[b])
        m = sum(s >= tau for s in score)
        need = max(0, math.ceil((N - capacity) / (k - 1)))
        r = min(max(m, need), W)
        order = sorted(range(W), key=lambda w: (-score[w], w))
        merged = order[:r]
        taken = {i for w in merged for i in windows[w]}
        unmerged = [i for i in range(N) if i not in taken]
        rows = [x[b, t].double() for t in range(P)] + [p[windows[w]].mean(0) for w in merged] + [p[i] for i in unmerged]
        assign = [0] * N
        for j, w in enumerate(merged):
            for i in windows[w]:
                assign[i] = j
        for j, i in enumerate(unmerged):
            assign[i] = r + j
        top = sorted(score, reverse=True)[: r + 1]
        margin = min([abs(s - tau) for s in score] + [a - c for a, c in zip(top, top[1:])])
        out.append(Step(torch.stack(rows), [1.0] * P + [float(k)] * r + [1.0] * len(unmerged), assign,
                        (r, max(r - m, 0)), margin))
    return out


def slow_gbm(x: torch.Tensor, size: torch.Tensor, assign: torch.Tensor, P: int, capacity, L: float) -> list[Step]:
    """GBM image by image, from the rule: A = even positions, B = odd, over the real tokens; the
    prefix positions (0..P-1) neither merge (A) nor receive (B); statistics over the non-prefix A
    tokens; output [prefix in order, unmerged non-prefix A ascending, non-prefix B]. capacity:
    C2, or None for every slot (no forced merge)."""
    out = []
    for b in range(x.shape[0]):
        n_real = int((size[b] > 0).sum())
        t = x[b, :n_real].double()
        s = [float(v) for v in size[b, :n_real]]
        if n_real - P < 2:
            out.append(Step(t, s, [int(a) for a in assign[b]], (0, 0), math.inf))
            continue
        u = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cand = [q for q in range(0, n_real, 2) if q >= P]
        recv = [q for q in range(1, n_real, 2) if q >= P]
        sims = u[cand] @ u[recv].T                                          # [cand, recv]
        node_max = {q: float(sims[i].max()) for i, q in enumerate(cand)}
        node_to = {q: recv[int((sims[i] == sims[i].max()).nonzero()[0])] for i, q in enumerate(cand)}
        vals = torch.tensor([node_max[q] for q in cand], dtype=torch.float64)
        tau = float(vals.mean() + vals.std() / L) if len(cand) >= 2 else math.nan
        m = sum(v >= tau for v in vals.tolist())
        cap = n_real - P if capacity is None else capacity
        r = min(max(m, n_real - P - cap), len(cand))
        order = sorted(cand, key=lambda q: (-node_max[q], q))
        src = order[:r]
        acc = {j: [t[j] * s[j], s[j]] for j in recv}
        for q in src:
            acc[node_to[q]][0] = acc[node_to[q]][0] + t[q] * s[q]
            acc[node_to[q]][1] += s[q]
        keep_a = [q for q in cand if q not in src]
        seq = list(range(P)) + keep_a + recv
        pos = {q: i for i, q in enumerate(seq)}
        for q in src:
            pos[q] = pos[node_to[q]]
        rows = [t[q] for q in range(P)] + [t[q] for q in keep_a] + [acc[j][0] / acc[j][1] for j in recv]
        sizes = [s[q] for q in range(P)] + [s[q] for q in keep_a] + [acc[j][1] for j in recv]
        margins = [abs(v - tau) for v in vals.tolist()] if math.isfinite(tau) else [math.inf]
        if 0 < r < len(order):
            margins.append(node_max[order[r - 1]] - node_max[order[r]])
        if len(recv) >= 2:
            for q in src:
                top2 = sims[cand.index(q)].topk(2).values
                margins.append(float(top2[0] - top2[1]))
        out.append(Step(torch.stack(rows), sizes, [pos[P + int(a)] - P for a in assign[b]], (r, max(r - m, 0)),
                        min(margins)))
    return out


def assert_matches(op_out, steps: list[Step], P: int, what: str) -> None:
    """Torch / ONNX outputs (y, size, assign, stats) against the slow reference: decisions exact,
    the prefix rows bit for bit, merged values to float32 rounding, padding zero."""
    y, size, assign, stats = (torch.as_tensor(np.asarray(v)) for v in op_out[:4])
    for b, ref in enumerate(steps):
        n = len(ref.sizes)
        assert stats[b].tolist() == list(ref.stats), f"{what} image {b}: stats {stats[b].tolist()} != {ref.stats}"
        assert assign[b].tolist() == ref.assign, f"{what} image {b}: assignment map differs"
        assert size[b, :n].tolist() == ref.sizes and (size[b, n:] == 0).all(), f"{what} image {b}: sizes differ"
        assert (y[b, n:] == 0).all(), f"{what} image {b}: padding is not zero"
        assert torch.equal(y[b, :P].double(), ref.rows[:P]), f"{what} image {b}: a prefix row changed"
        scale = max(1.0, float(ref.rows.abs().max()))
        err = float((y[b, :n].double() - ref.rows).abs().max())
        assert err <= 1e-5 * scale, f"{what} image {b}: token error {err:.3g}"


# ----------------------------------------------------------------------------- well-separated cases

class Case(NamedTuple):
    x: torch.Tensor
    thresholds: torch.Tensor   # [B] per image (dynamic); the static ops use thresholds[0] for all
    caps: tuple                # (C1, C2): forced merges in every image of both steps
    seed: int


def case_thresholds(x: torch.Tensor, P: int, grid) -> torch.Tensor:
    """One CLAP threshold per image, between its window scores (quantiles 0.3 .. 0.75)."""
    B = x.shape[0]
    sc = reference.window_scores(x[:, P:], grid, (2, 2))
    qs = torch.linspace(0.3, 0.75, B)
    return torch.tensor([float(sc[b].quantile(float(q))) - 1e-3 for b, q in enumerate(qs)])


def case_margin(x: torch.Tensor, thr: torch.Tensor, P: int, grid, caps) -> float:
    """The smallest float64 margin of every decision the tests make on this input."""
    N = grid[0] * grid[1]
    C1, C2 = caps
    shared = torch.full_like(thr, float(thr[0]))
    m = min(st.margin for thr_b, C in ((thr, N), (shared, N), (shared, C1)) for st in slow_clap(x, grid, P, thr_b, C))
    for thr_b, C in ((thr, N), (shared, N), (shared, C1)):
        y, sz, a, _ = clap_static(x, *grid, 2, 2, P, C, thr_b)
        m = min([m] + [st.margin for st in slow_gbm(y, sz, a, P, None, 5.0)])
        if C != N:
            m = min([m] + [st.margin for st in slow_gbm(y, sz, a, P, C2, 5.0)])
    return m


def separated_case(P: int, grid=(8, 8), B: int = 3, D: int = 16, seed: int = 0, dyadic: bool = False,
                   tries: int = 80) -> Case:
    """Inputs whose every decision (CLAP per image and batch-wide threshold, GBM after it, at full and
    at tight capacities) is more than MARGIN from flipping in float64, so that any arithmetic decides
    alike; the tight capacities force merges in every image of both steps."""
    N = grid[0] * grid[1]
    for s in range(seed, seed + tries):
        x = window_tokens(B, P, grid, D, s, dyadic)
        thr = case_thresholds(x, P, grid)
        if min(st.margin for st in slow_clap(x, grid, P, thr, N)) <= MARGIN:   # cheap first look
            continue
        counts = [len(st.sizes) - P for st in slow_clap(x, grid, P, torch.full_like(thr, float(thr[0])), N)]
        C1 = max(N // 4, min(counts) - 2)
        C2 = min(C1, gbm_capacity_min(C1, P) + 1)
        if case_margin(x, thr, P, grid, (C1, C2)) > MARGIN:
            return Case(x, thr, (C1, C2), s)
    pytest.fail(f"no input with well-separated decisions found for P = {P}")


# ----------------------------------------------------------------------------- P = 0, 1, 2: frozen digests

def _digest(t) -> str:
    t = torch.as_tensor(np.asarray(t)).contiguous()
    h = hashlib.sha256(f"{t.dtype}{list(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def _sess(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def legacy_outputs(P: int, x: torch.Tensor, thr: torch.Tensor, caps) -> dict:
    """Every op's outputs on one case: torch static (full and tight capacities), dynamic, the
    published form image by image, and the ONNX bodies of both versions."""
    grid, N, D = (8, 8), 64, x.shape[2]
    t = float(thr[0])
    out = {}
    for C1, C2 in ((N, N), tuple(caps)):
        c = clap_static(x, *grid, 2, 2, P, C1, t)
        out[f"clap_static/{C1}"] = c
        out[f"gbm_static/{C1}/{C2}"] = gbm_static(*c[:3], P, C2, 5.0)
        o = _sess(clap_model(P + N, D, grid, (2, 2), P, C1, t)).run(None, {"x": x.numpy()})
        out[f"onnx_clap/{C1}"] = o
        out[f"onnx_gbm/{C1}/{C2}"] = _sess(gbm_model(P + C1, D, N, P, C2, 5.0)).run(
            None, {"x": o[0], "size_in": o[1], "assign_in": o[2]})
    c = clap_dynamic(x, thr, *grid, 2, 2, P)
    out["clap_dynamic"] = c
    out["gbm_dynamic"] = gbm_dynamic(*c[:3], P, 5.0)
    o = _sess(clap_dynamic_model(D, grid, (2, 2), P)).run(None, {"x": x.numpy(), "threshold": thr.numpy()})
    out["onnx_clap_dynamic"] = o
    out["onnx_gbm_dynamic"] = _sess(gbm_dynamic_model(D, N, P, 5.0)).run(
        None, {"x": o[0], "size_in": o[1], "assign_in": o[2]})
    for b in range(x.shape[0]):
        d = reference.clap(x[b:b + 1], torch.ones(1, P + N), grid, (2, 2), float(thr[b]), P)
        out[f"reference_clap/{b}"] = tuple(d)
        out[f"reference_gbm/{b}"] = tuple(reference.gbm(d.x, d.size, d.assign, P, 5.0))
    return out


def legacy_record(P: int, seed: int, caps) -> dict:
    """Digests of every output on the frozen case of P (3 images, 8x8 grid, D = 16, dyadic)."""
    grid = (8, 8)
    x = window_tokens(3, P, grid, 16, seed, dyadic=True)
    thr = case_thresholds(x, P, grid)
    assert case_margin(x, thr, P, grid, caps) > MARGIN, "the frozen case is no longer well separated"
    outs = legacy_outputs(P, x, thr, caps)
    return {"seed": seed, "caps": list(caps), "input": _digest(x),
            "outputs": {k: [_digest(t) for t in v] for k, v in outs.items()},
            "merges": {k: str(np.asarray(v[3]).tolist()) for k, v in outs.items() if not k.startswith("reference")}}


@pytest.mark.parametrize("P", [0, 1, 2])
def test_p012_outputs_are_those_of_the_published_rule(P):
    """Every output of every op (torch static, dynamic, published; ONNX versions 1 and 2) equals,
    bit for bit, what the P <= 2 code (class / distillation token special cases) gave before the
    general rule replaced it. Inputs are multiples of 1/32 with every decision far from rounding,
    so the recorded digests hold on any CPU."""
    want = json.loads(DIGESTS.read_text())[str(P)]
    got = legacy_record(P, want["seed"], want["caps"])
    assert got["input"] == want["input"], "the test input changed (torch's generator?): the digests no longer apply"
    assert got["merges"] == want["merges"]
    assert all(r[0] > 0 for v in got["merges"].values() for r in json.loads(v)), "every op must merge in every image"
    for name, digests in want["outputs"].items():
        assert got["outputs"][name] == digests, f"P = {P}: {name} changed (outputs 0..3: y, size, assign, stats)"


# ----------------------------------------------------------------------------- the slow reference vs the ops

@pytest.mark.parametrize("P", [0, 1, 2, 3, 4, 5, 8, 16])
def test_ops_follow_the_rule_for_any_prefix(P):
    """Torch static (full and tight capacities), dynamic and the published form = the slow
    reference: the prefix stays in front unchanged, never merges, never receives."""
    grid, N = (8, 8), 64
    case = separated_case(P, seed=7)
    x, thr = case.x, case.thresholds
    C1, C2 = case.caps
    shared = torch.full_like(thr, float(thr[0]))
    # static, capacity N (no forced merge) and tight (forced merges)
    for c1, c2 in ((N, None), (C1, C2)):
        y, sz, a, stt = clap_static(x, *grid, 2, 2, P, c1, float(thr[0]))
        assert_matches((y, sz, a, stt), slow_clap(x, grid, P, shared, c1), P, f"clap static C1={c1}")
        ref = slow_gbm(y, sz, a, P, c2, 5.0)
        assert_matches(gbm_static(y, sz, a, P, c2 or y.shape[1] - P, 5.0), ref, P, f"gbm static C2={c2}")
        if c2 is not None:
            g = gbm_static(y, sz, a, P, c2, 5.0)
            assert (stt[:, 1] > 0).all() and (g[3][:, 1] > 0).all(), "tight capacities must force merges"
    # dynamic token mode, one threshold per image
    y, sz, a, stt = clap_dynamic(x, thr, *grid, 2, 2, P)
    ref1 = slow_clap(x, grid, P, thr, N)
    assert_matches((y, sz, a, stt), ref1, P, "clap dynamic")
    assert y.shape[1] == max(len(s.sizes) for s in ref1)
    ref2 = slow_gbm(y, sz, a, P, None, 5.0)
    g = gbm_dynamic(y, sz, a, P, 5.0)
    assert_matches(g, ref2, P, "gbm dynamic")
    assert g[0].shape[1] == max(len(s.sizes) for s in ref2)
    assert all(s.stats[0] > 0 for s in ref1 + ref2), "both steps must merge in every image"
    # the published form, image by image
    for b in range(x.shape[0]):
        d = reference.clap(x[b:b + 1], torch.ones(1, P + N), grid, (2, 2), float(thr[b]), P)
        assert_matches((d.x, d.size, d.assign, torch.stack([d.merges, d.forced], 1)), ref1[b:b + 1], P, "reference clap")
        dg = reference.gbm(d.x, d.size, d.assign, P, 5.0)
        assert_matches((dg.x, dg.size, dg.assign, torch.stack([dg.merges, dg.forced], 1)), ref2[b:b + 1], P,
                       "reference gbm")


def test_capacity_minimum_counts_the_prefix_of_a():
    """Only non-prefix A tokens can be sources: ceil((P + C) / 2) - ceil(P / 2) of them."""
    for P in range(0, 17):
        for C in (2, 7, 16, 64):
            candidates = len([q for q in range(0, P + C, 2) if q >= P])
            assert gbm_capacity_min(C, P) == max(1, C - candidates)
    # constant tokens with P = 5: every candidate merges when forced, the prefix stays
    P, C = 5, 12
    x = torch.ones(1, P + C, 4)
    x[0, :P] = torch.randn(P, 4)
    size = torch.ones(1, P + C)
    assign = torch.arange(C, dtype=torch.int32)[None]
    C2 = gbm_capacity_min(C, P)
    y, s, a, stt = gbm_static(x, size, assign, P, C2, 5.0)
    assert int((s[0, P:] > 0).sum()) == C2 and float(s[0, P:].sum()) == C and torch.equal(y[:, :P], x[:, :P])


# ----------------------------------------------------------------------------- properties (any data)

def _tokens(B, T, D, P, kind, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    if kind == "smooth":
        x[:, P:] = torch.randn(B, 1, D, generator=g) + 0.2 * x[:, P:]
    elif kind == "constant":
        x[:, P:] = 1.0
    elif kind == "prefix_like":     # prefix tokens that look exactly like the patches: still never merged
        x[:, P:] = torch.randn(B, 1, D, generator=g) + 0.05 * x[:, P:]
        x[:, :P] = x[:, P:P + 1]
    return x


@st.composite
def prefix_case(draw):
    P = draw(st.integers(0, 5))
    wh, ww = draw(st.sampled_from([(2, 2), (1, 2), (2, 3)]))
    gh, gw = wh * draw(st.integers(1, 4)), ww * draw(st.integers(1, 4))
    N, k = gh * gw, wh * ww
    B = draw(st.integers(1, 3))
    D = draw(st.sampled_from([3, 8, 16]))
    C1 = draw(st.integers(N // k, N))
    C2 = draw(st.integers(gbm_capacity_min(C1, P), C1))
    kind = draw(st.sampled_from(["random", "smooth", "constant", "prefix_like"]))
    thr = draw(st.lists(st.floats(-1.0, 1.0, width=32), min_size=B, max_size=B))
    div = draw(st.sampled_from([1.0, 5.0]))
    seed = draw(st.integers(0, 2**16))
    return P, (gh, gw), (wh, ww), B, D, C1, C2, kind, thr, div, seed


def _check_step(x_in, y, size, assign, stats, P):
    """The op contract after one step, whatever the data."""
    B = y.shape[0]
    assert torch.equal(y[:, :P], x_in[:, :P]), "prefix rows changed or moved"
    assert (size[:, :P] == 1).all(), "prefix sizes must stay 1"
    n_out = (size[:, P:] > 0).sum(1)
    for b in range(B):
        n = int(n_out[b])
        assert (size[b, P:P + n] > 0).all() and (size[b, P + n:] == 0).all() and (y[b, P + n:] == 0).all()
        a = assign[b].long()
        assert a.min() >= 0 and a.max() < n, "the assignment points into the prefix or at padding"
        assert torch.equal(torch.bincount(a, minlength=n).float(), size[b, P:P + n]), "sizes != patches held"
    return n_out


@HYP
@given(prefix_case())
def test_prefix_contract_in_both_token_modes(case):
    """Static and dynamic token mode, any P <= 5, any data (ties, constants, prefix tokens equal to
    the patches): the prefix rows come out first and unchanged with size 1, the assignment map
    points into the real patch tokens only, each step removes exactly its merges, and the dynamic
    ops are the static ops at full capacity cut to the batch's slots."""
    P, grid, window, B, D, C1, C2, kind, thr, div, seed = case
    N, k = grid[0] * grid[1], window[0] * window[1]
    x = _tokens(B, P + N, D, P, kind, seed)
    thr_t = torch.tensor(thr, dtype=torch.float32)
    # static
    y1, s1, a1, st1 = clap_static(x, *grid, *window, P, C1, float(thr[0]))
    n1 = _check_step(x, y1, s1, a1, st1, P)
    assert torch.equal(n1, N - st1[:, 0].long() * (k - 1))
    y2, s2, a2, st2 = gbm_static(y1, s1, a1, P, C2, div)
    n2 = _check_step(y1, y2, s2, a2, st2, P)
    assert torch.equal(n2, n1 - st2[:, 0].long()) and (n2 <= C2).all()
    # dynamic: one threshold per image, the token axis = the largest real count
    d1 = clap_dynamic(x, thr_t, *grid, *window, P)
    m1 = _check_step(x, *d1, P)
    full = clap_static(x, *grid, *window, P, N, thr_t)
    K1 = d1[0].shape[1]
    assert K1 == P + int(m1.max()) and (d1[3][:, 1] == 0).all()
    assert torch.equal(d1[0], full[0][:, :K1]) and torch.equal(d1[1], full[1][:, :K1])
    assert torch.equal(d1[2], full[2]) and torch.equal(d1[3], full[3])
    d2 = gbm_dynamic(*d1[:3], P, div)
    m2 = _check_step(d1[0], *d2, P)
    assert torch.equal(m2, m1 - d2[3][:, 0].long()) and (d2[3][:, 1] == 0).all()
    full2 = gbm_static(*d1[:3], P, K1 - P, div)
    K2 = d2[0].shape[1]
    assert K2 == P + int(m2.max())
    for u, v in zip(d2, (full2[0][:, :K2], full2[1][:, :K2], full2[2], full2[3])):
        assert torch.equal(u, v)


@st.composite
def separated_params(draw):
    return draw(st.integers(0, 5)), draw(st.sampled_from([(4, 4), (6, 4), (8, 8)])), draw(st.integers(1, 3)), \
        draw(st.sampled_from([8, 16])), draw(st.integers(0, 10**4))


@HYP
@given(separated_params())
def test_static_equals_dynamic_equals_reference(params):
    """On inputs whose decisions are far from rounding: static at capacity N, dynamic and the
    published form image by image make the same decisions (and the slow reference's)."""
    P, grid, B, D, seed = params
    N = grid[0] * grid[1]
    case = separated_case(P, grid, B=B, D=D, seed=seed)
    x, thr = case.x, case.thresholds
    d1 = clap_dynamic(x, thr, *grid, 2, 2, P)
    d2 = gbm_dynamic(*d1[:3], P, 5.0)
    ref1 = slow_clap(x, grid, P, thr, N)
    assert_matches(d1, ref1, P, "clap dynamic")
    assert_matches(d2, slow_gbm(*d1[:3], P, None, 5.0), P, "gbm dynamic")
    for b in range(B):
        s1 = clap_static(x[b:b + 1], *grid, 2, 2, P, N, float(thr[b]))
        s2 = gbm_static(*s1[:3], P, N, 5.0)
        r1 = reference.clap(x[b:b + 1], torch.ones(1, P + N), grid, (2, 2), float(thr[b]), P)
        r2 = reference.gbm(r1.x, r1.size, r1.assign, P, 5.0)
        for static_out, dyn_out, ref in ((s1, d1, r1), (s2, d2, r2)):
            n = ref.x.shape[1]
            assert torch.equal(static_out[2][0].long(), ref.assign[0]) and torch.equal(dyn_out[2][b].long(), ref.assign[0])
            assert int(static_out[3][0, 0]) == int(dyn_out[3][b, 0]) == int(ref.merges[0])
            assert torch.equal(static_out[1][0, :n], ref.size[0]) and torch.equal(dyn_out[1][b, :n], ref.size[0])
            assert torch.equal(ref.x[0, :P], x[b, :P])
            assert torch.allclose(static_out[0][0, :n], ref.x[0], atol=1e-5)


# ----------------------------------------------------------------------------- ONNX function bodies

@pytest.mark.parametrize("P", [0, 1, 2, 3, 4, 5])
def test_onnx_bodies_follow_the_rule_for_any_prefix(P):
    """ONNX Runtime runs the `algm` version 1 (full and tight capacities) and version 2 bodies with
    the torch ops' decisions and the slow reference's, prefix rows bit for bit."""
    grid, N = (8, 8), 64
    case = separated_case(P, seed=31)
    x, thr = case.x, case.thresholds
    D = x.shape[2]
    t = float(thr[0])
    shared = torch.full_like(thr, t)
    for C1, C2 in ((N, N), case.caps):
        o1 = _sess(clap_model(P + N, D, grid, (2, 2), P, C1, t)).run(None, {"x": x.numpy()})
        assert_matches(o1, slow_clap(x, grid, P, shared, C1), P, f"AlgmClap/1 C1={C1}")
        w1 = clap_static(x, *grid, 2, 2, P, C1, t)
        for g, w in zip(o1[1:], w1[1:]):
            np.testing.assert_array_equal(g, w.numpy())
        o2 = _sess(gbm_model(P + C1, D, N, P, C2, 5.0)).run(None, {"x": o1[0], "size_in": o1[1], "assign_in": o1[2]})
        y1, s1, a1 = (torch.from_numpy(v) for v in o1[:3])
        assert_matches(o2, slow_gbm(y1, s1, a1, P, C2, 5.0), P, f"AlgmGbm/1 C2={C2}")
        w2 = gbm_static(y1, s1, a1, P, C2, 5.0)
        for g, w in zip(o2[1:], w2[1:]):
            np.testing.assert_array_equal(g, w.numpy())
        np.testing.assert_allclose(o2[0], w2[0].numpy(), rtol=1e-5, atol=1e-5)
    o1 = _sess(clap_dynamic_model(D, grid, (2, 2), P)).run(None, {"x": x.numpy(), "threshold": thr.numpy()})
    assert_matches(o1, slow_clap(x, grid, P, thr, N), P, "AlgmClap/2")
    w1 = clap_dynamic(x, thr, *grid, 2, 2, P)
    assert int(o1[4]) == w1[0].shape[1] == o1[0].shape[1]
    o2 = _sess(gbm_dynamic_model(D, N, P, 5.0)).run(None, {"x": o1[0], "size_in": o1[1], "assign_in": o1[2]})
    y1, s1, a1 = (torch.from_numpy(v) for v in o1[:3])
    assert_matches(o2, slow_gbm(y1, s1, a1, P, None, 5.0), P, "AlgmGbm/2")
    w2 = gbm_dynamic(y1, s1, a1, P, 5.0)
    assert int(o2[4]) == w2[0].shape[1] == o2[0].shape[1]
    for g, w in zip(o2[1:4], w2[1:]):
        np.testing.assert_array_equal(g, w.numpy())


# ----------------------------------------------------------------------------- DINOv2 with registers

REG_SETTING = AlgmSetting(0.9, (2, 2), (1, 3))


@pytest.fixture(scope="module")
def dinov2_reg4():
    """timm's DINOv2 ViT-S with 4 registers (class token + 4 registers, no_embed_class, layer scale)
    built at patch 16, 128 px, 4 blocks, seeded weights, with a linear Segmenter head: P = 5."""
    from algm_export.models.backbones.timm_vit import timm_backbone
    from algm_export.models.families.segmenter import make_config
    from algm_export.models.families.segmenter import Segmenter

    cfg = make_config("vit_small", "linear", 128, n_cls=5)
    cfg.n_layers = 4
    cfg.reg_tokens = 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb = timm_backbone("vit_small_patch14_reg4_dinov2", patch_size=16, img_size=128, depth=4)
        with torch.no_grad():   # layer scales well above their 1e-5 init, so that every block matters
            for blk in bb.blocks:
                blk.ls1.gamma.uniform_(0.2, 1.0)
                blk.ls2.gamma.uniform_(0.2, 1.0)
            bb.reg_token.normal_(0, 1.0)
        model = Segmenter(cfg, encoder=bb).eval()
    return model


def test_timm_register_vit_is_timm_forward(dinov2_reg4):
    """The backbone (prefix tokens, no_embed_class positions, layer scale) = timm's own forward."""
    from algm_export.models.base import TokenState

    bb = dinov2_reg4.backbone
    assert bb.num_prefix == 5 and bb.pos_prefix == 0 and dinov2_reg4.num_prefix == 5 and bb.mlp_ratio == 4.0
    im = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = bb.forward_features(im)
        x, grid = bb.embed(im)
        state = TokenState.initial(x, grid, bb.num_prefix)
        for i in range(bb.depth):
            x = bb.block_mlp(i, bb.block_attn(i, x, state), state)
        got = bb.layer_output(bb.depth - 1, x)
    assert grid == (8, 8) and got.shape == (2, 5 + 64, 384)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_register_segmenter_round_trip(tmp_path):
    """A Segmenter whose ViT has register tokens (P = 3) saves and loads in the published format
    (variant.yml gains reg_tokens) and runs ALGM with its prefix intact; an encoder whose prefix
    differs from the config's is refused."""
    from algm_export.core.errors import ConfigError
    from algm_export.models.backbones.timm_vit import timm_backbone
    from algm_export.models.formats.published_segmenter import load_segmenter, save_segmenter
    from algm_export.models.families.segmenter import make_config
    from algm_export.models.families.segmenter import Segmenter
    from conftest import smooth_image

    cfg = make_config("vit_tiny", "linear", 64, n_cls=3)
    cfg.n_layers = 2
    cfg.reg_tokens = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Segmenter(cfg).eval()
    assert model.num_prefix == cfg.num_prefix == 3 and model.backbone.reg_token.shape == (1, 2, 192)
    save_segmenter(model, tmp_path / "ck")
    again = load_segmenter(tmp_path / "ck")
    assert again.cfg.reg_tokens == 2 and again.num_prefix == 3
    im = smooth_image(64)
    setting = AlgmSetting(0.9, (2, 2), (1, 2))
    with torch.no_grad():
        a = apply_algm(model, setting, token_mode="dynamic")(im)
        b = apply_algm(again, setting, token_mode="dynamic")(im)
    assert torch.equal(a, b)
    plain = make_config("vit_tiny", "linear", 64, n_cls=3)
    plain.n_layers = 2
    with pytest.raises(ConfigError, match="prefix tokens"):
        Segmenter(plain, encoder=timm_backbone("vit_tiny_patch16_224", img_size=64, depth=2, reg_tokens=2))


def test_timm_backbone_refuses_other_vits():
    from algm_export.core.errors import ConfigError
    from algm_export.models.backbones.timm_vit import timm_backbone

    with pytest.raises(ConfigError, match="not a plain VisionTransformer"):
        timm_backbone("eva02_tiny_patch14_224", img_size=64, depth=1)
    with pytest.raises(ConfigError, match="timm cannot build"):
        timm_backbone("vit_no_such_model")


def _record_merges(monkeypatch):
    """Every merge step's (tokens in, tokens out, sizes out) of the next forwards."""
    from algm_export.merging.driver import AlgmModel

    seen = []
    original = AlgmModel._merge

    def spy(self, step, x, size, assign, grid, P):
        out = original(self, step, x, size, assign, grid, P)
        seen.append((step, P, x.detach().clone(), out[0].detach().clone(), out[1].detach().clone()))
        return out

    monkeypatch.setattr(AlgmModel, "_merge", spy)
    return seen


def _with_merge_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every algm node's token input, token output and size output as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for n in (n for n in m.graph.node if n.domain == "algm"):
        for name in (n.input[0], n.output[0], n.output[1]):
            if name not in known:
                m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                known.add(name)
    return m


def _register_run(model, token_mode, monkeypatch):
    """ALGM on the DINOv2-reg4 ViT over two structured images: (AlgmModel, images, logits, stats),
    after checking that both steps merge in both images and that the 5 prefix tokens come out of
    every torch merge step unchanged, first, with size 1."""
    from conftest import smooth_image

    caps = (64, 64) if token_mode == "static" else None
    algm = apply_algm(model, REG_SETTING, capacities=caps, token_mode=token_mode)
    images = torch.cat([smooth_image(128, seed=s) for s in (0, 1)])
    seen = _record_merges(monkeypatch)
    with torch.no_grad():
        want = algm(images)
    monkeypatch.undo()
    stats = algm.stats_tensor.clone()
    assert (stats[..., 0] > 0).all(), f"both steps must merge in both images: {stats.tolist()}"
    assert [(step, P) for step, P, *_ in seen] == [(0, 5), (1, 5)]
    for _, P, x, y, size in seen:
        assert torch.equal(y[:, :5], x[:, :5]) and (size[:, :5] == 1).all() and (size[:, 5:].sum(1) == 64).all()
    return algm, images, want, stats


@pytest.mark.parametrize("token_mode", ["static", "dynamic"])
def test_register_vit_keeps_its_prefix_in_torch(dinov2_reg4, token_mode, monkeypatch):
    """Static and dynamic token mode in torch: merges happen, the prefix never moves or changes, and
    the result equals the published form (reference token mode) image by image."""
    algm, images, want, stats = _register_run(dinov2_reg4, token_mode, monkeypatch)
    ref = apply_algm(dinov2_reg4, REG_SETTING)
    with torch.no_grad():
        got = ref(images)
    assert torch.equal(ref.merge_stats["merges"], stats[..., 0].long())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("token_mode", ["static", "dynamic"])
def test_register_vit_keeps_its_prefix_in_onnx(dinov2_reg4, token_mode, tmp_path, monkeypatch):
    """The exported file (the project's exporter): both algm nodes carry num_prefix = 5, ONNX Runtime
    gives torch's merge statistics and logits, and every algm node's output starts with its input's
    5 prefix rows, unchanged, with size 1."""
    from algm_export.export.exporter import export_onnx

    algm, images, want, stats = _register_run(dinov2_reg4, token_mode, monkeypatch)
    path = export_onnx(algm, tmp_path / f"{token_mode}.onnx")
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.domain == "algm"]
    assert [onnx.helper.get_attribute_value(a) for n in nodes for a in n.attribute if a.name == "num_prefix"] == [5, 5]
    sess = _sess(_with_merge_outputs(model))
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"image": images.numpy()})))
    np.testing.assert_array_equal(got["merge_stats"], stats.numpy())
    np.testing.assert_allclose(got["logits"], want.numpy(), rtol=1e-4, atol=1e-4)
    for n in nodes:
        x, y, size = got[n.input[0]], got[n.output[0]], got[n.output[1]]
        np.testing.assert_array_equal(y[:, :5], x[:, :5])
        assert (size[:, :5] == 1).all() and (size[:, 5:].sum(1) == 64).all()


@pytest.mark.slow
@pytest.mark.parametrize("token_mode", ["static", "dynamic"])
def test_rtx_builds_the_register_vit(dinov2_reg4, token_mode, tmp_path):
    """TensorRT-RTX parses the P = 5 exports (the algm function bodies expanded into standard
    layers, no plugin library) and serialises an SM86 engine, ahead of time on this machine."""
    from algm_export.export.exporter import export_onnx
    from test_dynamic_tokens import _rtx_build, _well_formed

    caps = (64, 64) if token_mode == "static" else None
    algm = apply_algm(dinov2_reg4, REG_SETTING, capacities=caps, token_mode=token_mode)
    path = export_onnx(algm, tmp_path / f"{token_mode}.onnx")
    res = _rtx_build(tmp_path, path)
    assert res["layers"]["algm_nodes"] == 2 and not res["layers"].get("plugin_layers")
    assert res["io"]["outputs"]["logits"]["shape"] == [-1, 5, 128, 128]
    engine = tmp_path / "dyn.engine"
    assert engine.stat().st_size == res["engine_bytes"] > 0 and _well_formed(engine)


if __name__ == "__main__":
    # Records the digests of test_p012_outputs_are_those_of_the_published_rule. Run ONLY with the
    # code whose P = 0, 1, 2 behaviour is the reference: PYTHONPATH=<that tree> python tests/test_prefix_tokens.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    cases = {P: separated_case(P, dyadic=True, seed=100) for P in (0, 1, 2)}
    record = {str(P): legacy_record(P, c.seed, c.caps) for P, c in cases.items()}
    DIGESTS.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print("wrote", DIGESTS)
