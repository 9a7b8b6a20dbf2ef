"""Op level: the ONNX function bodies against the torch ops (property-based, hypothesis)."""


import numpy as np
import pytest
import onnx
import onnxruntime as ort
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from algm_export.export.opmodels import clap_model, gbm_model
from algm_export.merging.static import clap_static, gbm_capacity_min, gbm_static
from test_plugins_support import near_tie_tokens

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sess(model):
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@st.composite
def clap_case(draw):
    P = draw(st.sampled_from([1, 2]))
    wh, ww = draw(st.sampled_from([(2, 2), (2, 1), (1, 3), (3, 3)]))
    gh = wh * draw(st.integers(1, 4))
    gw = ww * draw(st.integers(1, 4))
    N = gh * gw
    k = wh * ww
    D = draw(st.sampled_from([3, 8, 17]))
    B = draw(st.integers(1, 3))
    C = draw(st.integers(N // k, N))
    thr = draw(st.floats(-0.5, 0.95))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    seed = draw(st.integers(0, 2**16))
    smooth = draw(st.booleans())
    return P, (gh, gw), (wh, ww), D, B, C, thr, scale, seed, smooth


def _tokens(B, T, D, scale, seed, smooth, P):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    if smooth:  # a few shared directions + noise: many windows above the threshold, no exact ties
        base = torch.randn(B, 1, D, generator=g)
        x[:, P:] = base + 0.3 * x[:, P:]
    return x * scale


@HYP
@given(clap_case())
def test_clap_function_matches_torch_op(case):
    P, grid, window, D, B, C, thr, scale, seed, smooth = case
    N = grid[0] * grid[1]
    x = _tokens(B, P + N, D, scale, seed, smooth, P)
    want = clap_static(x, grid[0], grid[1], window[0], window[1], P, C, thr)
    got = _sess(clap_model(P + N, D, grid, window, P, C, thr)).run(None, {"x": x.numpy()})
    np.testing.assert_array_equal(got[2], want[2].numpy())     # assignment maps
    np.testing.assert_array_equal(got[3], want[3].numpy())     # stats
    np.testing.assert_array_equal(got[1], want[1].numpy())     # sizes
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-5, atol=1e-5 * scale)


@st.composite
def gbm_case(draw):
    P = draw(st.sampled_from([1, 2]))
    gh, gw = 2 * draw(st.integers(1, 4)), 2 * draw(st.integers(1, 4))
    N = gh * gw
    D = draw(st.sampled_from([4, 16]))
    B = draw(st.integers(1, 3))
    C1 = draw(st.integers(N // 4, N))
    C2 = draw(st.integers(gbm_capacity_min(C1, P), C1))
    divisor = draw(st.sampled_from([1.0, 5.0, 7.0]))
    thr = draw(st.floats(-0.2, 0.9))
    seed = draw(st.integers(0, 2**16))
    return P, (gh, gw), D, B, C1, C2, divisor, thr, seed, draw(st.booleans())


@HYP
@given(gbm_case())
def test_gbm_function_matches_torch_op(case):
    P, grid, D, B, C1, C2, divisor, thr, seed, smooth = case
    N = grid[0] * grid[1]
    x = _tokens(B, P + N, D, 1.0, seed, smooth, P)
    y1, s1, a1, _ = clap_static(x, grid[0], grid[1], 2, 2, P, C1, thr)
    want = gbm_static(y1, s1, a1, P, C2, divisor)
    got = _sess(gbm_model(P + C1, D, N, P, C2, divisor)).run(
        None, {"x": y1.numpy(), "size_in": s1.numpy(), "assign_in": a1.numpy()})
    np.testing.assert_array_equal(got[3], want[3].numpy())
    np.testing.assert_array_equal(got[2], want[2].numpy())
    np.testing.assert_allclose(got[1], want[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-4, atol=1e-5)


def test_constant_tokens_hold_the_contract_in_onnx():
    """Exact ties everywhere: decisions are by index; run twice -> identical; invariants hold."""
    P, grid, D, C1 = 1, (4, 4), 8, 10
    x = np.ones((2, 17, D), np.float32)
    s = _sess(clap_model(17, D, grid, (2, 2), P, C1, 0.5))
    a = s.run(None, {"x": x})
    b = s.run(None, {"x": x})
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    y, size, assign, stats = a
    assert stats.tolist() == [[4, 0], [4, 0]]            # all 4 windows merge (cos = 1 >= 0.5)
    assert assign[0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    assert size[0, 1:5].tolist() == [4, 4, 4, 4] and (size[0, 5:] == 0).all()
    g = _sess(gbm_model(1 + C1, D, 16, P, 4, 5.0)).run(None, {"x": y, "size_in": size, "assign_in": assign})
    assert float(g[1][0, 1:].sum()) == 16.0
    assert (g[2] < (g[1] > 0).sum(1, keepdims=True) - P).all()


def test_float16_tokens():
    P, grid, D = 1, (4, 4), 16
    x = _tokens(2, 17, D, 1.0, 7, True, P)
    want = clap_static(x.half(), 4, 4, 2, 2, P, 12, 0.6)
    got = _sess(clap_model(17, D, grid, (2, 2), P, 12, 0.6, dtype=onnx.TensorProto.FLOAT16)).run(
        None, {"x": x.half().numpy()})
    assert got[0].dtype == np.float16
    np.testing.assert_array_equal(got[2], want[2].numpy())
    np.testing.assert_array_equal(got[3], want[3].numpy())
    np.testing.assert_allclose(got[0].astype(np.float32), want[0].float().numpy(), atol=1e-3)


@pytest.mark.parametrize("D", [100, 192, 384, 768])
def test_clap_function_orders_near_ties_like_torch(D):
    """The ONNX window score uses torch's CPU summation order: windows whose scores differ only by
    rounding are ranked identically by ONNX Runtime and by the reference (merged tokens in rank order)."""
    P, grid, B = 1, (8, 12), 2
    N, W = grid[0] * grid[1], grid[0] * grid[1] // 4
    x = near_tie_tokens(B, P, grid, D, seed=D)
    want = clap_static(x, grid[0], grid[1], 2, 2, P, N, -1.0)          # every window merges, in rank order
    from algm_export.merging.dynamic import window_scores
    score = window_scores(x[:, P:], grid, (2, 2))
    assert all(len(torch.unique(s)) >= 3 for s in score)               # rounding separates the equal windows
    assert (score.max(1).values - score.min(1).values < 1e-5).all()    # ... and nothing else does
    got = _sess(clap_model(P + N, D, grid, (2, 2), P, N, -1.0)).run(None, {"x": x.numpy()})
    assert (want[3][:, 0] == W).all()
    np.testing.assert_array_equal(got[2], want[2].numpy())             # identical rank order
    np.testing.assert_array_equal(got[0], want[0].numpy())
