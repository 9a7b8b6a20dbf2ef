"""EVA-02 UperNet -> ONNX: baseline and static ALGM, ONNX Runtime parity (rotary centroids in the graph)."""

import numpy as np
import onnx
import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.export.exporter import export_onnx
from algm_export.export.readiness import check_readiness
from algm_export.models.families.eva02 import builtin_eva02
from algm_export.runtimes.onnxruntime import OrtRunner
from test_eva02 import _inputs

pytestmark = pytest.mark.slow
SET = AlgmSetting(0.88, (2, 2), (1, 5))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = builtin_eva02("tiny", 128, 16, seed=0, n_cls=21, channels=64)
    static = apply_algm(model, SET, capacities=(64, 56))
    d = tmp_path_factory.mktemp("eva_exp")
    return model, static, {"baseline": export_onnx(model, d / "eva_base.onnx"),
                           "algm": export_onnx(static, d / "eva_algm.onnx")}


def test_graph(exported):
    _, _, paths = exported
    m = onnx.load(str(paths["algm"]))
    custom = [n.op_type for n in m.graph.node if n.domain == "algm"]
    assert custom == ["AlgmClap", "AlgmGbm"]          # the rotary centroids are standard ops
    assert {n.domain for n in m.graph.node} <= {"", "algm"}
    for p in paths.values():
        r = check_readiness(onnx.load(str(p)))
        assert r["ready"], r["problems"]


@pytest.mark.parametrize("which", ["baseline", "algm"])
def test_ort_parity(exported, which):
    model, static, paths = exported
    ref_model = model if which == "baseline" else static
    runner = OrtRunner(paths[which], threads=2)
    close, merged = 0, 0
    xs = _inputs(model)
    for x in xs:
        with torch.no_grad():
            ref = ref_model(x).numpy()
        out = runner.infer(x)
        if which == "algm":
            np.testing.assert_array_equal(out["merge_stats"], static.stats_tensor.numpy())
            merged += int(out["merge_stats"][0, :, 0].sum() > 0)
        close += int(np.abs(out["logits"] - ref).max() <= 1e-4)
        assert (out["logits"].argmax(1) == ref.argmax(1)).mean() >= 0.999
    assert close >= len(xs) - 1
    if which == "algm":
        assert merged == len(xs)
