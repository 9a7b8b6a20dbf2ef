"""The report's parts without a model run: pictures (segmentation with token groups, changed pixels),
charts (plain axes, markers only, the ideal), and the words (one sentence per setting, batches)."""

from __future__ import annotations

import numpy as np
import pytest

from algm_export.tasks.report import charts, words
from algm_export.tasks.visualize import (CHANGED_RGB, changed_panel, palette, segmentation_panel, speed_figure,
                                         tokens_kept_pct)


def _row(setting, backend="onnxruntime", batch=1, threshold=0.88, mode="static", speedup=1.2, flop=1.4,
         kept=(0.75, 0.5), gmacs=10.0, at_max=None, tokens=None):
    r = {"backend": backend, "batch": batch, "setting": setting, "threshold": threshold, "token_mode": mode,
         "latency_ms": 10 / speedup, "images_per_s": batch * speedup * 100, "gmacs": gmacs, "flop_ratio": flop,
         "speedup": speedup, "speedup_vs_flop_ratio": speedup / flop, "tokens_kept": list(kept),
         "capacities": None if mode == "dynamic" else [48, 32], "tokens": tokens or {"mean": [48, 32],
                                                                                       "min": [48, 32],
                                                                                       "max": [48, 32]}}
    if at_max is not None:
        r["gmacs_at_batch_max"] = at_max
    return r


BASE = dict(threshold=None, mode=None, speedup=1.0, flop=1.0, kept=(), gmacs=14.0)


def _results():
    dyn_tok = {"mean": [50.0, 30.0], "min": [40, 20], "max": [60, 44], "images": 6}
    return [_row("baseline", **BASE), _row("t0.880_l1-5"),
            _row("t0.880_l1-5_dyn", mode="dynamic", speedup=1.3, flop=1.6, kept=(0.78, 0.47), tokens=dyn_tok),
            _row("baseline", batch=4, **BASE), _row("t0.880_l1-5", batch=4, speedup=1.1),
            _row("t0.880_l1-5_dyn", batch=4, mode="dynamic", speedup=0.9, flop=1.6, kept=(0.78, 0.47),
                 gmacs=8.75, at_max=12.0, tokens=dyn_tok)]


# ----------------------------------------------------------------------------- pictures

def test_segmentation_panel_outlines_clap_windows_black_and_gbm_groups_white():
    grid, ps = (4, 4), 8
    labels = np.full((64, 64), 149, dtype=np.int64)               # a class beyond VOC's 21: palette(n_cls)
    clap = np.arange(16)
    clap[[1, 4, 5]] = 0                                            # the top-left 2x2 window is one token
    gbm = clap.copy()
    gbm[[10, 11]] = 10                                             # two patches merged by GBM
    pal = palette(150)
    out = segmentation_panel(labels, [clap, gbm], grid, ps, pal)
    assert out.shape == (32, 32, 3)
    assert (out[20:22, 28:30] == pal[149]).all()                  # a patch of its own: no outline
    # one line, 1 px at 8 px per patch, on each border of a merged group
    assert (out[16, 0:16] == 0).all() and (out[0:16, 16] == 0).all()   # CLAP window border: black
    assert (out[0:16, 0:16] == pal[149]).all()                         # inside and above it: the class
    assert (out[16, 17:32] == 255).all() and (out[24, 16:32] == 255).all() and (out[17:24, 16] == 255).all()
    assert (out[17:24, 17:32] == pal[149]).all()                       # GBM group: white border, none inside
    assert (out[25:32, :] == pal[149]).all() and (out[17:32, 0:16] == pal[149]).all()
    plain = segmentation_panel(labels, None, grid, ps, pal)
    assert (plain == pal[149]).all()


def test_changed_panel_marks_exactly_the_changed_pixels():
    img = np.full((16, 16, 3), 90, dtype=np.uint8)
    base = np.zeros((16, 16), dtype=np.int64)
    lab = base.copy()
    lab[:4, :8] = 3                                                # 32 of 256 pixels change class
    out, frac = changed_panel(img, base, lab, (32, 32))
    assert frac == pytest.approx(32 / 256)
    hit = (out == np.array(CHANGED_RGB, dtype=np.uint8)).all(-1)
    assert hit[:8, :16].all() and not hit[8:].any() and not hit[:, 16:].any()
    grey = out[~hit]
    assert grey.min() >= 175                                       # dark on light: readable in greyscale
    assert 0.299 * CHANGED_RGB[0] + 0.587 * CHANGED_RGB[1] + 0.114 * CHANGED_RGB[2] < 150


# ----------------------------------------------------------------------------- charts

def _tick_texts(fig):
    fig.canvas.draw()
    out = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            out.append(axis.get_offset_text().get_text())
            out += [t.get_text() for t in axis.get_ticklabels()]
    return out


def test_speed_chart_markers_only_with_the_ideal_and_plain_axes():
    import matplotlib.pyplot as plt

    fig = speed_figure(_results(), "t")
    ax = fig.axes[0]
    # lines: the ideal (dashed) and the 1x reference only; the measurements are unconnected markers
    assert [ln.get_linestyle() for ln in ax.lines] == ["--", "-"]
    xs, ys = ax.lines[0].get_data()
    assert list(xs) == [47.0, 50.0, 100.0] and list(ys) == [1.6, 1.4, 1.0]   # batch 1: FLOP ratio per image
    assert len(ax.collections) == 5            # (ort b1, ort b4) x (static, dynamic) + the hollow legend key
    texts = _tick_texts(fig)
    assert not any("e" in t or "+" in t for t in texts if t), texts
    assert tokens_kept_pct(_results()[0]) == 100.0
    plt.close(fig)


def test_trade_off_chart_has_no_offset_notation_near_100_percent():
    """The old chart's x axis read `-0.0100 ... +9.999e1`: agreement values all within 0.01 of 100."""
    import matplotlib.pyplot as plt

    res = _results()
    cost = {("baseline", None): 100.0, ("t0.880_l1-5", 0.88): 99.999, ("t0.880_l1-5_dyn", 0.88): 99.9905}
    fig = charts.operating_point_figure(res, cost, "pixels agreeing with the baseline (%)")
    texts = [t for t in _tick_texts(fig) if t]
    assert texts and not any("e" in t or "+" in t for t in texts), texts
    ax = fig.axes[0]
    assert [list(ln.get_xdata()) for ln in ax.lines] == [[1.0, 1.0]]   # the 1x reference only: nothing joined
    assert ax.get_ylim()[0] == pytest.approx(99.5)                     # small differences stay visible
    pts = charts.operating_points(res, cost)
    assert list(pts) == ["onnxruntime"] and [r["batch"] for r in pts["onnxruntime"]] == [1, 1, 1]
    plt.close(fig)
    assert charts.operating_point_figure(res, {}, "y") is None


def test_token_histogram_counts_and_lines(tmp_path):
    import matplotlib.pyplot as plt

    fig = charts.token_histogram_figure({"0.88 dynamic": [30, 31, 31, 44]}, 64, {"0.88 static": 48})
    ax = fig.axes[0]
    assert sorted(round(ln.get_xdata()[0]) for ln in ax.lines) == [48, 64]
    (poly,) = ax.patches                                           # stepfilled: one polygon
    assert poly.get_xy()[:, 1].max() == 2                          # 31 twice
    texts = [t for t in _tick_texts(fig) if t]
    assert all(t.lstrip("−-").isdigit() for t in texts), texts   # integer ticks: tokens and images
    plt.close(fig)
    assert charts.token_histogram({}, 64, tmp_path / "x.png") is None


# ----------------------------------------------------------------------------- words

def test_one_sentence_per_setting_with_saves_costs_and_verdict():
    res = _results()
    val = [{"backend": "onnxruntime", "precision": "fp32", "entries": [
        {"name": "t0.880_l1-5", "threshold": 0.88, "summary": {"pass": True, "agreement_mean": 99.99, "images": 6}},
        {"name": "t0.880_l1-5_dyn", "threshold": 0.88,
         "summary": {"pass": False, "agreement_mean": 98.0, "images": 6}}]}]
    agree = {("t0.880_l1-5", 0.88): 97.5, ("t0.880_l1-5_dyn", 0.88): 96.0}
    out = words.setting_sentences([("t0.880_l1-5", 0.88, [1, 5], "static"),
                                   ("t0.880_l1-5_dyn", 0.88, [1, 5], "dynamic")], res, val, 64, agree, None, 3)
    assert [n for n, _ in out] == ["threshold 0.88 at layers 1, 5, static token mode",
                                   "threshold 0.88 at layers 1, 5, dynamic token mode"]
    s, d = out[0][1], out[1][1]
    assert "keeps 32 of 64 tokens (50 %)" in s and "1.40x fewer multiply-adds" in s
    assert "1.20x on onnxruntime at batch 1, 1.10x on onnxruntime at batch 4" in s
    assert "2.5 % of the pixels change class" in s and "on 3 sample photos" in s
    assert "PASS on onnxruntime fp32" in s and "slower" not in s
    assert "keeps 30 of 64 tokens per image on average" in d and "(20-44 on the benchmark's images)" in d
    assert "FAIL on onnxruntime fp32" in d and "0.90x on onnxruntime at batch 4" in d and "slower" in d
    for _, t in out:
        assert "MET" not in t and "spec" not in t
    labels = {("baseline", None): 40.0, ("t0.880_l1-5", 0.88): 39.5}
    with_labels = words.setting_sentences([("t0.880_l1-5", 0.88, [1, 5], "static")], res, [], 64, agree, labels, 3)
    assert "mIoU on the labelled images is 39.5 % against the baseline's 40.0 % (-0.5 points)" in with_labels[0][1]
    assert "not checked yet" in with_labels[0][1]


def test_batch_note_says_a_batch_pays_for_its_largest_image():
    res = _results()
    note = words.batch_note(res)
    assert "a batch pays for its largest image" in note
    assert "saves 1.60x the multiply-adds counted image by image, but at most 1.17x" in note   # 14 / 12
    assert words.at_batch_max(res[-1], res) == pytest.approx(14 / 12)
    assert words.batch_note([r for r in res if r["batch"] == 1]) is None
    torch_first = [dict(r, backend="torch") for r in res] + res               # the exported backend is quoted
    assert "measured on onnxruntime: 0.90x" in words.batch_note(torch_first)


def test_class_palette_is_the_model_s_own_when_it_has_one():
    from types import SimpleNamespace

    from algm_export.tasks.report.pictures import class_palette

    own = np.arange(33).reshape(11, 3) * 7
    assert (class_palette(SimpleNamespace(palette=own.tolist()), 11) == own).all()
    assert (class_palette(SimpleNamespace(), 11) == palette(11)).all()
    for bad in ([[1, 2]] * 11, own[:5], own * 100, "abc"):          # wrong shape, too few, out of range, junk
        assert (class_palette(SimpleNamespace(palette=bad), 11) == palette(11)).all()


def test_served_rows_are_their_own_series():
    """Triton rows (batch 1, `concurrency` N) are compared with the baseline served at the same N: one
    series per concurrency, named by its clients, never mixed with a batch of the same size."""
    import matplotlib.pyplot as plt

    from algm_export.tasks.visualize import series_key, series_label

    res = _results()
    served = [dict(r, backend="triton", batch=1, concurrency=c, speedup=s)
              for c, s in ((1, 1.0), (8, 2.0)) for r in res if r["batch"] == 1]
    assert series_key(served[-1]) == ("triton", 1, 8) and series_label(served[-1]) == "triton, 8 clients"
    assert series_label(res[0]) == "onnxruntime, batch 1"
    out = words.setting_sentences([("t0.880_l1-5", 0.88, [1, 5], "static")], res + served, [], 64)
    assert "1.00x on triton with 1 concurrent client, 2.00x on triton with 8 concurrent clients" in out[0][1]
    pts = charts.operating_points(res + served, {("t0.880_l1-5", 0.88): 99.0})
    assert [r.get("concurrency") for r in pts["triton"]] == [1]           # fewest clients
    fig = speed_figure(res + served)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "triton, 1 client" in labels and "triton, 8 clients" in labels
    plt.close(fig)
