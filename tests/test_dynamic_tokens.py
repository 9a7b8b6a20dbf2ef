"""Dynamic token mode (issue 13, docs/algorithm.md: dynamic token mode): data-dependent token slots and the threshold as an input.

* torch: `apply_algm(..., token_mode="dynamic")` equals the reference (`per_image`) image by image
  and batched, with exactly the reference's token counts;
* op level: the `algm` version 2 function bodies are the static bodies at full capacity followed
  by the cut (bit for bit), and match the torch ops on inputs with well-separated decisions;
* model level: the dynamic ONNX in ONNX Runtime equals the reference at batch 1 and in a mixed
  batch, its `merge_stats` give the reference's token counts exactly, and the threshold-input
  file equals the fixed-threshold export at its threshold and the reference at others;
* TensorRT-RTX: the dynamic graph (functions inlined, and with the plugin library) builds and
  serialises ahead of time (the kernels and plugins themselves: tests/test_plugins.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.core.errors import BackendUnavailable, ConfigError, InputError
from algm_export.export.exporter import export_onnx, inline_functions
from algm_export.export.opmodels import clap_dynamic_model, clap_model, gbm_dynamic_model, gbm_model
from algm_export.export.readiness import check_readiness
from algm_export.merging.static import clap_dynamic, gbm_dynamic, tokens_from_stats
from algm_export.models.families.segmenter import make_config
from algm_export.models.families.segmenter import Segmenter
from _helpers.plugins import MARGIN, clap_margin, gbm_margin, separated_tokens

SET = AlgmSetting(0.88, (2, 2), (1, 5))
TESTS = Path(__file__).resolve().parent


def _sess(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model), so,
                                providers=["CPUExecutionProvider"])


def _run(model, x, threshold=None):
    with torch.no_grad():
        out = model(x) if threshold is None else model(x, threshold)
    return out, {k: v.clone() for k, v in model.merge_stats.items()}


# ----------------------------------------------------------------------------- torch

@pytest.mark.parametrize("fixture", ["tiny_linear", pytest.param("tiny_mask", marks=pytest.mark.slow), "tiny_deit"])
def test_torch_dynamic_equals_reference(request, fixture, photos_128):
    """Batched dynamic mode = the reference image by image: identical decisions and token counts,
    logits within float rounding, and every image independent of its batch-mates."""
    model = request.getfixturevalue(fixture)
    ref, dyn = apply_algm(model, SET), apply_algm(model, SET, token_mode="dynamic")
    photos = photos_128 if fixture == "tiny_linear" else [photos_128[i] for i in (0, 1, 3, 5)]
    batch = torch.cat(photos)
    out_r, st_r = _run(ref, batch)
    out_d, st_d = _run(dyn, batch)
    for k in ("tokens", "merges", "forced"):
        assert torch.equal(st_d[k], st_r[k]), k
    assert (st_d["forced"] == 0).all()
    assert (st_d["merges"].sum(1) > 0).all() and len(set(st_d["tokens"][:, 0].tolist())) > 1
    assert (out_d - out_r).abs().max() < 1e-4
    assert torch.equal(tokens_from_stats(dyn.stats_tensor, 64), st_r["tokens"])
    for i in ((len(photos) - 2, len(photos) - 1) if fixture == "tiny_linear" else ()):  # most merged, alone
        out_1, st_1 = _run(dyn, photos[i])
        assert torch.equal(st_1["tokens"], st_r["tokens"][i:i + 1])
        assert (out_1 - out_r[i:i + 1]).abs().max() < 1e-4


def test_dynamic_ops_cut_to_the_batch_max(tiny_linear, photos_128):
    """The token axis after each step is P + the largest real count of the batch (exactly the real
    count at batch 1); shorter images are zero-size padding at the end."""
    x = torch.randn(3, 65, 16)
    thr = torch.tensor([0.0, 0.3, 1.0])                       # merge a lot, some, nothing
    y, size, assign, stats = torch.ops.algm.clap_dyn(x, thr, 8, 8, 2, 2, 1)
    real = (size[:, 1:] > 0).sum(1)
    assert y.shape[1] == 1 + int(real.max()) and int(real.max()) == 64 and int(real.min()) < 64
    assert (size[real.argmin(), 1 + int(real.min()):] == 0).all()
    y1, s1, _, _ = torch.ops.algm.clap_dyn(x[:1], thr[:1], 8, 8, 2, 2, 1)
    assert y1.shape[1] == 1 + int(real[0]) and (s1[:, 1:] > 0).all()
    y2, s2, _, st2 = torch.ops.algm.gbm_dyn(y, size, assign, 1, 5.0)
    assert y2.shape[1] == int((s2 > 0).sum(1).max()) and (st2[:, 1] == 0).all()


def test_token_mode_errors(tiny_linear):
    with pytest.raises(ConfigError, match="no capacities"):
        apply_algm(tiny_linear, SET, capacities=(64, 60), token_mode="dynamic")
    with pytest.raises(ConfigError, match="needs capacities"):
        apply_algm(tiny_linear, SET, token_mode="static")
    with pytest.raises(ConfigError, match="unknown"):
        apply_algm(tiny_linear, SET, token_mode="fast")
    with pytest.raises(ConfigError, match="per_image"):
        apply_algm(tiny_linear, AlgmSetting(0.88, policy="batch_min"), token_mode="dynamic")
    with pytest.raises(ConfigError, match="dynamic token mode"):
        apply_algm(tiny_linear, SET, capacities=(64, 60))(torch.zeros(1, 3, 128, 128), 0.9)
    dyn = apply_algm(tiny_linear, SET, token_mode="dynamic")
    with pytest.raises(InputError, match="within"):
        dyn(torch.zeros(1, 3, 128, 128), 1.5)
    with pytest.raises(InputError, match="shape"):
        dyn(torch.zeros(2, 3, 128, 128), torch.tensor([0.8, 0.9, 0.9]))
    with pytest.raises(ConfigError, match="does not export"):
        export_onnx(apply_algm(tiny_linear, SET), "/nonexistent/x.onnx")
    with pytest.raises(ConfigError, match="needs dynamic token mode"):
        export_onnx(apply_algm(tiny_linear, SET, capacities=(64, 60)), "/nonexistent/x.onnx", threshold_input=True)


def test_tokens_from_stats_in_every_mode(tiny_linear, photos_128):
    """merge_stats (merges done) determine the real token counts: N - r (k-1) after CLAP, r fewer
    after every GBM step, forced merges included."""
    batch = torch.cat(photos_128[:4])
    for model in (apply_algm(tiny_linear, SET, capacities=(40, 30)), apply_algm(tiny_linear, SET, token_mode="dynamic")):
        _, st = _run(model, batch)
        assert torch.equal(tokens_from_stats(model.stats_tensor, 64), st["tokens"])
        np.testing.assert_array_equal(tokens_from_stats(model.stats_tensor.numpy(), 64), st["tokens"].numpy())


def test_mean_macs_is_the_mean_over_images(tiny_linear):
    """Per-image FLOP ratio (issue 13): baseline MACs over the mean MACs at each image's real counts."""
    from algm_export.models.flops import mean_macs, model_macs

    counts = [[64, 50], [40, 30], [16, 9]]
    got = mean_macs(tiny_linear, (1, 5), counts)
    each = [model_macs(tiny_linear, (1, 5), c)["total"] for c in counts]
    assert abs(got["total"] - sum(each) / 3) < 1e-12
    assert model_macs(tiny_linear)["total"] > got["total"] > min(each)


# ----------------------------------------------------------------------------- op level (ONNX bodies)

def _separated(P, grid=(8, 8), seed=3):
    """Tokens and per-image thresholds whose CLAP and GBM decisions are far from rounding, with
    different merge counts per image (so the cut differs from every image's own count)."""
    N = grid[0] * grid[1]
    for s in range(seed, seed + 60):
        x = separated_tokens(B=3, P=P, grid=grid, seed=s)
        from algm_export.merging.reference import window_scores

        sc = window_scores(x[:, P:], grid, (2, 2))
        thr = torch.tensor([float(sc[b].quantile(q)) - 1e-3 for b, q in enumerate((0.25, 0.5, 0.8))])
        if min(clap_margin(x[b:b + 1], *grid, 2, 2, P, float(thr[b])) for b in range(3)) <= MARGIN:
            continue
        y1, s1, _, _ = clap_dynamic(x, thr, *grid, 2, 2, P)
        if gbm_margin(y1, s1, P, y1.shape[1] - P, 5.0) > MARGIN:
            return x, thr
    pytest.fail("no input with well-separated decisions found")


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_dynamic_bodies_match_torch_ops(P):
    """algm version 2 in ONNX Runtime = the torch dynamic ops: decisions, token counts and the cut
    identical, per-image thresholds honoured, tokens output = P + K."""
    grid = (8, 8)
    N = grid[0] * grid[1]
    x, thr = _separated(P, grid)
    want = clap_dynamic(x, thr, *grid, 2, 2, P)
    got = _sess(clap_dynamic_model(x.shape[2], grid, (2, 2), P)).run(None, {"x": x.numpy(), "threshold": thr.numpy()})
    assert got[0].shape == tuple(want[0].shape) and int(got[4]) == want[0].shape[1] < P + N
    for g, w in zip(got[1:4], want[1:]):
        np.testing.assert_array_equal(g, w.numpy())
    np.testing.assert_allclose(got[0], want[0].numpy(), rtol=1e-5, atol=1e-5)
    assert len(set(want[3][:, 0].tolist())) == 3 and (want[3][:, 1] == 0).all()
    w2 = gbm_dynamic(*want[:3], P, 5.0)
    g2 = _sess(gbm_dynamic_model(x.shape[2], N, P, 5.0)).run(
        None, {"x": want[0].numpy(), "size_in": want[1].numpy(), "assign_in": want[2].numpy()})
    assert g2[0].shape == tuple(w2[0].shape) and int(g2[4]) == w2[0].shape[1] < want[0].shape[1]
    for g, w in zip(g2[1:4], w2[1:]):
        np.testing.assert_array_equal(g, w.numpy())
    np.testing.assert_allclose(g2[0], w2[0].numpy(), rtol=1e-5, atol=1e-5)
    assert (w2[3][:, 0] > 0).all()


@pytest.mark.parametrize("P", [0, 1, 2, 5])
def test_dynamic_bodies_are_static_bodies_at_full_capacity_then_cut(P):
    """The two versions share their arithmetic: in ONNX Runtime, the version-2 outputs are the
    version-1 outputs at capacity N (CLAP) / T - P (GBM) cut to P + K, bit for bit."""
    grid = (8, 8)
    N = grid[0] * grid[1]
    x, thr = _separated(P, grid)
    t = float(thr[1])
    D = x.shape[2]
    dyn = _sess(clap_dynamic_model(D, grid, (2, 2), P)).run(None, {"x": x.numpy(), "threshold": np.full(3, t, np.float32)})
    sta = _sess(clap_model(P + N, D, grid, (2, 2), P, N, t)).run(None, {"x": x.numpy()})
    T1 = int(dyn[4])
    np.testing.assert_array_equal(dyn[0], sta[0][:, :T1])
    np.testing.assert_array_equal(dyn[1], sta[1][:, :T1])
    assert (sta[1][:, T1:] == 0).all() and T1 - P == int((sta[1][:, P:] > 0).sum(1).max())
    for a, b in zip(dyn[2:4], sta[2:4]):
        np.testing.assert_array_equal(a, b)
    feeds = {"x": dyn[0], "size_in": dyn[1], "assign_in": dyn[2]}
    g_dyn = _sess(gbm_dynamic_model(D, N, P, 5.0)).run(None, feeds)
    g_sta = _sess(gbm_model(T1, D, N, P, T1 - P, 5.0)).run(None, feeds)
    T2 = int(g_dyn[4])
    np.testing.assert_array_equal(g_dyn[0], g_sta[0][:, :T2])
    np.testing.assert_array_equal(g_dyn[1], g_sta[1][:, :T2])
    assert (g_sta[1][:, T2:] == 0).all()
    for a, b in zip(g_dyn[2:4], g_sta[2:4]):
        np.testing.assert_array_equal(a, b)


# the only node blocks in which the two versions of a body differ (op types, version 1 -> version 2),
# in body order: each is one `if DYNAMIC:` block of the single source in export/functions.py
VERSION_DIFFERENCES = {
    "AlgmClap": [
        (["Constant", "Constant"], ["Cast", "Constant", "Unsqueeze"]),     # capacity, threshold: attribute / input
        (["Sub", "Add", "Constant", "Sub", "Sub", "Div", "Max", "Max", "Min", "Sub", "Max"], ["Sub"]),  # need, r, forced
        (["Unsqueeze"], ["Unsqueeze"]),                                      # r1 of r / of m (r = m)
        ([], ["ReduceMin", "Sub", "Mul", "Sub"]),                            # K from the merge counts
        (["Reshape"], ["Reshape"]),                                          # the cut at C / at K
        ([], ["Add", "Cast"]),                                               # the tokens output
    ],
    "AlgmGbm": [
        (["Constant", "Sub", "Sub", "Max", "Max", "Min"], ["Min"]),          # need, r
        (["Add"], ["Sub", "ReduceMax"]),                                     # the cut at P + C / at P + K2
        ([], ["Cast"]),                                                      # the tokens output
    ],
}


def _node_signature(n):
    """A node with the SSA suffixes onnxscript appends to re-assigned names (`x_12`) removed, so
    that nodes after an extra node in one version still compare equal."""
    import re

    canon = lambda v: re.sub(r"_\d+$", "", v)  # noqa: E731
    attrs = tuple(sorted((a.name, a.ref_attr_name or repr(onnx.helper.get_attribute_value(a))) for a in n.attribute))
    return n.op_type, n.domain, attrs, tuple(map(canon, n.input)), tuple(map(canon, n.output))


@pytest.mark.parametrize("name", ["AlgmClap", "AlgmGbm"])
def test_both_versions_come_from_one_body(name):
    """Each op has one onnxscript source for both token modes: the version 1 and 2 FunctionProtos
    are node for node identical (op, attributes, dataflow) except in the `if DYNAMIC:` blocks
    listed above, are flat (no nested function calls: TensorRT's parser takes the bodies as they
    are) and have each version's own interface."""
    import difflib

    from algm_export.export import functions

    v1, v2 = functions.function_proto(name, 1), functions.function_proto(name, 2)
    a, b = [_node_signature(n) for n in v1.node], [_node_signature(n) for n in v2.node]
    blocks = [([s[0] for s in a[i1:i2]], [s[0] for s in b[j1:j2]])
              for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
              if tag != "equal"]
    assert blocks == VERSION_DIFFERENCES[name]
    for f in (v1, v2):
        assert f.name == name and f.domain == functions.DOMAIN
        assert all(n.domain in ("", "ai.onnx") for n in f.node), "a body calls another function"
    interfaces = {
        "AlgmClap": ((["x"], ["x", "thresholds"]), ["capacity", "threshold"]),
        "AlgmGbm": ((["x", "size", "assign"], ["x", "size", "assign"]), ["capacity"]),
    }
    (in1, in2), only_v1 = interfaces[name]
    assert list(v1.input) == in1 and list(v2.input) == in2
    assert len(v2.output) == len(v1.output) + 1 and list(v2.output[:4]) == list(v1.output)
    assert [x for x in v1.attribute if x not in v2.attribute] == only_v1 and set(v2.attribute) <= set(v1.attribute)
    with pytest.raises(AssertionError, match="reads"):
        functions._interface(v1, attributes=("num_prefix",))


# ----------------------------------------------------------------------------- model level

def _small_model(decoder="linear"):
    """A 6-block ViT-Ti Segmenter at 128 px (layers 1, 5): quick to export."""
    cfg = make_config("vit_tiny", decoder, 128, 21)
    cfg.n_layers = 6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Segmenter(cfg).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("dyn")
    model = _small_model()
    dyn = apply_algm(model, SET, token_mode="dynamic")
    paths = {"fixed": export_onnx(dyn, d / "dyn.onnx"), "input": export_onnx(dyn, d / "tin.onnx", threshold_input=True)}
    return model, paths


@pytest.mark.slow
def test_dynamic_graph_interface(exported):
    _, paths = exported
    m = onnx.load(str(paths["input"]))
    dims = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert dims == {"image": [dims["image"][0], 3, 128, 128], "threshold": [dims["image"][0]]}
    assert [o.name for o in m.graph.output] == ["logits", "merge_stats"]
    out = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in m.graph.output]
    assert out[0][1:] == [21, 128, 128] and out[1][1:] == [2, 2]
    nodes = [n for n in m.graph.node if n.domain == "algm"]
    assert [(n.op_type, len(n.input), len(n.output)) for n in nodes] == [("AlgmClap", 2, 5), ("AlgmGbm", 3, 5)]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert all(a["plugin_version"] == b"2" and "capacity" not in a for a in attrs)
    assert "threshold" not in attrs[0] and nodes[0].input[1] == "threshold"
    assert next(o.version for o in m.opset_import if o.domain == "algm") == 2
    assert {f.name for f in m.functions} == {"AlgmClap", "AlgmGbm"}
    fixed = onnx.load(str(paths["fixed"]))
    assert [i.name for i in fixed.graph.input] == ["image"]
    for model in (m, fixed):
        r = check_readiness(model)
        assert r["ready"] and r["token_mode"] == "dynamic", r["problems"]
    bad = onnx.load(str(paths["fixed"]))
    clap = next(n for n in bad.graph.node if n.domain == "algm")
    del clap.output[4]
    assert any("5 outputs" in p or "contract" in p for p in check_readiness(bad)["problems"])
    inl = inline_functions(m)
    assert not [n for n in inl.graph.node if n.domain == "algm"] and not inl.functions


@pytest.mark.slow
def test_ort_dynamic_equals_reference(exported, photos_128):
    """Batch 1: logits of every photo within 1e-4 of the reference (per_image) but for at most one
    (docs/algorithm.md: numerical sensitivity), argmax agreement, and the reference's token counts exactly. A mixed batch gives
    every image its own result."""
    model, paths = exported
    ref = apply_algm(model, SET)
    runner = _sess(paths["fixed"])
    batch = torch.cat(photos_128)
    out_r, st_r = _run(ref, batch)
    close, singles = 0, []
    for i, x in enumerate(photos_128):
        logits, stats = runner.run(None, {"image": x.numpy()})
        singles.append(logits)
        np.testing.assert_array_equal(tokens_from_stats(stats, 64), st_r["tokens"][i:i + 1].numpy())
        assert (stats[..., 1] == 0).all()
        err = np.abs(logits - out_r[i:i + 1].numpy()).max()
        close += int(err <= 1e-4)
        assert (logits.argmax(1) == out_r[i:i + 1].numpy().argmax(1)).mean() >= 0.999
    assert close >= len(photos_128) - 1
    assert (st_r["merges"].sum(1) > 0).all() and len(set(st_r["tokens"][:, 0].tolist())) > 1
    logits, stats = runner.run(None, {"image": batch.numpy()})
    np.testing.assert_array_equal(tokens_from_stats(stats, 64), st_r["tokens"].numpy())
    assert np.abs(logits - np.concatenate(singles)).max() < 1e-4


@pytest.mark.slow
def test_threshold_input_equals_fixed_exports(exported, photos_128):
    """One file for every threshold: at the fixed export's threshold it gives that export's outputs;
    at others the reference's; thresholds may differ per image within one batch."""
    model, paths = exported
    tin, fixed = _sess(paths["input"]), _sess(paths["fixed"])
    batch = torch.cat(photos_128).numpy()
    a = tin.run(None, {"image": batch, "threshold": np.full(len(batch), 0.88, np.float32)})
    b = fixed.run(None, {"image": batch})
    np.testing.assert_array_equal(a[1], b[1])
    assert np.abs(a[0] - b[0]).max() <= 1e-6
    merged = []
    for t in (0.6, 0.75):
        ref = apply_algm(model, SET.with_threshold(t))
        out_r, st_r = _run(ref, torch.from_numpy(batch))
        logits, stats = tin.run(None, {"image": batch, "threshold": np.full(len(batch), t, np.float32)})
        np.testing.assert_array_equal(tokens_from_stats(stats, 64), st_r["tokens"].numpy())
        assert np.abs(logits - out_r.numpy()).max() < 1e-4
        merged.append(int(stats[:, 0, 0].sum()))
    assert merged[0] > merged[1] > int(b[1][:, 0, 0].sum())     # a lower threshold merges more
    # one threshold per image: as torch's dynamic mode with the same thresholds (which is the
    # reference image by image, test_torch_dynamic_equals_reference)
    per = np.array([0.6, 0.75, 0.88, 0.6, 0.75, 0.88], np.float32)
    logits, stats = tin.run(None, {"image": batch, "threshold": per})
    dyn = apply_algm(model, SET, token_mode="dynamic")
    out_d, st_d = _run(dyn, torch.from_numpy(batch), torch.from_numpy(per))
    np.testing.assert_array_equal(tokens_from_stats(stats, 64), st_d["tokens"].numpy())
    assert np.abs(logits - out_d.numpy()).max() < 1e-4
    assert len(set(map(tuple, stats[:, :, 0].tolist()))) == len(per)


@pytest.mark.slow
def test_ort_runner_threshold_input(exported, photos_128):
    """OrtRunner feeds a threshold-input file a float (broadcast) or one value per image, and
    refuses a missing threshold, a bad one, or one given to a file with its threshold built in."""
    from algm_export.runtimes.onnxruntime import OrtRunner

    _, paths = exported
    tin, fixed = OrtRunner(paths["input"], threads=1), OrtRunner(paths["fixed"], threads=1)
    x = torch.cat(photos_128[3:5])
    a, b = tin.infer(x, threshold=0.88), fixed.infer(x)
    np.testing.assert_array_equal(a["merge_stats"], b["merge_stats"])
    c = tin.infer(x, threshold=torch.tensor([0.88, 0.6]))
    np.testing.assert_array_equal(c["merge_stats"][0], b["merge_stats"][0])
    assert c["merge_stats"][1, 0, 0] >= b["merge_stats"][1, 0, 0]
    with pytest.raises(InputError, match="takes the CLAP threshold"):
        tin.infer(x)
    with pytest.raises(InputError, match="within"):
        tin.infer(x, threshold=[0.5, 2.0])
    with pytest.raises(ConfigError, match="built in"):
        fixed.infer(x, threshold=0.9)


# ----------------------------------------------------------------------------- TensorRT-RTX

def _rtx_build(tmp_path, onnx_path, plugin_library=None) -> dict:
    """The engine-build worker (a child process started with `rtx_env()`), SM86, batch 1..4."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install tensorrt-rtx-cu13) is not installed")
    from algm_export.runtimes.tensorrt.loader import rtx_env

    job, result = tmp_path / "job.json", tmp_path / "result.json"
    job.write_text(json.dumps({"name": "dyn", "onnx": str(onnx_path), "engine": str(tmp_path / "dyn.engine"),
                               "backend": "tensorrt-rtx", "profile": [1, 2, 4], "compute_capabilities": [86],
                               "plugin_library": plugin_library and str(plugin_library)}))
    proc = subprocess.run([sys.executable, "-m", "algm_export.runtimes.tensorrt.worker", str(job), str(result)],
                          env=rtx_env(), capture_output=True, text=True, timeout=600,
                          cwd=str(TESTS.parent))
    assert result.exists(), proc.stderr[-3000:]
    res = json.loads(result.read_text())
    assert proc.returncode == 0 and res["ok"], res
    return res


def _well_formed(path: Path) -> bool:
    import tensorrt_rtx as trt

    from algm_export.runtimes.tensorrt.loader import make_logger

    _validity, diag = trt.Runtime(make_logger(trt, "none")).get_engine_validity(path.read_bytes())
    return not int(diag) & int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE)


@pytest.mark.slow
def test_rtx_builds_the_inlined_dynamic_graph(exported, tmp_path):
    """Without plugins: the parser takes the bodies' Slice with a computed end as a data-dependent
    shape and the engine serialises (threshold input in the profile too)."""
    _, paths = exported
    inlined = tmp_path / "tin.inlined.onnx"
    onnx.save(inline_functions(onnx.load(str(paths["input"]))), str(inlined))
    res = _rtx_build(tmp_path, inlined)
    assert res["token_mode"] is None       # inlined: no algm node left
    assert res["layers"]["algm_nodes"] == 0 and res["layers"]["by_type"].get("PLUGIN_V3", 0) == 0
    assert res["io"]["inputs"] == {"image": {"dtype": "float", "shape": [-1, 3, 128, 128]},
                                   "threshold": {"dtype": "float", "shape": [-1]}}
    assert res["io"]["outputs"]["logits"]["shape"] == [-1, 21, 128, 128]
    engine = tmp_path / "dyn.engine"
    assert engine.stat().st_size == res["engine_bytes"] > 0 and _well_formed(engine)


@pytest.fixture(scope="module")
def plugin_library(tmp_path_factory):
    from _helpers.plugins import build_once, tensorrt_include

    inc = tensorrt_include()
    if inc is None:
        pytest.skip("no TensorRT headers (set ALGM_TENSORRT_INCLUDE to a TensorRT include/ folder)")
    # the same build (key, folder, options) as tests/test_plugins.py: built once per session
    root = tmp_path_factory.getbasetemp() / "algm_plugins"
    return build_once(root, "plugins", archs=[86], tensorrt_include=inc, require_plugins=True)["plugins"]


@pytest.mark.slow
def test_rtx_builds_the_dynamic_graph_with_plugins(exported, tmp_path, plugin_library):
    """With the plugin library: both algm nodes become version-2 PLUGIN_V3 layers whose token
    dimension is a size tensor, and the engine serialises."""
    _, paths = exported
    res = _rtx_build(tmp_path, paths["input"], plugin_library)
    assert res["functions"] == "plugins" and res["token_mode"] == "dynamic"
    assert {"algm::AlgmClap/2", "algm::AlgmGbm/2"} <= set(res["plugin_creators"])
    layers = res["layers"]
    assert layers["algm_plugin_layers"] == layers["algm_nodes"] == 2
    assert sorted(p["plugin"] for p in layers["plugin_layers"]) == ["algm::AlgmClap/2", "algm::AlgmGbm/2"]
    engine = tmp_path / "dyn.engine"
    assert engine.stat().st_size == res["engine_bytes"] > 0 and _well_formed(engine)


# ----------------------------------------------------------------------------- runtime, pipeline

def test_trt_runner_refuses_without_a_gpu(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    from algm_export.runtimes.tensorrt.loader import cuda_device
    from algm_export.runtimes.tensorrt.runner import TrtRunner

    if cuda_device().get("available"):
        pytest.skip("a GPU is present: tests/test_trt_runtime.py runs engines")
    with pytest.raises(BackendUnavailable, match="no CUDA GPU"):
        TrtRunner(tmp_path / "x.engine", backend="tensorrt-rtx")


def test_output_allocator_for_data_dependent_outputs():
    """The IOutputAllocator TrtRunner hands TensorRT for outputs whose shape is known only after the
    run: aligned memory that grows when asked, and the output viewed with its notified shape."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    from algm_export.runtimes.tensorrt.runner import make_output_allocator

    alloc = make_output_allocator(trt, torch, "cpu")
    ptr = alloc.reallocate_output_async("y", 0, 6 * 4, 256, 0)
    assert ptr % 256 == 0
    buf, off = alloc.buffers["y"]
    buf[off: off + 24].view(torch.float32).copy_(torch.arange(6.0))
    alloc.notify_shape("y", (2, 3))
    assert torch.equal(alloc.tensor("y", torch.float32), torch.arange(6.0).reshape(2, 3))
    assert alloc.reallocate_output("y", ptr, 8, 256) == ptr          # fits: same memory
    big = alloc.reallocate_output("y", ptr, 4096, 256)
    assert big % 256 == 0 and alloc.buffers["y"][0].numel() >= 4096


def test_export_folder_dynamic_entries(monkeypatch, tmp_path, tiny_linear):
    """Manifest entries of the dynamic token mode (exports stubbed: the files are tested above)."""
    from algm_export.export import pipeline

    calls = []

    def fake_entry(model, path, inline, fp16, threshold_input=False, weights=None, batch=None):
        calls.append((getattr(model, "token_mode", "baseline"), path.name, threshold_input))
        return {"onnx": path.name, "sha256": "0" * 64, "inputs": ["image", "threshold"] if threshold_input else ["image"]}

    monkeypatch.setattr(pipeline, "_export_entry", fake_entry)
    monkeypatch.setattr(pipeline, "calibration_tensors", lambda *a, **k: pytest.fail("dynamic mode calibrates nothing"))
    man = pipeline.export_folder(tiny_linear, "builtin:test", tmp_path / "a", thresholds=[0.85, 0.9],
                                 token_mode="dynamic")
    assert calls == [("baseline", "baseline.onnx", False), ("dynamic", "t0.850_l1-5_dyn.onnx", False),
                     ("dynamic", "t0.900_l1-5_dyn.onnx", False)]
    for e, t in zip(man["settings"], (0.85, 0.9)):
        assert e["token_mode"] == "dynamic" and e["capacities"] is None and e["calibration"] is None
        assert e["threshold"] == t and e["threshold_input"] is False
    calls.clear()
    man = pipeline.export_folder(tiny_linear, "builtin:test", tmp_path / "b", thresholds=[0.92, 0.85, 0.88],
                                 token_mode="dynamic", threshold_input=True)
    assert calls[1:] == [("dynamic", "tin_l1-5_dyn.onnx", True)]
    (e,) = man["settings"]
    assert e["name"] == "tin_l1-5_dyn" and e["threshold_input"] is True and e["thresholds"] == [0.85, 0.88, 0.92]
    assert e["inputs"] == ["image", "threshold"]
    with pytest.raises(ConfigError, match="token-mode dynamic"):
        pipeline.export_folder(tiny_linear, "builtin:test", tmp_path / "c", threshold_input=True)
    with pytest.raises(ConfigError, match="no capacities"):
        pipeline.export_folder(tiny_linear, "builtin:test", tmp_path / "d", token_mode="dynamic", capacities=[64, 60])
