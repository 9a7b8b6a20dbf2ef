"""Padding slots are invisible and cheap: the attention mask of static / batched dynamic token states.

`KeyMask.attend` (self-attention) and `floor_scores` (cross-attention) must give the real tokens
exactly what they get without padding, whatever the padding slots hold (large values, NaN), and
keep every softmax argument of a padded key within float32's normal range of `exp` relative to its
row's maximum (ONNX Runtime's CPU softmax is several times slower below it: docs/decisions.md
items 33 and 43). Each earlier formulation fails one of them: a -60 bias on the slots as they are
(garbage leaks), -1e9 (the range), a constant score on zeroed slots (rows shifted far from it).
"""

from __future__ import annotations

import math

import pytest
import torch

from algm_export.models.base import TokenState
from algm_export.models.layers import PAD_MARGIN, SCORE_FLOOR, KeyMask, floor_scores, hide_rows

EXP_NORMAL = math.log(torch.finfo(torch.float32).tiny)     # -87.34: exp below this is not a normal float
GARBAGE = (0.0, 50.0, -1e3, 1e30, float("nan"), float("inf"))


def _reference(q, k, v, scale, n_real):
    """Attention of image b over its first n_real[b] slots only (no padding at all)."""
    outs = []
    for b, n in enumerate(n_real):
        a = (q[b, :, :n] @ k[b, :, :n].transpose(-2, -1)) * scale
        outs.append(a.softmax(-1) @ v[b, :, :n])
    return outs


def _qkv(seed=0, B=2, H=3, T=24, hd=8, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, hd, generator=g) * spread for _ in range(3)]


def _project(x, H=3, seed=3):
    """x [B, T, C] -> q, k, v [B, H, T, C // H]: a q/k/v projection with biases (so a hidden zero row
    gives nonzero q, k and v, as in a real block)."""
    g = torch.Generator().manual_seed(seed)
    B, T, C = x.shape
    w, b = torch.randn(3 * C, C, generator=g) * C ** -0.5, torch.randn(3 * C, generator=g)
    qkv = (x @ w.T + b).reshape(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_self_attention_ignores_whatever_padding_holds(garbage):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 24, generator=g)
    n_real = [17, 9]                                         # real slots first, padding last
    real = torch.arange(24)[None, :] < torch.tensor(n_real)[:, None]
    x_bad = x.masked_fill(~real[:, :, None], garbage)
    mask = KeyMask(real)
    q, k, v = _project(mask.hide(x_bad))
    scale = 8 ** -0.5
    q2, k2, v2 = mask.attend(q, k, v, scale)
    a = (q2 @ k2.transpose(-2, -1)) * scale
    out = a.softmax(-1) @ v2
    for b, (ref, n) in enumerate(zip(_reference(*_project(x), scale, n_real), n_real)):
        assert torch.isfinite(out[b, :, :n]).all()
        assert (out[b, :, :n] - ref).abs().max() <= 1e-6
    # padded keys: at least PAD_MARGIN below the row maximum, never below exp's normal range
    arg = (a - a.amax(-1, keepdim=True))[~real[:, None, None, :].expand_as(a)]
    assert torch.isfinite(a).all()
    assert arg.max() <= -PAD_MARGIN + 1e-4 and arg.min() >= EXP_NORMAL


def test_self_attention_padding_score_follows_the_row():
    """Rows shifted far up or down (a key bias adds q.b_k to a whole row, softmax does not care): the
    padded score moves along, where a constant one (zeroed padded keys with a -60 bias) would leak into
    rows far below it and leave exp's normal range in rows far above it."""
    q, k, v = _qkv(seed=1)
    shift = torch.tensor([-500.0, 0.0, 300.0]).reshape(1, 3, 1, 1)        # one shift per head
    # add shift_h to every score of head h through one more channel: q = 1 there, k = shift / scale
    q = torch.cat([q, torch.ones_like(q[..., :1])], -1)
    k = torch.cat([k, torch.ones_like(k[..., :1]) * shift * 8 ** 0.5], -1)
    v = torch.cat([v, torch.zeros_like(v[..., :1])], -1)
    scale = 8 ** -0.5
    real = torch.arange(24)[None, :] < torch.tensor([[20], [6]])
    q2, k2, v2 = KeyMask(real).attend(q, k, v, scale)
    a = (q2 @ k2.transpose(-2, -1)) * scale
    arg = (a - a.amax(-1, keepdim=True))[~real[:, None, None, :].expand_as(a)]
    assert arg.max() <= -PAD_MARGIN + 1e-3 and arg.min() >= EXP_NORMAL
    for b, (ref, n) in enumerate(zip(_reference(q, k, v, scale, [20, 6]), [20, 6])):
        assert ((a.softmax(-1) @ v2)[b, :, :n] - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("garbage", GARBAGE)
def test_cross_attention_floor(garbage):
    g = torch.Generator().manual_seed(2)
    B, H, Q, T, hd = 2, 2, 5, 16, 8
    q = torch.randn(B, H, Q, hd, generator=g)
    k, v = torch.randn(B, H, T, hd, generator=g), torch.randn(B, H, T, hd, generator=g)
    real = (torch.arange(T)[None, :] < torch.tensor([[11], [4]])).reshape(B, 1, T, 1)
    k, v = k.masked_fill(~real, garbage), v.masked_fill(~real, garbage)
    bias = torch.where(real.reshape(B, 1, 1, T), 0.0, -1e9)
    k2, v2 = hide_rows(k, real), hide_rows(v, real)
    a = floor_scores((q @ k2.transpose(-2, -1)) * hd ** -0.5 + bias)
    out = a.softmax(-1) @ v2
    for b, n in enumerate([11, 4]):
        ref = ((q[b] @ k[b, :, :n].transpose(-2, -1)) * hd ** -0.5).softmax(-1) @ v[b, :, :n]
        assert (out[b] - ref).abs().max() <= 1e-6
    assert (a - a.amax(-1, keepdim=True)).min() >= -SCORE_FLOOR > EXP_NORMAL


def _segmenter():
    from _helpers.models import tiny_segmenter

    return tiny_segmenter(64, 5, 2)


def _setr():
    from algm_export.models.families import setr

    return setr.builtin_setr("naive", 64, seed=0).eval()


def _eva():
    from algm_export.models.families import eva02

    return eva02.builtin_eva02("tiny", 64, 16, seed=0, n_cls=5, channels=16).eval()


@pytest.mark.parametrize("build", [_segmenter, _setr, _eva], ids=["timm-vit", "mmseg-vit", "eva02"])
def test_backbone_blocks_ignore_padding_garbage(build):
    """A block run on a padded state (garbage in 5 appended zero-size slots) changes no real token."""
    m = build()
    bb = m.backbone
    with torch.no_grad():
        x, grid = bb.embed(m.prepare(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))))
        state = TokenState.initial(x, grid, bb.num_prefix)
        padded = TokenState(torch.cat([state.size, torch.zeros(1, 5)], 1), state.assign, grid, bb.num_prefix,
                            padded=True, merged=True)     # merged: EVA-02 computes rotary positions per slot
        ref = bb.block_mlp(0, bb.block_attn(0, x, state), state)
        for garbage in (50.0, -1e3, 1e30, float("nan"), float("inf")):
            y = torch.cat([x, torch.full((1, 5, x.shape[-1]), garbage)], 1)
            got = bb.block_mlp(0, bb.block_attn(0, y, padded), padded)
            assert (got[:, : x.shape[1]] - ref).abs().max() <= 1e-5, garbage
