"""Sliding-window inference, logits -> labels, and `algm-export predict` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from algm_export.cli import main
from algm_export.models.images import sample_images
from algm_export.core.setting import AlgmSetting
from algm_export.models.formats.published_segmenter import save_segmenter
from algm_export.models.inference import sliding_window_logits, window_anchors, window_plan
from algm_export.models.families.segmenter import create_segmenter
from algm_export.tasks.predict import labels_at_size

SIZE = 64


@pytest.fixture(scope="module")
def model():
    return create_segmenter("vit_tiny", "linear", SIZE, n_cls=4, seed=2)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, model):
    d = tmp_path_factory.mktemp("ckpt")
    save_segmenter(model, d, algm=AlgmSetting(0.5, (2, 2), (1, 5)))
    return d


# ----------------------------------------------------------------------------- sliding windows

def test_window_equal_to_image_is_the_plain_forward(model):
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = sliding_window_logits(model, x, SIZE, SIZE)
        assert torch.equal(out, model(x))


def test_larger_image_gives_logits_of_its_size(model):
    x = torch.randn(1, 3, 100, 150)
    calls = []

    def fn(b):
        calls.append(tuple(b.shape))
        return model(b)

    with torch.no_grad():
        out = sliding_window_logits(fn, x, SIZE, 48, batch_size=3)
    assert out.shape == (1, 4, 100, 150)
    plan = window_plan((100, 150), SIZE, 48)
    assert plan["anchors"] == [(a, b) for a in (0, 36) for b in (0, 48, 86)]
    assert sum(c[0] for c in calls) == 6 and all(c[1:] == (3, SIZE, SIZE) for c in calls)
    assert window_anchors(SIZE, SIZE, 48) == [0]


def test_windows_are_averaged_and_placed_correctly():
    """A model that returns its own input: the average of overlapping windows is the image."""
    x = torch.randn(1, 3, 70, 90)
    out = sliding_window_logits(lambda b: b.numpy() * 1.0, x, 32, 20, batch_size=5)   # numpy is accepted
    torch.testing.assert_close(out, x)


def test_short_side_resize_and_small_images(model):
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        out = sliding_window_logits(model, x, SIZE, SIZE)          # upsampled to 64x80, as published
        assert out.shape == (1, 4, 40, 50)
        assert window_plan((40, 50), SIZE, SIZE)["run"] == (64, 80)
        padded = sliding_window_logits(model, x, SIZE, SIZE, small="pad")
        assert padded.shape == (1, 4, 40, 50)
    plan = window_plan((300, 451), 64, 64, im_size=64)
    assert plan["resized"] == (64, 96) and len(plan["anchors"]) == 2
    ident = sliding_window_logits(lambda b: b, x, 16, 16, im_size=20)
    torch.testing.assert_close(ident, F.interpolate(F.interpolate(x, (20, 25), mode="bilinear"), (40, 50),
                                                    mode="bilinear"))


def test_bad_model_fn_output():
    from algm_export.core.errors import InputError

    with pytest.raises(InputError, match="must return"):
        sliding_window_logits(lambda b: b[:, :, :8], torch.randn(1, 3, 32, 32), 16, 16)


def test_labels_at_size_bands_match_interpolate():
    logits = torch.randn(1, 7, 9, 13)
    ref = F.interpolate(logits, (50, 41), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
    banded = labels_at_size(logits, (50, 41), max_bytes=7 * 41 * 4 * 3)       # 3 rows at a time
    assert (banded == ref).mean() > 0.999                                     # summation order may differ
    assert np.array_equal(labels_at_size(logits, (50, 41)), ref)


# ----------------------------------------------------------------------------- CLI

def _one_line_error(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


def test_predict_cli_end_to_end(tmp_path, ckpt_dir, capsys):
    (name, img), = sample_images(names=["chelsea"])
    photo = tmp_path / "cat photo.jpg"
    Image.fromarray(img).save(photo)
    out = tmp_path / "out"
    rc = main(["predict", str(photo), "sample:coins", "--model", str(ckpt_dir), "--out", str(out),
               "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "cat_photo" in captured.out and "coins" in captured.out and "tokens per step" in captured.out
    for stem in ("cat_photo", "coins"):
        for suffix in ("_seg.png", "_merge.png", "_tokens.json"):
            assert (out / f"{stem}{suffix}").is_file(), stem + suffix
    seg = Image.open(out / "cat_photo_seg.png")
    assert seg.size == (451, 300)                               # the photo's own size
    data = json.loads((out / "cat_photo_tokens.json").read_text())
    assert data["algm"] is True and data["threshold"] == 0.5 and data["layers"] == [1, 5]
    assert data["N"] == 16 and data["mode"] == "sliding" and data["windows"] == 2   # 300x451 -> 64x96
    assert len(data["tokens"]) == 3 and data["tokens"][0] == 16
    assert [s["op"] for s in data["steps"]] == ["clap", "gbm"]
    assert len(data["per_window"]) == 2
    for w in data["per_window"]:
        assert w["tokens"][0] == 16 - 3 * w["merges"][0] and w["forced"] == [0, 0]
    assert data["source"] == str(photo) and data["backend"] == "torch"


def test_predict_cli_no_algm_and_overrides(tmp_path, ckpt_dir, capsys):
    small = tmp_path / "small.png"
    Image.fromarray(sample_images(names=["coffee"])[0][1][:48, :40]).save(small)
    out = tmp_path / "plain"
    assert main(["predict", str(small), "--model", str(ckpt_dir / "checkpoint.pth"), "--out", str(out),
                 "--no-algm", "-q"]) == 0
    data = json.loads((out / "small_tokens.json").read_text())
    assert data == {**data, "algm": False, "N": 16, "tokens": [16], "mode": "single", "windows": 1}
    assert not (out / "small_merge.png").exists() and (out / "small_seg.png").is_file()

    out2 = tmp_path / "over"
    assert main(["predict", str(small), "--model", str(ckpt_dir), "--out", str(out2), "--threshold", "0.99",
                 "--layers", "1,3", "--sliding", "-q"]) == 0
    data = json.loads((out2 / "small_tokens.json").read_text())
    assert data["threshold"] == 0.99 and data["layers"] == [1, 3] and data["mode"] == "sliding"
    capsys.readouterr()


@pytest.mark.parametrize("args,needle", [
    (["predict", "/nonexistent/dir/photo.png"], "/nonexistent/dir/photo.png does not exist"),
    (["predict", "sample:coins", "--model", "/nonexistent/ckpt.pth"],
     "checkpoint /nonexistent/ckpt.pth does not exist"),
    (["predict", "sample:coins", "--model", "builtin:nope"], "unknown built-in model"),
    (["predict", "sample:coins", "--no-algm", "--threshold", "0.9"], "--no-algm"),
    (["predict", "sample:coins", "--layers", "1,x"], "--layers"),
    (["predict", "sample:nope"], "unknown sample image"),
])
def test_predict_cli_errors_are_one_line(tmp_path, capsys, args, needle):
    rc = main(args + ["--out", str(tmp_path / "o")])
    assert rc == 2
    line = _one_line_error(capsys.readouterr().err)
    assert needle in line


def test_predict_cli_bad_threshold_and_layers(tmp_path, ckpt_dir, capsys):
    assert main(["predict", "sample:coins", "--model", str(ckpt_dir), "--threshold", "2", "-q"]) == 2
    assert "threshold" in _one_line_error(capsys.readouterr().err)
    assert main(["predict", "sample:coins", "--model", str(ckpt_dir), "--layers", "1,13", "-q"]) == 2
    assert "outside the model" in _one_line_error(capsys.readouterr().err)


def test_cli_empty_folder_and_unreadable_files(tmp_path, ckpt_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--model", str(ckpt_dir)]) == 2
    assert f"folder {empty} is empty" in _one_line_error(capsys.readouterr().err)

    d = tmp_path / "mixed"
    d.mkdir()
    (d / "broken.png").write_text("nope")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(d / "ok.png")
    # an unreadable image is recorded in results.jsonl, the run goes on, exit code 4 says some failed
    assert main(["predict", str(d), "--model", str(ckpt_dir), "--out", str(tmp_path / "o"), "-q"]) == 4
    err = capsys.readouterr().err
    assert "warning: failed" in err and "broken.png" in err
    assert (tmp_path / "o" / "ok_seg.png").is_file() and (tmp_path / "o" / "ok_labels.png").is_file()
    recs = {r["name"]: r for r in map(json.loads, (tmp_path / "o" / "results.jsonl").read_text().splitlines())}
    assert recs["ok"]["status"] == "done" and recs["broken"]["status"] == "failed"
    assert "broken.png is not an image file" in recs["broken"]["error"]
    assert not (tmp_path / "o" / "broken_tokens.json").exists()


def test_cli_version_and_usage(capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("algm-export ") and "torch" in out
    assert main([]) == 2
    assert main(["predict"]) == 2                 # argparse: IMAGE is required
    assert main(["--help"]) == 0
    capsys.readouterr()


def test_debug_shows_traceback(capsys):
    assert main(["--debug", "predict", "/nonexistent.png"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: image /nonexistent.png does not exist" in err
