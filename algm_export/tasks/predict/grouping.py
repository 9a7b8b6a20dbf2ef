"""`predict` in dynamic token mode: images of similar token counts share one forward.

A dynamic-token graph computes every image of a batch at the batch's largest real token count
(docs/decisions.md item 44), so a collection is run as batches of images whose counts are close:

1. The collection is cut, in input order, into pools of `POOL_BATCHES * batch_size` images.
2. Planning a pool (`plan_pool`, in the process that holds the model's weights: the single process,
   or the driver of a Ray run): every image is read, checked against its finished outputs (resume:
   skipped), decoded (an image that cannot be read or decoded fails here, recorded, before any
   batch is formed), and, if it runs at the model size, resized and probed: its CLAP token count
   (`merging.driver.clap_counts`: the patch embedding and the blocks up to the first merge, in
   PyTorch). Images that run windows (larger than the model, `--sliding`) keep the per-image path.
3. The probed images are grouped by count (`runtimes.batching.group_by_tokens`: sorted by count,
   ties by input order, batches of `batch_size`, the one short batch where it costs least).
4. Each group runs as ONE forward (`run_group`: the images are read again, so a plan holds names
   and counts only; `tasks.predict.predict_batch`); its images' outputs are written as a single
   image's are, with `batch_images` and `batch_tokens` (the counts the batch computed at) added.
   If the batched forward fails, its images run one by one, each failing or not on its own.

The same pools and groups come out of the same collection and outputs folder, in one process or
on Ray (where each group is one row of the dataset), so both write the same label maps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from algm_export.runtimes.batching import runs_dynamic, runs_on_gpu

#: a pool is this many batches of the collection: grouping looks that far ahead
POOL_BATCHES = 16


#: `PredictOptions.group` / `predict --grouping`
GROUPING = ("auto", "on", "off")


def groups_images(runner, batch_size: int, enabled="auto") -> bool:
    """Whether predict batches images of similar token counts: `batch_size` > 1, `runner` (a runner, or
    the Ray driver's stand-in) runs dynamic token mode (an export folder's dynamic entry, a
    threshold-input graph, which is dynamic only, or a torch runner of `apply_algm(...,
    token_mode="dynamic")`), and `enabled` is "on" (True), or "auto" with the runner on a GPU (on a CPU
    one image per forward is cheaper: docs/decisions.md item 56)."""
    if enabled not in GROUPING + (True, False):
        from algm_export.core.errors import ConfigError

        raise ConfigError(f"--grouping {enabled}: use one of {', '.join(GROUPING)}")
    if enabled in ("off", False) or batch_size < 2 or runner is None or not runs_dynamic(runner):
        return False
    if getattr(runner, "max_batch", None) == 1:     # a graph for one image per run: nothing to group
        return False
    return enabled in ("on", True) or runs_on_gpu(runner)


def pools(items: Sequence, batch_size: int) -> list[list]:
    """The collection in input order, cut into pools of `POOL_BATCHES * batch_size` items."""
    n = POOL_BATCHES * batch_size
    return [list(items[s:s + n]) for s in range(0, len(items), n)]


@dataclass
class Plan:
    """One planned pool: what is already decided (`records`: skipped and failed images), the images
    that run their windows one by one (`windowed`), and the groups, each one forward (items of
    ascending count); `counts`: the probe's count by item index."""
    records: list = field(default_factory=list)
    windowed: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)


def plan_pool(items: Sequence, model, job, size: Sequence[int]) -> Plan:
    """Read, resume-check, decode and probe the images of one pool; group those that run at the model
    size `size` (H, W) by their CLAP counts (see the module doc). `model` must hold its weights."""
    from algm_export.merging.driver import clap_counts
    from algm_export.runtimes.batching import group_by_tokens
    from algm_export.tasks.predict import prepare_input, result_record, runs_windowed
    from algm_export.tasks.predict.collection import decode_item, failure, finished, read_payload

    plan = Plan()
    probed = []
    for item in items:
        sha = None
        try:
            payload, sha = read_payload(item)
            done = None if job.overwrite else finished(job.out, item, sha, job.key, job.kinds)
            if done is not None:
                plan.records.append(result_record(item, done, "skipped"))
                continue
            img = decode_item(item, payload)
            if runs_windowed(model, img.shape[:2], size, job.sliding):
                plan.windowed.append(item)
                continue
            plan.counts[item.index] = clap_counts(model, job.setting, prepare_input(img, model, size))[0]
            probed.append(item)
        except Exception as e:  # noqa: BLE001  (recorded; the run goes on)
            plan.records.append(failure(item, e, sha, job.run_info.get("backend")))
    groups = group_by_tokens([plan.counts[it.index] for it in probed], job.batch_size)
    plan.groups = [[probed[i] for i in g] for g in groups]
    return plan


def run_group(items: Sequence, model, runner, job) -> list[dict]:
    """Segment one group (planned by `plan_pool`) in one forward and write its outputs; the
    `results.jsonl` record of each image. An image that cannot be read again fails alone; when the
    batched forward fails, every image runs on its own (`process_item`'s handling)."""
    from algm_export.tasks.predict import predict_batch, predict_image, write_item
    from algm_export.tasks.predict.collection import decode_item, failure, read_payload

    t0 = time.perf_counter()
    backend = job.run_info.get("backend")
    recs, ready = [], []
    for item in items:
        sha = None
        try:
            payload, sha = read_payload(item)
            ready.append((item, sha, decode_item(item, payload)))
        except Exception as e:  # noqa: BLE001
            recs.append(failure(item, e, sha, backend))
    if not ready:
        return recs
    try:
        preds = predict_batch(model, runner, [img for _, _, img in ready], [it.name for it, _, _ in ready],
                              job.setting)
    except Exception:  # noqa: BLE001  (the batch failed: each image on its own, failing alone)
        preds = None
    for k, (item, sha, img) in enumerate(ready):
        try:
            pred = preds[k] if preds is not None else predict_image(model, runner, img, item.name, job.setting,
                                                                    job.sliding, job.batch_size)
            recs.append(write_item(item, pred, sha, job, t0))
        except Exception as e:  # noqa: BLE001
            recs.append(failure(item, e, sha, backend))
    return recs


def flop_ratios(model, layers: Sequence[int], real: Sequence[Sequence[int]],
                padded: Sequence[Sequence[int]]) -> Optional[dict]:
    """The FLOP ratio of the grouped images (baseline MACs / their mean MACs) at their own real counts
    (`flop_ratio`: the ideal, every image on its own) and at the counts their batches computed
    (`flop_ratio_at_batch_max`). real, padded: per image, the patch tokens after each merge step."""
    from algm_export.models.flops import mean_macs, model_macs

    if not real:
        return None
    base = model_macs(model)["total"]
    ideal = mean_macs(model, layers, real)["total"]
    at_max = mean_macs(model, layers, padded)["total"]
    return {"images": len(real), "flop_ratio": round(base / ideal, 4), "flop_ratio_at_batch_max": round(base / at_max, 4),
            "mean_tokens": np.asarray(real, dtype=float).mean(0).round(1).tolist(),
            "mean_batch_tokens": np.asarray(padded, dtype=float).mean(0).round(1).tolist()}


__all__ = ["GROUPING", "POOL_BATCHES", "Plan", "flop_ratios", "groups_images", "plan_pool", "pools",
           "run_group"]
