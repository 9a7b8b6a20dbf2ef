"""Multiply-accumulate counts (GMACs, the unit fvcore reports as "GFLOPs") from real shapes.

For a static engine the token counts are the capacities (padding slots are computed too); for
the dynamic reference they are the real counts. Counted: patch embedding, every encoder block
(qkv, attention scores and values, projection, MLP), the decoder, and the merge ops' own
similarity matmuls. Not counted: norms, softmax, the final bilinear upsampling (as fvcore).
"""

from __future__ import annotations

from typing import Optional, Sequence


def block_macs(t_attn: int, t_mlp: int, d: int, mlp_ratio: float = 4.0) -> int:
    attn = 3 * t_attn * d * d + 2 * t_attn * t_attn * d + t_attn * d * d
    return int(attn + 2 * mlp_ratio * t_mlp * d * d)


def segmenter_macs(cfg, layers: Optional[Sequence[int]] = None, counts: Optional[Sequence[int]] = None) -> dict:
    """GMACs of a Segmenter; with `layers` and `counts` (patch tokens after each merge step), of ALGM.

    Returns {"encoder": G, "decoder": G, "merge": G, "total": G}.
    """
    d, p = cfg.d_model, cfg.patch_size
    gh, gw = cfg.grid
    n = gh * gw
    P = cfg.num_prefix
    macs = n * 3 * p * p * d  # patch embedding
    t = P + n
    merge = 0
    steps = dict(zip(layers or (), counts or ()))
    for li in range(1, cfg.n_layers + 1):
        if li in steps:
            t_after = P + int(steps[li])
            if li == (layers or (0,))[0]:
                merge += n * 4 * d * 2              # window cosine matrices (k=4)
            else:
                merge += (t // 2) * (t // 2) * d    # bipartite similarity
            macs += block_macs(t, t_after, d)
            t = t_after
        else:
            macs += block_macs(t, t, d)
    enc = macs
    tp = t - P
    if cfg.decoder.name == "linear":
        dec = tp * d * cfg.n_cls
    else:
        dm, nl, c = cfg.d_model, cfg.decoder.n_layers, cfg.n_cls
        dec = tp * d * dm + sum(block_macs(tp + c, tp + c, dm) for _ in range(nl)) + (tp + c) * dm * dm + tp * c * dm
    total = enc + dec + merge
    return {"encoder": enc / 1e9, "decoder": dec / 1e9, "merge": merge / 1e9, "total": total / 1e9}


def flop_ratio(cfg, layers, capacities) -> float:
    """Baseline GMACs / ALGM GMACs at these capacities: the ideal speed-up of the setting."""
    return segmenter_macs(cfg)["total"] / segmenter_macs(cfg, layers, capacities)["total"]
