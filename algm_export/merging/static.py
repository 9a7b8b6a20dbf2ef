"""Static-shape CLAP and GBM (docs/algorithm.md: the static form): fixed capacities, real tokens first, zero-size padding.

These are the reference the ONNX function bodies (`algm_export/export/functions.py`) and the
CUDA kernels (`plugins/`) follow step by step; `docs/static-ops.md` writes the arithmetic out.
Orderings are ranks by counting (descending, ties by lower index), argmax is the first index
equal to the max, outputs are written by scatters with unique indices, and all similarity and
merge math is float32 whatever the token dtype.

Shapes: B batch, P prefix tokens (any number), N = Gh*Gw patches, k = window size, W = N/k windows.
Outputs of both ops: y [B, P+C, D] (dtype of x), size [B, P+C] float32, assign [B, N] int32,
stats [B, 2] int32 (merges done, forced merges).
"""

from __future__ import annotations

import math

import torch

from algm_export.merging.reference import prefix_split, to_windows, window_patch_index, window_scores


def rank_desc(values: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of every entry in descending order, ties by lower index, counting only `valid` entries.

    values: [B, n] float; valid: [B, n] bool or None -> [B, n] int64 (rank 0 = largest).
    """
    vi = values.unsqueeze(2)   # [B, i, 1]
    vj = values.unsqueeze(1)   # [B, 1, j]
    n = values.shape[1]
    ar = torch.arange(n, device=values.device)
    lower = ar.unsqueeze(0) < ar.unsqueeze(1)          # [i, j]: j < i
    before = (vj > vi) | ((vj == vi) & lower)
    if valid is not None:
        before = before & valid.unsqueeze(1)
    return before.sum(dim=2)


def slot_sources(dest: torch.Tensor, length: int, capacity: int, empty: int) -> torch.Tensor:
    """Invert a unique-destination map: which candidate lands in each of the first `capacity` slots.

    dest: [B, n] distinct slot indices < length (kept candidates below the capacity, dropped ones
    in private dump slots past it). Returns [B, capacity] candidate indices, `empty` (the index of
    a zero row) where no candidate lands. A scatter of ints with unique indices, then a cut.
    """
    B, n = dest.shape
    idx = torch.full((B, length), empty, dtype=torch.long, device=dest.device)
    idx.scatter_(1, dest, torch.arange(n, device=dest.device).expand(B, -1))
    return idx[:, :capacity]


def first_argmax(s: torch.Tensor, vmax: torch.Tensor) -> torch.Tensor:
    """Smallest index j with s[..., j] == vmax[...]: [B, n, m], [B, n] -> [B, n] int64."""
    m = s.shape[-1]
    ar = torch.arange(m, device=s.device)
    return torch.where(s == vmax.unsqueeze(-1), ar, m).amin(dim=-1).clamp_max(m - 1)


def clap_static(x: torch.Tensor, grid_h: int, grid_w: int, window_h: int, window_w: int,
                num_prefix: int, capacity: int, threshold):
    """Static CLAP. x [B, P+N, D] -> (y [B,P+C1,D], size [B,P+C1], assign [B,N] i32, stats [B,2] i32).

    threshold: a float, or a float32 tensor [B] with one threshold per image."""
    B, T, D = x.shape
    P, C1 = num_prefix, capacity
    grid, window = (grid_h, grid_w), (window_h, window_w)
    N = T - P
    k = window_h * window_w
    W = N // k
    dev = x.device
    patches = x[:, P:].float()
    score = window_scores(patches, grid, window)                               # [B, W]
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.to(torch.float32).reshape(-1, 1)                 # [B, 1] (or [1, 1])
    m = (score >= threshold).sum(dim=1)                                        # [B]
    need = max(0, math.ceil((N - C1) / (k - 1)))
    r = m.clamp(min=need).clamp(max=W)
    forced = (r - m).clamp(min=0)
    rank = rank_desc(score)                                                    # [B, W]
    merged_w = rank < r.unsqueeze(1)
    widx = window_patch_index(grid, window, dev)                               # [W, k]
    win_of_patch = torch.empty(N, dtype=torch.long, device=dev)
    win_of_patch[widx.reshape(-1)] = torch.arange(W, device=dev).repeat_interleave(k)
    merged_p = merged_w[:, win_of_patch]                                       # [B, N]
    unm_p = ~merged_p
    pos_p = torch.where(merged_p, rank[:, win_of_patch], r.unsqueeze(1) + unm_p.long().cumsum(1) - 1)

    wmean = to_windows(patches, grid, window).sum(dim=2) / k                   # [B, W, D]
    ar_w = torch.arange(W, device=dev)
    ar_n = torch.arange(N, device=dev)
    # every candidate goes to a distinct slot: kept ones to their position (< N), dropped ones to
    # a private dump slot past N; the buffer is then cut to the capacity.
    dest = torch.cat([torch.where(merged_w, rank, N + ar_w), torch.where(unm_p, pos_p, N + W + ar_n)], dim=1)
    vals = torch.cat([wmean, patches, torch.zeros(B, 1, D, device=dev)], dim=1)   # [B, W+N+1, D]
    svals = torch.cat([torch.full((B, W), float(k), device=dev), torch.ones(B, N, device=dev),
                       torch.zeros(B, 1, device=dev)], dim=1)
    src = slot_sources(dest, 2 * N + W, C1, W + N)                              # [B, C1]
    y = torch.cat([x[:, :P].float(), torch.gather(vals, 1, src.unsqueeze(-1).expand(-1, -1, D))], dim=1).to(x.dtype)
    size = torch.cat([torch.ones(B, P, device=dev), torch.gather(svals, 1, src)], dim=1)
    stats = torch.stack([r, forced], dim=1).to(torch.int32)
    return y, size, pos_p.to(torch.int32), stats


def gbm_static(x: torch.Tensor, size: torch.Tensor, assign: torch.Tensor, num_prefix: int,
               capacity: int, divisor: float):
    """Static GBM. x [B, P+C1, D], size [B, P+C1], assign [B, N] -> outputs with C2 = capacity."""
    B, T, D = x.shape
    P, C2 = num_prefix, capacity
    dev = x.device
    xf = x.float()
    size = size.float()
    if T - P < 2:
        # no image can have two tokens besides the protected ones (and with P = 0, T = 1 there is
        # no B slot at all): the no-op of every image, as below
        keep = P + C2
        zeros = torch.zeros(B, 2, dtype=torch.int32, device=dev)
        # (copies: a custom op's outputs must not alias its inputs)
        return xf[:, :keep].to(x.dtype).clone(), size[:, :keep].clone(), assign.to(torch.int32).clone(), zeros
    n_real = (size > 0).sum(dim=1)                                             # [B]
    valid = torch.arange(T, device=dev).unsqueeze(0) < n_real.unsqueeze(1)     # [B, T]
    nA, nB = (T + 1) // 2, T // 2
    va, vb = valid[:, ::2], valid[:, 1::2]
    pA, pB = prefix_split(P)                                                   # prefix slots in A / B
    ar_a = torch.arange(nA, device=dev)
    ar_b = torch.arange(nB, device=dev)
    row_ok = va & (ar_a >= pA)                                                 # prefix tokens never merge
    col_ok = vb & (ar_b >= pB)                                                 # ... nor receive a merge
    metric = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    s = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)                       # [B, nA, nB]
    s = torch.where(row_ok.unsqueeze(2) & col_ok.unsqueeze(1), s, -math.inf)
    node_max = s.amax(dim=-1)
    node_idx = first_argmax(s, node_max)

    c = row_ok.sum(dim=1)
    cf = c.float()
    mu = torch.where(row_ok, node_max, 0.0).sum(dim=1) / cf
    var = torch.where(row_ok, node_max - mu.unsqueeze(1), 0.0).square().sum(dim=1) / (cf - 1)
    tau = mu + var.sqrt() / divisor
    m = (row_ok & (node_max >= tau.unsqueeze(1))).sum(dim=1)
    need = (n_real - P - C2).clamp(min=0)
    r = torch.minimum(torch.maximum(m, need), c)
    noop = (n_real - P) < 2
    r = torch.where(noop, 0, r)
    m_eff = torch.where(noop, 0, m)
    forced = (r - m_eff).clamp(min=0)

    rank = rank_desc(node_max, row_ok)
    is_src = row_ok & (rank < r.unsqueeze(1))                                  # [B, nA]

    xs = xf * size.unsqueeze(-1)
    xa, xb = xs[:, ::2], xs[:, 1::2]
    sa, sb = size[:, ::2], size[:, 1::2]
    onehot = (node_idx.unsqueeze(2) == torch.arange(nB, device=dev)) & is_src.unsqueeze(2)   # [B, nA, nB]
    mt = onehot.float().transpose(1, 2)                                        # [B, nB, nA]
    num_b = xb + mt @ xa
    size_b = sb + (mt @ sa.unsqueeze(-1)).squeeze(-1)
    xb_new = torch.where(size_b.unsqueeze(-1) > 0, num_b / size_b.clamp_min(1e-30).unsqueeze(-1), 0.0)

    # output order: [prefix in original order, unmerged non-prefix A (ascending), non-prefix B]
    unm_a = va & ~is_src                                                       # prefix A rows included
    cand_unm = unm_a & (ar_a >= pA)
    U = cand_unm.sum(dim=1, keepdim=True)
    pos_a = torch.where(ar_a < pA, 2 * ar_a, P + cand_unm.long().cumsum(1) - 1)
    pos_b = torch.where(ar_b < pB, 2 * ar_b + 1, P + U + ar_b - pB)
    dest = torch.cat([torch.where(unm_a, pos_a, T + ar_a), torch.where(vb, pos_b, T + nA + ar_b)], dim=1)
    vals = torch.cat([xf[:, ::2], xb_new, torch.zeros(B, 1, D, device=dev)], dim=1)
    svals = torch.cat([sa, size_b, torch.zeros(B, 1, device=dev)], dim=1)
    keep = P + C2
    src = slot_sources(dest, T + nA + nB, keep, nA + nB)                        # [B, P+C2]
    y_new = torch.gather(vals, 1, src.unsqueeze(-1).expand(-1, -1, D))
    s_new = torch.gather(svals, 1, src)

    q = assign.long() + P
    even = (q % 2) == 0
    a_idx = (q // 2).clamp(max=nA - 1)
    b_idx = ((q - 1) // 2).clamp(min=0, max=nB - 1)
    to_b = torch.gather(pos_b, 1, torch.gather(node_idx, 1, a_idx))
    new_pos = torch.where(even, torch.where(torch.gather(is_src, 1, a_idx), to_b, torch.gather(pos_a, 1, a_idx)),
                          torch.gather(pos_b, 1, b_idx)) - P

    # no-op (fewer than 2 tokens besides the protected ones): copy through
    y = torch.where(noop.view(B, 1, 1), xf[:, :keep], y_new).to(x.dtype)
    osize = torch.where(noop.view(B, 1), size[:, :keep], s_new)
    new_assign = torch.where(noop.view(B, 1), assign.long(), new_pos).to(torch.int32)
    stats = torch.stack([r, forced], dim=1).to(torch.int32)
    return y, osize, new_assign, stats


# ----------------------------------------------------------------------------- dynamic token mode

def real_slots(size: torch.Tensor, num_prefix: int) -> int:
    """The token slots a batch needs after a step: P + the largest real patch-token count.

    Real tokens come first in every image (the static ops' contract), so cutting the token axis
    here drops padding only.
    """
    return num_prefix + int((size[:, num_prefix:] > 0).sum(dim=1).max())


def clap_dynamic(x: torch.Tensor, threshold: torch.Tensor, grid_h: int, grid_w: int, window_h: int, window_w: int,
                 num_prefix: int):
    """CLAP in dynamic token mode (docs/algorithm.md: dynamic token mode): the static op with capacity N (so never a forced
    merge), the token axis cut to the slots the batch needs. threshold: float32 [B] (per image).

    x [B, P+N, D] -> y [B, P+K, D], size [B, P+K], assign [B, N] i32, stats [B, 2] i32, with
    K = max_b (real patch tokens of image b).
    """
    n = grid_h * grid_w
    y, size, assign, stats = clap_static(x, grid_h, grid_w, window_h, window_w, num_prefix, n, threshold)
    keep = real_slots(size, num_prefix)
    return y[:, :keep].contiguous(), size[:, :keep].contiguous(), assign, stats


def gbm_dynamic(x: torch.Tensor, size: torch.Tensor, assign: torch.Tensor, num_prefix: int, divisor: float):
    """GBM in dynamic token mode: the static op with capacity = every input slot (never forced),
    cut to the slots the batch needs. Shapes as `gbm_static` with C2 = K2 = max_b real count."""
    y, osize, oassign, stats = gbm_static(x, size, assign, num_prefix, x.shape[1] - num_prefix, divisor)
    keep = real_slots(osize, num_prefix)
    return y[:, :keep].contiguous(), osize[:, :keep].contiguous(), oassign, stats


def tokens_from_stats(stats, n_patches: int, window=(2, 2)):
    """Real patch-token count after every merge step from a `merge_stats` output [B, steps, 2].

    CLAP leaves `N - r (k - 1)` tokens, every GBM step `r` fewer than it got. Exact in every
    mode (forced merges are part of `r`): what `AlgmModel.merge_stats["tokens"]` holds, computed
    from an ONNX / engine output. Works on numpy arrays and torch tensors alike; returns int64.
    """
    import numpy as np

    is_torch = isinstance(stats, torch.Tensor)
    r = stats[..., 0].long() if is_torch else np.asarray(stats)[..., 0].astype(np.int64)
    k = int(window[0]) * int(window[1])
    removed = r.clone() if is_torch else r.copy()
    removed[..., 0] = r[..., 0] * (k - 1)
    cum = removed.cumsum(-1) if is_torch else np.cumsum(removed, axis=-1)
    return n_patches - cum


# ----------------------------------------------------------------------------- capacity rules

def clap_capacity_bounds(n_patches: int, window: tuple[int, int]) -> tuple[int, int]:
    """(smallest, largest) valid C1: all windows merged .. nothing merged."""
    k = window[0] * window[1]
    return n_patches // k, n_patches


def gbm_capacity_min(c_in: int, num_prefix: int) -> int:
    """Smallest valid C2 after a step with capacity c_in: only candidate A tokens can be sources.

    The candidates are the A tokens (even positions) that are not prefix tokens; with no prefix
    token (P = 0) every A token is one.
    """
    n_real = num_prefix + c_in
    candidates = (n_real + 1) // 2 - prefix_split(num_prefix)[0]
    return max(1, c_in - candidates)
