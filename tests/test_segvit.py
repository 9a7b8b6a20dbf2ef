"""SegViT (mmseg ViT + ATM head): built-ins, SegViT-format checkpoints, ALGM on the ATM token decoder.

No mmseg / SegViT here: parity with SegViT's own code is `scripts/reference/segvit_check.py`.
A tiny SegViT (8 blocks, read at [3, 5, 7], 21 classes, 128 x 128) keeps this file fast; with
ALGM layers (1, 5) its first stage (block 3) lies between CLAP and GBM, the others after GBM, so
the stages are unmerged with different assignment maps.

Note on the statistics: a randomly initialised ATM head (`randomize_` alone) predicts one class
for the whole image (its queries collapse into one, see `segvit.randomize_segvit_`); the built-ins
and the tiny model here use `randomize_segvit_`, whose outputs do segment, so argmax agreement is
informative; the output error (max |diff|) and the per-pixel winning query of the mask logits are
checked too.
"""

import pytest
import torch

from algm_export import AlgmSetting, apply_algm
from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.flops import model_macs
from algm_export.models import registry
from algm_export.models.base import Level, TokenState
from algm_export.models.families import segvit as sv

SET = AlgmSetting(0.88, (2, 2), (1, 5))
N = 64  # 8 x 8 patches at 128


def tiny_config(n_cls: int = 21) -> dict:
    cfg = sv.builtin_segvit_config(128, n_cls)
    cfg["model"]["backbone"].update(embed_dims=96, num_layers=8, num_heads=3, out_indices=[3, 5, 7])
    cfg["model"]["decode_head"].update(in_channels=96, channels=96, embed_dims=48, num_heads=2, num_layers=2)
    return cfg


@pytest.fixture(scope="module")
def tiny():
    """Seeded random weights; the position table scaled down to std 0.05 (randomize_ draws 0.5,
    which makes every 2x2 window of a 128 x 128 photo dissimilar at block 1, unlike a trained ViT,
    whose neighbouring patches look alike: CLAP would never merge)."""
    cfg = tiny_config()
    model = sv.randomize_segvit_(sv.build_segvit(cfg["model"], config=cfg), seed=3).eval()
    with torch.no_grad():
        model.backbone.pos_embed.mul_(0.1)
    return model


def _run(model, x):
    with torch.no_grad():
        out = model(x)
    return out, {k: v.clone() for k, v in getattr(model, "merge_stats", {}).items()}


class _WinningQuery:
    """Records, per forward, the query with the largest summed mask logit at every patch."""

    def __init__(self, decoder, monkeypatch):
        self.last = None
        orig = decoder.stage_masks

        def spy(levels):
            q, masks = orig(levels)
            self.last = sum(masks).argmax(-1)
            return q, masks

        monkeypatch.setattr(decoder, "stage_masks", spy)


# ----------------------------------------------------------------------------- built-ins, config

def test_builtins_build_and_run():
    names = registry.builtin_names()
    assert "builtin:segvit_s16_256" in names and "builtin:segvit_s16_512" in names
    m = registry.builtin_model("segvit_s16_256")
    d = m.describe()
    assert d["family"] == "segvit" and d["decoder"] == "atm" and d["decoder_kind"] == "token"
    assert d["num_prefix"] == 0 and d["decoder_layers"] == [5, 7, 11]
    inf = m.cfg.inference
    assert (inf["mode"], inf["crop_size"], inf["stride"]) == ("slide", [256, 256], [170, 170])
    assert set(m.cfg.to_dict()) >= {"family", "n_cls", "image_size", "patch_size", "grid", "num_prefix", "n_layers",
                                    "d_model", "normalization", "backbone", "decoder_name", "algm", "inference"}
    # every parameter drawn at random: no LayerNorm left at (1, 0), no zero bias
    for k, v in m.state_dict().items():
        assert v.float().std() > 0 or v.numel() == 1, k
    x = torch.randn(1, 3, 128, 128)                        # a smaller crop: position table resized (mmseg)
    y, _ = _run(m, x)
    assert y.shape == (1, 150, 128, 128) and torch.isfinite(y).all()
    assert (y >= 0).all()                                  # softmax x sigmoid, bilinearly resized
    assert y.argmax(1).unique().numel() > 1                # a random model that still segments
    big = sv.builtin_segvit_config(512)                    # (building it would only cost time here)
    assert big["model"]["decode_head"]["img_size"] == 512 and big["model"]["test_cfg"]["stride"] == (341, 341)


def test_state_dict_names_are_segvits(tiny):
    keys = set(tiny.state_dict())
    for k in ("decode_head.input_proj_1.weight", "decode_head.proj_norm_3.bias", "decode_head.q.weight",
              "decode_head.class_embed.weight", "decode_head.decoder_1.layers.0.self_attn.in_proj_weight",
              "decode_head.decoder_2.layers.1.multihead_attn.k.bias", "decode_head.decoder_3.layers.0.norm3.weight",
              "backbone.layers.7.attn.attn.in_proj_weight", "backbone.patch_embed.projection.bias"):
        assert k in keys, k
    assert tiny.decode_head.class_embed.out_features == 22          # n_cls + "no object"
    assert tiny.decoder.in_layers == (3, 5, 7)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["decode_head"].update(type="TPNATMHead"), "shrunk"),
    (lambda m: m["decode_head"].update(type="ATMSingleHead"), "laterals"),
    (lambda m: m["decode_head"].update(type="FCNHead"), "not a SegViT head"),
    (lambda m: m["decode_head"].update(use_stages=4), "use_stages"),
    (lambda m: m["decode_head"].update(input_transform="resize_concat"), "input_transform"),
    (lambda m: m["decode_head"].update(in_channels=64), "in_channels"),
    (lambda m: m["decode_head"].update(bogus=1), "unknown ATMHead"),
    (lambda m: m["decode_head"].update(embed_dims=51), "multiple of num_heads"),
    (lambda m: m.update(neck=dict(type="MLANeck")), "neck"),
])
def test_config_errors(edit, match):
    cfg = tiny_config()
    edit(cfg["model"])
    with pytest.raises(ConfigError, match=match):
        sv.build_segvit(cfg["model"], config=cfg)


def test_image_size_and_slide(tiny):
    cfg = tiny_config()
    m = tiny
    x = torch.randn(1, 3, 128, 128)
    whole, _ = _run(m, x)
    with torch.no_grad():
        assert torch.equal(m.inference(x), whole)            # one window covers the image
        y = m.inference(torch.randn(1, 3, 150, 213))         # windows of 128, stride 85
    assert y.shape == (1, 21, 150, 213) and torch.isfinite(y).all()
    assert cfg["model"]["test_cfg"]["stride"] == (85, 85)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip(tmp_path, tiny):
    path = sv.save_segvit(tiny, tmp_path / "segvit_tiny.pth")
    assert path.with_suffix(".py").is_file()
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "meta"} and "config" in raw["meta"]
    assert "patch_bias" not in raw["meta"]["config"]          # a 0.x config, as SegViT writes them
    x = torch.randn(2, 3, 128, 128)
    ref, _ = _run(tiny, x)
    a = registry.load_checkpoint(path)                        # config beside it, found by the registry
    b = sv.load_segvit(None, path)                            # config from meta['config']
    for m in (a, b):
        assert m.family == "segvit" and m.backbone.patch_embed.projection.bias is not None
        assert torch.equal(_run(m, x)[0], ref)
        assert m.load_report["ignored"] == [] and m.load_report["missing"] == []
    assert "config read from the checkpoint's meta" in b.cfg.notes
    # SegViT's own checkpoints carry the ATM loss's class weights: ignored, listed
    raw["state_dict"]["decode_head.loss_decode.criterion.empty_weight"] = torch.ones(22)
    torch.save(raw, path)
    c = registry.load_checkpoint(tmp_path)                    # the folder: one .pth, one .py
    assert c.load_report["ignored"] == ["decode_head.loss_decode.criterion.empty_weight"]
    assert torch.equal(_run(c, x)[0], ref)


def test_key_mismatches_are_listed(tmp_path, tiny):
    path = sv.save_segvit(tiny, tmp_path / "m.pth")
    raw = torch.load(path, weights_only=True)
    sd = raw["state_dict"]

    def save(new_sd):
        torch.save({"state_dict": new_sd, "meta": raw["meta"]}, path)

    save({k: v for k, v in sd.items() if not k.startswith("decode_head.decoder_2.")})
    with pytest.raises(CheckpointError, match=r"missing keys \(44\): decode_head\.decoder_2\.layers\.0"):
        sv.load_segvit(path.with_suffix(".py"), path)
    m = sv.load_segvit(path.with_suffix(".py"), path, strict=False)
    assert len(m.load_report["missing"]) == 44
    save(dict(sd, **{"decode_head.extra.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): decode_head\.extra\.weight"):
        sv.load_segvit(path.with_suffix(".py"), path)
    save(dict(sd, **{"decode_head.q.weight": torch.zeros(20, 48)}))
    with pytest.raises(CheckpointError, match=r"shape mismatches: decode_head\.q\.weight \(20, 48\)"):
        sv.load_segvit(path.with_suffix(".py"), path)


def test_detect(tmp_path, tiny):
    """SegViT claims the mmsegmentation checkpoints whose config has a SegViT head, found by content."""
    from algm_export.models.formats import identify

    path = sv.save_segvit(tiny, tmp_path / "m" / "m.pth")
    for where in (path, path.parent):
        fmt, files = identify(where)
        assert fmt.name == "mmsegmentation" and sv.accepts(files)
    other = tmp_path / "setr" / "setr.py"
    other.parent.mkdir()
    other.write_text("model = dict(type='EncoderDecoder', decode_head=dict(type='SETRUPHead'))\n")
    assert not sv.accepts(identify(path, other)[1])
    shrunk = tmp_path / "shrunk.py"
    shrunk.write_text("model = dict(type='EncoderDecoder', decode_head=dict(type='TPNATMHead'))\n")
    assert sv.accepts(identify(path, shrunk)[1])                 # ours, so that loading names the reason
    with pytest.raises(ConfigError, match="shrunk"):
        registry.load_checkpoint(path, shrunk)


# ----------------------------------------------------------------------------- ALGM

def test_static_equals_dynamic_on_photos(tiny, photos_128, monkeypatch):
    dyn = apply_algm(tiny, SET)
    sta = apply_algm(tiny, SET, capacities=(N, N))
    win = _WinningQuery(tiny.decoder, monkeypatch)
    base_out, _ = _run(tiny, photos_128[0])
    same_counts = close = clap_merged = 0
    for x in photos_128:
        a, sa = _run(dyn, x)
        wa = win.last
        b, sb = _run(sta, x)
        wb = win.last
        clap_merged += int(sa["merges"][0, 0] > 0)
        assert sa["merges"][0, 1] > 0, "GBM merges on every photo"
        same_counts += int(torch.equal(sa["tokens"], sb["tokens"]))
        close += int((a - b).abs().max() <= 1e-4)
        assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.995
        assert (wa == wb).float().mean() >= 0.99               # the winning query per patch
        assert int(sb["forced"].sum()) == 0
    n = len(photos_128)
    assert clap_merged >= n - 2, "CLAP merges on real photos"
    assert same_counts >= n - 1 and close >= n - 1
    a0, _ = _run(dyn, photos_128[0])
    assert (a0 - base_out).abs().max() > 1e-4, "merging must change the output"


def test_padding_is_invisible(tiny, photos_128):
    """Static capacities above the real counts (padding slots in every stage) = dynamic."""
    dyn = apply_algm(tiny, SET)
    x = torch.cat(photos_128[1:4])                        # photos on which CLAP merges
    a, sa = _run(dyn, x)
    c1 = min(N, int(sa["tokens"][:, 0].max()) + 6)
    c2 = min(c1, int(sa["tokens"][:, 1].max()) + 5)
    sta = apply_algm(tiny, SET, capacities=(c1, c2))
    b, sb = _run(sta, x)
    assert torch.equal(sa["tokens"], sb["tokens"]) and int(sb["forced"].sum()) == 0
    assert ((sb["tokens"] < torch.tensor([c1, c2])).all()), "every image must carry padding slots"
    assert (a - b).abs().max() <= 1e-4


def test_stages_unmerge_with_their_own_map(tiny, photos_128, monkeypatch):
    seen = {}
    orig = tiny.decoder.stage_masks

    def spy(levels):
        for lv in levels:
            seen[lv.index] = lv.state.assign.clone()
        return orig(levels)

    monkeypatch.setattr(tiny.decoder, "stage_masks", spy)
    dyn = apply_algm(tiny, SET)
    _run(dyn, photos_128[1])
    clap_map, gbm_map = dyn.assignments
    assert torch.equal(seen[3], clap_map)                     # block 3: between CLAP (1) and GBM (5)
    assert torch.equal(seen[5], gbm_map) and torch.equal(seen[7], gbm_map)
    assert not torch.equal(clap_map, gbm_map)


def _block_outputs(tiny, x):
    bb = tiny.backbone
    with torch.no_grad():
        t, grid = bb.embed(tiny.prepare(x))
        st = TokenState.initial(t, grid, 0)
        outs = {}
        for i in range(bb.depth):
            t = bb.block_mlp(i, bb.block_attn(i, t, st), st)
            outs[i] = bb.layer_output(i, t)
    return outs, grid


def _levels(tiny, block_outputs, pad: int, garbage: float):
    """The decoder's levels from the baseline backbone, re-expressed as merged states in which pairs
    of patches share a token (the mean of the pair), plus `pad` padding slots holding `garbage`."""
    outs, grid = block_outputs
    B, n, D = outs[3].shape
    assign = (torch.arange(n) // 2).expand(B, -1)             # patch p -> token p // 2
    levels = []
    for i in tiny.decoder.in_layers:
        merged = outs[i].reshape(B, n // 2, 2, D).mean(2)
        tok = torch.cat([merged, torch.full((B, pad, D), garbage)], 1)
        size = torch.cat([torch.full((B, n // 2), 2.0), torch.zeros(B, pad)], 1)
        state = TokenState(size, assign, grid, 0, padded=pad > 0, merged=True)
        levels.append(Level(i, tok, state))
    return levels


def test_padding_does_not_leak_into_cross_attention(tiny, photos_128, monkeypatch):
    dec = tiny.decoder
    outs = _block_outputs(tiny, photos_128[2])
    with torch.no_grad():
        clean = dec.decode(_levels(tiny, outs, pad=0, garbage=0.0))
        padded = [dec.decode(_levels(tiny, outs, pad=9, garbage=g)) for g in (0.0, 50.0, -1e3, float("nan"))]
    for p in padded:
        assert (p - clean).abs().max() <= 1e-5
    # the check bites: without the padding bias the padding slots get attention weight
    monkeypatch.setattr(Level, "key_bias", lambda self, dtype=None: None)
    with torch.no_grad():
        leaky = dec.decode(_levels(tiny, outs, pad=9, garbage=50.0))
    assert (leaky - clean).abs().max() > 1e-3


def test_macs_follow_the_token_counts(tiny, photos_128):
    dyn = apply_algm(tiny, SET)
    _, st = _run(dyn, photos_128[0])
    base = model_macs(tiny)
    merged = model_macs(tiny, SET.layers, st["tokens"][0].tolist())
    assert merged["encoder"] < base["encoder"] and merged["decoder"] < base["decoder"]
    dec = tiny.decoder
    grid = tiny.cfg.grid
    step = dec.macs([11, 10, 10], grid) - dec.macs([10, 10, 10], grid)
    # one more token of one stage: its input projection, and k, v, logits, attention per layer
    C = dec.dim
    assert step == dec.in_channels * C + dec.n_layers * (2 * C * C + 2 * dec.n_cls * C)
