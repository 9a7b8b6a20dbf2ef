"""One runner interface and one registry (runtimes/base.py, runtimes/registry.py), on the typed
export folder (artifacts/)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from algm_export.artifacts import ExportFolder
from algm_export.core.errors import ArtifactError, ConfigError
from algm_export.runtimes.base import RunOutput, Runner, tokens_from_merge_stats
from algm_export.runtimes.registry import make_runner, normalize_backend, parse_backends, runner_for_file


def test_one_backend_vocabulary():
    assert [normalize_backend(b) for b in ("torch", "ort", "onnxruntime", "trt", "TensorRT", "tensorrt-rtx")] == [
        "torch", "onnxruntime", "onnxruntime", "tensorrt", "tensorrt", "tensorrt-rtx"]
    assert parse_backends("torch, ort,onnxruntime") == ["torch", "onnxruntime"]
    with pytest.raises(ConfigError, match="unknown backend 'engine'"):
        normalize_backend("engine")


def test_run_output_reads_like_the_old_dict():
    out = RunOutput(np.zeros((1, 2, 4, 4), np.float32))
    assert "merge_stats" not in out and out.get("merge_stats") is None and out.keys() == ["logits"]
    with pytest.raises(KeyError):
        out["tokens"]


def test_tokens_from_merge_stats():
    st = np.array([[[10, 0], [3, 1]]])  # CLAP: 10 windows of 4 merged; GBM: 3 merges
    assert tokens_from_merge_stats(st, 64, 4).tolist() == [[64 - 30, 64 - 33]]


class _Fixed(Runner):
    name, backend = "fixed", "test"

    def __init__(self):
        self.closed = False

    def _infer(self, image):
        return RunOutput(np.zeros((1, 1, 1, 1), np.float32), np.array([[[2, 0]]]))

    def close(self):
        self.closed = True


def test_runner_is_a_context_manager_and_refuses_a_threshold():
    with _Fixed() as r:
        r.token_geometry = (16, 4)
        assert r.infer(np.zeros((1, 3, 8, 8), np.float32)).tokens.tolist() == [[10]]
        with pytest.raises(ConfigError, match="threshold is built in"):
            r.infer(np.zeros((1, 3, 8, 8), np.float32), threshold=0.9)
    assert r.closed


@pytest.fixture
def folder(tiny_export, tmp_path):
    d = tmp_path / "export"
    shutil.copytree(tiny_export[1], d)
    return d


def test_export_folder_entries_and_the_stored_policy(folder):
    data = json.loads((folder / "manifest.json").read_text())
    data["settings"][0]["token_mode"] = "static"  # a key this code does not know is kept
    (folder / "manifest.json").write_text(json.dumps(data))
    f = ExportFolder.load(folder, verify=True)
    assert [e.name for e in f.entries] == ["baseline", data["settings"][0]["name"]]
    base, s = f.entries
    assert base.is_baseline and base.setting() is None
    assert s.setting().policy == data["settings"][0].get("policy", "per_image")
    assert s.get("token_mode") == "static" and s.onnx_path().is_file()
    f.save()
    assert json.loads((folder / "manifest.json").read_text())["settings"][0]["token_mode"] == "static"
    data["settings"][0]["policy"] = "batch_min"
    (folder / "manifest.json").write_text(json.dumps(data))
    assert ExportFolder.load(folder).settings[0].setting().policy == "batch_min"
    data["settings"][0]["policy"] = "nonsense"
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="policy 'nonsense' unknown"):
        ExportFolder.load(folder).settings[0].setting()
    with pytest.raises(ConfigError, match="--precision fp16"):
        s.onnx_path("fp16")
    with pytest.raises(ArtifactError, match="build it first"):
        s.engine("fp32", "tensorrt")


def test_runners_of_every_cpu_backend_agree(folder):
    f = ExportFolder.load(folder, verify=True)
    model = f.model()
    (name, x), = f.inputs(limit=1, model=model)
    for e in f.entries:
        with make_runner("torch", e, model=model) as ref, make_runner("ort", e, model=model) as ort:
            a, b = ref.infer(x), ort.infer(x.numpy())
            assert isinstance(b, RunOutput) and b.logits.dtype == np.float32
            assert np.abs(a.logits - b.logits).max() < 1e-3
            if e.is_baseline:
                assert a.merge_stats is None and b.merge_stats is None and b.tokens is None
            else:  # ONNX Runtime has no token output: derived from merge_stats, as torch counts them
                assert np.array_equal(a.merge_stats, b.merge_stats)
                assert np.array_equal(a.tokens, b.tokens)
    with pytest.raises(ConfigError, match="fp32 only"):
        make_runner("torch", f.baseline, "fp16", model=model)


def test_runner_for_file_checks_backend_and_file(folder):
    onnx = folder / ExportFolder.load(folder).baseline.raw["onnx"]
    assert runner_for_file(onnx).backend == "onnxruntime"
    with pytest.raises(ConfigError, match="cannot run on --backend tensorrt"):
        runner_for_file(onnx, "tensorrt")
    with pytest.raises(ConfigError, match="no such file"):
        runner_for_file(folder / "missing.onnx")


def test_predict_backend_needs_an_engine_file():
    from algm_export.tasks.predict import make_runner as predict_runner

    with pytest.raises(ConfigError, match="give --engine FILE"):
        predict_runner(None, None, "onnxruntime")
    with pytest.raises(ConfigError, match="unknown backend"):
        predict_runner(None, None, "engine")


def test_run_output_iterates_over_its_keys():
    out = RunOutput(np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 2, 2), np.int32))
    assert set(out) == {"logits", "merge_stats"} and dict(out.items()).keys() == {"logits", "merge_stats"}
