"""export folder -> validate (ORT) -> bench -> report, on a small published-format checkpoint."""

import json
import re

import numpy as np
import pytest

from algm_export.core.errors import ArtifactError, CapacityError
from algm_export.export.pipeline import export_folder
from algm_export.core.manifest import load_manifest, sha256_file

pytestmark = pytest.mark.slow  # whole-model exports (module fixture) and validate/bench/report on them


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from algm_export import AlgmSetting, create_segmenter
    from algm_export.models.formats.published_segmenter import save_segmenter

    d = tmp_path_factory.mktemp("ckpt")
    m = create_segmenter("vit_tiny", "linear", 128, n_cls=21, seed=0)
    save_segmenter(m, d, algm=AlgmSetting(0.9, (2, 2), (1, 5)))
    return d


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, ckpt):
    from algm_export.models.registry import resolve_model

    out = tmp_path_factory.mktemp("export")
    model = resolve_model(str(ckpt))
    export_folder(model, str(ckpt), out, thresholds=[0.85, 0.9], calib_limit=6, force=True)
    return out


def test_manifest(export_dir, ckpt):
    man = load_manifest(export_dir, verify=True)
    assert man["model"]["checkpoint_sha256"] == sha256_file(ckpt / "checkpoint.pth")
    assert man["model"]["n_cls"] == 21 and man["model"]["image_size"] == [128, 128]
    assert [s["threshold"] for s in man["settings"]] == [0.85, 0.9]
    for s in man["settings"]:
        cal = s["calibration"]
        assert s["capacities"][0] == max(cal["counts"][0])           # quantile 1.0 = the maximum
        assert s["capacities"][1] >= max(cal["counts"][1]) or s["capacities"][1] == s["capacities"][0]
        assert len(cal["counts"][0]) == 6 and s["tensorrt_ready"]
        assert (export_dir / s["onnx"]).exists()
    assert man["baseline"]["onnx"] == "baseline.onnx"
    assert "torch" in man["versions"] and "onnx" in man["versions"]


def test_reexport_needs_force(export_dir, ckpt):
    from algm_export.models.registry import resolve_model

    with pytest.raises(ArtifactError, match="--force"):
        export_folder(resolve_model(str(ckpt)), str(ckpt), export_dir, thresholds=[0.9])


def test_validate_ort_passes_with_merges(export_dir):
    from algm_export.tasks.validate import format_report, validate

    rep = validate(export_dir, backend="ort", limit_images=4)
    assert rep["pass"], format_report(rep)
    algm = [e for e in rep["entries"] if e["name"] != "baseline"]
    assert all(sum(m["merges_torch"][0] for m in e["per_image"]) > 0 for e in algm)
    assert all(e["summary"]["forced_merges"] == 0 for e in algm)       # calibration images need none
    saved = export_dir / algm[0]["outputs"]
    from polygraphy.comparator import RunResults

    rr = RunResults.load(str(saved))
    assert len(rr) == 2 and len(list(rr.values())[0]) == 4
    first = list(rr.values())[0][0]
    assert set(first) == {"labels", "logits_stride16", "merge_stats"}
    assert first["labels"].shape == (1, 128, 128) and first["logits_stride16"].shape == (1, 21, 8, 8)
    assert saved.stat().st_size < 2_000_000
    txt = format_report(rep)
    rows = {line.split()[0]: line.split() for line in txt.splitlines()[2:] if line.strip() and not line.startswith(" ")}
    assert list(rows) == [e["name"] for e in rep["entries"]]            # one table row per entry, in order
    for e in rep["entries"]:
        row = rows[e["name"]]
        assert row[-1] == "PASS"                                          # the verdict column
        assert row[3] == f"{e['summary']['max_abs']:.2e}"                  # the max |d| the report measured
    assert "FAIL" not in txt and not any(e["summary"]["failures"] for e in rep["entries"])


def test_validate_writes_nothing_when_a_later_entry_fails(export_dir, monkeypatch, tmp_path):
    """Entries' outputs leave memory as each entry ends (saved in the run's scratch folder) and wait
    there until every entry has run: a failure in the last entry leaves neither the earlier entries'
    outputs nor a report in the folder."""
    import shutil

    from polygraphy.comparator import RunResults

    from algm_export.runtimes import registry
    from algm_export.tasks.validate import validate

    d = tmp_path / "validate-fails-late"
    shutil.copytree(export_dir, d, ignore=shutil.ignore_patterns("validation", ".algm-export.lock"))
    saved, save = [], RunResults.save
    monkeypatch.setattr(RunResults, "save", lambda self, path: (saved.append(path), save(self, path))[1])
    real = registry.make_runner
    last = load_manifest(d)["settings"][-1]["name"]

    def failing(backend, entry, *a, **kw):
        if entry.name == last and backend != "torch":
            raise RuntimeError("backend failed on the last entry")
        return real(backend, entry, *a, **kw)

    monkeypatch.setattr(registry, "make_runner", failing)
    with pytest.raises(RuntimeError, match="last entry"):
        validate(d, backend="ort", limit_images=2)
    assert not (d / "validation").exists() or not any((d / "validation").iterdir())
    # the entries before the failing one were saved, outside the folder, before it ran
    assert len(saved) == len(load_manifest(d)["settings"]) and not any(str(d) in str(p) for p in saved)


def test_tampered_file_is_refused(export_dir, tmp_path):
    import shutil

    from algm_export.tasks.validate import validate

    d = tmp_path / "copy"
    shutil.copytree(export_dir, d)
    man = load_manifest(d)
    p = d / man["settings"][0]["onnx"]
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactError, match="sha256"):
        validate(d, backend="ort", limit_images=1)


def test_bench_and_report(export_dir, tmp_path):
    from algm_export.tasks.bench import bench, format_bench
    from algm_export.tasks.report.html import write_report

    rep = bench(export_dir, backends=["ort"], repeats=2, warmup=1)
    rows = rep["results"]
    assert [r["setting"] for r in rows][0] == "baseline" and len(rows) == 3
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert all(r["flop_ratio"] > 1.0 for r in rows[1:])
    assert (export_dir / "bench" / "bench.png").exists()
    assert "FLOP ratio" in format_bench(rep) and "ms idle before each timed run" in format_bench(rep)
    assert rep["settle_s"] == 0.05
    page = write_report(export_dir, n_images=1)
    text = page.read_text()
    for needle in ("What each setting does", "Exported models", "Parity with PyTorch", "Speed", "Published numbers",
                   "What merging does to the segmentation", "data:image/png;base64"):
        assert needle in text
    assert len(list(page.parent.glob("merge_*.png"))) == len(list(page.parent.glob("changed_*.png"))) == 2
    assert len(list(page.parent.glob("input_*.png"))) == 1                  # the photo once
    words = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)      # the page without its pictures
    assert "MET" not in words and "spec 2" not in words
    # --merge-pictures 0: no pictures, said so; the costs were not measured, the rest is there
    bare = write_report(export_dir, out=str(tmp_path / "bare"), n_images=0).read_text()
    assert "No pictures asked for" in bare and "was not measured" in bare
    assert 'alt="speed-up chart"' in bare and 'alt="trade-off chart"' not in bare     # no cost measured
    assert not list((tmp_path / "bare").glob("merge_*.png"))


def test_bench_cli(export_dir, capsys):
    from algm_export.cli import main

    assert main(["bench", str(export_dir), "--backend", "ort", "--repeats", "1", "--warmup", "0",
                 "--settle-ms", "0"]) == 0
    out = capsys.readouterr().out
    assert "t0.850" in out and "0 ms idle before each timed run" in out
    rep = json.loads((export_dir / "bench" / "bench.json").read_text())
    assert rep["settle_s"] == 0 and len(rep["results"]) == 3


def test_capacity_below_minimum_is_refused(ckpt, tmp_path):
    from algm_export.models.registry import resolve_model

    with pytest.raises(CapacityError):
        export_folder(resolve_model(str(ckpt)), str(ckpt), tmp_path / "x", thresholds=[0.9], capacities=[8, 8])


def test_predict_with_exported_onnx(export_dir, ckpt, tmp_path):
    from algm_export.cli import main

    man = load_manifest(export_dir)
    s = man["settings"][1]
    code = main(["predict", "sample:coffee", "--model", str(ckpt), "--threshold", str(s["threshold"]),
                 "--engine", str(export_dir / s["onnx"]), "--out", str(tmp_path), "-q"])
    assert code == 0
    rec = json.loads((tmp_path / "coffee_tokens.json").read_text())
    assert (tmp_path / "coffee_seg.png").exists()
    text = json.dumps(rec)
    assert "onnxruntime" in text


def test_validate_with_labels_reports_real_miou(export_dir, tmp_path):
    """ADE20K layout (images/, annotations/, label 0 ignored): real mIoU of PyTorch and the backend."""
    from PIL import Image

    from algm_export.models.images import sample_images
    from algm_export.tasks.validate import format_report, validate

    root = tmp_path / "ade"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    for name, img in sample_images(2):
        small = np.asarray(Image.fromarray(img).resize((160, 128)))
        Image.fromarray(small).save(root / "images" / f"{name}.jpg")
        lab = rng.integers(0, 22, size=small.shape[:2], dtype=np.uint8)   # 0 = ignored, 1..21 = classes
        Image.fromarray(lab).save(root / "annotations" / f"{name}.png")
    rep = validate(export_dir, backend="ort", labels=root, limit_images=2, save_outputs=False)
    for e in rep["entries"]:
        s = e["summary"]
        assert s["label_images"] == 2
        assert 0.0 <= s["miou_torch"] <= 100.0 and 0.0 <= s["miou_backend"] <= 100.0
        assert abs(s["miou_delta"]) < 1.0
    assert "mIoU torch" in format_report(rep)


def test_logit_differences_in_class_chunks_equal_the_whole_array():
    """`validate.abs_diff` walks the classes in chunks (a large model's full-resolution float64
    difference would hold gigabytes): same max, same mean up to summation order."""
    from algm_export.tasks.validate import abs_diff

    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 21, 9, 7)).astype(np.float32)
    b = a + rng.normal(scale=1e-3, size=a.shape).astype(np.float32)
    b[1, 20, 8, 6] += 5.0                                   # the largest difference in the last, short chunk
    whole = np.abs(a.astype(np.float64) - b.astype(np.float64))
    for chunk in (1, 8, 21, 64):
        mx, mean = abs_diff(a, b, chunk)
        assert mx == whole.max() and mx > 4.9
        assert mean == pytest.approx(whole.mean(), rel=1e-12)
