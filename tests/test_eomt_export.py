"""EoMT -> ONNX: baseline and dynamic-token-mode ALGM in ONNX Runtime (P = 5 prefix + queries in the graph)."""

import numpy as np
import onnx
import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.export.exporter import export_onnx
from algm_export.export.readiness import check_readiness
from algm_export.merging.static import tokens_from_stats
from algm_export.runtimes.onnxruntime import OrtRunner
from test_eomt import _inputs, make_algm_model

pytestmark = pytest.mark.slow
SET = AlgmSetting(0.88, (2, 2), (1, 5))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = make_algm_model()
    dyn = apply_algm(model, SET, token_mode="dynamic")
    d = tmp_path_factory.mktemp("eomt_exp")
    return model, dyn, {"baseline": export_onnx(model, d / "eomt_base.onnx"),
                        "dynamic": export_onnx(dyn, d / "eomt_dyn.onnx")}


def test_graph_interface(exported):
    _, _, paths = exported
    for which, p in paths.items():
        m = onnx.load(str(p))
        assert [i.name for i in m.graph.input] == ["image"]
        outs = [o.name for o in m.graph.output]
        assert outs == (["logits"] if which == "baseline" else ["logits", "merge_stats"])
        r = check_readiness(m)
        assert r["ready"], r["problems"]
    custom = [n.op_type for n in onnx.load(str(paths["dynamic"])).graph.node if n.domain == "algm"]
    assert custom == ["AlgmClap", "AlgmGbm"]


def test_ort_parity_and_token_counts(exported):
    model, dyn, paths = exported
    x = _inputs(model, 128)
    base = OrtRunner(paths["baseline"], threads=2)
    drun = OrtRunner(paths["dynamic"], threads=2)
    with torch.no_grad():
        ref = model(x).numpy()
        ref_dyn = dyn(x).numpy()
    want_tokens = dyn.merge_stats["tokens"].numpy()
    out = base.infer(x)
    assert np.abs(out["logits"] - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    batch = drun.infer(x)                                   # a mixed batch of 3
    assert np.abs(batch["logits"] - ref_dyn).max() <= 1e-4 * max(1.0, np.abs(ref_dyn).max())
    tok_batch = tokens_from_stats(batch["merge_stats"], 64)
    np.testing.assert_array_equal(tok_batch, want_tokens)
    solo = np.concatenate([tokens_from_stats(drun.infer(x[i:i + 1])["merge_stats"], 64) for i in range(3)])
    np.testing.assert_array_equal(solo, tok_batch)          # per-image counts: the same at batch 1
    assert (batch["merge_stats"][:, :, 0].sum(1) > 0).all()


def test_threshold_input(exported, tmp_path):
    """One dynamic graph with the CLAP threshold as an input serves every threshold."""
    model, dyn, _ = exported
    path = export_onnx(dyn, tmp_path / "eomt_tin.onnx", threshold_input=True)
    run = OrtRunner(path, threads=2)
    x = _inputs(model, 128)[:2]
    for t in (0.8, 0.95):
        ref = apply_algm(model, SET.with_threshold(t), token_mode="dynamic")
        with torch.no_grad():
            want = ref(x).numpy()
        out = run.infer(x, threshold=t)
        assert np.abs(out["logits"] - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
        np.testing.assert_array_equal(tokens_from_stats(out["merge_stats"], 64), ref.merge_stats["tokens"].numpy())


def test_graph_for_one_image(exported, tmp_path):
    """`batch=1`: no padding mask in the dynamic graph and the head's per-pixel product as a 1x1 `Conv`
    (weights computed in the graph: the image's class probabilities), the shipped graph's outputs on
    every image of a mixed batch (the runner feeds them one at a time)."""
    model, dyn, paths = exported
    one = export_onnx(dyn, tmp_path / "eomt_dyn_b1.onnx", batch=1)
    g = onnx.load(str(one)).graph
    inits = {i.name for i in g.initializer}
    head = [n for n in g.node if n.op_type == "Conv" and n.input[1] not in inits]
    assert len(head) == 1 and head[0].output[0] in {o.name for o in g.output} | {
        n.input[0] for n in g.node if n.op_type == "Identity"}
    shipped = onnx.load(str(paths["dynamic"])).graph
    assert sum(n.op_type == "Where" for n in g.node) < sum(n.op_type == "Where" for n in shipped.node)
    x = _inputs(model, 128)
    r1, ra = OrtRunner(one, threads=2), OrtRunner(paths["dynamic"], threads=2)
    got, want = r1.infer(x), ra.infer(x)
    assert np.abs(got["logits"] - want["logits"]).max() <= 1e-5 * max(1.0, np.abs(want["logits"]).max())
    np.testing.assert_array_equal(got["merge_stats"], want["merge_stats"])
    assert (got["merge_stats"][:, :, 0].sum(1) > 0).all()
