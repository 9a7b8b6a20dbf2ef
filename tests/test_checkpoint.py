"""Published-format checkpoints: round trips, published variant.yml quirks, and every error path."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
import yaml

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.merging.driver import apply_algm
from algm_export.core.setting import AlgmSetting
from algm_export.models.formats.published_segmenter import NET_KWARGS_KEYS
from algm_export.models.formats.published_segmenter import load_segmenter, read_variant, save_segmenter
from algm_export.models.registry import resolve_model
from algm_export.models.families.segmenter import DecoderConfig, SegmenterConfig
from algm_export.models.families.segmenter import Segmenter, create_segmenter

SIZE = 64


def tiny(backbone="vit_tiny", decoder="linear", n_cls=5, seed=1, size=SIZE):
    return create_segmenter(backbone, decoder, size, n_cls=n_cls, seed=seed)


def micro(decoder="linear"):
    """A 6-block, 64-wide ViT under a name outside the backbone registry: small files, fast tests.
    (variant.yml's net_kwargs fully describe the network, so any backbone name loads.)"""
    cfg = SegmenterConfig(backbone="vit_micro_test", d_model=64, n_heads=2, n_layers=6, patch_size=16,
                          image_size=(SIZE, SIZE), n_cls=5, decoder=DecoderConfig(name=decoder))
    torch.manual_seed(3)
    return Segmenter(cfg).eval()


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


@pytest.mark.parametrize("backbone,decoder", [
    ("vit_tiny", "linear"),
    pytest.param("vit_tiny", "mask_transformer", marks=pytest.mark.slow),
    pytest.param("deit_tiny", "linear", marks=pytest.mark.slow),   # distilled: two prefix tokens, head_dist
])
def test_round_trip_identical_logits(tmp_path, image, backbone, decoder):
    model = tiny(backbone, decoder)
    setting = AlgmSetting(0.9, (2, 2), (1, 5))
    ckpt = save_segmenter(model, tmp_path / "run", algm=setting)
    assert ckpt == tmp_path / "run" / "checkpoint.pth"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pth", "variant.yml"]

    loaded = load_segmenter(tmp_path / "run")          # the folder works as well as the file
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))
        a, b = apply_algm(model, setting), apply_algm(loaded, setting)
        assert torch.equal(a(image), b(image))
        assert torch.equal(a.merge_stats["tokens"], b.merge_stats["tokens"])

    c0, c1 = model.cfg, loaded.cfg
    for f in ("backbone", "d_model", "n_heads", "n_layers", "patch_size", "image_size", "n_cls", "distilled",
              "normalization", "decoder"):
        assert getattr(c0, f) == getattr(c1, f), f
    assert c1.num_prefix == (2 if backbone.startswith("deit") else 1)
    assert c1.algm == {"patch_type": "algm", "threshold": 0.9, "selected_layers": [1, 5],
                       "merging_window_size": [2, 2]}
    assert c1.inference == {"im_size": SIZE, "window_size": SIZE, "window_stride": SIZE}
    assert AlgmSetting.from_variant({"dataset_kwargs": c1.algm}) == setting


def test_variant_is_published_format(tmp_path):
    save_segmenter(tiny(decoder="mask_transformer"), tmp_path, extra_variant={"dataset_kwargs": {"dataset": "ade20k"}})
    v = yaml.safe_load((tmp_path / "variant.yml").read_text())
    # exactly the keys the published create_segmenter accepts (anything else breaks its loader)
    assert set(v["net_kwargs"]) == set(NET_KWARGS_KEYS)
    assert v["net_kwargs"]["decoder"] == {"name": "mask_transformer", "n_layers": 2, "drop_path_rate": 0.0,
                                          "dropout": 0.1}
    assert v["dataset_kwargs"]["patch_type"] == "pure" and v["dataset_kwargs"]["threshold"] is None
    assert v["dataset_kwargs"]["dataset"] == "ade20k"
    assert set(v["inference_kwargs"]) == {"im_size", "window_size", "window_stride"}
    ck = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert set(ck) >= {"model"} and ck["n_cls"] == 5
    assert "decoder.cls_emb" in ck["model"] and "encoder.head.weight" in ck["model"]

    save_segmenter(tiny(), tmp_path / "lin")
    v = yaml.safe_load((tmp_path / "lin" / "variant.yml").read_text())
    assert v["net_kwargs"]["decoder"] == {"name": "linear"}     # the published linear decoder dict


def test_published_variant_with_python_tuples_and_optimizer_state(tmp_path, image):
    """variant.yml as the published training script writes it (yaml.dump of tuples), and a
    checkpoint holding optimizer state and other non-tensor objects."""
    model = tiny()
    variant = {
        "net_kwargs": {"backbone": "vit_tiny_patch16_384", "d_model": 192, "n_heads": 3, "n_layers": 12,
                       "patch_size": 16, "image_size": (SIZE, SIZE), "n_cls": 5, "normalization": "vit",
                       "dropout": 0.0, "drop_path_rate": 0.1, "decoder": {"name": "linear"}},
        "dataset_kwargs": {"dataset": "ade20k", "image_size": 512, "crop_size": SIZE, "normalization": "vit",
                           "patch_type": "algm", "threshold": 0.88, "selected_layers": (1, 5),
                           "merging_window_size": (2, 2), "split": "train"},
        "inference_kwargs": {"im_size": 512, "window_size": SIZE, "window_stride": 48},
        "log_dir": "seg_tiny", "version": "normal",
    }
    text = yaml.dump(variant)
    assert "!!python/tuple" in text                      # as published
    (tmp_path / "variant.yml").write_text(text)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "n_cls": 5, "epoch": 63},
               tmp_path / "checkpoint.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # training state loads weights-only, with no warning
        loaded = load_segmenter(tmp_path / "checkpoint.pth")
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))
    assert loaded.cfg.image_size == (SIZE, SIZE) and loaded.cfg.distilled is False
    assert loaded.cfg.algm["threshold"] == 0.88 and loaded.cfg.algm["selected_layers"] == [1, 5]
    assert loaded.cfg.inference == {"im_size": 512, "window_size": SIZE, "window_stride": 48}
    # any other object (here the training script's argparse arguments) needs an explicit opt-in
    torch.save({"model": model.state_dict(), "n_cls": 5, "args": argparse.Namespace(lr=0.001)},
               tmp_path / "checkpoint.pth")
    with pytest.raises(CheckpointError, match="argparse.Namespace.*trust_checkpoint=True"):
        load_segmenter(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(image), load_segmenter(tmp_path, trust_checkpoint=True)(image))


@pytest.mark.slow
def test_image_size_override_resizes_pos_embed(tmp_path):
    model = tiny()
    save_segmenter(model, tmp_path)
    loaded = load_segmenter(tmp_path, image_size=96)
    assert loaded.cfg.image_size == (96, 96) and loaded.checkpoint_image_size == (SIZE, SIZE)
    assert loaded.encoder.pos_embed.shape[1] == 1 + 36
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():   # the original model resizes its pos_embed per call, in the same way
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        load_segmenter(tmp_path, image_size=100)


def test_module_prefix_and_missing_unused_head(tmp_path, image):
    model = micro()
    save_segmenter(model, tmp_path)
    ck = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    sd = {f"module.{k}": v for k, v in ck["model"].items() if not k.startswith("encoder.head.")}
    torch.save({"model": sd}, tmp_path / "checkpoint.pth")
    loaded = load_segmenter(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(image), loaded(image))


# ----------------------------------------------------------------------------- errors

def _saved(tmp_path, model=None):
    save_segmenter(model or micro(), tmp_path)
    return tmp_path / "checkpoint.pth"


@pytest.mark.slow
def test_variant_of_another_backbone(tmp_path):
    ckpt = _saved(tmp_path, tiny())                           # vit_tiny weights
    v = read_variant(tmp_path / "variant.yml")                # ... described as vit_small
    v["net_kwargs"].update(backbone="vit_small_patch16_384", d_model=384, n_heads=6)
    (tmp_path / "variant.yml").write_text(yaml.safe_dump(v))
    with pytest.raises(CheckpointError) as e:
        load_segmenter(ckpt)
    msg = str(e.value)
    assert msg.startswith("checkpoint does not match variant.yml")
    assert "shape mismatches [decoder.head.weight: checkpoint [5, 192] vs variant.yml [5, 384]" in msg
    assert "more" in msg                                      # long lists are cut short
    assert "d_model=192, 12 blocks (like vit_tiny_patch16_384)" in msg
    assert "check that variant.yml belongs to this checkpoint" in msg
    assert "\n" not in msg


def test_removed_and_extra_keys(tmp_path):
    ckpt = _saved(tmp_path)
    ck = torch.load(ckpt, weights_only=True)
    del ck["model"]["encoder.blocks.3.attn.qkv.weight"]
    ck["model"]["decoder.extra.weight"] = torch.zeros(2)
    torch.save(ck, ckpt)
    with pytest.raises(CheckpointError) as e:
        load_segmenter(ckpt)
    msg = str(e.value)
    assert "missing keys [encoder.blocks.3.attn.qkv.weight]" in msg
    assert "unexpected keys [decoder.extra.weight]" in msg
    with pytest.warns(UserWarning, match="strict=False"):
        m = load_segmenter(ckpt, strict=False)
    assert m.cfg.n_cls == 5


def test_decoder_mismatch_lists_keys(tmp_path):
    ckpt = _saved(tmp_path, micro("mask_transformer"))
    save_segmenter(micro(), tmp_path / "lin")
    (tmp_path / "variant.yml").write_text((tmp_path / "lin" / "variant.yml").read_text())
    with pytest.raises(CheckpointError, match=r"missing keys \[decoder.head.bias, decoder.head.weight\]; "
                                              r"unexpected keys \[decoder.blocks"):
        load_segmenter(ckpt)


def test_truncated_and_empty_checkpoint(tmp_path):
    ckpt = _saved(tmp_path)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*copy the checkpoint again"):
        load_segmenter(ckpt)
    ckpt.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_segmenter(ckpt)
    ckpt.write_bytes(b"this is not a checkpoint at all\n" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_segmenter(ckpt)


@pytest.mark.parametrize("payload,found", [
    ({"foo": 1, "bar": [1, 2]}, "keys"),
    (torch.zeros(3), "Tensor"),
    ({"model": {"encoder.cls_token": 3}}, "non-tensor entries"),
])
def test_not_a_checkpoint(tmp_path, payload, found):
    ckpt = _saved(tmp_path)
    torch.save(payload, ckpt)
    with pytest.raises(CheckpointError, match="not a") as e:
        load_segmenter(ckpt)
    assert found in str(e.value)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_segmenter(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="no checkpoint.pth in"):
        load_segmenter(tmp_path)
    ckpt = _saved(tmp_path)
    (tmp_path / "variant.yml").unlink()
    with pytest.raises(CheckpointError, match="variant.yml is missing.*copy the variant.yml"):
        load_segmenter(ckpt)


@pytest.mark.parametrize("text,match", [
    ("net_kwargs: {backbone: vit_tiny_patch16_384, d_model: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "does not hold a mapping"),
    ("dataset_kwargs: {}\n", "no net_kwargs"),
    ("net_kwargs: {backbone: vit_tiny_patch16_384, n_heads: 3}\n", "lacks \\['d_model'"),
    ("net_kwargs: {backbone: x, d_model: 192, n_heads: 3, n_layers: 12, patch_size: 16, image_size: 64, "
     "n_cls: 5, decoder: {name: unet}}\n", "decoder 'unet' unknown"),
    ("net_kwargs: {backbone: x, d_model: abc, n_heads: 3, n_layers: 12, patch_size: 16, image_size: 64, "
     "n_cls: 5, decoder: {name: linear}}\n", "d_model = 'abc' is not a number"),
])
def test_malformed_variant(tmp_path, text, match):
    ckpt = _saved(tmp_path)
    (tmp_path / "variant.yml").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_segmenter(ckpt)


def test_bad_algm_settings_in_variant(tmp_path):
    ckpt = _saved(tmp_path)
    v = read_variant(tmp_path / "variant.yml")
    v["dataset_kwargs"].update(patch_type="algm", threshold=3.0, selected_layers=[1, 5])
    (tmp_path / "variant.yml").write_text(yaml.safe_dump(v))
    with pytest.raises(CheckpointError, match="ALGM settings in dataset_kwargs are unusable"):
        load_segmenter(ckpt)


def test_resolve_model(tmp_path):
    m = resolve_model("builtin:vit_ti16_512")
    assert m.cfg.image_size == (512, 512) and m.cfg.n_cls == 150 and m.cfg.algm["threshold"] == 0.90
    assert m.source == "builtin:vit_ti16_512"
    with pytest.raises(ConfigError, match="unknown built-in model 'nope'.*builtin:vit_s16_512"):
        resolve_model("builtin:nope")
    _saved(tmp_path)
    m = resolve_model(str(tmp_path))
    assert m.cfg.backbone == "vit_micro_test" and m.cfg.d_model == 64 and m.cfg.n_layers == 6
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model(tmp_path / "missing" / "checkpoint.pth")


def test_save_refuses_non_segmenter(tmp_path):
    with pytest.raises(ConfigError, match="needs a Segmenter"):
        save_segmenter(torch.nn.Linear(2, 2), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt = save_segmenter(apply_algm(micro(), AlgmSetting(0.8, (2, 2), (1, 3))), tmp_path / "wrapped")
    assert load_segmenter(ckpt).cfg.algm["selected_layers"] == [1, 3]
