"""EoMT: timm parity of the DINOv2 backbone, the published forward, windowing, checkpoints, FLOPs."""

import copy
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml

from algm_export.core.errors import CheckpointError, ConfigError
from algm_export.models.flops import model_macs
from algm_export.models.backbones.dinov2 import DINOV2_MODELS, dinov2_backbone, dinov2_kwargs
from algm_export.models.base import TokenState
from algm_export.models.families import eomt as fam
from algm_export.models.formats import eomt as fmt
from algm_export.models.registry import builtin_names, load_checkpoint, resolve_model
from conftest import PHOTOS, photo

SIZE = 64


def _spec(size=SIZE, n_cls=21, num_q=10, num_blocks=4, name="vit_small_patch14_reg4_dinov2"):
    return fmt.EomtSpec(backbone_name=name, patch_size=16, img_size=(size, size), num_classes=n_cls, num_q=num_q,
                        num_blocks=num_blocks)


@pytest.fixture(scope="module")
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fam.build_eomt(_spec())
    return fam.randomize_eomt_(model, 0).eval()


def _inputs(model, size=SIZE):
    norm = model.cfg.normalization
    out = []
    for name in PHOTOS[:3]:
        t = torch.from_numpy(np.array(photo(name))).permute(2, 0, 1).float()[None] / 255
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        out.append((t - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1))
    return torch.cat(out)


def published_forward(model, x):
    """The published `EoMT.forward` (masked attention off) + `to_per_pixel_logits_semantic`, re-stated on
    timm's own modules: `patch_embed`, `_pos_embed`, `Block.forward`, `norm`."""
    bb, head = model.backbone, model.decoder
    B = x.shape[0]
    t = bb._pos_embed(bb.patch_embed(x))
    for i, blk in enumerate(bb.blocks):
        if i == len(bb.blocks) - head.num_blocks:
            t = torch.cat([head.q.weight[None].expand(B, -1, -1), t], dim=1)
        t = blk(t)
    t = bb.norm(t)
    q = t[:, : head.num_q]
    p = t[:, head.num_q + bb.num_prefix_tokens:]
    p = p.transpose(1, 2).reshape(B, -1, *bb.patch_embed.grid_size)
    mask = torch.einsum("bqc, bchw -> bqhw", head.mask_head(q), head.upscale(p))
    cls = head.class_head(q)
    mask = F.interpolate(mask, x.shape[-2:], mode="bilinear")
    return torch.einsum("bqhw, bqc -> bchw", mask.sigmoid(), cls.softmax(dim=-1)[..., :-1])


# ----------------------------------------------------------------------------- backbone

@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "giant" in n else n
                                  for n in sorted(DINOV2_MODELS)])
def test_dinov2_table_matches_timms_registry(name, monkeypatch):
    """Our arguments are the ones timm registers for `name`, and build the same modules as
    timm.create_model(name) (depth cut to 1 block)."""
    import timm.models.vision_transformer as vt

    with monkeypatch.context() as mp:
        mp.setattr(vt, "_create_vision_transformer", lambda variant, pretrained=False, **kw: kw)
        registered = getattr(vt, name)()
    assert registered == DINOV2_MODELS[name]
    ref = timm.create_model(name, pretrained=False, img_size=32, patch_size=16, num_classes=0, depth=1)
    kw = dinov2_kwargs(name, 32, 16)
    kw["depth"] = 1
    ours = timm.models.vision_transformer.VisionTransformer(**kw)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert ours.num_prefix_tokens == ref.num_prefix_tokens and ours.no_embed_class == ref.no_embed_class
    assert type(ours.blocks[0].mlp) is type(ref.blocks[0].mlp)
    assert torch.equal(ours.blocks[0].ls1.gamma, ref.blocks[0].ls1.gamma)     # init_values 1e-5


def test_dinov2_backbone_equals_timm_forward_features(tiny):
    bb = tiny.backbone
    x = _inputs(tiny)[:2]
    with torch.no_grad():
        ref = bb.forward_features(x)              # timm: patch_embed, _pos_embed (cls, registers), blocks, norm
        t, grid = bb.embed(x)
        st = TokenState.initial(t, grid, bb.num_prefix)
        for i in range(bb.depth):
            t = bb.block_mlp(i, bb.block_attn(i, t, st), st)
        got = bb.layer_output(bb.depth - 1, t)
    assert bb.num_prefix == 5 and grid == (4, 4)
    assert (ref - got).abs().max() <= 1e-5


def test_dinov2_set_image_size_resizes_patch_positions_only():
    bb = dinov2_backbone("vit_small_patch14_reg4_dinov2", (32, 32), 16)
    bb.set_image_size((48, 64))
    assert bb.pos_embed.shape == (1, 12, 384) and bb.built_grid == (3, 4)
    t, grid = bb.embed(torch.zeros(1, 3, 48, 64))
    assert t.shape == (1, 5 + 12, 384) and grid == (3, 4)


# ----------------------------------------------------------------------------- the model

def test_forward_equals_published_forward(tiny):
    x = _inputs(tiny)
    with torch.no_grad():
        ref = published_forward(tiny, x)
        got = tiny(x)
    assert got.shape == (3, 21, SIZE, SIZE)
    assert (ref - got).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    tok, mask, cls = tiny.predict_masks(x)          # what the reference check compares
    assert tok.shape == (3, 10 + 5 + 16, 384) and mask.shape == (3, 10, 16, 16) and cls.shape == (3, 10, 22)
    from algm_export.models.decoders.eomt import semantic_logits

    assert torch.equal(semantic_logits(mask, cls, (SIZE, SIZE)), got)


@pytest.mark.slow
def test_every_block_and_the_queries_count(tiny):
    """Layer scales of the random built-ins make every block matter; the queries enter at block 8."""
    x = _inputs(tiny)[:1]
    with torch.no_grad():
        base = tiny(x)
        for i in (0, 7, 8, 11):
            m = copy.deepcopy(tiny)
            m.backbone.blocks[i].ls2.gamma.mul_(0.5)
            assert (m(x) - base).abs().max() > 1e-3, i
    seen = {}
    orig = tiny.backbone.block_attn

    def spy(i, t, st):
        seen[i] = (t.shape[1], st.num_prefix)
        return orig(i, t, st)

    tiny.backbone.block_attn = spy
    try:
        with torch.no_grad():
            tiny(x)
    finally:
        del tiny.backbone.block_attn
    assert seen[7] == (5 + 16, 5) and seen[8] == (10 + 5 + 16, 15) and seen[11] == (10 + 5 + 16, 15)


def test_windows_are_the_published_plan():
    p = fam.eomt_windows((300, 451), (512, 512))
    assert p["scaled"] == (512, 770) and p["starts"] == [0, 258] and not p["along_h"]
    p = fam.eomt_windows((451, 300), (512, 512))
    assert p["scaled"] == (770, 512) and p["starts"] == [0, 258] and p["along_h"] and p["revert_along_h"]
    p = fam.eomt_windows((100, 100), (512, 512))
    assert p["scaled"] == (512, 512) and p["starts"] == [0]
    p = fam.eomt_windows((480, 1600), (512, 512))     # 512 x 1707: 4 crops, overlap 341 spread over 3
    assert p["scaled"] == (512, 1707) and p["starts"] == [0, int(512 - 341 / 3), int(2 * (512 - 341 / 3)), 1195]
    with pytest.raises(ConfigError, match="square"):
        fam.eomt_windows((300, 451), (512, 640))


def test_window_inference_averages_overlapping_crops():
    """Crops cut from an image at the scaled size and mapped by a function of the pixels only
    put the image back together exactly (overlaps averaged)."""
    g = torch.Generator().manual_seed(0)
    im = torch.randn(1, 3, 64, 150, generator=g)
    calls = []

    def fn(crops):
        calls.append(tuple(crops.shape))
        return crops[:, :2] * 2

    out = fam.eomt_window_inference(fn, im, (64, 64))
    assert calls == [(3, 3, 64, 64)]
    assert torch.allclose(out, im[:, :2] * 2, atol=1e-6)


def test_flops_count_the_queries_and_the_head(tiny):
    cfg = tiny.cfg
    bb = tiny.backbone
    n, P, Q = 16, 5, 10
    want = bb.embed_macs((4, 4)) + 8 * bb.block_macs(P + n, P + n) + 4 * bb.block_macs(Q + P + n, Q + P + n)
    got = model_macs(tiny)
    assert got["encoder"] * 1e9 == pytest.approx(want)
    d = 384
    head = Q * d * 22 + 3 * Q * d * d + (64 * d * d + 64 * 9 * d) + (256 * d * d + 256 * 9 * d) + Q * d * 256
    assert got["decoder"] * 1e9 == pytest.approx(head + 21 * Q * SIZE * SIZE)
    assert cfg.first_query_block == 8 and tiny.added_tokens(8) == Q and tiny.added_tokens(7) == 0


# ----------------------------------------------------------------------------- checkpoints

def _save(model, folder, form="bin"):
    return fam.save_eomt(model, folder, form=form)


@pytest.mark.slow
def test_checkpoint_forms_round_trip(tiny, tmp_path):
    x = _inputs(tiny)[:1]
    with torch.no_grad():
        want = tiny(x)
    path = _save(tiny, tmp_path / "run")
    sd = torch.load(path, weights_only=True)
    assert "network.q.weight" in sd and "network.encoder.backbone.reg_token" in sd and "criterion.empty_weight" in sd
    assert "network.mask_head.4.weight" in sd and "network.upscale.1.norm.weight" in sd
    assert not any(k.startswith(("backbone.", "decoder.")) for k in sd)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["model"]["init_args"]["network"]["init_args"]["num_q"] == 10
    ck = _save(tiny, tmp_path / "ckpt", form="ckpt")
    (tmp_path / "ckpt" / "config.yaml").unlink()                        # the hyper_parameters only
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "pytorch_model.bin").write_bytes(path.read_bytes())
    for spec in (path, tmp_path / "run", ck, alone, alone / "pytorch_model.bin"):
        m = resolve_model(str(spec))
        assert m.family == "eomt" and m.cfg.num_q == 10 and m.cfg.n_cls == 21 and m.cfg.image_size == (SIZE, SIZE)
        with torch.no_grad():
            assert torch.equal(m(x), want), spec
    m = load_checkpoint(alone)
    assert m.cfg.config_source == "tensor shapes" and "inferred from the tensor shapes" in m.cfg.notes[0]
    assert load_checkpoint(ck).cfg.config_source.endswith("hyper_parameters")
    assert m.load_report["ignored"] == ["criterion.empty_weight"]


def test_loaded_models_own_their_weights(tiny, tmp_path):
    """A checkpoint's tensors become the model's weights without a copy (the network is built on the
    meta device): two loads of one file share no storage, and changing one model changes neither
    the other nor a later load."""
    path = _save(tiny, tmp_path / "run")
    a, b = resolve_model(str(path)), resolve_model(str(path))
    pa = {p.data_ptr() for p in a.parameters()}
    assert not pa & {p.data_ptr() for p in b.parameters()}
    assert not any(p.is_meta for p in a.parameters()) and not any(t.is_meta for t in a.buffers())
    with torch.no_grad():
        a.decoder.class_head.bias.add_(1.0)
    c = resolve_model(str(path))
    assert torch.equal(b.decoder.class_head.bias, c.decoder.class_head.bias)
    assert torch.equal(c.decoder.class_head.bias, tiny.decoder.class_head.bias)


def test_config_defaults_of_the_dataset_classes(tiny, tmp_path):
    path = _save(tiny, tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    for k in ("img_size", "num_classes"):
        del cfg["data"]["init_args"][k]
        del cfg["model"]["init_args"][k]
        cfg["model"]["init_args"]["network"]["init_args"].pop(k, None)
    del cfg["model"]["init_args"]["network"]["init_args"]["encoder"]["init_args"]["img_size"]
    s = fmt.spec_from_config(cfg, "cfg")
    assert s["img_size"] == (512, 512) and s["num_classes"] == 150 and s["task"] == "semantic"
    cfg["data"]["class_path"] = "datasets.cityscapes_semantic.CityscapesSemantic"
    assert fmt.spec_from_config(cfg, "cfg")["img_size"] == (1024, 1024)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="position embedding tokens.*config 4096, checkpoint 16"):
        load_checkpoint(path)


def test_config_errors(tiny, tmp_path):
    path = _save(tiny, tmp_path)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    enc = cfg["model"]["init_args"]["network"]["init_args"]["encoder"]["init_args"]
    enc["backbone_name"] = "facebook/dinov3-vitl16-pretrain-lvd1689m"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="DINOv3"):
        load_checkpoint(path)
    enc["backbone_name"] = "vit_base_patch14_reg4_dinov2"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="backbone width: config 768, checkpoint 384"):
        load_checkpoint(path)
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_checkpoint(path)
    (tmp_path / "config.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):
        load_checkpoint(path)


def test_mismatched_checkpoint_lists_published_keys(tiny, tmp_path):
    path = _save(tiny, tmp_path)
    sd = torch.load(path, weights_only=True)
    del sd["network.mask_head.2.bias"]
    sd["network.extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): network.mask_head.2.bias.*unexpected keys \(1\): "
                                              r"network.extra.weight"):
        load_checkpoint(path)
    m = resolve_model(str(path), strict=False)
    assert m.load_report["missing"] == ["decoder.mask_head.2.bias"]
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not an EoMT checkpoint"):
        fam.load_eomt(tmp_path / "other.ckpt", tmp_path / "config.yaml")


def test_attn_mask_probs_above_zero_warn(tiny, tmp_path):
    path = _save(tiny, tmp_path)
    sd = torch.load(path, weights_only=True)
    sd["network.attn_mask_probs"] = torch.tensor([0.0, 0.0, 0.2, 1.0])
    torch.save(sd, path)
    with pytest.warns(fam.AttnMaskAnnealingWarning, match="mid-annealing"):
        m = load_checkpoint(path)
    assert m.cfg.attn_mask_probs == pytest.approx([0.0, 0.0, 0.2, 1.0])


def test_registry_and_format_recognition(tiny, tmp_path):
    from algm_export.models.formats import identify

    assert {"builtin:eomt_s16_512", "builtin:eomt_s16_512_upstream_init", "builtin:eomt_l16_512"} <= set(builtin_names())
    path = _save(tiny, tmp_path / "run")
    for p, cfg in ((path, None), (tmp_path / "run", None), (path, tmp_path / "run" / "config.yaml")):
        f, files = identify(p, cfg)
        assert f.name == "eomt-lightning" and files == {"checkpoint": path, "config": tmp_path / "run" / "config.yaml"}
    other = tmp_path / "other"                      # recognised by content: any name, no config
    other.mkdir()
    (other / "weights.pth").write_bytes(path.read_bytes())
    f, files = identify(other / "weights.pth")
    assert f.name == "eomt-lightning" and files["config"] is None
    torch.save({"state_dict": {"backbone.x": torch.zeros(1)}}, other / "x.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint format"):
        identify(other / "x.ckpt")
    m = load_checkpoint(tmp_path / "run")
    assert set(m.source_files) == {"checkpoint", "config"}


# ----------------------------------------------------------------------------- ALGM

def test_merge_layers_in_query_blocks_are_refused(tiny):
    from algm_export import AlgmSetting, apply_algm

    with pytest.raises(ConfigError, match=r"layer 9 lies in EoMT's query blocks .* last allowed layer is 8"):
        apply_algm(tiny, AlgmSetting(0.88, (2, 2), (1, 9)))
    with pytest.raises(ConfigError, match=r"layers 10, 12 lie"):
        apply_algm(tiny, AlgmSetting(0.88, (2, 2), (1, 10, 12)))
    apply_algm(tiny, AlgmSetting(0.88, (2, 2), (1, 8)))          # the last block before the queries


def make_algm_model():
    """EoMT-S/16 at 128 (grid 8x8) with the upstream init and layer scales 1: merges on photos."""
    m = fam.builtin_eomt("s", 128, 16, seed=0, n_cls=21, num_q=10, init="upstream")
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("ls1.gamma", "ls2.gamma")):
                p.fill_(1.0)
    return m


@pytest.fixture(scope="module")
def algm_model():
    return make_algm_model()


@pytest.mark.slow
def test_algm_reference_static_dynamic_agree_on_photos(algm_model):
    """Reference (per image) vs static with padding slots vs dynamic token mode (mixed batch of 3):
    the queries attend over merged tokens with the padding masked; the head reads the patches
    unmerged with the final assignment map."""
    from algm_export import AlgmSetting, apply_algm

    s = AlgmSetting(0.88, (2, 2), (1, 5))
    x = _inputs(algm_model, 128)
    ref = apply_algm(algm_model, s)
    with torch.no_grad():
        a = ref(x)
    toks = ref.merge_stats["tokens"]
    assert (ref.merge_stats["merges"].sum(1) > 0).all(), "merging must happen on photos"
    assert len(set(toks[:, 1].tolist())) > 1, "images need different token counts"
    c1 = 64
    c2 = int(toks[:, 1].max()) + 3                        # padding slots after GBM for every image
    sta = apply_algm(algm_model, s, capacities=(c1, c2))
    dyn = apply_algm(algm_model, s, token_mode="dynamic")
    with torch.no_grad():
        b = sta(x)
        sb = {k: v.clone() for k, v in sta.merge_stats.items()}
        c = dyn(x)
        batch_tokens = dyn.merge_stats["tokens"].clone()
        one, solo = [], []
        for i in range(3):
            one.append(dyn(x[i:i + 1]))
            solo.append(dyn.merge_stats["tokens"].clone())
    assert torch.equal(sb["tokens"], toks) and int(sb["forced"].sum()) == 0
    assert torch.equal(batch_tokens, toks) and torch.equal(torch.cat(solo), toks)   # mixed batch = batch 1
    scale = max(1.0, float(a.abs().max()))
    assert (a - b).abs().max() <= 1e-4 * scale
    assert (a - c).abs().max() <= 1e-4 * scale
    assert (torch.cat(one) - c).abs().max() <= 1e-4 * scale
    # the baseline differs: merging changed the answer a little, not the shape
    with torch.no_grad():
        base = algm_model(x)
    assert base.shape == a.shape and (base - a).abs().max() > 0


def test_flops_of_algm_count_the_queries_after_merging(tiny):
    bb = tiny.backbone
    P, Q, n = 5, 10, 16
    got = model_macs(tiny, (1, 5), (12, 9))["encoder"] * 1e9
    want = (bb.embed_macs((4, 4)) + bb.block_macs(P + n, P + 12) + 3 * bb.block_macs(P + 12, P + 12)
            + bb.block_macs(P + 12, P + 9) + 3 * bb.block_macs(P + 9, P + 9) + 4 * bb.block_macs(Q + P + 9, Q + P + 9))
    assert got == pytest.approx(want)


@pytest.mark.slow
def test_predict_runs_the_published_windows(tiny):
    """predict on a non-square image runs EoMT's windowing: crops of the model size along the long
    side, the same scores as `Eomt.inference` on the image."""
    from algm_export.models.images import model_input
    from algm_export.tasks.predict import make_runner, predict_image

    img = np.array(photo("chelsea"))[::4, ::4]             # 75 x 113 -> scaled 64 x 96: 2 crops
    runner = make_runner(tiny, None, "torch")
    pred = predict_image(tiny, runner, img, name="chelsea")
    assert pred.tokens["mode"] == "sliding" and pred.tokens["windowing"] == "eomt" and pred.tokens["windows"] == 2
    x = model_input(img, tiny, img.shape[:2])
    with torch.no_grad():
        want = tiny.inference(x)
    assert pred.labels.shape == img.shape[:2]
    assert (pred.labels == want[0].argmax(0).numpy()).mean() >= 0.999
