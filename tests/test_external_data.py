"""Weights as ONNX external data, stored once per export folder, and checked before anything reads them.

* `export --external-data` (automatic above 1.75 GiB of weights) writes every entry's graph with its
  large tensors in one shared `weights.bin`, each distinct tensor once (by content);
* the manifest lists the data file with its sha256; a changed data file stops every command (exit 2);
* a graph whose external-data location leaves the folder (absolute, `..`, a symlink), or names a file
  the manifest does not list, is refused before ONNX Runtime, onnx or TensorRT opens it (exit 2);
* validate, bench, predict and build run such folders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from algm_export.cli import main
from algm_export.core.errors import ArtifactError
from algm_export.core.manifest import load_manifest, sha256_file


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("error:")], err


@pytest.fixture(scope="module")
def ext_export(tiny_export, tmp_path_factory):
    """The session's tiny checkpoint exported with --external-data (baseline + one setting)."""
    ck, _plain, images = tiny_export
    out = tmp_path_factory.mktemp("ext") / "export"
    code = main(["export", str(ck), "--out", str(out), "--thresholds", "0.9", "--calib-images", str(images),
                 "--external-data"])
    assert code == 0
    return ck, out, images


@pytest.fixture
def folder(ext_export, tmp_path):
    d = tmp_path / "work" / "export"
    shutil.copytree(ext_export[1], d)
    return d


def set_location(onnx_path: Path, location: str) -> str:
    """Point the first external tensor of a graph at `location`; returns the tensor's name."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
                onnx.save_model(m, str(onnx_path))
                return t.name
    raise AssertionError("no external tensor")


def rehash(d: Path, key: str = "baseline") -> None:
    data = json.loads((d / "manifest.json").read_text())
    entry = data["baseline"] if key == "baseline" else data["settings"][0]
    entry["sha256"] = sha256_file(d / entry["onnx"])
    (d / "manifest.json").write_text(json.dumps(data))


@pytest.mark.slow
def test_weights_are_stored_once_and_hashed(ext_export):
    ck, d, _ = ext_export
    data = load_manifest(d, verify=True)
    assert data["data_files"] == [{"path": "weights.bin", "sha256": sha256_file(d / "weights.bin"),
                                   "bytes": (d / "weights.bin").stat().st_size}]
    entries = [data["baseline"]] + data["settings"]
    assert all(e["external_data"] == ["weights.bin"] for e in entries)
    weights = (d / "weights.bin").stat().st_size
    ckpt = (ck / "checkpoint.pth").stat().st_size
    graphs = sum((d / e["onnx"]).stat().st_size for e in entries)
    assert weights <= 1.5 * ckpt                      # once, although two entries point into it
    assert graphs + weights <= 1.5 * ckpt
    refs = []
    for e in entries:
        m = onnx.load(str(d / e["onnx"]), load_external_data=False)
        ext = {t.name: {x.key: x.value for x in t.external_data} for t in m.graph.initializer if t.external_data}
        assert ext and all(v["location"] == "weights.bin" for v in ext.values())
        refs.append({(v["offset"], v["length"]) for v in ext.values()})
    assert refs[0] <= refs[1] or refs[1] <= refs[0] or len(refs[0] & refs[1]) > 0.9 * min(map(len, refs))
    assert all(int(off) % 4096 == 0 for off, _ in refs[0])


@pytest.mark.slow
def test_validate_predict_and_bench_run_the_folder(capsys, folder, ext_export, tmp_path):
    ck, _, images = ext_export
    code, errors, err = run(capsys, "validate", folder, "--images", images, "--max-images", "1")
    assert code == 0, err
    rep = json.loads((folder / "validation" / "report.onnxruntime.fp32.json").read_text())
    setting = rep["entries"][1]
    assert setting["summary"]["max_abs"] < 1e-4
    im = setting["per_image"][0]
    assert [m["op"] for m in im["margins"]] == ["clap", "gbm"]
    assert "decision_differences" in im
    onnx_file = folder / "t0.900_l1-5.onnx"
    code, errors, err = run(capsys, "predict", "sample:coffee", "--model", ck, "--threshold", "0.9", "--engine",
                            onnx_file, "--out", tmp_path / "pred", "-q")
    assert code == 0, err
    code, errors, err = run(capsys, "bench", folder, "--backend", "ort", "--images", images, "--repeats", "1",
                            "--warmup", "0", "--settle-ms", "0")
    assert code == 0, err


@pytest.mark.slow
def test_a_changed_data_file_stops_every_command(capsys, folder, ext_export):
    _, _, images = ext_export
    w = folder / "weights.bin"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    for argv in (["validate", folder, "--images", images, "--max-images", "1"],
                 ["bench", folder, "--backend", "ort", "--images", images, "--repeats", "1", "--warmup", "0"]):
        code, errors, err = run(capsys, *argv)
        assert code == 2, err
        assert "does not match its manifest" in errors[0] and "weights.bin: sha256 does not match" in err
    assert not (folder / "validation").exists()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "unlisted"])
def test_locations_outside_the_folder_are_refused_before_reading(capsys, folder, ext_export, where):
    _, _, images = ext_export
    outside = folder.parent / "outside.bin"
    shutil.copy(folder / "weights.bin", outside)                 # a reader following it would succeed
    if where == "parent":
        loc = "../outside.bin"
    elif where == "absolute":
        loc = str(outside)
    elif where == "symlink":
        os.symlink(outside, folder / "link.bin")
        data = json.loads((folder / "manifest.json").read_text())
        data["data_files"].append({"path": "link.bin", "sha256": sha256_file(outside)})
        (folder / "manifest.json").write_text(json.dumps(data))
        loc = "link.bin"
    else:
        shutil.copy(folder / "weights.bin", folder / "other.bin")
        loc = "other.bin"
    name = set_location(folder / "baseline.onnx", loc)
    rehash(folder)
    code, errors, err = run(capsys, "validate", folder, "--images", images, "--max-images", "1")
    assert code == 2, err
    assert name in errors[0] or loc in errors[0] or "link.bin" in errors[0], errors
    assert not (folder / "validation").exists()
    from algm_export.artifacts import ExportFolder

    with pytest.raises(ArtifactError):
        ExportFolder.load(folder).baseline.onnx_path()


@pytest.mark.slow
def test_a_loose_graph_pointing_out_of_its_folder_is_refused(capsys, folder, ext_export, tmp_path):
    ck = ext_export[0]
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(folder / "t0.900_l1-5.onnx", loose / "model.onnx")
    set_location(loose / "model.onnx", "../work/export/weights.bin")
    code, errors, err = run(capsys, "predict", "sample:coffee", "--model", ck, "--threshold", "0.9", "--engine",
                            loose / "model.onnx", "--out", tmp_path / "pred", "-q")
    assert code == 2 and "leads out" in errors[0] or "not a plain relative path" in errors[0], err


@pytest.mark.slow
def test_manifest_rules_for_data_files(folder):
    data = json.loads((folder / "manifest.json").read_text())
    data["settings"][0]["external_data"] = ["nothere.bin"]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="data_files does not list"):
        load_manifest(folder)
    data["settings"][0]["external_data"] = ["weights.bin"]
    data["data_files"].append({"path": "baseline.onnx", "sha256": "0" * 64})
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="graph file"):
        load_manifest(folder)


def test_weight_store_dedupes_aligns_and_aborts(tmp_path):
    from algm_export.export.external import WeightStore

    with WeightStore(tmp_path) as ws:
        a = ws.put(np.arange(1000, dtype=np.float32))
        b = ws.put(np.ones(10, dtype=np.float32))
        c = ws.put(np.arange(1000, dtype=np.float32))
        rec = ws.finish()
    assert a == c and a[0] == 0 and b[0] == 4096 and ws.bytes_in == 8040
    assert rec["bytes"] == 4096 + 40 and rec["sha256"] == sha256_file(tmp_path / "weights.bin")
    with pytest.raises(RuntimeError):
        with WeightStore(tmp_path / "x") as ws:
            ws.put(b"abc")
            raise RuntimeError
    assert not (tmp_path / "x" / "weights.bin").exists()


@pytest.mark.slow
def test_large_models_go_external_by_themselves_and_build(tiny_export, tmp_path, monkeypatch):
    """Above the limit (lowered here) export stores the weights externally without being asked, and
    TensorRT-RTX builds from such a folder (it parses each graph from the folder's files)."""
    from algm_export.export import pipeline
    from algm_export.models.registry import resolve_model

    ck, _, images = tiny_export
    monkeypatch.setattr(pipeline, "AUTO_BYTES", 1000)
    out = tmp_path / "auto"
    man = pipeline.export_folder(resolve_model(str(ck)), str(ck), out, thresholds=[0.9], calib_images=images)
    assert man["data_files"][0]["path"] == "weights.bin"
    pytest.importorskip("tensorrt_rtx")
    from algm_export.tasks.build import build_engines

    recs = build_engines(out, precision="fp32", backend="tensorrt-rtx", compute_capabilities=[86], progress=False,
                         settings=["baseline"])
    assert recs and (out / recs[0]["file"]).stat().st_size > (out / "weights.bin").stat().st_size * 0.5


@pytest.mark.slow
def test_lean_validation_holds_one_pytorch_model_at_a_time(tiny_export, tmp_path, monkeypatch):
    """Each entry's PyTorch model is gone before the next entry loads its own (one copy of the weights
    at a time), also after a static entry, whose extra reference runner once kept it."""
    import weakref

    from algm_export.artifacts import ExportFolder
    from algm_export.tasks.validate import validate

    ck, _plain, images = tiny_export
    out = tmp_path / "export"
    assert main(["export", str(ck), "--out", str(out), "--thresholds", "0.9,0.95", "--calib-images", str(images),
                 "--external-data"]) == 0
    loaded, load = [], ExportFolder.model

    def model(self, *args, **kw):
        assert all(r() is None for r in loaded), "an earlier entry's PyTorch model is still in memory"
        m = load(self, *args, **kw)
        loaded.append(weakref.ref(m))
        return m

    monkeypatch.setattr(ExportFolder, "model", model)
    report = validate(out, images=images, limit_images=1, lean=True, save_outputs=False)
    assert len(loaded) == len(report["entries"]) == 3


def test_lean_validation_reports_the_same(folder, ext_export):
    """Large folders are validated in phases (backend first, its outputs on disk, then PyTorch): the
    report is the one of the interleaved run."""
    from algm_export.tasks.validate import validate

    images = ext_export[2]
    a = validate(folder, images=images, limit_images=1, lean=False)
    saved = {e["outputs"]: (Path(folder) / e["outputs"]).read_bytes() for e in a["entries"]}
    b = validate(folder, images=images, limit_images=1, lean=True)
    assert b.get("lean") and not a.get("lean")
    for ea, eb in zip(a["entries"], b["entries"]):
        assert ea["summary"] == eb["summary"]
        assert ea["per_image"] == eb["per_image"]
        # the saved outputs too (the lean run's logits come back memory-mapped from its scratch folder)
        assert (Path(folder) / eb["outputs"]).read_bytes() == saved[eb["outputs"]]
