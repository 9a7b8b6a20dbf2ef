"""Multiply-accumulate counts (GMACs, the unit fvcore reports as "GFLOPs") from real shapes.

For a static engine the token counts are the capacities (padding slots are computed too); for
the dynamic reference they are the real counts. Counted: patch embedding, every encoder block
(qkv, attention scores and values, projection, MLP; `Backbone.block_macs`; with the tokens a
model adds inside the encoder, `SegModel.added_tokens`, e.g. EoMT's queries), the decoder
(`Decoder.macs`, given the token count of every level it reads), and the merge ops' own
similarity matmuls. Not counted: norms, softmax, the final bilinear upsampling (as fvcore).
Works for every family: nothing here knows a backbone or a decoder.
"""

from __future__ import annotations

from typing import Optional, Sequence


def model_macs(model, layers: Optional[Sequence[int]] = None, counts: Optional[Sequence[int]] = None) -> dict:
    """GMACs of a `SegModel`; with `layers` (1-based) and `counts` (patch tokens after each merge
    step), of ALGM. Returns {"encoder": G, "decoder": G, "merge": G, "total": G}."""
    bb, dec = model.backbone, model.decoder
    gh, gw = model.cfg.grid
    n = gh * gw
    P = bb.num_prefix
    d = bb.embed_dim
    macs = bb.embed_macs((gh, gw))
    t = P + n
    merge = 0
    steps = dict(zip(layers or (), counts or ()))
    first = (layers or (0,))[0]
    patch_tokens = []                              # patch tokens after each block (0-based)
    added = getattr(model, "added_tokens", lambda i: 0)
    for li in range(1, bb.depth + 1):
        a = int(added(li - 1))                      # tokens the model puts in front before this block (EoMT's queries)
        t += a
        P += a
        if li in steps:
            t_after = P + int(steps[li])
            if li == first:
                merge += n * 4 * d * 2              # window cosine matrices (k=4)
            else:
                merge += (t // 2) * (t // 2) * d    # bipartite similarity
            macs += bb.block_macs(t, t_after)
            t = t_after
        else:
            macs += bb.block_macs(t, t)
        patch_tokens.append(t - P)
    dmacs = dec.macs([patch_tokens[i] for i in dec.in_layers], (gh, gw))
    total = macs + dmacs + merge
    return {"encoder": macs / 1e9, "decoder": dmacs / 1e9, "merge": merge / 1e9, "total": total / 1e9}


def mean_macs(model, layers: Sequence[int], counts: Sequence[Sequence[int]]) -> dict:
    """GMACs of dynamic token mode over a set of images: the mean of `model_macs` at each image's
    real token counts (`counts[i]` = patch tokens after each merge step of image i, e.g. from
    `merging.static.tokens_from_stats`). The per-image FLOP ratio is baseline / this "total"."""
    rows = [model_macs(model, layers, [int(v) for v in c]) for c in counts]
    if not rows:
        raise ValueError("mean_macs needs the token counts of at least one image")
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
