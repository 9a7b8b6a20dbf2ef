"""Op level: the ONNX function bodies against the torch ops (property-based, hypothesis)."""


import numpy as np
import pytest
import onnx
import onnxruntime as ort
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from algm_export.export.opmodels import clap_model, gbm_model
from algm_export.merging import reference
from algm_export.merging.static import clap_static, gbm_capacity_min, gbm_static
from _helpers.plugins import (MARGIN, NODE_MAX_VALUES, clap_margin, expected_gbm_sources, gbm_margin,
                                  gbm_sources, near_tie_tokens, node_max_tokens, separated_tokens)

HYP = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _sess(model):
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@st.composite
def clap_case(draw):
    P = draw(st.integers(0, 5))
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
    P = draw(st.integers(0, 5))
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
    from algm_export.merging.reference import window_scores
    score = window_scores(x[:, P:], grid, (2, 2))
    assert all(len(torch.unique(s)) >= 3 for s in score)               # rounding separates the equal windows
    assert (score.max(1).values - score.min(1).values < 1e-5).all()    # ... and nothing else does
    got = _sess(clap_model(P + N, D, grid, (2, 2), P, N, -1.0)).run(None, {"x": x.numpy()})
    assert (want[3][:, 0] == W).all()
    np.testing.assert_array_equal(got[2], want[2].numpy())             # identical rank order
    np.testing.assert_array_equal(got[0], want[0].numpy())


def _run_gbm(x, size, assign, P, C2, divisor):
    T, D = x.shape[1:]
    return _sess(gbm_model(T, D, assign.shape[1], P, C2, divisor)).run(
        None, {"x": x.numpy(), "size_in": size.numpy(), "assign_in": assign.numpy()})


def _separated_chain(P, grid, caps, seed):
    """Tokens and a CLAP threshold whose CLAP and GBM decisions (at every capacity pair) are all
    far from rounding (float64 margins), drawn again until they are."""
    for s in range(seed, seed + 50):
        x = separated_tokens(B=3, P=P, grid=grid, seed=s)
        thr = float(reference.window_scores(x[:, P:], grid, (2, 2)).median()) - 1e-3
        if clap_margin(x, *grid, 2, 2, P, thr) <= MARGIN:
            continue
        ok = True
        for C1, C2 in caps:
            y1, s1, _, _ = clap_static(x, *grid, 2, 2, P, C1, thr)
            ok = ok and gbm_margin(y1, s1, P, C2, 5.0) > MARGIN
        if ok:
            return x, thr
    pytest.fail("no input with well-separated decisions found")


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_functions_match_torch_ops_on_separated_inputs(P):
    """CLAP then GBM per prefix count, on inputs whose decisions are far from rounding: identical
    decisions to the torch ops and, at capacities N, to the published form image by image; both
    steps merge."""
    grid = (8, 8)
    N = grid[0] * grid[1]
    caps = ((N, N), (40, 26))
    x, thr = _separated_chain(P, grid, caps, seed=11)
    for C1, C2 in caps:
        want = clap_static(x, *grid, 2, 2, P, C1, thr)
        got = _sess(clap_model(P + N, x.shape[2], grid, (2, 2), P, C1, thr)).run(None, {"x": x.numpy()})
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_array_equal(g, w.numpy())
        np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-5, atol=1e-5)
        assert (want[3][:, 0] > 0).all()
        y1, s1, a1, _ = want
        gw = gbm_static(y1, s1, a1, P, C2, 5.0)
        gg = _run_gbm(y1, s1, a1, P, C2, 5.0)
        for g, w in zip(gg[1:], gw[1:]):
            np.testing.assert_array_equal(g, w.numpy())
        np.testing.assert_allclose(gg[0], gw[0].numpy(), rtol=1e-5, atol=1e-5)
        assert (gw[3][:, 0] > 0).all()
        if C1 == N and C2 == N:
            for b in range(x.shape[0]):
                d = reference.clap(x[b:b + 1], torch.ones(1, P + N), grid, (2, 2), thr, P)
                dg = reference.gbm(d.x, d.size, d.assign, P, 5.0)
                assert got[3][b, 0] == int(d.merges[0]) and gg[3][b, 0] == int(dg.merges[0])
                np.testing.assert_array_equal(gg[2][b], dg.assign[0].numpy())


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_gbm_function_threshold_statistics(P):
    """P = 0: the threshold statistics run over all of A, position 0 included (docs/algorithm.md: other families)."""
    x, size, assign = node_max_tokens(P=P, B=2)
    want = expected_gbm_sources(NODE_MAX_VALUES, P, 1.0)
    ref = gbm_static(x, size, assign, P, x.shape[1] - P, 1.0)
    got = _run_gbm(x, size, assign, P, x.shape[1] - P, 1.0)
    assert got[3][:, 0].tolist() == [len(want)] * 2
    assert [gbm_sources(a, P, len(NODE_MAX_VALUES)) for a in got[2]] == [want] * 2
    for g, w in zip(got[1:], ref[1:]):
        np.testing.assert_array_equal(g, w.numpy())
    np.testing.assert_allclose(got[0], ref[0].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_gbm_function_single_slot_is_a_noop(P):
    """One slot besides the prefix (P = 0: no B token at all): copied through."""
    x = torch.randn(2, P + 1, 4)
    size = torch.ones(2, P + 1)
    assign = torch.zeros(2, 4, dtype=torch.int32)
    got = _run_gbm(x, size, assign, P, 1, 5.0)
    for g, w in zip(got, gbm_static(x, size, assign, P, 1, 5.0)):
        np.testing.assert_array_equal(g, w.numpy())
    np.testing.assert_array_equal(got[0], x.numpy())


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_op_chain_exports_for_every_prefix_count(P):
    """torch.ops.algm.clap -> gbm through the exporter's translation (dynamo, dynamic batch): the file
    passes the strict checks with its functions and inlined, and ONNX Runtime reproduces the ops."""
    import contextlib
    import io
    import warnings

    from algm_export.export.exporter import (_clap_translation, _gbm_translation, attach_functions, check_model,
                                             inline_functions)
    from algm_export.export.functions import OPSET_VERSION
    from algm_export.export.schemas import register_schemas

    grid, C1, C2 = (8, 8), 40, 26
    x, thr = _separated_chain(P, grid, ((C1, C2),), seed=21)

    class Chain(torch.nn.Module):
        def forward(self, t):
            y, s, a, st1 = torch.ops.algm.clap(t, *grid, 2, 2, P, C1, thr)
            return torch.ops.algm.gbm(y, s, a, P, C2, 5.0) + (st1,)

    register_schemas()
    table = {torch.ops.algm.clap.default: _clap_translation, torch.ops.algm.gbm.default: _gbm_translation}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(Chain().eval(), (x[:2],), dynamo=True, custom_translation_table=table,
                                 opset_version=OPSET_VERSION, input_names=["x"],
                                 dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), optimize=True)
    model = attach_functions(prog.model_proto)
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for n in model.graph.node if n.domain == "algm"]
    assert [a["num_prefix"] for a in attrs] == [P, P]
    want = Chain()(x)
    assert (want[3][:, 0] > 0).all() and (want[4][:, 0] > 0).all()
    for m in (model, inline_functions(model)):
        check_model(m)
        got = _sess(m).run(None, {"x": x.numpy()})
        for g, w in zip(got[1:], want[1:]):
            np.testing.assert_array_equal(g, w.numpy())
        np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-5, atol=1e-5)
