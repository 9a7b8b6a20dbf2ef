"""Model level: export -> ONNX Runtime parity with merges, inlined graph, dynamic batch, readiness."""

import numpy as np
import onnx
import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.export.exporter import export_onnx
from algm_export.export.readiness import check_readiness
from algm_export.runtimes.onnxruntime import OrtRunner

pytestmark = pytest.mark.slow  # whole-model ONNX exports (module fixture, fp16)

SET = AlgmSetting(0.88, (2, 2), (1, 5))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_linear):
    d = tmp_path_factory.mktemp("exp")
    static = apply_algm(tiny_linear, SET, capacities=(64, 56))
    paths = {
        "baseline": export_onnx(tiny_linear, d / "baseline.onnx"),
        "algm": export_onnx(static, d / "algm.onnx"),
        "inlined": export_onnx(static, d / "algm.inlined.onnx", inline=True),
    }
    return static, paths


def test_graph_interface_and_custom_nodes(exported):
    _, paths = exported
    m = onnx.load(str(paths["algm"]))
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == ["logits", "merge_stats"]
    dims = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in m.graph.output]
    assert dims[0][1:] == [21, 128, 128] and dims[1][1:] == [2, 2]
    assert isinstance(dims[0][0], str)  # dynamic batch
    custom = [n for n in m.graph.node if n.domain == "algm"]
    assert [n.op_type for n in custom] == ["AlgmClap", "AlgmGbm"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attrs["capacity"] == 64 and attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"algm"
    assert abs(attrs["threshold"] - 0.88) < 1e-6
    assert {f.name for f in m.functions} == {"AlgmClap", "AlgmGbm"}
    inl = onnx.load(str(paths["inlined"]))
    assert not [n for n in inl.graph.node if n.domain == "algm"] and not inl.functions


def test_readiness(exported):
    _, paths = exported
    for p in paths.values():
        r = check_readiness(onnx.load(str(p)))
        assert r["ready"], r["problems"]
    bad = onnx.load(str(paths["algm"]))
    for n in bad.graph.node:
        if n.domain == "algm":
            del n.attribute[:]
            break
    assert not check_readiness(bad)["ready"]


@pytest.mark.parametrize("which", ["algm", "inlined"])
def test_ort_parity_with_merges(exported, which, photos_128):
    static, paths = exported
    runner = OrtRunner(paths[which], threads=2)
    close, merged = 0, 0
    for x in photos_128:
        with torch.no_grad():
            ref = static(x).numpy()
        st = static.stats_tensor.numpy()
        out = runner.infer(x)
        np.testing.assert_array_equal(out["merge_stats"], st)
        merged += int(st[0, :, 0].sum() > 0)
        close += int(np.abs(out["logits"] - ref).max() <= 1e-4)
        assert (out["logits"].argmax(1) == ref.argmax(1)).mean() >= 0.999
    assert merged == len(photos_128)
    assert close >= len(photos_128) - 1


def test_dynamic_batch_is_per_image(exported, photos_128):
    _, paths = exported
    runner = OrtRunner(paths["algm"], threads=2)
    batch = torch.cat(photos_128[:3])
    out3 = runner.infer(batch)
    for i in range(3):
        out1 = runner.infer(photos_128[i])
        np.testing.assert_array_equal(out3["merge_stats"][i], out1["merge_stats"][0])
        assert np.abs(out3["logits"][i] - out1["logits"][0]).max() < 1e-4


def test_baseline_parity(exported, tiny_linear, photos_128):
    _, paths = exported
    runner = OrtRunner(paths["baseline"], threads=2)
    x = torch.cat(photos_128[:2])
    with torch.no_grad():
        ref = tiny_linear(x).numpy()
    out = runner.infer(x)
    assert set(out) == {"logits"}
    assert np.abs(out["logits"] - ref).max() < 1e-4


def test_fp16_export_keeps_decisions(tmp_path, tiny_linear, photos_128):
    from algm_export.export.fp16 import export_fp16

    static = apply_algm(tiny_linear, SET, capacities=(64, 56))
    p = export_fp16(static, tmp_path / "algm.fp16.onnx")
    m = onnx.load(str(p))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    runner = OrtRunner(p, threads=2)
    agree = []
    for x in photos_128[:3]:
        with torch.no_grad():
            ref = static(x).numpy()
        out = runner.infer(x)
        agree.append((out["logits"].argmax(1) == ref.argmax(1)).mean())
    assert np.mean(agree) > 0.98
