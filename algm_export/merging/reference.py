"""The published ALGM merge steps (docs/algorithm.md: the published method), with token counts that depend on the image.

Pure functions on a token state; every image of a batch merges the same number `r` of
windows/tokens (the published `batch_min` coupling). `per_image` is the same computation on a
batch of one image (see `algm_export.merging.driver`), where both policies coincide.

State tensors: x `[B, T, D]` tokens (prefix first), size `[B, T]` patches per token,
assign `[B, N]` int64: for every original patch, the index (inside the patch part) of the
token holding it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class MergeResult(NamedTuple):
    x: torch.Tensor       # [B, T', D]
    size: torch.Tensor    # [B, T']
    assign: torch.Tensor  # [B, N]
    merges: torch.Tensor  # [B] int64: windows merged (CLAP) / source tokens merged (GBM)
    forced: torch.Tensor  # [B] int64: always 0 here (no capacity)


def window_scores(patches: torch.Tensor, grid: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """Mean pairwise cosine similarity inside every window, the published arithmetic.

    patches: [B, N, D] -> [B, W] (windows row-major over the window grid).
    """
    B, N, D = patches.shape
    gh, gw = grid
    wh, ww = window
    k = wh * ww
    # The published layout [B, gh/wh, gw/ww, D, k] with the cosine over the channel axis: the
    # summation order decides near-equal windows (docs/algorithm.md: numerical sensitivity), so it is kept exactly.
    f = (patches.float().transpose(1, 2).reshape(B, D, gh // wh, wh, gw // ww, ww)
         .permute(0, 2, 4, 1, 3, 5).reshape(B, gh // wh, gw // ww, D, k))
    sims = F.cosine_similarity(f.unsqueeze(-1), f.unsqueeze(-2), dim=3)      # [B, gh/wh, gw/ww, k, k]
    sims = sims * (1 - torch.eye(k, device=sims.device, dtype=sims.dtype))
    return (sims.sum(-1).sum(-1) / (k * (k - 1))).reshape(B, -1)


def to_windows(patches: torch.Tensor, grid: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """[B, N, D] patches in raster order -> [B, W, k, D] windows (tokens row-major inside)."""
    B, N, D = patches.shape
    gh, gw = grid
    wh, ww = window
    x = patches.reshape(B, gh // wh, wh, gw // ww, ww, D).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (gh // wh) * (gw // ww), wh * ww, D)


def window_patch_index(grid: tuple[int, int], window: tuple[int, int], device=None) -> torch.Tensor:
    """[W, k] original patch index of every token of every window."""
    idx = torch.arange(grid[0] * grid[1], device=device).reshape(1, -1, 1)
    return to_windows(idx, grid, window)[0, ..., 0]


def clap(x: torch.Tensor, size: torch.Tensor, grid, window, threshold: float, num_prefix: int) -> MergeResult:
    """CLAP (docs/algorithm.md: CLAP), batch_min coupling: `r = min_b #{score >= tau}` windows per image."""
    B, T, D = x.shape
    P = num_prefix
    N = T - P
    k = window[0] * window[1]
    prefix, patches = x[:, :P], x[:, P:]
    score = window_scores(patches, grid, window)                            # [B, W]
    r = int((score >= threshold).sum(dim=1).min())
    order = torch.sort(score, dim=1, descending=True, stable=True).indices   # ties: lower index first
    merged_w = order[:, :r]                                                  # [B, r], decreasing score
    widx = window_patch_index(grid, window, x.device)                        # [W, k]

    # merged tokens: size-weighted mean of their k patches (all sizes are 1 before CLAP)
    psize = size[:, P:]
    members = widx[merged_w]                                                 # [B, r, k]
    gx = torch.gather(patches * psize[..., None], 1, members.reshape(B, -1, 1).expand(-1, -1, D))
    gs = torch.gather(psize, 1, members.reshape(B, -1))
    msize = gs.reshape(B, r, k).sum(-1)
    mx = gx.reshape(B, r, k, D).sum(2) / msize[..., None]

    # unmerged patches in ascending original index
    is_merged = torch.zeros(B, N, dtype=torch.bool, device=x.device)
    is_merged.scatter_(1, members.reshape(B, -1), True)
    unm = torch.sort(is_merged.long(), dim=1, stable=True).indices[:, : N - r * k]   # ascending
    ux = torch.gather(patches, 1, unm[..., None].expand(-1, -1, D))
    us = torch.gather(psize, 1, unm)

    # assignment: merged window at rank j -> j; unmerged patch -> r + its rank among unmerged
    assign = torch.empty(B, N, dtype=torch.long, device=x.device)
    assign.scatter_(1, members.reshape(B, -1),
                    torch.arange(r, device=x.device).repeat_interleave(k).expand(B, -1))
    assign.scatter_(1, unm, r + torch.arange(N - r * k, device=x.device).expand(B, -1))

    out = torch.cat([prefix, mx.to(x.dtype), ux], dim=1)
    osize = torch.cat([size[:, :P], msize, us], dim=1)
    zeros = torch.zeros(B, dtype=torch.long, device=x.device)
    return MergeResult(out, osize, assign, zeros + r, zeros)


def gbm(x: torch.Tensor, size: torch.Tensor, assign: torch.Tensor, num_prefix: int, divisor: float) -> MergeResult:
    """GBM (docs/algorithm.md: GBM), batch_min coupling: `tau = mean_b(mu_b) + mean_b(sigma_b)/L`, `r = min_b count_b`.

    Any number P of prefix tokens (docs/algorithm.md, GBM): the split stays over the whole
    sequence (A = even positions, B = odd); prefix positions in A never merge (rows -inf), prefix
    positions in B never receive (columns -inf), the statistics run over the non-prefix A rows, and
    the output is [prefix in original order, unmerged non-prefix A (ascending), non-prefix B].
    P = 0, 1, 2 is the published rule (no prefix / class token / class + distillation token).
    """
    B, T, D = x.shape
    P = num_prefix
    pA, pB = prefix_split(P)                                # prefix slots in A / in B
    zeros = torch.zeros(B, dtype=torch.long, device=x.device)
    if T - P < 2:
        return MergeResult(x, size, assign, zeros, zeros)
    metric = x.float()
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)                        # [B, nA, nB]
    scores[:, :pA, :] = -math.inf                           # prefix tokens in A never merge
    scores[:, :, :pB] = -math.inf                           # prefix tokens in B never receive
    node_max, node_idx = scores.max(dim=-1)                 # first index on ties
    # statistics over the candidates: A without its prefix rows (the published `node_max[:, 1:]`
    # skips the class token); with no prefix token (P = 0) every A token is a candidate
    cand = node_max[:, pA:]
    tau = cand.mean(dim=1).mean() + cand.std(dim=1).mean() / divisor
    r = int((node_max >= tau).sum(dim=1).min())
    edge = torch.sort(node_max, dim=1, descending=True, stable=True).indices
    src = edge[:, :r]                                       # [B, r] (prefix rows are -inf: never among them)
    unm = torch.sort(edge[:, r:], dim=1).values             # ascending A order: the pA prefix rows first
    dst = torch.gather(node_idx, 1, src)                    # [B, r]

    # size-weighted merge (published merge_wavg: scatter-sum of x*size, then divide)
    xs = x * size[..., None]
    xa, xb = xs[:, ::2], xs[:, 1::2]
    sa, sb = size[:, ::2], size[:, 1::2]
    nA, nB = xa.shape[1], xb.shape[1]
    src_x = torch.gather(xa, 1, src[..., None].expand(-1, -1, D))
    src_s = torch.gather(sa, 1, src)
    new_xb = xb.scatter_reduce(1, dst[..., None].expand(-1, -1, D), src_x, reduce="sum")
    new_sb = sb.scatter_reduce(1, dst, src_s, reduce="sum")
    unm = unm[:, pA:]                                       # unmerged non-prefix A
    unm_x = torch.gather(xa, 1, unm[..., None].expand(-1, -1, D))
    unm_s = torch.gather(sa, 1, unm)
    # [prefix in original order, unmerged non-prefix A, non-prefix B] (the prefix is never merged
    # into: its x * size / size is itself)
    out = torch.cat([xs[:, :P], unm_x, new_xb[:, pB:]], dim=1)
    osize = torch.cat([size[:, :P], unm_s, new_sb[:, pB:]], dim=1)
    out = out / osize[..., None]

    # position of every A / B token in the output sequence
    U = nA - pA - r                                         # unmerged non-prefix A tokens
    ar_a = torch.arange(nA, device=x.device)
    ar_b = torch.arange(nB, device=x.device)
    pos_a = torch.where(ar_a < pA, 2 * ar_a, -1).expand(B, -1).clone()
    pos_b = torch.where(ar_b < pB, 2 * ar_b + 1, P + U + ar_b - pB).expand(B, -1)
    pos_a.scatter_(1, unm, P + torch.arange(U, device=x.device).expand(B, -1))
    pos_a.scatter_(1, src, torch.gather(pos_b, 1, dst))
    q = assign + P                                           # input positions of the patches
    # both branches are gathered: clamp the index of the branch that is not taken (an even q = 0
    # when P = 0 gives b = -1)
    b_of_q = ((q - 1) // 2).clamp_min(0)
    new_pos = torch.where(q % 2 == 0, torch.gather(pos_a, 1, q // 2), torch.gather(pos_b, 1, b_of_q))
    return MergeResult(out.to(x.dtype), osize, new_pos - P, zeros + r, zeros)


def prefix_split(num_prefix: int) -> tuple[int, int]:
    """(prefix slots in A, prefix slots in B): positions 0..P-1 split by parity, A = even."""
    return (num_prefix + 1) // 2, num_prefix // 2
