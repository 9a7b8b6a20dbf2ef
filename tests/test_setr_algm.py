"""ALGM on SETR (naive, PUP, MLA) through the family seam: merges on photos, static == dynamic,
the feature-map unmerge at every level, ONNX export + ONNX Runtime parity, TensorRT-RTX builds."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.models.images import to_model_input
from algm_export.models.families.setr import build_setr, builtin_setr_config
from algm_export.models.mmseg_common import randomize_

try:
    from conftest import PHOTOS, photo
except ImportError:  # tests/ as a package
    from tests.conftest import PHOTOS, photo

SIZE = 128
SET = AlgmSetting(0.88, (2, 2), (1, 5))


def tiny_setr(kind: str, seed: int = 0):
    """A 6-block SETR with a 96-wide backbone; MLA reads a block between CLAP and GBM (index 1)
    and the GBM block itself (index 4), so both assignment maps are exercised."""
    cfg = builtin_setr_config(kind, SIZE, n_cls=11)
    bb = cfg["backbone"]
    bb.update(embed_dims=96, num_layers=6, num_heads=3)
    if kind == "mla":
        bb["out_indices"] = (1, 2, 4, 5)
        cfg["neck"].update(in_channels=[96] * 4, out_channels=32)
        cfg["decode_head"].update(in_channels=(32, 32, 32, 32), channels=64, mla_channels=16)
    else:
        bb["out_indices"] = (1, 3, 4, 5)
        cfg["decode_head"].update(in_channels=96, channels=32)
    model = build_setr(copy.deepcopy(cfg))
    randomize_(model, seed)
    return model.eval()


@pytest.fixture(scope="module", params=["naive", "pup", pytest.param("mla", marks=pytest.mark.slow)])
def setr(request):
    return request.param, tiny_setr(request.param)


@pytest.fixture(scope="module")
def photo_batch():
    return [photo(n) for n in PHOTOS]


def _inputs(model, imgs):
    return torch.cat([to_model_input(im, (SIZE, SIZE), model.cfg.normalization) for im in imgs])


def test_static_equals_dynamic_with_merges(setr, photo_batch):
    kind, model = setr
    x = _inputs(model, photo_batch)
    N = model.cfg.grid[0] * model.cfg.grid[1]
    with torch.no_grad():
        dyn = apply_algm(model, SET)
        yd = dyn(x)
        sta = apply_algm(model, SET, capacities=(N, N))
        ys = sta(x)
        yb = model(x)
    merges = dyn.merge_stats["merges"]
    assert int(merges[:, 0].sum()) > 0 and int(merges[:, 1].sum()) > 0        # CLAP and GBM merged
    assert torch.equal(dyn.merge_stats["tokens"], sta.merge_stats["tokens"])
    assert int(sta.merge_stats["forced"].sum()) == 0
    err = (yd - ys).abs().flatten(1).amax(1)
    agree = (yd.argmax(1) == ys.argmax(1)).float().flatten(1).mean(1)
    assert int((err <= 1e-3).sum()) >= len(PHOTOS) - 1, err                   # docs/algorithm.md: numerical sensitivity: statistical
    assert float(agree.min()) >= 0.99, agree
    assert float((yd - yb).abs().max()) > 1e-3                                  # merging changed the output
    assert model.num_prefix == (0 if kind == "mla" else 1)


def test_padding_is_invisible(setr, photo_batch):
    """Static with spare capacity (padding slots) equals dynamic, level by level."""
    _, model = setr
    x = _inputs(model, photo_batch[:2])
    with torch.no_grad():
        dyn = apply_algm(model, SET)
        yd = dyn(x)
        caps = dyn.merge_stats["tokens"].amax(0) + 7
        N = model.cfg.grid[0] * model.cfg.grid[1]
        caps = [min(int(caps[0]), N), min(int(caps[1]), min(int(caps[0]), N))]
        ys = apply_algm(model, SET, capacities=caps)(x)
    assert float((yd - ys).abs().max()) < 1e-3


def _levels(model, setting, x):
    """Run ALGM and return the Level objects the decoder got."""
    seen = []
    dec = model.decoder
    orig = type(dec).decode

    def spy(self, levels):
        seen.extend(levels)
        return orig(self, levels)

    type(dec).decode = spy
    try:
        with torch.no_grad():
            algm = apply_algm(model, setting)
            algm(x)
    finally:
        type(dec).decode = orig
    return seen, algm


def test_feature_levels_use_the_map_valid_at_their_layer():
    """MLA reads blocks 2, 3 (between CLAP in block 1 and GBM in block 5), 5 and 6: the first two
    are unmerged with the CLAP-time map (identical to a CLAP-only run), the last two with GBM's."""
    model = tiny_setr("mla")
    x = _inputs(model, [photo("coffee")])
    both, algm = _levels(model, SET, x)
    clap_only, _ = _levels(model, AlgmSetting(0.88, (2, 2), (1,)), x)
    assert [lv.index for lv in both] == [1, 2, 4, 5]
    assert int(algm.merge_stats["merges"][0, 1]) > 0
    clap_assign, gbm_assign = algm.assignments
    for early, ref in zip(both[:2], clap_only[:2]):
        assert torch.equal(early.state.assign.long(), clap_assign) and torch.equal(early.as_map(), ref.as_map())
    for late in both[2:]:
        assert torch.equal(late.state.assign.long(), gbm_assign)
        rows = late.patches[0, gbm_assign[0]]                                   # [N, D] by hand
        assert torch.equal(late.as_map()[0], rows.T.reshape(-1, *late.grid))
    assert not torch.equal(both[2].as_map(), clap_only[2].as_map())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pup", "mla"])
def test_export_and_onnxruntime_parity(tmp_path, kind, photo_batch):
    from algm_export.export.exporter import export_onnx
    from algm_export.runtimes.onnxruntime import OrtRunner

    model = tiny_setr(kind, seed=1)
    x = _inputs(model, photo_batch[:3])
    with torch.no_grad():
        dyn = apply_algm(model, SET)
        dyn(x)
        caps = [int(v) for v in dyn.merge_stats["tokens"].amax(0)]
        sta = apply_algm(model, SET, capacities=caps)
        ref = sta(x).numpy()
        ref_stats = sta.stats_tensor.numpy()
    path = export_onnx(sta, tmp_path / f"{kind}.onnx")
    out = OrtRunner(path).infer(x.numpy())
    assert np.abs(out["logits"] - ref).max() < 1e-3
    assert np.array_equal(out["merge_stats"], ref_stats) and ref_stats[..., 0].sum() > 0


@pytest.fixture(scope="module")
def setr_export(tmp_path_factory):
    """A tiny SETR-MLA (no class token: P = 0) export folder: baseline + one calibrated setting."""
    from algm_export.export.pipeline import export_folder

    d = tmp_path_factory.mktemp("setr_export")
    model = tiny_setr("mla", seed=2)
    model.source = "builtin:test-tiny-setr-mla"
    export_folder(model, model.source, d, thresholds=[0.88], calib_limit=4)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("plugins", [False, True], ids=["function-bodies", "plugins"])
def test_tensorrt_rtx_builds(setr_export, plugins, request):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (pip install tensorrt-rtx-cu13) is not installed")
    from algm_export.tasks.build import build_engines

    lib = request.getfixturevalue("plugin_library") if plugins else None
    recs = build_engines(setr_export, backend="tensorrt-rtx", compute_capabilities=[86], progress=False,
                         plugins=lib)
    algm = [r for r in recs if r["setting"] != "baseline"]
    assert len(algm) == 1 and (setr_export / algm[0]["file"]).stat().st_size > 0
    layers = algm[0]["layers"]
    assert layers["algm_nodes"] == 2
    assert layers["algm_plugin_layers"] == (2 if plugins else 0)


@pytest.mark.slow
def test_cli_end_to_end_with_an_mmseg_checkpoint(tmp_path, capsys):
    """`export CONFIG.py CHECKPOINT.pth`, `validate`, `predict --model CKPT --config CONFIG.py`: the
    manifest records the family, the config and both sha256s."""
    import json

    from algm_export.cli import main
    from algm_export.core.manifest import sha256_file
    from algm_export.models.families.setr import save_mmseg_setr

    model = tiny_setr("pup", seed=3)
    ckpt = save_mmseg_setr(model, tmp_path / "run" / "setr_tiny.pth")
    cfg = ckpt.with_suffix(".py")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    for n in PHOTOS[:3]:
        Image.fromarray(photo(n)).save(imgs / f"{n}.png")
    out = tmp_path / "export"
    assert main(["export", str(cfg), str(ckpt), "--out", str(out), "--thresholds", "0.88",
                 "--calib-images", str(imgs)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    m = man["model"]
    assert m["family"] == "setr" and m["decoder"] == "setr_pup" and m["config_file"] == str(cfg)
    assert m["checkpoint_sha256"] == sha256_file(ckpt) and m["config_sha256"] == sha256_file(cfg)
    assert main(["validate", str(out), "--images", str(imgs)]) == 0
    report = json.loads((out / "validation" / "report.onnxruntime.fp32.json").read_text())
    assert report["pass"] and len(report["entries"]) == 2
    pred = tmp_path / "pred"
    assert main(["predict", str(imgs / "coffee.png"), "--model", str(ckpt), "--config", str(cfg),
                 "--out", str(pred), "-q"]) == 0
    tokens = json.loads((pred / "coffee_tokens.json").read_text())
    assert tokens["tokens"][0] == model.cfg.grid[0] * model.cfg.grid[1] and len(tokens["tokens"]) == 3
    capsys.readouterr()
