"""SegViT through the exporter: baseline and static ALGM ONNX files, ONNX Runtime parity on photos.

Model-level and slow (two dynamo exports), kept out of test_segvit.py so that file stays fast.
"""

import numpy as np
import onnx
import pytest
import torch

from algm_export import apply_algm
from algm_export.export.exporter import export_onnx
from algm_export.runtimes.onnxruntime import OrtRunner
from test_segvit import SET, tiny  # noqa: F401  (the module fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):  # noqa: F811
    d = tmp_path_factory.mktemp("segvit_exp")
    static = apply_algm(tiny, SET, capacities=(64, 56))
    return static, {"baseline": export_onnx(tiny, d / "baseline.onnx"), "algm": export_onnx(static, d / "algm.onnx")}


def test_graph_interface(exported):
    _, paths = exported
    m = onnx.load(str(paths["algm"]))
    assert [o.name for o in m.graph.output] == ["logits", "merge_stats"]
    dims = [d.dim_value or d.dim_param for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims[1:] == [21, 128, 128] and isinstance(dims[0], str)
    assert [n.op_type for n in m.graph.node if n.domain == "algm"] == ["AlgmClap", "AlgmGbm"]


def test_ort_parity(exported, tiny, photos_128):  # noqa: F811
    static, paths = exported
    base, algm = OrtRunner(paths["baseline"], threads=2), OrtRunner(paths["algm"], threads=2)
    close = 0
    for x in photos_128:
        with torch.no_grad():
            ref_b = tiny(x).numpy()
            ref_a = static(x).numpy()
        st = static.stats_tensor.numpy()
        ob, oa = base.infer(x), algm.infer(x)
        assert np.abs(ob["logits"] - ref_b).max() < 1e-4
        np.testing.assert_array_equal(oa["merge_stats"], st)
        assert st[0, 1, 0] > 0                                 # GBM merged
        close += int(np.abs(oa["logits"] - ref_a).max() <= 1e-4)
        assert (oa["logits"].argmax(1) == ref_a.argmax(1)).mean() >= 0.999
    assert close >= len(photos_128) - 1
