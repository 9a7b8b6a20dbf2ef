"""Graphs for one image per run (`export --batch 1`): a fixed batch axis, no padding mask in dynamic
token mode, EoMT's head as a convolution; runners split larger batches, engines get the profile
1,1,1 (docs/decisions.md item 59)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from algm_export.artifacts import ExportFolder
from algm_export.cli.entry import main
from algm_export.core.errors import ArtifactError, ConfigError
from algm_export.export.exporter import graph_batch
from algm_export.runtimes.base import RunOutput, join_outputs
from algm_export.runtimes.onnxruntime import OrtRunner

from conftest import PHOTOS, photo, prep


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny Segmenter (6 blocks, 128 px, layers 1 and 5) exported twice with static 0.88 and dynamic
    0.88 entries: `one` for one image per run, `any` with a dynamic batch axis."""
    from algm_export.export.pipeline import export_folder
    from _helpers.models import tiny_segmenter

    root = tmp_path_factory.mktemp("fixed_batch")
    model = tiny_segmenter()
    xs = [prep(photo(n), 128) for n in PHOTOS]
    out = {"model": model, "xs": xs}
    for name, batch in (("one", 1), ("any", None)):
        export_folder(model, "builtin:tiny", root / name, capacities=[40, 30], dynamic_thresholds=[0.88],
                      thresholds=[0.88], batch=batch)
        out[name] = root / name
    return out


def _where_nodes(path) -> int:
    return sum(n.op_type == "Where" for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_manifest_and_graphs_say_one_image(folders):
    one, any_ = ExportFolder.load(folders["one"]), ExportFolder.load(folders["any"])
    assert one.batch == 1 and any_.batch is None
    for e in one.entries:
        assert graph_batch(onnx.load(str(e.onnx_path()), load_external_data=False)) == 1
    for e in any_.entries:
        assert graph_batch(onnx.load(str(e.onnx_path()), load_external_data=False)) is None
    # dynamic token mode: one image has no padding, so no mask (per block after the first merge: the
    # hidden attention input and the padded rows' lower bound); static mode keeps its mask (capacity padding)
    dyn_one, dyn_any = one.entry("t0.880_l1-5_dyn").onnx_path(), any_.entry("t0.880_l1-5_dyn").onnx_path()
    assert _where_nodes(dyn_any) - _where_nodes(dyn_one) >= 2 * 5
    st_one, st_any = one.entry("t0.880_l1-5").onnx_path(), any_.entry("t0.880_l1-5").onnx_path()
    assert _where_nodes(st_one) == _where_nodes(st_any)


def test_runner_splits_a_batch_and_agrees_with_the_dynamic_batch_graph(folders):
    """A batch of 4 through a batch-1 graph: image by image, the same outputs as one image at a time, and
    within float rounding of the dynamic-batch graph (same token counts; merging happened)."""
    batch = torch.cat(folders["xs"][:4])
    for name in ("baseline", "t0.880_l1-5", "t0.880_l1-5_dyn"):
        r1 = OrtRunner(ExportFolder.load(folders["one"]).entry(name).onnx_path())
        ra = OrtRunner(ExportFolder.load(folders["any"]).entry(name).onnx_path())
        assert r1.max_batch == 1 and ra.max_batch is None
        got = r1.infer(batch)
        singles = [r1.infer(x) for x in folders["xs"][:4]]
        np.testing.assert_array_equal(got.logits, np.concatenate([s.logits for s in singles]))
        want = ra.infer(batch)
        assert got.logits.shape == want.logits.shape
        assert float(np.abs(got.logits - want.logits).max()) < 1e-4
        if name != "baseline":
            np.testing.assert_array_equal(got.merge_stats, want.merge_stats)
            assert got.merge_stats[..., 0].sum() > 0


def test_threshold_per_image_is_split_with_the_batch(tmp_path):
    from algm_export.export.pipeline import export_folder
    from _helpers.models import tiny_segmenter

    export_folder(tiny_segmenter(), "builtin:tiny", tmp_path / "tin", thresholds=[0.8, 0.88], token_mode="dynamic",
                  threshold_input=True, batch=1)
    e = ExportFolder.load(tmp_path / "tin").settings[0]
    r = OrtRunner(e.onnx_path())
    xs = [prep(photo(n), 128) for n in PHOTOS[:3]]
    ts = [0.5, 0.95, 0.5]
    got = r.infer(torch.cat(xs), threshold=np.array(ts, np.float32))
    for i, (x, t) in enumerate(zip(xs, ts)):
        np.testing.assert_array_equal(got.merge_stats[i:i + 1], r.infer(x, threshold=t).merge_stats)
    assert not np.array_equal(got.merge_stats, r.infer(torch.cat(xs), threshold=0.95).merge_stats)
    from algm_export.core.errors import InputError

    with pytest.raises(InputError, match="2 thresholds for 3 images"):    # refused before any slice runs
        r.infer(torch.cat(xs), threshold=[0.8, 0.9])


def test_other_fixed_batches_are_refused(tmp_path, capsys):
    from algm_export.export.pipeline import export_folder
    from _helpers.models import tiny_segmenter

    with pytest.raises(ConfigError, match="--batch 2"):
        export_folder(tiny_segmenter(), "builtin:tiny", tmp_path / "x", batch=2)
    assert main(["export", "builtin:vit_ti16_512", "--out", str(tmp_path / "y"), "--batch", "4"]) == 2
    assert "--batch 1" in capsys.readouterr().err


def test_a_manifest_with_another_batch_is_refused(folders, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folders["one"], bad)
    data = json.loads((bad / "manifest.json").read_text())
    data["batch"] = 2
    (bad / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="batch"):
        ExportFolder.load(bad)


def test_engine_profile_of_a_fixed_batch_folder(folders):
    from algm_export.tasks.build import _profile_for

    one, any_ = ExportFolder.load(folders["one"]), ExportFolder.load(folders["any"])
    assert _profile_for(any_, None) == [1, 1, 8] and _profile_for(any_, (1, 4, 16)) == [1, 4, 16]
    assert _profile_for(one, None) == [1, 1, 1] and _profile_for(one, (1, 1, 1)) == [1, 1, 1]
    with pytest.raises(ConfigError, match="exactly 1 image"):
        _profile_for(one, (1, 1, 8))


def test_triton_repository_of_a_fixed_batch_folder(folders, tmp_path):
    """A graph for one image keeps its full dims with max_batch_size 0 (Triton batches nothing); the
    config passes Triton's schema."""
    from algm_export.tasks.triton_repo import RepoOptions, write_repository

    summary = write_repository(folders["one"], tmp_path / "repo", RepoOptions(backend="onnxruntime"))
    assert summary["models"] and all(m["max_batch_size"] == 0 for m in summary["models"])
    texts = [p.read_text() for p in (tmp_path / "repo" / "models").glob("*/config.pbtxt")]
    assert len(texts) == len(summary["models"])
    for text in texts:
        assert "max_batch_size" not in text and "dims: 1\n  dims: 3\n  dims: 128\n  dims: 128\n" in text, text


def test_triton_repository_refuses_a_max_batch_for_a_fixed_batch_folder(folders, tmp_path, capsys):
    """--max-batch 4 on a folder for one image per run would be silently ignored (Triton batches
    nothing there): refused with the fix, exit 2, nothing written; --max-batch 1 is what it is."""
    from algm_export.tasks.triton_repo import RepoOptions, write_repository

    with pytest.raises(ConfigError, match="one image per run"):
        write_repository(folders["one"], tmp_path / "a", RepoOptions(backend="onnxruntime", max_batch=4))
    assert main(["triton-repo", str(folders["one"]), "--out", str(tmp_path / "b"), "--max-batch", "4"]) == 2
    assert "leave --max-batch out" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    summary = write_repository(folders["one"], tmp_path / "c", RepoOptions(backend="onnxruntime", max_batch=1))
    assert all(m["max_batch_size"] == 0 for m in summary["models"])
    # a folder with a batch axis keeps the default of 8
    summary = write_repository(folders["any"], tmp_path / "d", RepoOptions(backend="onnxruntime"))
    assert all(m["max_batch_size"] == 8 for m in summary["models"])


def test_join_outputs_pads_merge_inputs_to_the_longest_slice():
    a = RunOutput(np.zeros((1, 2, 4, 4), np.float32), np.ones((1, 2, 2), np.int32))
    b = RunOutput(np.ones((1, 2, 4, 4), np.float32), np.zeros((1, 2, 2), np.int32))
    a.merge_inputs = [{"x": np.ones((1, 5, 3), np.float32), "size": np.ones((1, 5), np.float32)}]
    b.merge_inputs = [{"x": np.ones((1, 3, 3), np.float32), "size": np.ones((1, 3), np.float32)}]
    a.assignments, b.assignments = [np.zeros((1, 16), np.int64)], [np.ones((1, 16), np.int64)]
    j = join_outputs([a, b])
    assert j.logits.shape == (2, 2, 4, 4) and j.merge_stats.shape == (2, 2, 2)
    assert j.merge_inputs[0]["x"].shape == (2, 5, 3)
    assert j.merge_inputs[0]["size"][1].tolist() == [1, 1, 1, 0, 0]          # padding: size 0
    assert j.assignments[0].shape == (2, 16) and j.labels is None


def test_eomt_head_for_one_image_equals_the_batched_product():
    """`semantic_logits` for one image (a 1x1 convolution) gives the batched product's values."""
    from algm_export.models.decoders.eomt import semantic_logits

    g = torch.Generator().manual_seed(0)
    m = torch.randn(2, 7, 8, 8, generator=g)
    c = torch.randn(2, 7, 5, generator=g)
    both = semantic_logits(m, c, (32, 32))
    one = semantic_logits(m[1:], c[1:], (32, 32))
    assert one.shape == (1, 4, 32, 32)
    torch.testing.assert_close(one, both[1:], rtol=1e-5, atol=1e-6)


def test_commands_on_a_folder_for_one_image(tmp_path, capsys):
    """From the command line: export --batch 1 (dynamic token mode), then validate, bench at batch 2 and
    predict on it; every command runs the batch-1 graphs image by image."""
    from PIL import Image

    from algm_export.models.formats.published_segmenter import save_segmenter
    from _helpers.models import tiny_segmenter

    save_segmenter(tiny_segmenter(), tmp_path / "ck")
    images = tmp_path / "images"
    images.mkdir()
    for name in PHOTOS[:3]:
        Image.fromarray(photo(name)).save(images / f"{name}.png")
    out = tmp_path / "one"
    assert main(["export", str(tmp_path / "ck"), "--out", str(out), "--thresholds", "0.88", "--token-mode",
                 "dynamic", "--batch", "1"]) == 0
    assert "1 image per run" in capsys.readouterr().out
    assert main(["validate", str(out), "--images", str(images)]) == 0
    assert "tokens per image equal PyTorch's on 3/3 images" in capsys.readouterr().out
    assert main(["bench", str(out), "--images", str(images), "--batch", "2", "--repeats", "2"]) == 0
    rep = json.loads((out / "bench" / "bench.json").read_text())
    dyn = [r for r in rep["results"] if r.get("token_mode") == "dynamic"]
    assert dyn and all(r["flop_ratio_at_batch_max"] == pytest.approx(r["flop_ratio"]) for r in dyn)
    assert main(["predict", str(images), "--model", str(tmp_path / "ck"), "--engine", str(out / "t0.880_l1-5_dyn.onnx"),
                 "--out", str(tmp_path / "pred"), "--batch-size", "2", "--grouping", "on", "-q"]) == 0
    assert len(list((tmp_path / "pred").glob("*_labels.png"))) == 3


@pytest.mark.slow
def test_tensorrt_rtx_builds_a_folder_for_one_image(folders, tmp_path):
    """TensorRT-RTX builds every entry of a batch-1 folder (static and dynamic) with the profile 1,1,1."""
    import shutil

    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (tensorrt-rtx-cu13) is not installed")
    from algm_export.tasks.build import build_engines

    d = tmp_path / "one"
    shutil.copytree(folders["one"], d)
    recs = build_engines(d, backend="tensorrt-rtx", compute_capabilities=[86], progress=False)
    assert [r["setting"] for r in recs] == ["baseline", "t0.880_l1-5", "t0.880_l1-5_dyn"]
    assert all(r["profile"] == [1, 1, 1] for r in recs)
    assert all(e["profile"] == [1, 1, 1] for e in json.loads((d / "manifest.json").read_text())["engines"])


def test_sliced_batches_name_the_batch_images_in_errors(folders):
    """NaN in the fourth image of a batch of four is reported as image 3 (not image 0 of its slice)."""
    from algm_export.core.errors import InputError

    r = OrtRunner(ExportFolder.load(folders["one"]).entry("t0.880_l1-5_dyn").onnx_path())
    batch = torch.cat(folders["xs"][:4]).clone()
    batch[3, 0, 5, 5] = float("nan")
    with pytest.raises(InputError, match=r"images \[3\]"):
        r.infer(batch)
