"""Batches that keep the saving of dynamic token mode.

A dynamic-token graph computes every image of a batch at the batch's largest real token count
(the token axis is cut to the batch maximum, the rest is padding). Images of similar counts batched
together waste little; `group_by_tokens` forms such batches from per-image counts, and
`padded_counts` says what each image of a batch then really costs. The counts come from a run
(`RunOutput.tokens`) or, before any run, from the cheap CLAP probe
`algm_export.merging.driver.clap_counts` (patch embedding and the blocks up to the first merge).

Pure functions of the counts: deterministic, ties broken by index; and two predicates over a
runner (`runs_dynamic`, `runs_on_gpu`) that say whether batching pays. How the commands use them:
`bench` groups its dynamic batches (docs/decisions.md item 44); `predict` probes a collection's
images, groups them and runs each group as one forward where batching pays (on a GPU, item 56);
`serve` runs a dynamic entry's Triton batch one image per forward on a CPU (item 57).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

Count = Union[int, Sequence[int]]


def _key(c: Count) -> tuple[int, ...]:
    if isinstance(c, (list, tuple)) or getattr(c, "ndim", 0) > 0:     # per-step counts (list, array row)
        return tuple(int(v) for v in c)
    return (int(c),)


def group_by_tokens(counts: Sequence[Count], batch_size: int) -> list[list[int]]:
    """Image indices in batches of `batch_size` whose token counts are close.

    counts: one entry per image: its real patch-token count, or its counts after each merge step
    (compared in step order, the first step first). The images are sorted by count (ties: by index)
    and cut into consecutive batches of `batch_size`; with n not a multiple of `batch_size` the
    one short batch goes where the padded cost (sum over images of their batch's maximum, per step)
    is least, the earliest such place on a tie. Every batch lists its indices in ascending count
    order; the batches come in ascending count order too.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [_key(c) for c in counts]
    order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    n = len(order)
    if n == 0:
        return []
    short = n % batch_size
    if short == 0:
        return [order[s:s + batch_size] for s in range(0, n, batch_size)]
    n_full = n // batch_size
    best, best_cost = None, None
    for pos in range(n_full + 1):                    # the short batch is the pos-th batch
        sizes = [batch_size] * pos + [short] + [batch_size] * (n_full - pos)
        groups, s = [], 0
        for size in sizes:
            groups.append(order[s:s + size])
            s += size
        cost = sum(len(g) * sum(max(keys[i][j] for i in g) for j in range(len(keys[g[0]]))) for g in groups)
        if best_cost is None or cost < best_cost:
            best, best_cost = groups, cost
    return best


def padded_counts(counts: Sequence[Count], groups: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """What each image costs when run in `groups`: its batch's largest count (per step), by image index."""
    keys = [_key(c) for c in counts]
    out: list = [None] * len(keys)
    for g in groups:
        top = tuple(max(keys[i][j] for i in g) for j in range(len(keys[g[0]])))
        for i in g:
            out[i] = top
    return out


def runs_of(n_images: int, per_run: Optional[int]) -> list[list[int]]:
    """The runs a runner makes of a batch of `n_images`: consecutive slices of `per_run` images
    (`Runner.max_batch`), or the whole batch in one run when `per_run` is None."""
    m = per_run or max(n_images, 1)
    return [list(range(s, min(s + m, n_images))) for s in range(0, n_images, m)]


def order_of(groups: Sequence[Sequence[int]]) -> list[int]:
    """Where each input image landed in the concatenated grouped run: `outputs[order_of(groups)]`
    puts outputs of the batches run in `groups` order back in input order."""
    flat = [i for g in groups for i in g]
    where = [0] * len(flat)
    for pos, i in enumerate(flat):
        where[i] = pos
    return where


# ----------------------------------------------------------------------------- where batching pays

def runs_dynamic(runner) -> bool:
    """Whether `runner` runs dynamic token mode: an export folder's dynamic entry, a threshold-input
    graph (dynamic only), or a torch runner of `apply_algm(..., token_mode="dynamic")`."""
    entry = getattr(runner, "entry", None)
    if entry is not None and entry.is_dynamic and not entry.is_baseline:
        return True
    if getattr(runner, "takes_threshold", False):
        return True
    return getattr(getattr(runner, "model", None), "dynamic", False) is True


def runs_on_gpu(runner) -> bool:
    """Whether `runner` computes on a GPU: TensorRT, torch on CUDA, ONNX Runtime with a GPU provider
    first. On a CPU a larger batch buys no efficiency, so a dynamic batch's padding is lost time and
    one image per forward is cheapest (docs/decisions.md items 56-57)."""
    if getattr(runner, "backend", None) in ("tensorrt", "tensorrt-rtx"):
        return True
    if str(getattr(runner, "device", "")).startswith("cuda"):
        return True
    session = getattr(runner, "session", None)
    providers = session.get_providers() if session is not None else []
    return bool(providers) and providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
