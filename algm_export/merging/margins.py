"""How far every merge decision is from going the other way, and which decisions two runs disagree on.

A merge step decides, from similarities computed in float32:

* CLAP: window w merges iff its score s_w >= tau; the merged windows become tokens in the order
  of their scores (rank), so two merged windows with near-equal scores can swap places, which
  changes the A/B (even/odd) split of every later GBM step;
* GBM: A token a is a candidate source iff node_max_a >= tau_b (tau_b = mean + std / L of the
  candidates' node_max), and a source merges into B token argmax_j s_aj;
* with a capacity (static token mode), forced merges cut the ranking at r > m.

`step_margins` gives, per step, the smallest distance of any of these decisions to flipping:
|s - tau| (threshold margin), the gap between a source's best and second-best destination
(argmax margin), the score gap between consecutive ranks of merged CLAP windows (rank margin)
and, with forced merges, the gap at the cut. An exact tie (gap 0) is broken by the lower index in
every implementation (bit-identical inputs give bit-identical scores), so it is counted apart and
the margins are the smallest gaps above 0.

`decision_differences` compares two runs of one image (PyTorch and a backend) from the assignment
maps every step outputs: at the first step whose map differs it names the decisions that differ
(windows merged by one run only, windows whose rank differs, A tokens whose destination differs),
each with its margin computed on the PyTorch side (and on the backend's own tokens when the
backend exposes them). Later steps start from different token states and are not named.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from algm_export.merging.reference import window_scores
from algm_export.merging.static import first_argmax, rank_desc


def _min_gap(values: np.ndarray):
    """(smallest value > 0 and its index, count of exact zeros) of a 1-D array of gaps."""
    pos = np.where(values > 0, values, np.inf)
    if pos.size == 0 or not np.isfinite(pos).any():
        return None, None, int((values == 0).sum())
    i = int(np.argmin(pos))
    return float(pos[i]), i, int((values == 0).sum())


def clap_scores(x: torch.Tensor, grid, window, num_prefix: int) -> torch.Tensor:
    """[B, W] window scores (float32, the published arithmetic) of a token state [B, P+N, D]."""
    return window_scores(x[:, num_prefix:].float(), tuple(grid), tuple(window))


def clap_margins(x: torch.Tensor, grid, window, threshold, num_prefix: int,
                 capacity: Optional[int] = None) -> list[dict]:
    """Per image: the CLAP decisions' margins (see the module docstring)."""
    score = clap_scores(x, grid, window, num_prefix)
    B, W = score.shape
    N = grid[0] * grid[1]
    k = window[0] * window[1]
    taus = _per_image(threshold, B)
    out = []
    for b in range(B):
        s = score[b].double().numpy()
        tau = taus[b]
        d = s - tau
        m = int((s >= tau).sum())
        r = m
        if capacity is not None:
            need = max(0, math.ceil((N - capacity) / (k - 1)))
            r = min(max(m, need), W)
        i_thr = int(np.argmin(np.abs(d)))
        order = np.argsort(-s, kind="stable")
        merged = s[order[:r]]
        gaps = merged[:-1] - merged[1:] if r > 1 else np.zeros(0)
        g, gi, ties = _min_gap(gaps)
        rec = {"op": "clap", "threshold": tau, "merges": r, "forced": max(0, r - m),
               "threshold_margin": float(abs(d[i_thr])), "threshold_margin_at": f"window {i_thr}",
               "threshold_margin_signed": float(d[i_thr]),
               "rank_margin": g, "rank_margin_at": None if gi is None else
               f"windows {int(order[gi])} / {int(order[gi + 1])} (ranks {gi} / {gi + 1})",
               "rank_ties": ties}
        if r > m and r < W:
            rec["cut_margin"] = float(s[order[r - 1]] - s[order[r]])
        rec["margin"] = _smallest(rec["threshold_margin"], rec["rank_margin"], rec.get("cut_margin"))
        out.append(rec)
    return out


def gbm_similarities(x: torch.Tensor, size: torch.Tensor, num_prefix: int):
    """The similarities GBM decides on, as the static op computes them (float32): (s [B, nA, nB]
    with -inf where a pair cannot merge, candidate rows row_ok [B, nA])."""
    B, T, D = x.shape
    P = num_prefix
    xf = x.float()
    n_real = (size.float() > 0).sum(dim=1)
    valid = torch.arange(T).unsqueeze(0) < n_real.unsqueeze(1)
    va, vb = valid[:, ::2], valid[:, 1::2]
    row_ok = va.clone()
    if P >= 1:
        row_ok[:, 0] = False
    col_ok = vb.clone()
    if P == 2:
        col_ok[:, 0] = False
    metric = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    s = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
    s = torch.where(row_ok.unsqueeze(2) & col_ok.unsqueeze(1), s, -math.inf)
    return s, row_ok, n_real


def gbm_margins(x: torch.Tensor, size: torch.Tensor, num_prefix: int, divisor: float,
                capacity: Optional[int] = None) -> list[dict]:
    """Per image: the GBM decisions' margins (see the module docstring)."""
    s, row_ok, n_real = gbm_similarities(x, size, num_prefix)
    B = s.shape[0]
    P = num_prefix
    node_max = s.amax(dim=-1)
    node_idx = first_argmax(s, node_max)
    out = []
    for b in range(B):
        ok = row_ok[b].numpy()
        c = int(ok.sum())
        if c < 2 or s.shape[2] < 1:
            out.append({"op": "gbm", "merges": 0, "forced": 0, "threshold_margin": None, "argmax_margin": None,
                        "margin": None, "note": "fewer than 2 candidate tokens: no merge"})
            continue
        nm = node_max[b].double().numpy()
        cand = nm[ok]
        tau = float(cand.mean() + cand.std(ddof=1) / divisor)
        m = int((ok & (nm >= tau)).sum())
        r = m
        if capacity is not None:
            need = max(0, int(n_real[b]) - P - int(capacity))
            r = min(max(m, need), c)
        rank = rank_desc(node_max[b:b + 1], row_ok[b:b + 1])[0].numpy()
        src = ok & (rank < r)
        d = np.where(ok, nm - tau, np.inf)
        i_thr = int(np.argmin(np.abs(d)))
        top2 = torch.topk(s[b].double(), k=min(2, s.shape[2]), dim=-1).values.numpy()
        with np.errstate(invalid="ignore"):   # rows that are no candidate: -inf - -inf
            gap = top2[:, 0] - top2[:, 1] if top2.shape[1] > 1 else np.full(top2.shape[0], np.inf)
        gap = np.where(src & np.isfinite(gap), gap, np.inf)
        src_idx = np.nonzero(src)[0]
        g, gi, ties = _min_gap(gap[src_idx]) if src_idx.size else (None, None, 0)
        at = None if gi is None else int(src_idx[gi])
        rec = {"op": "gbm", "threshold": tau, "merges": r, "forced": max(0, r - m),
               "threshold_margin": float(abs(d[i_thr])), "threshold_margin_at": f"A token {i_thr}",
               "threshold_margin_signed": float(d[i_thr]),
               "argmax_margin": g, "argmax_margin_at": None if at is None else
               f"A token {at} -> B token {int(node_idx[b, at])}", "argmax_ties": ties}
        if r > m and r < c:
            ranked = np.sort(nm[ok])[::-1]
            rec["cut_margin"] = float(ranked[r - 1] - ranked[r])
        rec["margin"] = _smallest(rec["threshold_margin"], rec["argmax_margin"], rec.get("cut_margin"))
        out.append(rec)
    return out


def _smallest(*values) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def _per_image(threshold, B: int) -> list[float]:
    if isinstance(threshold, (torch.Tensor, np.ndarray)):
        t = np.asarray(threshold, dtype=np.float64).reshape(-1)
        return [float(t[0])] * B if t.size == 1 else [float(v) for v in t]
    return [float(threshold)] * B


def step_margins(inputs: Sequence[dict], setting, grid, num_prefix: int, capacities=None,
                 threshold=None) -> list[list[dict]]:
    """Per image, per merge step: the margins of that step's decisions, from the token state that
    entered it (`inputs[i]`: {"x": [B, T, D], "size": [B, T]} as `AlgmModel` records them).
    threshold: the CLAP threshold run (default the setting's)."""
    tau = setting.threshold if threshold is None else threshold
    steps = []
    for i, rec in enumerate(inputs):
        x = torch.as_tensor(np.asarray(rec["x"]))
        cap = None if capacities is None else int(capacities[i])
        if i == 0:
            per = clap_margins(x, grid, setting.window, tau, num_prefix, cap)
        else:
            size = torch.as_tensor(np.asarray(rec["size"]))
            per = gbm_margins(x, size, num_prefix, float(setting.layers[i]), cap)
        for p in per:
            p["step"] = i
            p["layer"] = int(setting.layers[i])
        steps.append(per)
    B = len(steps[0]) if steps else 0
    return [[steps[i][b] for i in range(len(steps))] for b in range(B)]


# ----------------------------------------------------------------------------- differences

def _labels_of_tokens(prev: np.ndarray, nxt: np.ndarray, P: int) -> dict[int, int]:
    """{input token position: output token label} from the assignment maps before and after a step."""
    out = {}
    for p_prev, p_next in zip(prev.tolist(), nxt.tolist()):
        out.setdefault(int(p_prev) + P, int(p_next))
    return out


def _destinations(labels: dict[int, int]) -> dict[int, Optional[int]]:
    """GBM: for every A token (even position q -> A index q // 2), the B index it merged into, or None."""
    b_of_label = {}
    for q, lab in labels.items():
        if q % 2 == 1:
            b_of_label[lab] = q // 2
    return {q // 2: b_of_label.get(lab) for q, lab in labels.items() if q % 2 == 0}


def decision_differences(setting, grid, num_prefix: int, assign_torch: Sequence[np.ndarray],
                         assign_backend: Sequence[np.ndarray], inputs_torch: Sequence[dict],
                         inputs_backend: Optional[Sequence[dict]] = None, threshold=None,
                         capacities=None, image: int = 0, limit: int = 8) -> Optional[dict]:
    """The first merge step at which the backend decided differently from PyTorch, and how (None when
    every step's assignment map is equal). Per differing decision: what each run did and its margins
    (`torch_margin`: on PyTorch's tokens; `backend_margin`: on the backend's, when exposed)."""
    P = num_prefix
    N = grid[0] * grid[1]
    tau = setting.threshold if threshold is None else threshold
    tau = _per_image(tau, image + 1)[image]
    prev = np.arange(N)
    for i, (at, ab) in enumerate(zip(assign_torch, assign_backend)):
        at, ab = np.asarray(at)[image], np.asarray(ab)[image]
        if np.array_equal(at, ab):
            prev = at
            continue
        out = {"step": i, "layer": int(setting.layers[i]), "op": "clap" if i == 0 else "gbm",
               "patches_differing": int((at != ab).sum()), "decisions": []}
        xt = torch.as_tensor(np.asarray(inputs_torch[i]["x"])[image:image + 1])
        xb = None
        if inputs_backend is not None and i < len(inputs_backend) and inputs_backend[i].get("x") is not None:
            xb = torch.as_tensor(np.asarray(inputs_backend[i]["x"])[image:image + 1]).float()
        if i == 0:
            out["decisions"] = _clap_differences(at, ab, xt, xb, grid, setting.window, tau, P, limit)
        else:
            size_t = torch.as_tensor(np.asarray(inputs_torch[i]["size"])[image:image + 1])
            size_b = None
            if xb is not None and inputs_backend[i].get("size") is not None:
                size_b = torch.as_tensor(np.asarray(inputs_backend[i]["size"])[image:image + 1])
            out["decisions"] = _gbm_differences(prev, at, ab, xt, size_t, xb, size_b, P,
                                                float(setting.layers[i]), limit)
        out["later_steps"] = "start from different token states (not compared)" if i + 1 < len(assign_torch) else None
        return out
    return None


def _clap_differences(at, ab, xt, xb, grid, window, tau, P, limit) -> list[dict]:
    from algm_export.merging.reference import window_patch_index

    widx = window_patch_index(tuple(grid), tuple(window)).numpy()          # [W, k]
    st = clap_scores(xt, grid, window, P)[0].double().numpy()
    sb = None if xb is None else clap_scores(xb, grid, window, P)[0].double().numpy()

    def merged_ranks(a):
        r = {}
        for w, members in enumerate(widx):
            labs = a[members]
            if (labs == labs[0]).all():
                r[w] = int(labs[0])
        return r

    rt, rb = merged_ranks(at), merged_ranks(ab)
    # a window is "merged" when its k patches share one token; its label is its rank
    # (unmerged patches come after the merged windows)
    n_merged_t = len(rt)
    n_merged_b = len(rb)
    out = []
    for w in sorted(set(rt) ^ set(rb)):
        out.append({"decision": f"window {w} (row {w // (grid[1] // window[1])}, col {w % (grid[1] // window[1])})",
                    "torch": "merged" if w in rt else "kept", "backend": "merged" if w in rb else "kept",
                    "torch_margin": float(st[w] - tau), "backend_margin": None if sb is None else float(sb[w] - tau),
                    "kind": "threshold"})
    swapped = sorted(w for w in set(rt) & set(rb) if rt[w] != rb[w])
    for w in swapped:
        # the window it changed places with: the one holding its rank on the other side
        other = next((v for v, lab in rb.items() if lab == rt[w]), None)
        out.append({"decision": f"rank of window {w}", "torch": f"rank {rt[w]}", "backend": f"rank {rb[w]}",
                    "torch_margin": None if other is None else float(st[w] - st[other]),
                    "backend_margin": None if (other is None or sb is None) else float(sb[w] - sb[other]),
                    "with": None if other is None else f"window {other}", "kind": "rank"})
    out.sort(key=lambda d: abs(d["torch_margin"]) if d["torch_margin"] is not None else math.inf)
    if n_merged_t != n_merged_b:
        out.insert(0, {"decision": "windows merged", "torch": n_merged_t, "backend": n_merged_b, "kind": "count",
                       "torch_margin": None, "backend_margin": None})
    return out[:limit]


def _gbm_differences(prev, at, ab, xt, size_t, xb, size_b, P, divisor, limit) -> list[dict]:
    dt = _destinations(_labels_of_tokens(prev, at, P))
    db = _destinations(_labels_of_tokens(prev, ab, P))
    st, ok_t, _ = gbm_similarities(xt, size_t, P)
    nm_t = st.amax(-1)[0].double().numpy()
    ok = ok_t[0].numpy()
    cand = nm_t[ok]
    tau_t = float(cand.mean() + cand.std(ddof=1) / divisor) if ok.sum() > 1 else float("nan")
    sb_ = tau_b = nm_b = None
    if xb is not None and size_b is not None:
        sb_, ok_b, _ = gbm_similarities(xb, size_b, P)
        nm_b = sb_.amax(-1)[0].double().numpy()
        okb = ok_b[0].numpy()
        cb = nm_b[okb]
        tau_b = float(cb.mean() + cb.std(ddof=1) / divisor) if okb.sum() > 1 else float("nan")
    out = []
    for a in sorted(set(dt) | set(db)):
        if dt.get(a) == db.get(a):
            continue
        t_dst, b_dst = dt.get(a), db.get(a)
        row = st[0, a].double().numpy()
        rec = {"decision": f"A token {a} (position {2 * a})",
               "torch": "kept" if t_dst is None else f"-> B token {t_dst}",
               "backend": "kept" if b_dst is None else f"-> B token {b_dst}"}
        if (t_dst is None) != (b_dst is None):
            rec["kind"] = "threshold"
            rec["torch_margin"] = float(nm_t[a] - tau_t)
            rec["backend_margin"] = None if nm_b is None else float(nm_b[a] - tau_b)
        else:
            rec["kind"] = "argmax"
            rec["torch_margin"] = float(row[t_dst] - row[b_dst])
            rec["backend_margin"] = None if sb_ is None else float(
                sb_[0, a, t_dst].double() - sb_[0, a, b_dst].double())
        out.append(rec)
    out.sort(key=lambda d: abs(d["torch_margin"]) if d["torch_margin"] is not None else math.inf)
    return out[:limit]
