"""Image loading (odd modes, unreadable files, empty folders), sample photos, model input, pictures."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from algm_export.core.errors import InputError
from algm_export.models.images import (
    ImageSkippedWarning,
    from_model_input,
    list_images,
    load_image,
    load_images,
    sample_images,
    to_model_input,
)
from algm_export.tasks.visualize import colorize, merge_png, palette, segmentation_png


def _photo(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_load_image_modes(tmp_path):
    rgb = _photo()
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(load_image(tmp_path / "rgb.png"), rgb)

    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    g = load_image(tmp_path / "gray.png")
    assert g.shape == (20, 30, 3) and g.dtype == np.uint8
    assert np.array_equal(g[..., 0], gray) and np.array_equal(g[..., 2], gray)

    rgba = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 0                                          # one transparent pixel -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    a = load_image(tmp_path / "rgba.png")
    assert a.shape == (20, 30, 3)
    assert np.array_equal(a[1:], rgb[1:]) and a[0, 0].tolist() == [255, 255, 255]

    g16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    b = load_image(tmp_path / "g16.png")
    assert b.shape == (20, 30, 3) and b[-1, -1, 0] == round(599 * 100 / 65535 * 255)

    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.gif")
    assert load_image(tmp_path / "pal.gif").shape == (20, 30, 3)


def test_unreadable_files_are_skipped_with_a_warning(tmp_path):
    Image.fromarray(_photo()).save(tmp_path / "good.png")
    Image.fromarray(_photo(64, 64)).save(tmp_path / "trunc.jpg", quality=95)
    data = (tmp_path / "trunc.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_text("ignored")

    assert [p.name for p in list_images(tmp_path)] == ["fake.png", "good.png", "trunc.jpg"]
    with pytest.warns(ImageSkippedWarning) as rec:
        out = load_images(tmp_path)
    assert [p.name for p, _ in out] == ["good.png"]
    text = " | ".join(str(w.message) for w in rec)
    for name in ("fake.png", "trunc.jpg", "notes.txt"):
        assert name in text
    assert "truncated" in text and "not an image" in text

    with pytest.raises(InputError, match="is not an image file"):
        load_images([tmp_path / "fake.png"], skip_bad=False)


def test_nothing_readable_and_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"folder {empty} is empty"):
        load_images(empty)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (bad / "b.jpg").write_text("nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=f"no readable image in {bad}: skipped a.png .*; b.jpg"):
            load_images(bad)

    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "readme.md").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="no readable image in .*no image files"):
            load_images(only_text)

    with pytest.raises(InputError, match="does not exist"):
        load_images([tmp_path / "missing.png"])
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png")


def test_sample_images():
    s = sample_images(3)
    assert [n for n, _ in s] == ["astronaut", "coffee", "chelsea"]
    for _, img in s:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    (name, cam), = sample_images(names=["camera"])
    assert cam.shape == (512, 512, 3) and np.array_equal(cam[..., 0], cam[..., 1])
    names = [n for n, _ in sample_images()]
    assert {"motorcycle_left", "coins", "retina"} <= set(names)


def test_to_model_input():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:, :10] = 255
    x = to_model_input(img, (8, 16), "vit")
    assert x.shape == (1, 3, 8, 16) and x.dtype == torch.float32
    assert x[0, :, :, 0].eq(1.0).all() and x[0, :, :, -1].eq(-1.0).all()    # (1 - .5)/.5, (0 - .5)/.5
    d = to_model_input(img, None, "deit")
    assert d.shape == (1, 3, 10, 20)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(d[0, :, 0, 0], (1 - mean) / std)
    back = from_model_input(to_model_input(img, None, "deit"), "deit")
    assert np.array_equal(back, img)


def test_palette_and_pictures(tmp_path):
    p = palette(150)
    assert p.shape == (256, 3) and np.array_equal(p, palette(150))
    assert len({tuple(c) for c in p[:150]}) == 150 and (p[:150].sum(1) > 0).all()
    assert palette(300).shape == (300, 3)
    labels = np.arange(12).reshape(3, 4)
    assert np.array_equal(colorize(labels)[1, 2], p[6])

    path = segmentation_png(labels, tmp_path / "seg.png")
    assert Image.open(path).size == (4, 3)

    grid, ps = (4, 4), 8
    clap = np.arange(16)
    clap[[0, 1, 4, 5]] = 0                     # one merged 2x2 window
    gbm = clap.copy()
    gbm[[15]] = 0                              # a far patch joins it
    img = _photo(32, 32)
    path = merge_png(img, [torch.tensor(clap), gbm], grid, ps, tmp_path / "merge.png", titles=["CLAP", "GBM"])
    m = np.asarray(Image.open(path))
    assert m.shape[1] > 3 * 256 and m.shape[2] == 3                      # input + 2 panels, upscaled
    with pytest.raises(InputError, match="has 15 entries"):
        merge_png(img, [np.arange(15)], grid, ps, tmp_path / "bad.png")
