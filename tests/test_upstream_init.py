"""`init="upstream"`: the mmseg-family built-ins initialised as their upstream code initialises a
fresh model (docs/decisions.md item 32), for the benchmarks; the default built-ins are unchanged."""

import pytest
import torch

from algm_export.core.errors import ConfigError
from algm_export.models.families import eva02, segvit, setr
from algm_export.models.mmseg_common import init_upstream_, seeded_construction
from algm_export.models.registry import builtin_names


def test_names_registered():
    names = builtin_names()
    for n in ("setr_pup_vit_s16_512", "setr_naive_vit_s16_512", "setr_mla_vit_s16_512", "segvit_s16_512",
              "eva02_s16_512"):
        assert f"builtin:{n}{setr.UPSTREAM_SUFFIX}" in names


def _sd(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_setr_upstream_init_follows_mmseg_and_is_seeded():
    a = setr.builtin_setr("pup", 64, seed=3, init="upstream")
    b = setr.builtin_setr("pup", 64, seed=3, init="upstream")
    c = setr.builtin_setr("pup", 64, seed=4, init="upstream")
    sa, sb, sc = _sd(a), _sd(b), _sd(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["backbone.pos_embed"], sc["backbone.pos_embed"])
    pe = sa["backbone.pos_embed"]
    assert 0.015 < float(pe.std()) < 0.025 and float(pe.abs().max()) <= 2.0    # trunc_normal(0.02), |x| <= 2
    w = sa["backbone.layers.0.attn.attn.out_proj.weight"]
    assert 0.015 < float(w.std()) < 0.025
    assert torch.all(sa["backbone.layers.0.attn.attn.out_proj.bias"] == 0)
    fb = sa["backbone.layers.0.ffn.layers.0.0.bias"]
    assert 0 < float(fb.abs().max()) < 1e-4                                        # N(0, 1e-6^2)
    # nn.MultiheadAttention's packed projection keeps its Xavier uniform (not an nn.Linear upstream)
    ip = sa["backbone.layers.0.attn.attn.in_proj_weight"]
    bound = (6.0 / (ip.shape[0] + ip.shape[1])) ** 0.5
    assert float(ip.abs().max()) <= bound and float(ip.std()) > 0.8 * bound / 3 ** 0.5
    assert torch.all(sa["backbone.layers.0.ln1.weight"] == 1) and torch.all(sa["backbone.layers.0.ln1.bias"] == 0)
    pw = sa["backbone.patch_embed.projection.weight"]
    assert abs(float(pw.std()) - (2.0 / pw[0].numel()) ** 0.5) < 0.01            # Kaiming fan_in
    cs = sa["decode_head.conv_seg.weight"]
    assert abs(float(cs.std()) - 0.01) < 0.002 and torch.all(sa["decode_head.conv_seg.bias"] == 0)
    cw = sa["decode_head.up_convs.0.0.conv.weight"]
    assert abs(float(cw.std()) - (2.0 / (cw.shape[0] * cw[0, 0].numel())) ** 0.5) < 0.01   # Kaiming fan_out
    assert torch.all(sa["decode_head.up_convs.0.0.bn.running_var"] == 1)
    assert a.source.endswith(setr.UPSTREAM_SUFFIX)
    with torch.no_grad():
        out = a(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 150, 64, 64) and torch.isfinite(out).all()


def test_default_init_is_the_random_one():
    a = setr.builtin_setr("naive", 64, seed=0)
    b = setr.builtin_setr("naive", 64, seed=0, init="random")
    sa, sb = _sd(a), _sd(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert float(sa["backbone.pos_embed"].std()) > 0.4                            # randomize_'s N(0, 0.5^2)


@pytest.mark.slow
def test_segvit_and_eva02_upstream_init():
    s = segvit.builtin_segvit(64, seed=0, init="upstream")
    sd = _sd(s)
    lin = [k for k, v in sd.items() if k.startswith("decode_head.") and k.endswith("input_proj_1.weight")]
    assert lin and 0.015 < float(sd[lin[0]].std()) < 0.025
    e = eva02.builtin_eva02("tiny", 64, 16, seed=0, init="upstream")
    e2 = eva02.builtin_eva02("tiny", 64, 16, seed=0, init="upstream")
    se, se2 = _sd(e), _sd(e2)
    assert all(torch.equal(se[k], se2[k]) for k in se)                           # timm's init, seeded
    assert 0.015 < float(se["backbone.pos_embed"].std()) < 0.025
    assert torch.all(se["decode_head.conv_seg.bias"] == 0)


def test_unknown_init_and_rng_restored():
    with pytest.raises(ConfigError):
        setr.builtin_setr("pup", 64, init="pretrained")
    torch.manual_seed(123)
    x = torch.rand(3)
    torch.manual_seed(123)
    with seeded_construction(5):
        torch.rand(10)
    assert torch.equal(torch.rand(3), x)
    # init_upstream_ draws from its own seeded generator: the global RNG is untouched, and the seed decides
    m = setr.builtin_setr("naive", 64, seed=0)
    before = _sd(m)["backbone.pos_embed"]
    torch.manual_seed(123)
    init_upstream_(m, seed=7)
    assert torch.equal(torch.rand(3), x)
    after = _sd(m)["backbone.pos_embed"]
    assert not torch.equal(before, after) and 0.015 < float(after.std()) < 0.025
    init_upstream_(m, seed=7)
    assert torch.equal(_sd(m)["backbone.pos_embed"], after)
    init_upstream_(m, seed=8)
    assert not torch.equal(_sd(m)["backbone.pos_embed"], after)
