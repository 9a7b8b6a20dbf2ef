"""The HTML report in a real browser: headless Chromium at 1280 px opens it and checks that every image
loads (natural size > 0), that the page logs nothing to the console and raises no error, and that no
table is wider than the page (`tests/_helpers/report_browser.py`). Each report test keeps a screenshot of the
whole page beside the report (report/screenshot-1280.png) and prints its path, for review.

Folders: a Segmenter (static and dynamic token mode at 0.88, validated, benchmarked at batch 1 and 2),
an mmseg family (SETR, 11 classes), an EoMT one when the family is in this tree, and the Segmenter
folder with TensorRT rows and an engine record added. Chromium is Debian's `chromium` package
(`.ci/run` installs it when it can); without it these tests skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from _helpers.report_browser import browser_check, chromium, screenshot
from conftest import PHOTOS, photo

pytestmark = pytest.mark.skipif(not chromium(), reason="Chromium is not installed (Debian package 'chromium'; "
                                                       "`.ci/run` installs it when run as root with apt)")


def assert_renders(page: Path, tmp: Path, capsys, name: str = "") -> dict:
    """The browser checks on `page`, and its screenshot kept as page.parent / screenshot-1280.png (its
    path printed past pytest's capture, so CI's log names it); with ALGM_SCREENSHOT_DIR set, also
    copied there as report-<name>-1280.png (pytest's own temporary folders are pruned)."""
    res = browser_check(page, tmp)
    assert res["images"], "the report has no images"
    assert not res["bad_images"], f"images that do not load: {res['bad_images']}"
    assert not res["errors"], f"errors in the page: {res['errors']}"
    assert not res["console"], f"console messages: {res['console']}"
    assert not res["wide_tables"], f"tables wider than the page at 1280 px: {res['wide_tables']}"
    assert res["page_width"] <= res["viewport"], f"the page scrolls sideways: {res['page_width']} px"
    shot = screenshot(page, page.parent / "screenshot-1280.png", res["height"], tmp)
    keep = os.environ.get("ALGM_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shot = Path(shutil.copy(shot, Path(keep) / f"report-{name or page.parent.parent.name}-1280.png"))
    with capsys.disabled():
        print(f"\n  screenshot of the report at 1280 px: {shot}")
    from PIL import Image

    import numpy as np

    arr = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
    assert arr.shape[1] == 1280 and arr.std() > 20, "the screenshot is blank"
    return res


def assert_content(page: Path, photos: int, settings: int, n_cls: int) -> str:
    """What the issue asks of the page, read from its HTML and files."""
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page.read_text())   # the words, not the pictures
    d = page.parent
    assert not re.search(r"\bspec(ification)?\s+\d+(\.\d+)*", text, flags=re.I), "cites a spec section"
    assert "NOT MET" not in text and not re.search(r"\bMET\b", text)
    assert "docs/algorithm.md#numerical-sensitivity" in text
    assert f"{n_cls} classes" in text
    # each photo once, with the baseline's segmentation; per setting a segmentation and a changed map
    assert len(list(d.glob("input_*.png"))) == photos == text.count("<div class='cap'>baseline</div>")
    assert len(list(d.glob("seg_*_baseline.png"))) == photos
    assert len(list(d.glob("merge_*.png"))) == len(list(d.glob("changed_*.png"))) == photos * settings
    assert text.count("% changed") == photos * settings
    assert "<th>threshold 0.88<br>layers" in text
    return text


# ----------------------------------------------------------------------------- the check itself

def test_the_browser_check_catches_a_broken_page(tmp_path):
    """An image that does not load, a console error, an uncaught error and a table wider than the
    page: each is reported."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 10, 10)).save(buf, format="PNG")
    ok = base64.b64encode(buf.getvalue()).decode()
    page = tmp_path / "index.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'><title>t</title></head><body>"
                    f"<img alt='ok' src='data:image/png;base64,{ok}'>"
                    "<img alt='broken' src='data:image/png;base64,AAAA'><img alt='missing' src='nothere.png'>"
                    "<table><tr><td><div style='width:1500px'>wide</div></td></tr></table>"
                    "<script>console.error('boom'); not_defined();</script></body></html>")
    res = browser_check(page, tmp_path / "check")
    assert sorted(i["alt"] for i in res["bad_images"]) == ["broken", "missing"]
    assert any("boom" in e for e in res["errors"]) and any("not_defined" in e for e in res["errors"])
    assert any("boom" in c for c in res["console"])
    assert [t["first"] for t in res["wide_tables"]] == ["wide"]
    assert res["viewport"] == 1280
    assert [(i["width"], i["height"]) for i in res["images"] if i["alt"] == "ok"] == [(3, 2)]


# ----------------------------------------------------------------------------- folders

def _images(root: Path, n: int = 4) -> Path:
    from PIL import Image

    d = root / "images"
    d.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS[:n]:
        Image.fromarray(photo(name)).save(d / f"{name}.png")
    return d


def _run(model, out: Path, images: Path, dynamic=(0.88,), batches=(1, 2)) -> None:
    from algm_export.export.pipeline import export_folder
    from algm_export.tasks.bench import bench
    from algm_export.tasks.validate import validate

    export_folder(model, model.source, out, thresholds=[0.88], dynamic_thresholds=list(dynamic) or None,
                  calib_images=images)
    validate(out, images=images, model=model, save_outputs=False, limit_images=3)
    bench(out, backends=["onnxruntime"], batches=batches, images=images, repeats=1, warmup=0, settle_s=0,
          model=model)


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory):
    from _helpers.models import tiny_segmenter

    root = tmp_path_factory.mktemp("report_seg")
    model = tiny_segmenter()
    model.source = "builtin:test-tiny-segmenter"
    _run(model, root / "f", _images(root))
    return root / "f", model


@pytest.mark.slow
def test_segmenter_report_in_the_browser(segmenter_folder, tmp_path, capsys):
    from algm_export.tasks.report.html import write_report

    folder, model = segmenter_folder
    page = write_report(folder, model=model, n_images=2)
    text = assert_content(page, photos=2, settings=2, n_cls=21)
    # static and dynamic of the same threshold side by side, static first
    assert text.index("static token mode<br>tokens kept") < text.index("dynamic token mode<br>tokens kept")
    for chart in ("chart_speed.png", "chart_tradeoff.png", "chart_tokens.png"):
        assert (page.parent / chart).is_file()
    assert "a batch pays for its largest image" in text
    assert_renders(page, tmp_path, capsys, "segmenter")


@pytest.mark.slow
def test_report_with_tensorrt_rows_and_an_engine(segmenter_folder, tmp_path, capsys):
    """A folder whose benchmark has TensorRT rows and whose manifest lists an engine: both appear
    (the speed chart gets their series), and the page still fits."""
    from algm_export.tasks.report.html import write_report

    src, model = segmenter_folder
    folder = tmp_path / "f"
    shutil.copytree(src, folder)
    bj = folder / "bench" / "bench.json"
    rep = json.loads(bj.read_text())
    rep["results"] += [dict(r, backend="tensorrt", latency_ms=r["latency_ms"] / 8) for r in rep["results"]]
    bj.write_text(json.dumps(rep))
    man = json.loads((folder / "manifest.json").read_text())
    man["engines"] = [{"setting": "t0.880_l1-5", "backend": "tensorrt", "backend_version": "10.13", "precision": "fp16",
                       "compute_capabilities": [90], "build_seconds": 42.0, "file": "engines/t0.880_l1-5.fp16.engine",
                       "sha256": "0" * 64}]
    (folder / "manifest.json").write_text(json.dumps(man))
    page = write_report(folder, model=model, n_images=1)
    text = page.read_text()
    assert "<h3>Engines</h3>" in text and "t0.880_l1-5.fp16.engine" in text
    assert "on tensorrt at batch 1" in text
    assert_renders(page, tmp_path / "check", capsys, "tensorrt")


@pytest.mark.slow
def test_mmseg_family_report_in_the_browser(tmp_path, capsys):
    """SETR (an mmseg family, 11 classes, no class token): the same page with its own class count."""
    try:
        from test_setr_algm import tiny_setr
    except ImportError:  # tests/ as a package
        from tests.test_setr_algm import tiny_setr

    from algm_export.tasks.report.html import write_report

    model = tiny_setr("naive", seed=4)
    model.source = "builtin:test-tiny-setr-naive"
    _run(model, tmp_path / "f", _images(tmp_path, 3), batches=(1,))
    page = write_report(tmp_path / "f", model=model, n_images=2)
    assert_content(page, photos=2, settings=2, n_cls=11)
    assert_renders(page, tmp_path / "check", capsys, "setr")


@pytest.mark.slow
def test_eomt_report_in_the_browser(tmp_path, capsys):
    """EoMT (queries join in the last blocks; 13 classes here): the same page."""
    eomt = pytest.importorskip("algm_export.models.families.eomt", reason="the EoMT family is not in this tree")
    from algm_export.tasks.report.html import write_report

    model = eomt.builtin_eomt("s", 128, 16, seed=0, n_cls=13, num_q=8, num_blocks=2)
    model.source = "builtin:test-tiny-eomt"
    _run(model, tmp_path / "f", _images(tmp_path, 3), batches=(1,))
    page = write_report(tmp_path / "f", model=model, n_images=2)
    assert_content(page, photos=2, settings=2, n_cls=13)
    assert_renders(page, tmp_path / "check", capsys, "eomt")
