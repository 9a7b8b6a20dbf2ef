"""EVA-02 + UperNet: timm parity, rotary positions of merged tokens, ALGM static vs dynamic, checkpoints."""

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from algm_export import AlgmSetting, apply_algm
from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.flops import model_macs
from algm_export.models.backbones.eva02 import (
    Eva02Backbone,
    eva02_kwargs,
    grid_positions,
    token_centroids,
    token_positions,
)
from algm_export.models.base import TokenState
from algm_export.models.families import eva02 as fam
from algm_export.models.registry import builtin_names, resolve_model
from conftest import PHOTOS, photo

SET = AlgmSetting(0.88, (2, 2), (1, 5))      # CLAP at layer 1, GBM at the middle layer of 12


def _inputs(model, size=128):
    norm = model.cfg.normalization
    out = []
    for name in PHOTOS:
        t = torch.from_numpy(np.array(photo(name))).permute(2, 0, 1).float()[None] / 255
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        out.append((t - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1))
    return out


@pytest.fixture(scope="module")
def tiny_eva():
    return fam.builtin_eva02("tiny", 128, 16, seed=0, n_cls=21, channels=64)


@pytest.fixture(scope="module")
def eva_photos(tiny_eva):
    return _inputs(tiny_eva)


# ----------------------------------------------------------------------------- rotary positions

@pytest.mark.parametrize("grid,ref", [((8, 8), (16, 16)), ((8, 12), (16, 16)), ((16, 16), (16, 16)), ((6, 10), None)])
def test_rope_at_integer_positions_is_timms_table(grid, ref):
    img = (grid[0] * 16, grid[1] * 16)
    bb = Eva02Backbone(out_indices=[1], **eva02_kwargs("eva02_tiny_patch14_224", img_size=img, patch_size=16, depth=2,
                                                       ref_feat_shape=ref))
    timm_table = bb.rope.get_embed()
    ours = bb.rope_at(grid_positions(grid), grid)
    assert ours.shape == timm_table.shape
    assert (ours - timm_table).abs().max() <= 1e-6
    assert torch.equal(ours, timm_table)        # the same elementwise arithmetic: bit for bit
    # a grid other than the built one: timm's own builder, and ours at its integer positions
    other = (grid[0] + 2, grid[1])
    assert torch.equal(bb.rope_at(grid_positions(other), other), bb.rope_at.table(other))


def test_centroids_without_merge_are_the_grid_positions():
    grid = (4, 6)
    x = torch.zeros(2, 1 + 24, 8)
    st = TokenState.initial(x, grid, 1)
    assert torch.equal(token_centroids(st.assign, st.size, grid, 1)[1], grid_positions(grid))
    for rule in ("centroid", "nearest", "first"):
        assert torch.equal(token_positions(st.assign, st.size, grid, 1, rule)[0], grid_positions(grid))


def test_centroid_of_merged_tokens_and_padding():
    grid = (2, 4)      # patches 0..7; token 0 holds {0, 1, 4, 5} (a 2x2 window), token 1 holds {2, 7}, 2 holds {3, 6}
    assign = torch.tensor([[0, 0, 1, 2, 0, 0, 2, 1]])
    size = torch.tensor([[1.0, 4.0, 2.0, 2.0, 0.0, 0.0]])      # cls, 3 tokens, 2 padding slots
    c = token_centroids(assign, size, grid, 1)[0]
    assert torch.equal(c[0], torch.tensor([0.5, 0.5]))
    assert torch.equal(c[1], torch.tensor([0.5, 2.5]))          # (0, 2) and (1, 3)
    assert torch.equal(c[2], torch.tensor([0.5, 2.5]))          # (0, 3) and (1, 2)
    assert torch.isfinite(c).all() and torch.equal(c[3:], torch.zeros(2, 2))   # padding: finite
    assert torch.equal(token_positions(assign, size, grid, 1, "first")[0, :3],
                       torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 3.0]]))
    with pytest.raises(ConfigError, match="rotary position rule"):
        token_positions(assign, size, grid, 1, "middle")


# ----------------------------------------------------------------------------- timm parity

@pytest.mark.parametrize("name,over", [
    ("eva02_tiny_patch14_224", dict(img_size=112, depth=4)),                               # fused qkv, packed GLU
    ("eva02_base_patch14_224", dict(img_size=(64, 96), patch_size=16, depth=3, embed_dim=96, num_heads=2)),  # q/k/v, sub-LN
])
def test_backbone_equals_timm_features(name, over):
    idx = [0, 2] if over["depth"] == 3 else [1, 3]
    ref = timm.create_model(name, features_only=True, pretrained=False, out_indices=idx, **over).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.dim() > 1 else 0.5))
    ours = Eva02Backbone(out_indices=idx, **eva02_kwargs(name, **over)).eval()
    ours.load_state_dict({k[len("model."):]: v for k, v in ref.state_dict().items()}, strict=True)
    hw = over["img_size"] if isinstance(over["img_size"], tuple) else (over["img_size"],) * 2
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ref(x)
        xx, grid = ours.embed(x)
        st = TokenState.initial(xx, grid, 1)
        b = []
        for i in range(ours.depth):
            xx = ours.block_mlp(i, ours.block_attn(i, xx, st), st)
            if i in idx:
                b.append(xx[:, 1:].transpose(1, 2).reshape(2, -1, *grid))
        assert torch.equal(ours.forward_features_list(x)[-1], a[-1])
    for u, v in zip(a, b):
        assert (u - v).abs().max() <= 1e-5 * max(1.0, float(u.abs().max()))


def test_model_table_matches_timms_registry():
    """Our EVA-02 kwargs build timm's registered model: same keys and shapes, same default outputs."""
    name = "eva02_base_patch14_448"                          # separate q/k/v, sub-LN SwiGLU, 32x32 grid
    ref = timm.create_model(name, features_only=True, pretrained=False, device="meta")
    ours = Eva02Backbone(out_indices=None, device="meta", **eva02_kwargs(name))
    assert {k[len("model."):]: v.shape for k, v in ref.state_dict().items()} == \
        {k: v.shape for k, v in ours.state_dict().items()}
    assert tuple(ref.out_indices) == (9, 10, 11) and ours.depth == 12
    assert tuple(ref.model.rope.ref_feat_shape) == tuple(ours.rope.ref_feat_shape) == (16, 16)


def test_no_merge_model_reads_timm_features(tiny_eva, eva_photos):
    x = torch.cat(eva_photos[:2])
    with torch.no_grad():
        ours = tiny_eva.features(x)
        ref = tiny_eva.backbone.forward_features_list(x)
    assert len(ours) == 4
    for a, b in zip(ours, ref):
        assert (a - b).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- ALGM

def _run(model, x):
    with torch.no_grad():
        out = model(x)
    return out, {k: v.clone() for k, v in model.merge_stats.items()}


@pytest.fixture(scope="module")
def dynamic_runs(tiny_eva, eva_photos):
    """The dynamic (docs/algorithm.md: the published method) reference, photo by photo: [(logits, merge_stats)]."""
    dyn = apply_algm(tiny_eva, SET)
    return [_run(dyn, x) for x in eva_photos]


@pytest.mark.slow
def test_algm_static_equals_dynamic_on_photos(tiny_eva, eva_photos, dynamic_runs):
    N = 64
    sta = apply_algm(tiny_eva, SET, capacities=(N, N))
    same_counts, close, merged = 0, 0, 0
    for x, (a, sa) in zip(eva_photos, dynamic_runs):
        b, sb = _run(sta, x)
        merged += int(sa["merges"].sum() > 0)
        same_counts += int(torch.equal(sa["tokens"], sb["tokens"]))
        close += int((a - b).abs().max() <= 1e-4)
        assert torch.isfinite(b).all()
        assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.995
        assert int(sb["forced"].sum()) == 0
    n = len(eva_photos)
    assert merged == n, "merging must happen on real photos"
    assert same_counts >= n - 1
    assert close >= n - 1


@pytest.mark.slow
def test_algm_static_with_padding_equals_dynamic(tiny_eva, eva_photos, dynamic_runs):
    """A batch whose images need different counts: every one padded to shared capacities."""
    batch = torch.cat(eva_photos)
    a = torch.cat([r[0] for r in dynamic_runs])
    sa = {k: torch.cat([r[1][k] for r in dynamic_runs]) for k in dynamic_runs[0][1]}
    assert (sa["merges"][:, 1] > 0).all() and len(set(sa["tokens"][:, 0].tolist())) > 1
    c1 = min(64, int(sa["tokens"][:, 0].max()) + 3)
    c2 = min(c1, int(sa["tokens"][:, 1].max()) + 3)
    sta = apply_algm(tiny_eva, SET, capacities=(c1, c2))
    hook_states = []
    orig = tiny_eva.forward_tokens

    def forward_tokens(im, hook=None, on_state=None):
        return orig(im, hook, on_state=lambda i, s: hook_states.append(s))

    tiny_eva.forward_tokens = forward_tokens
    try:
        b, sb = _run(sta, batch)
    finally:
        del tiny_eva.forward_tokens
    assert torch.isfinite(b).all()
    assert (sb["tokens"] < torch.tensor([c1, c2])).any(), "some padding must be there"
    assert int(sb["forced"].sum()) == 0
    agree = [(a[i].argmax(0) == b[i].argmax(0)).float().mean() for i in range(len(eva_photos))]
    close = sum(int((a[i] - b[i]).abs().max() <= 1e-4) for i in range(len(eva_photos)))
    assert min(agree) >= 0.995 and close >= len(eva_photos) - 1
    # padding slots got finite rotary embeddings (position (0, 0)), real ones their centroids
    for st in hook_states:
        emb = st.cache["rope"]
        assert emb.shape[2] == st.size.shape[1] - 1 and torch.isfinite(emb).all()
        pad = st.size[:, 1:] == 0
        assert pad.any()
        zero = tiny_eva.backbone.rope_at(torch.zeros(2), st.grid)
        assert torch.equal(emb[:, 0][pad], zero.expand(int(pad.sum()), -1))


def test_rotary_is_recomputed_per_merge_step(tiny_eva, eva_photos):
    states = []
    orig = tiny_eva.forward_tokens

    def forward_tokens(im, hook=None, on_state=None):
        return orig(im, hook, on_state=lambda i, s: states.append(s))

    tiny_eva.forward_tokens = forward_tokens
    try:
        _run(apply_algm(tiny_eva, SET), eva_photos[3])
    finally:
        del tiny_eva.forward_tokens
    assert len(states) == 2
    r1, r2 = states[0].cache["rope"], states[1].cache["rope"]
    assert r1.shape[2] == states[0].size.shape[1] - 1 and r2.shape[2] == states[1].size.shape[1] - 1
    pos = token_centroids(states[1].assign, states[1].size, states[1].grid, 1)
    assert torch.equal(r2, tiny_eva.backbone.rope_at(pos, states[1].grid).unsqueeze(1))


def test_flops_count_merges(tiny_eva):
    base = model_macs(tiny_eva)
    algm = model_macs(tiny_eva, layers=(1, 5), counts=(40, 30))
    assert 0 < algm["encoder"] < base["encoder"] and algm["decoder"] == base["decoder"] > 0


# ----------------------------------------------------------------------------- checkpoints

def test_builtins_registered():
    names = builtin_names()
    for n in ("eva02_t16_256", "eva02_s16_256", "eva02_s16_512"):
        assert f"builtin:{n}" in names


@pytest.mark.slow
def test_checkpoint_round_trip(tiny_eva, eva_photos, tmp_path):
    path = fam.save_mmseg_eva02(tiny_eva, tmp_path / "eva.pth")
    sd = torch.load(path, weights_only=True)["state_dict"]
    assert any(k.startswith(fam.TIMM_PREFIX) for k in sd) and not any(k.startswith("backbone.blocks") for k in sd)
    m2 = resolve_model(str(path))                                   # the .py beside it
    assert isinstance(m2, fam.Eva02UperNet) and m2.load_report["missing"] == [] == m2.load_report["unexpected"]
    assert m2.config_path == str(path.with_suffix(".py"))
    path.with_suffix(".py").unlink()
    m3 = fam.load_mmseg_eva02(None, path)                           # config from meta['cfg']
    assert m3.config_path is None and "meta" in m3.cfg.notes[0]
    x = eva_photos[0]
    with torch.no_grad():
        y = tiny_eva(x)
        assert torch.equal(m2(x), y) and torch.equal(m3(x), y)
    assert m2.cfg.to_dict()["decoder_name"] == "upernet" and m2.cfg.num_prefix == 1
    # a run size other than the built one: timm's resampling of the absolute positions, rope rebuilt
    m3.set_image_size((96, 160))
    assert m3.cfg.grid == (6, 10) and m3.backbone.rope.get_embed().shape[0] == 60
    with torch.no_grad():
        assert m3(torch.randn(1, 3, 90, 150)).shape == (1, 21, 90, 150)     # padded to whole patches, cropped


@pytest.mark.slow
def test_mismatched_checkpoint_lists_keys(tiny_eva, tmp_path):
    path = fam.save_mmseg_eva02(tiny_eva, tmp_path / "eva.pth")
    ck = torch.load(path, weights_only=True)
    sd = ck["state_dict"]
    sd.pop(fam.TIMM_PREFIX + "blocks.0.norm1.weight")
    sd["backbone.timm_model.model.extra.weight"] = torch.zeros(3)
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match=r"missing keys.*blocks\.0\.norm1\.weight.*unexpected keys.*extra"):
        fam.load_mmseg_eva02(path.with_suffix(".py"), path)
    m = fam.load_mmseg_eva02(path.with_suffix(".py"), path, strict=False)
    assert m.load_report["missing"] == ["backbone.blocks.0.norm1.weight"]
    assert m.load_report["unexpected"] == ["backbone.timm_model.model.extra.weight"]


# the naming of EVA-02's official segmentation checkpoints (EVA-02/seg/backbone/eva2.py), written out
# here independently of the family's key map
_OFFICIAL_BLOCK = {"attn.q_proj.bias": "attn.q_bias", "attn.v_proj.bias": "attn.v_bias", "mlp.fc1_g": "mlp.w1",
                   "mlp.fc1_x": "mlp.w2", "mlp.norm": "mlp.ffn_ln", "mlp.fc2": "mlp.w3"}
_OFFICIAL_NECK = {"neck.upsample_4x.0.": "backbone.fpn1.0.", "neck.upsample_4x.1.": "backbone.fpn1.1.",
                  "neck.upsample_4x.3.": "backbone.fpn1.3.", "neck.upsample_2x.0.": "backbone.fpn2.0."}


def _official_name(k: str) -> str:
    for a, b in _OFFICIAL_NECK.items():
        if k.startswith(a):
            return b + k[len(a):]
    for a, b in _OFFICIAL_BLOCK.items():
        if f".{a}" in k and k.startswith("backbone.blocks."):
            return k.replace(f".{a}", f".{b}")
    return k


def _eva2_config(size=128):
    bb = dict(type="EVA2", img_size=size, patch_size=16, in_chans=3, embed_dim=96, depth=6, num_heads=2,
              mlp_ratio=4 * 2 / 3, out_indices=[1, 2, 3, 4], qkv_bias=True, drop_path_rate=0.1, init_values=None,
              use_abs_pos_emb=True, use_rel_pos_bias=False, use_shared_rel_pos_bias=False, rope=True,
              pt_hw_seq_len=16, intp_freq=True, subln=True, xattn=True, naiveswiglu=True, pretrained=None)
    head = dict(type="UPerHead", in_channels=[96] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6), channels=32,
                dropout_ratio=0.1, num_classes=5, norm_cfg=dict(type="SyncBN", requires_grad=True), align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    return dict(model=dict(type="EncoderDecoder", pretrained=None, backbone=bb, decode_head=head,
                           test_cfg=dict(mode="slide", crop_size=(size, size), stride=(85, 85))),
                img_norm_cfg=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True))


def test_official_eva2_key_map(tmp_path):
    from algm_export.models.formats.mmseg import format_config
    from algm_export.models.mmseg_common import randomize_

    config = _eva2_config()
    ours = fam.build_eva02(config["model"], config=config)
    assert ours.cfg.checkpoint_format == "eva2" and ours.cfg.timm_kwargs["qkv_fused"] is False
    assert ours.cfg.inference["mode"] == "slide" and ours.cfg.normalization_source == "img_norm_cfg"
    randomize_(ours, 3)
    sd = {_official_name(k): v for k, v in ours.state_dict().items()}
    assert "backbone.blocks.0.attn.q_bias" in sd and "backbone.blocks.0.mlp.w3.weight" in sd
    assert "backbone.fpn1.1.running_var" in sd
    assert ours.backbone.depth == 5                  # block 5 (after the last output) pruned; EVA2 keeps it
    sd.update({k.replace("blocks.4.", "blocks.5."): v for k, v in sd.items() if k.startswith("backbone.blocks.4.")})
    # EVA2's derived rotary tables ([N, head_dim] cos / sin, shared by every block) and an auxiliary head
    table = ours.backbone.rope_at.table(ours.backbone.built_grid)
    for pre in ["backbone.rope."] + [f"backbone.blocks.{i}.attn.rope." for i in range(6)]:
        sd[pre + "freqs_sin"], sd[pre + "freqs_cos"] = table[:, :48].clone(), table[:, 48:].clone()
    sd["auxiliary_head.conv_seg.weight"] = torch.zeros(5, 8, 1, 1)
    path = tmp_path / "eva2.pth"
    torch.save({"state_dict": sd, "meta": {"config": format_config(config)}}, path)
    loaded = resolve_model(str(path))                  # detected by its config (in meta): EVA2 + UPerHead
    assert isinstance(loaded, fam.Eva02UperNet)
    rep = loaded.load_report
    assert rep["key_map"] == "eva2" and rep["missing"] == [] == rep["unexpected"]
    assert rep["ignored"] == ["auxiliary_head.conv_seg.weight"] and len(rep["derived"]) == 14
    assert rep["rope_table_max_diff"] == 0.0
    assert rep["pruned_blocks"] and all(k.startswith("backbone.blocks.5.") for k in rep["pruned_blocks"])
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))
    # a wrong rotary table (another pt_hw_seq_len) is refused
    sd["backbone.rope.freqs_cos"] = sd["backbone.rope.freqs_cos"] * 0.5
    torch.save({"state_dict": sd, "meta": {"config": format_config(config)}}, path)
    with pytest.raises(CheckpointError, match="rotary tables differ"):
        fam.load_mmseg_eva02(None, path)


def test_config_errors():
    cfg = fam.builtin_eva02_config("tiny", 128)
    bad = dict(cfg, backbone=dict(cfg["backbone"], model_name="vit_small_patch16_224"))
    with pytest.raises(ConfigError, match="not an EVA-02 model"):
        fam.build_eva02(bad)
    bad = dict(cfg, backbone=dict(cfg["backbone"], features_only=False))
    with pytest.raises(ConfigError, match="features_only"):
        fam.build_eva02(bad)
    bad = dict(cfg, neck=dict(cfg["neck"], rescales=[4, 2, 1]))
    with pytest.raises(ConfigError, match="Feature2Pyramid"):
        fam.build_eva02(bad)
    bad = dict(cfg, backbone=dict(type="VisionTransformer"))
    with pytest.raises(ConfigError, match="TIMMBackbone"):
        fam.build_eva02(bad)
    with pytest.raises(ConfigError, match="patch size 16 or 8"):
        c = _eva2_config()
        c["model"]["backbone"]["patch_size"] = 14
        c["model"]["backbone"]["img_size"] = 112
        fam.build_eva02(c["model"], config=c)
    m = fam.build_eva02(cfg)
    assert m.cfg.grid == (8, 8) and math.isclose(m.cfg.normalization["mean"][0], 0.485)
