"""Every command with both token modes (issue 13 wiring): validate, bench, predict and report on a
folder holding static and dynamic entries side by side, and on a threshold-input folder.

A 6-block ViT-Ti Segmenter at 128 px (8x8 patches, layers 1 and 5), exported once per session
(`conftest.dynamic_folders`, shared with test_serve.py):
`mixed` (static 0.88 + dynamic 0.88, `export_folder(..., dynamic_thresholds=...)`) and `tin`
(dynamic, one threshold-input file for 0.80 and 0.88). Six photos with structure, so merges
happen and the token counts differ from image to image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from algm_export import apply_algm
from algm_export.artifacts import ExportFolder
from algm_export.cli import main
from algm_export.core.errors import ConfigError, InputError
from algm_export.models.flops import mean_macs, model_macs
from conftest import DYNAMIC_THRESHOLDS

pytestmark = pytest.mark.slow  # whole-model exports of both token modes (module fixture) and the commands on them

THRESHOLDS = (0.8, 0.88)


@pytest.fixture(scope="module")
def folders(dynamic_folders):
    """The session's `mixed` and `tin` folders (conftest.dynamic_folders, shared with test_serve.py)."""
    assert tuple(THRESHOLDS) == DYNAMIC_THRESHOLDS
    return dynamic_folders


def _inputs(folders):
    return [x for _, x in ExportFolder.load(folders["mixed"]).inputs(folders["images"], model=folders["model"])]


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_mixed_folder_holds_both_modes(folders):
    f = ExportFolder.load(folders["mixed"], verify=True)
    assert [(e.name, e.token_mode) for e in f.settings] == [("t0.880_l1-5", "static"), ("t0.880_l1-5_dyn", "dynamic")]
    static, dyn = f.settings
    assert static.capacities and dyn.capacities is None and not dyn.takes_threshold
    (tin,) = ExportFolder.load(folders["tin"]).settings
    assert tin.takes_threshold and tin.thresholds == list(THRESHOLDS)


def test_dynamic_thresholds_add_to_a_static_export(folders, tmp_path):
    from algm_export.export.pipeline import export_folder

    with pytest.raises(ConfigError, match="adds dynamic entries to a static export"):
        export_folder(folders["model"], str(folders["ck"]), tmp_path / "o", token_mode="dynamic",
                      dynamic_thresholds=[0.88])


def test_torch_runner_of_a_dynamic_entry_is_apply_algm_dynamic(folders):
    """make_runner("torch", dynamic entry) runs `apply_algm(..., token_mode="dynamic")`: the same logits and
    exact per-image token counts; the threshold-input entry's torch runner takes the threshold per call
    and then equals the dynamic model built at that threshold."""
    from algm_export.runtimes.registry import make_runner

    model, xs = folders["model"], _inputs(folders)
    batch = torch.cat(xs)
    _, dyn = ExportFolder.load(folders["mixed"]).settings
    ref = apply_algm(model, dyn.setting(), token_mode="dynamic")
    with torch.no_grad():
        want = ref(batch)
    with make_runner("torch", dyn, model=model) as r:
        assert r.model.token_mode == "dynamic" and not r.takes_threshold
        out = r.infer(batch)
    np.testing.assert_array_equal(out.logits, want.numpy())
    np.testing.assert_array_equal(out.tokens, ref.merge_stats["tokens"].numpy())
    assert (out.merge_stats[..., 0].sum(1) > 0).all() and len(set(out.tokens[:, -1].tolist())) > 1
    assert (out.merge_stats[..., 1] == 0).all()                    # never a forced merge

    (tin,) = ExportFolder.load(folders["tin"]).settings
    with make_runner("torch", tin, model=model) as r:
        assert r.takes_threshold
        with pytest.raises(InputError, match="takes the CLAP threshold"):
            r.infer(batch)
        counts = []
        for t in (0.6, 0.88):
            at = apply_algm(model, tin.setting().with_threshold(t), token_mode="dynamic")
            with torch.no_grad():
                want = at(batch)
            got = r.infer(batch, threshold=t)
            np.testing.assert_array_equal(got.logits, want.numpy())
            np.testing.assert_array_equal(got.tokens, at.merge_stats["tokens"].numpy())
            counts.append(int(got.tokens[:, -1].sum()))
    assert counts[0] < counts[1]                                  # a lower threshold merges more


def test_validate_cli_on_a_mixed_folder(folders, capsys):
    """Static entry as before; dynamic entry against PyTorch dynamic with each image's token counts equal."""
    assert main(["validate", str(folders["mixed"]), "--images", str(folders["images"])]) == 0
    out = capsys.readouterr().out
    assert "t0.880_l1-5_dyn: tokens per image equal PyTorch's on 6/6 images" in out
    rep = json.loads((folders["mixed"] / "validation" / "report.onnxruntime.fp32.json").read_text())
    base, static, dyn = rep["entries"]
    assert static["token_mode"] == "static" and "dynamic_vs_static_agreement_min" in static["summary"]
    assert "token_mismatch_images" not in static["summary"]
    assert dyn["name"] == "t0.880_l1-5_dyn" and dyn["token_mode"] == "dynamic" and dyn["capacities"] is None
    s = dyn["summary"]
    assert s["pass"] and s["token_mismatch_images"] == 0 and s["forced_merges"] == 0
    for m in dyn["per_image"]:
        assert m["tokens_backend"] == m["tokens"] and m["token_diff"] == 0
        assert sum(m["merges_torch"]) > 0
    assert len({tuple(m["tokens"]) for m in dyn["per_image"]}) > 1    # counts follow the image
    # PyTorch's counts, computed here independently: the reference (per_image) image by image
    model, xs = folders["model"], _inputs(folders)
    reference = apply_algm(model, ExportFolder.load(folders["mixed"]).settings[1].setting())
    for x, m in zip(xs, dyn["per_image"]):
        with torch.no_grad():
            reference(x)
        assert reference.merge_stats["tokens"][0].tolist() == m["tokens"]


def test_validate_cli_on_a_threshold_input_folder(folders, capsys):
    """One report row per (entry, threshold): the manifest's thresholds, or --threshold."""
    tin = folders["tin"]
    assert main(["validate", str(tin), "--images", str(folders["images"])]) == 0
    rep = json.loads((tin / "validation" / "report.onnxruntime.fp32.json").read_text())
    rows = [(e["name"], e["threshold"]) for e in rep["entries"]]
    assert rows == [("baseline", None), ("tin_l1-5_dyn", 0.8), ("tin_l1-5_dyn", 0.88)]
    assert all(e["summary"]["token_mismatch_images"] == 0 for e in rep["entries"][1:])
    assert (tin / "validation" / "tin_l1-5_dyn.t0.800.onnxruntime.fp32.outputs.json").is_file()
    capsys.readouterr()
    assert main(["validate", str(tin), "--images", str(folders["images"]), "--threshold", "0.7", "--max-images",
                 "3"]) == 0
    assert "tin_l1-5_dyn at 0.700: tokens per image equal PyTorch's on 3/3 images" in capsys.readouterr().out
    rep = json.loads((tin / "validation" / "report.onnxruntime.fp32.json").read_text())
    (e,) = rep["entries"][1:]
    assert e["threshold"] == 0.7 and e["threshold_input"] is True
    model, xs = folders["model"], _inputs(folders)[:3]
    reference = apply_algm(model, ExportFolder.load(tin).settings[0].setting().with_threshold(0.7))
    for x, m in zip(xs, e["per_image"]):
        with torch.no_grad():
            reference(x)
        assert reference.merge_stats["tokens"][0].tolist() == m["tokens_backend"]


def test_threshold_option_errors(folders, capsys):
    assert main(["validate", str(folders["mixed"]), "--threshold", "0.7"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "no entry of" in line and "takes the threshold as an input" in line and "drop --threshold" in line
    assert main(["bench", str(folders["mixed"]), "--threshold", "0.7"]) == 2
    assert "drop --threshold" in _one_line_error(capsys.readouterr().err)
    assert main(["validate", str(folders["tin"]), "--threshold", "1.5"]) == 2
    assert "CLAP thresholds in [-1, 1]" in capsys.readouterr().err


def test_a_token_mismatch_beyond_the_near_tie_allowance_fails():
    from algm_export.tasks.validate import Limits, summarize

    def images(mismatching):
        return [{"max_abs": 0.0, "mean_abs": 0.0, "agreement": 100.0, "forced": 0, "decision_diff": int(i < mismatching),
                 "tokens": [50, 40], "tokens_backend": [50, 40 - int(i < mismatching)],
                 "token_diff": int(i < mismatching)} for i in range(6)]

    assert summarize(images(0), 100.0, Limits())["pass"]
    one = summarize(images(1), 100.0, Limits())                   # an occasional near-tie (docs/algorithm.md: numerical sensitivity)
    assert one["pass"] and one["token_mismatch_images"] == 1
    two = summarize(images(2), 100.0, Limits())
    assert not two["pass"] and "token counts differ from PyTorch's on 2 of 6 images" in two["failures"][0]
    assert not summarize(images(1), 100.0, Limits(token_mismatch_images=0))["pass"]


def test_bench_dynamic_flop_ratio_is_baseline_over_mean_per_image_macs(folders):
    """Dynamic entries run the bench images in turn; their FLOP ratio is baseline MACs over the mean MACs at
    the real counts of those images (recomputed here with PyTorch's counts), not the static one, not 1."""
    from algm_export.tasks.bench import bench, format_bench

    model = folders["model"]
    rep = bench(folders["mixed"], backends=["onnxruntime"], images=folders["images"], repeats=4, warmup=0,
                settle_s=0, model=model)
    base, static, dyn = rep["results"]
    f = ExportFolder.load(folders["mixed"])
    s_entry, d_entry = f.settings
    base_macs = model_macs(model)["total"]
    assert static["gmacs"] == model_macs(model, s_entry.layers, s_entry.capacities)["total"]
    assert static["tokens"]["mean"] == s_entry.capacities and static["token_mode"] == "static"
    # rounds 0..3 ran photos 0..3; PyTorch's dynamic counts of those photos
    ref = apply_algm(model, d_entry.setting(), token_mode="dynamic")
    counts = []
    for x in _inputs(folders)[:4]:
        with torch.no_grad():
            ref(x)
        counts.append(ref.merge_stats["tokens"][0].tolist())
    want = base_macs / mean_macs(model, d_entry.layers, counts)["total"]
    assert dyn["token_mode"] == "dynamic" and dyn["tokens"]["images"] == 4
    assert dyn["flop_ratio"] == pytest.approx(want, rel=1e-12)
    assert dyn["flop_ratio"] > static["flop_ratio"] > 1.0
    assert dyn["tokens"]["min"] == np.min(counts, 0).tolist() and dyn["tokens"]["max"] == np.max(counts, 0).tolist()
    assert dyn["tokens"]["min"] != dyn["tokens"]["max"]
    text = format_bench(rep)
    lo, hi = dyn["tokens"]["min"], dyn["tokens"]["max"]
    assert f"({lo[0]}-{hi[0]}/{lo[1]}-{hi[1]})" in text and "tokens/img" in text
    saved = json.loads((folders["mixed"] / "bench" / "bench.json").read_text())
    assert saved["results"][2]["flop_ratio"] == dyn["flop_ratio"]
    assert saved["plot"] == "bench/bench.png" and (folders["mixed"] / "bench" / "bench.png").is_file()


def test_bench_groups_dynamic_batches_by_token_count(folders):
    """At batch 2 the dynamic entry runs batches of similar CLAP counts (the probe's), every image equally
    often; bench.json reports the FLOP ratio of what the batches computed (each image at its batch's
    largest counts) beside the per-image one, and grouping pays less padding than image order."""
    from algm_export.merging.driver import clap_counts
    from algm_export.tasks.bench import bench, format_bench

    model = folders["model"]
    kw = dict(backends=["onnxruntime"], images=folders["images"], batches=[2], repeats=3, warmup=0, settle_s=0,
              model=model)
    grouped = bench(folders["mixed"], **kw)["results"][2]
    in_order = bench(folders["mixed"], group=False, **kw)["results"][2]
    assert grouped["token_mode"] == "dynamic" and grouped["grouped"] and not in_order["grouped"]
    # the same six images, each once: the same per-image FLOP ratio either way
    assert grouped["tokens"]["images"] == in_order["tokens"]["images"] == 6
    assert grouped["flop_ratio"] == pytest.approx(in_order["flop_ratio"], rel=1e-12)
    assert in_order["flop_ratio_at_batch_max"] < grouped["flop_ratio_at_batch_max"] <= grouped["flop_ratio"]
    # the batches pair the images sorted by their CLAP count; in image order they are (0, 1), (2, 3), (4, 5)
    d_entry = ExportFolder.load(folders["mixed"]).settings[1]
    counts = [clap_counts(model, d_entry.setting(), x)[0] for x in _inputs(folders)]
    order = sorted(range(6), key=lambda i: (counts[i], i))
    assert grouped["batches"] == [order[0:2], order[2:4], order[4:6]]
    assert in_order["batches"] == [[0, 1], [2, 3], [4, 5]]
    assert grouped["tokens"]["min"][0] == min(counts) and grouped["tokens"]["max"][0] == max(counts)
    text = format_bench({"results": [grouped], "machine": {"cpus": 2, "threads": 2}, "repeats": 3, "settle_s": 0})
    assert "batch FLOP" in text and "grouped by CLAP token count" in text


def test_bench_threshold_input_per_threshold(folders):
    from algm_export.tasks.bench import bench

    rep = bench(folders["tin"], backends=["onnxruntime"], images=folders["images"], repeats=2, warmup=0,
                settle_s=0, model=folders["model"], thresholds=[0.6, 0.88])
    rows = [(r["setting"], r["threshold"]) for r in rep["results"]]
    assert rows == [("baseline", None), ("tin_l1-5_dyn", 0.6), ("tin_l1-5_dyn", 0.88)]
    assert rep["results"][1]["flop_ratio"] > rep["results"][2]["flop_ratio"] > 1.0


def test_predict_threshold_on_a_threshold_input_file(folders, tmp_path, capsys):
    """--threshold chooses the threshold of a threshold-input file: the same token counts as PyTorch at
    that threshold (and not those of the default); a file with its threshold built in refuses another."""
    ck, tin = str(folders["ck"]), folders["tin"] / "tin_l1-5_dyn.onnx"

    def tokens(out):
        return json.loads((out / "coffee_tokens.json").read_text())

    runs = {}
    for name, extra in (("ort_07", ["--engine", str(tin), "--threshold", "0.7"]), ("torch_07", ["--threshold", "0.7"]),
                        ("ort_default", ["--engine", str(tin)])):
        assert main(["predict", "sample:coffee", "--model", ck, "--out", str(tmp_path / name), "-q", *extra]) == 0
        runs[name] = tokens(tmp_path / name)
    assert runs["ort_07"]["backend"] == "onnxruntime" and runs["torch_07"]["backend"] == "torch"
    assert runs["ort_07"]["threshold"] == 0.7 and runs["ort_default"]["threshold"] == THRESHOLDS[0]
    assert runs["ort_07"]["per_window"] == runs["torch_07"]["per_window"]
    assert runs["ort_07"]["tokens"] != runs["ort_default"]["tokens"]
    assert sum(sum(w["merges"]) for w in runs["ort_07"]["per_window"]) > 0
    static = folders["mixed"] / "t0.880_l1-5.onnx"
    capsys.readouterr()
    assert main(["predict", "sample:coffee", "--model", ck, "--engine", str(static), "--threshold", "0.7",
                 "--out", str(tmp_path / "s"), "-q"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "threshold 0.88 built in" in line and "--threshold-input" in line
    assert main(["predict", "sample:coffee", "--model", ck, "--engine", str(static), "--threshold", "0.88",
                 "--out", str(tmp_path / "s"), "-q"]) == 0


def test_export_cli_dynamic_thresholds(folders, tmp_path, capsys):
    """`export --dynamic-thresholds`: the static settings plus dynamic entries in one folder; refused
    (exit 2, one line) with --token-mode dynamic."""
    ck = str(folders["ck"])
    assert main(["export", ck, "--out", str(tmp_path / "m"), "--thresholds", "0.85", "--dynamic-thresholds", "0.85",
                 "--calib-images", str(folders["images"])]) == 0
    f = ExportFolder.load(tmp_path / "m", verify=True)
    assert [(e.name, e.token_mode) for e in f.settings] == [("t0.850_l1-5", "static"), ("t0.850_l1-5_dyn", "dynamic")]
    capsys.readouterr()
    assert main(["export", ck, "--out", str(tmp_path / "d"), "--token-mode", "dynamic", "--dynamic-thresholds",
                 "0.85"]) == 2
    assert "--dynamic-thresholds adds dynamic entries to a static export" in _one_line_error(capsys.readouterr().err)


def test_predict_unlisted_static_file_uses_its_built_in_threshold(folders, tmp_path, capsys):
    """A static ONNX copied out of its folder (no manifest lists it): predict records the threshold its
    AlgmClap node carries, not the checkpoint's default, and refuses another --threshold."""
    import shutil

    from algm_export.export.pipeline import export_folder

    ck = str(folders["ck"])
    export_folder(folders["model"], ck, tmp_path / "s", thresholds=[0.8], calib_images=folders["images"])
    loose = tmp_path / "loose.onnx"
    shutil.copy(tmp_path / "s" / "t0.800_l1-5.onnx", loose)
    # the checkpoint's default is 0.88 (no ALGM settings in its variant.yml): a silent fallback would show
    assert main(["predict", "sample:coffee", "--model", ck, "--engine", str(loose), "--out", str(tmp_path / "a"),
                 "-q"]) == 0
    rec = json.loads((tmp_path / "a" / "coffee_tokens.json").read_text())
    assert rec["threshold"] == pytest.approx(0.8)
    capsys.readouterr()
    assert main(["predict", "sample:coffee", "--model", ck, "--engine", str(loose), "--threshold", "0.7",
                 "--out", str(tmp_path / "b"), "-q"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "loose.onnx has its threshold 0.8 built in" in line


def test_file_setting_refuses_other_layers(folders):
    from algm_export.tasks.predict import file_setting
    from algm_export.runtimes.registry import runner_for_file

    r = runner_for_file(folders["tin"] / "tin_l1-5_dyn.onnx")
    r.path = folders["tin"] / "tin_l1-5_dyn.onnx"
    assert file_setting(r, None, 0.75, None).threshold == 0.75
    with pytest.raises(ConfigError, match="merges at layers 1,5"):
        file_setting(r, None, None, (1, 3))


def test_report_shows_static_and_dynamic_side_by_side(folders):
    from algm_export.tasks.bench import bench
    from algm_export.tasks.report.html import write_report
    from algm_export.tasks.validate import validate

    validate(folders["mixed"], images=folders["images"], model=folders["model"], save_outputs=False)
    bench(folders["mixed"], backends=["onnxruntime"], images=folders["images"], repeats=2, warmup=0, settle_s=0,
          model=folders["model"])
    page = write_report(folders["mixed"], model=folders["model"], n_images=1).read_text()
    section = page[page.index("Static and dynamic token mode at 0.88"):]
    section = section[:section.index("</table>")]
    assert section.count("<tr>") == 3                             # header, static, dynamic
    assert ">static<" in section and ">dynamic<" in section and "6/6" in section
    assert (folders["mixed"] / "report" / "merge_astronaut_t0.880_l1-5_dyn.png").is_file()
    assert (folders["mixed"] / "report" / "changed_astronaut_t0.880_l1-5_dyn.png").is_file()
    assert "a batch pays for its largest image" not in page                # batch 1 only: nothing to explain


def test_report_of_a_mixed_folder_in_the_browser(folders, tmp_path):
    """The report of the mixed folder (written by the test above) in headless Chromium at 1280 px
    (`tests/_helpers/report_browser.py`): images load, no console message, no table wider than the page."""
    from _helpers.report_browser import browser_check, chromium

    if not chromium():
        pytest.skip("Chromium is not installed (Debian package 'chromium'); tests/test_report_browser.py has more")
    page = folders["mixed"] / "report" / "index.html"
    if not page.is_file():
        pytest.skip("the report test above did not write the report")
    res = browser_check(page, tmp_path)
    assert res["images"] and not res["bad_images"], res["bad_images"]
    assert not res["errors"] and not res["console"], (res["errors"], res["console"])
    assert not res["wide_tables"] and res["page_width"] <= res["viewport"], res["wide_tables"]
