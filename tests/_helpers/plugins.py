"""Shared helpers of the plugin tests (no tests in here): building the libraries once per
session, test data, and checks against the torch reference `algm_export.merging.static`.

The kernels' arithmetic differs from torch's (summation orders), so merge decisions can only
be compared exactly when no decision sits within rounding of another (docs/algorithm.md: numerical sensitivity). The data
generators here therefore check, in float64, that every decision has a comfortable margin
and draw again otherwise; constructed cases with exact ties use values whose arithmetic is
exact in any order.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from algm_export.merging.reference import to_windows, window_patch_index

MARGIN = 1e-5

_BUILDS: dict[str, dict] = {}


def tensorrt_include() -> Path | None:
    """TensorRT headers for the plugin build, found as `algm-export plugins` finds them (env
    ALGM_TENSORRT_INCLUDE, TENSORRT_INCLUDE_DIR, TENSORRT_ROOT, standard install folders; `.ci/run`
    points ALGM_TENSORRT_INCLUDE at the shared headers when they are there)."""
    from algm_export.tasks.plugins import find_tensorrt_include

    return find_tensorrt_include()


def toolchain_missing() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if shutil.which("nvcc") is None and not os.environ.get("CUDACXX") and not Path("/usr/local/cuda/bin/nvcc").exists():
        return "nvcc (CUDA toolkit) is not installed"
    return None


def build_once(base: Path, key: str, **kwargs) -> dict:
    """`algm_export.tasks.plugins.build_plugins(build_dir=base/key, **kwargs)`, once per process."""
    from algm_export.tasks.plugins import build_plugins

    if key not in _BUILDS:
        missing = toolchain_missing()
        if missing:
            pytest.skip(missing)
        _BUILDS[key] = build_plugins(build_dir=base / key, **kwargs)
    return _BUILDS[key]


# --------------------------------------------------------------------------- data

def smooth_tokens(B: int, gh: int, gw: int, P: int, D: int, seed: int, noise: float = 0.3,
                  dtype=torch.float32) -> torch.Tensor:
    """[B, P+N, D]: a smooth random field plus noise, so that windows and tokens look alike."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, D, gh // 2 + 1, gw // 2 + 1, generator=g)
    f = torch.nn.functional.interpolate(base, size=(gh, gw), mode="bilinear", align_corners=True)
    f = f + noise * torch.randn(B, D, gh, gw, generator=g)
    x = torch.cat([torch.randn(B, P, D, generator=g), f.flatten(2).transpose(1, 2)], 1)
    return x.to(dtype)


def separated_tokens(B=2, P=1, D=16, grid=(4, 4), seed=0):
    """Windows whose scores are well separated: window w's 4 tokens share a direction + noise_w."""
    g = torch.Generator().manual_seed(seed)
    gh, gw = grid
    N = gh * gw
    x = torch.randn(B, P + N, D, generator=g)
    widx = window_patch_index(grid, (2, 2))
    for b in range(B):
        for w in range(widx.shape[0]):
            base = torch.randn(D, generator=g)
            noise = 0.05 + 0.25 * ((w * 7 + b * 3) % widx.shape[0]) / widx.shape[0]
            for p in widx[w]:
                x[b, P + p] = base + noise * torch.randn(D, generator=g) * base.norm() / math.sqrt(D)
    return x


def near_tie_tokens(B, P, grid, D, seed):
    """Every window holds the same four vectors in another order and at another scale: all window scores
    are equal in exact arithmetic, so their order is decided by float rounding alone (docs/algorithm.md: numerical sensitivity)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(4, D, generator=g) + 2.0 * torch.randn(1, D, generator=g)
    gh, gw = grid
    x = torch.randn(B, P + gh * gw, D, generator=g)
    patches = x[:, P:].reshape(B, gh // 2, 2, gw // 2, 2, D)
    for b in range(B):
        for i in range(gh // 2):
            for j in range(gw // 2):
                perm = torch.randperm(4, generator=g)
                scale = float(torch.empty(1).uniform_(0.3, 3.0, generator=g))
                patches[b, i, :, j, :] = (base[perm] * scale).reshape(2, 2, D)
    x[:, P:] = patches.reshape(B, gh * gw, D)
    return x


def duplicated_tokens(B: int, gh: int, gw: int, P: int, D: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """[B, P+N, D]: about half of the 2x2 windows hold four near-copies of one token (each window
    with its own noise level, so window scores are close to 1 but well apart), the rest random."""
    g = torch.Generator().manual_seed(seed)
    W = (gh // 2) * (gw // 2)
    coarse = torch.randn(B, D, gh // 2, gw // 2, generator=g)
    sigma = torch.linspace(0.01, 0.3, W)[torch.randperm(W, generator=g)].view(1, 1, gh // 2, gw // 2)
    f = coarse.repeat_interleave(2, 2).repeat_interleave(2, 3)
    f = f + sigma.repeat_interleave(2, 2).repeat_interleave(2, 3) * torch.randn(B, D, gh, gw, generator=g)
    keep = (torch.rand(B, 1, gh // 2, gw // 2, generator=g) < 0.5).float()
    keep = keep.repeat_interleave(2, 2).repeat_interleave(2, 3)
    f = keep * f + (1 - keep) * torch.randn(B, D, gh, gw, generator=g)
    x = torch.cat([torch.randn(B, P, D, generator=g), f.flatten(2).transpose(1, 2)], 1)
    return x.to(dtype)


# the node_max of every A token of a GBM input, set by construction; position 0 (a = 0) is the
# largest and, when it counts (P = 0), moves the threshold past the 0.8 token: with L = 1 the
# threshold over all of A is 0.839 (sources 0.99, 0.85), without position 0 it is 0.760
# (sources 0.85, 0.8 and, were position 0 still a candidate, 0.99)
NODE_MAX_VALUES = (0.99, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85)


def node_max_tokens(values=NODE_MAX_VALUES, P: int = 0, B: int = 1):
    """A GBM input (x [B, T, D], size [B, T], assign [B, N] int32) whose A token a (position 2a)
    has cosine `values[a]` with B token a and 0 with every other B token: B tokens are distinct
    basis vectors, A token a is `v e_a + sqrt(1 - v^2) f_a` with its own direction f_a. Its
    node_max is values[a] (up to rounding), its node_idx a. The first P tokens are the prefix
    (random, so they match nothing). Sizes 1, every token holds one patch."""
    n = len(values)
    T = 2 * n
    D = 2 * n + 2
    x = torch.zeros(B, T, D)
    for a, v in enumerate(values):
        x[:, 2 * a, a] = v
        x[:, 2 * a, n + a] = math.sqrt(1.0 - v * v)
        x[:, 2 * a + 1, a] = 1.0
    g = torch.Generator().manual_seed(1)
    x[:, :P] = torch.randn(B, P, D, generator=g)
    size = torch.ones(B, T)
    assign = torch.arange(T - P, dtype=torch.int32).expand(B, -1).contiguous()
    return x, size, assign


def expected_gbm_sources(values, P: int, L: float) -> list[int]:
    """Float64: the A indices whose node_max passes mu + sigma / L over the candidates (the A
    tokens that are not prefix tokens: index a >= ceil(P / 2))."""
    cand = list(range((P + 1) // 2, len(values)))
    v = torch.tensor([values[a] for a in cand], dtype=torch.float64)
    tau = v.mean() + v.std() / L
    return [a for a, val in zip(cand, v.tolist()) if val >= tau]


def gbm_sources(assign, P: int, n_a: int) -> list[int]:
    """For a `node_max_tokens` input: the A indices a that merged into their partner, i.e. whose
    patch (2a - P) ends up in the same token as the patch of B token a (2a + 1 - P)."""
    return [a for a in range(n_a) if 2 * a - P >= 0 and int(assign[2 * a - P]) == int(assign[2 * a + 1 - P])]


# --------------------------------------------------------------------------- float64 decision margins

def _min_gap(v: torch.Tensor) -> float:
    """Smallest difference between two entries of v that are not exactly equal (inf if none)."""
    s = torch.sort(v.flatten()).values
    d = s[1:] - s[:-1]
    d = d[d > 0]
    return float(d.min()) if d.numel() else math.inf


def clap_margin(x: torch.Tensor, gh: int, gw: int, wh: int, ww: int, P: int, tau: float) -> float:
    """Smallest float64 distance of a window score to tau or to another (non-identical) score."""
    p = to_windows(x[:, P:].double(), (gh, gw), (wh, ww))                   # [B, W, k, D]
    n = p.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    u = p / n
    cos = u @ u.transpose(-1, -2)
    k = p.shape[2]
    s = (cos.sum((-1, -2)) - cos.diagonal(dim1=-2, dim2=-1).sum(-1)) / (k * (k - 1))
    m = float((s - tau).abs().min())
    for b in range(s.shape[0]):
        m = min(m, _min_gap(s[b]))
    return m


def gbm_margin(x: torch.Tensor, size: torch.Tensor, P: int, C2: int, L: float) -> float:
    """Smallest float64 margin of GBM's decisions: argmax runner-up gaps of every candidate row,
    node_max vs tau, and gaps between candidates' node_max values."""
    m = math.inf
    xf = x.double()
    for b in range(x.shape[0]):
        n_real = int((size[b] > 0).sum())
        if n_real - P < 2:
            continue
        t = xf[b, :n_real]
        t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        a, bb = t[0::2], t[1::2]
        s = a @ bb.T
        s[:, : P // 2] = -math.inf             # prefix tokens in B never receive
        rows = s[(P + 1) // 2:]                # candidate rows: the A tokens that are not prefix tokens
        if rows.shape[1] >= 2:
            top2 = rows.topk(2, dim=1).values
            gaps = top2[:, 0] - top2[:, 1]
            gaps = gaps[torch.isfinite(gaps) & (gaps > 0)]
            if gaps.numel():
                m = min(m, float(gaps.min()))
        nm = rows.max(dim=1).values
        if nm.numel() >= 2:
            tau = nm.mean() + nm.std() / L
            m = min(m, float((nm - tau).abs().min()), _min_gap(nm))
    return m


# --------------------------------------------------------------------------- comparisons

def assert_same(out, ref, tol: float, what: str) -> None:
    """out, ref = (y, size, assign, stats): decisions exact, tokens within tol (relative to scale)."""
    y, size, assign, stats = (t.cpu() for t in out)
    ry, rsize, rassign, rstats = (t.cpu() for t in ref)
    assert y.shape == ry.shape and y.dtype == ry.dtype, what
    assert torch.equal(stats, rstats), f"{what}: stats {stats.tolist()} != reference {rstats.tolist()}"
    assert torch.equal(assign, rassign), f"{what}: assign differs at {(assign != rassign).nonzero()[:5].tolist()}"
    assert torch.equal(size, rsize), f"{what}: size differs"
    scale = max(1.0, float(ry.float().abs().max()))
    err = float((y.float() - ry.float()).abs().max()) if y.numel() else 0.0
    assert err <= tol * scale, f"{what}: max token error {err:.3g} > {tol} * {scale:.3g}"
