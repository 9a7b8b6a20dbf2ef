"""Benchmark (`algm-export bench`): latency and throughput of the baseline and every threshold setting,
on every backend present, measured side by side in one run.

Method: one runner per (backend, entry); warm-up runs; then `repeats` rounds, and in every
round each entry runs once in turn (interleaved, so drift and noise hit every entry alike).
Reported: median latency, p10/p90 spread, images/s, the GMACs of each entry computed from its
capacities (static engines compute every slot), the FLOP ratio and the measured speed-up over
the baseline of the same backend and batch size, and the patch tokens processed per image
after each merge step. Threads are pinned and reported.

Dynamic token mode entries (decision 30): their work depends on the image, so round r runs the
r-th of their batches of the bench images (cycling; each image is in one batch; the baseline and
static entries, whose work does not, run the first batch every round, as before), and their GMACs
are the mean per-image MACs at the real token counts of the images they ran (`flops.mean_macs` with
`RunOutput.tokens`): FLOP ratio = baseline MACs / that mean; their latency is the time of a batch of
`bs` at the rate of those batches (the sum of each batch's median over the images they hold; the same
images as the MACs). The tokens column shows their mean and min-max over those images. At batch > 1
a dynamic graph computes every image of a batch at the batch's largest count, so the batches are
formed of images of similar counts (`runtimes.batching.group_by_tokens` over the CLAP probe's counts,
`merging.driver.clap_counts`; the one short batch where it costs least), and the FLOP ratio of what
the batches really compute (`flop_ratio_at_batch_max`, from `gmacs_at_batch_max`) is reported beside
the per-image one (docs/decisions.md item 44). A threshold-input
entry is benched at each threshold (its manifest's `thresholds`, or `thresholds=`), one row per
threshold.

Served (`backends=["triton"]`, docs/decisions.md item 41): the folder is served by Triton (`runtimes/triton/`: one
model per entry on `triton_backend`, dynamic batching up to the largest concurrency, started on
free loopback ports for the run and stopped after it), and `c` client threads (each with its own
gRPC connection) send one image per request, for every `c` in `concurrency`. Each round runs
every slot in turn: `requests` requests per client, the images in turn (the same sequence for every
entry), timed from the first request to the last answer. Reported per (slot, c): served throughput
(images/s over all rounds: the sum of images over the sum of wall times), the median and p10/p90
request latency, and speed-up = throughput / the baseline's throughput at the same concurrency.
GMACs of dynamic entries: the mean over the images they ran, from the `merge_stats` the server
answered.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from algm_export.artifacts import ExportFolder, locks_export_folder
from algm_export.core.errors import BackendUnavailable
from algm_export.core.names import ANSWERS
from algm_export.models.flops import mean_macs, model_macs
from algm_export.core.progress import progress_bar, status

from algm_export.core.published import PUBLISHED  # noqa: E402,F401  (re-exported)


@locks_export_folder("bench")
def bench(export_dir, backends: Optional[Sequence[str]] = None, batches: Sequence[int] = (1,), images=None,
          precision: str = "fp32",
          repeats: int = 10, warmup: int = 2, threads: Optional[int] = None, model=None,
          settle_s: float = 0.05, trust_checkpoint: bool = False, thresholds=None,
          concurrency: Sequence[int] = (1, 8), requests: int = 4, triton_backend: str = "onnxruntime",
          group: bool = True, answer: str = "logits") -> dict:
    """Benchmark an export folder (see the module doc); writes DIR/bench/bench.json and bench.png.

    thresholds: the thresholds to bench threshold-input entries at (default: their manifest's);
    concurrency, requests, triton_backend: the served measurement (`backends` holding "triton");
    answer: what each served request asks for: "logits" (with merge_stats) or "labels" (the classes,
    with merge_stats: what a client that wants the segmentation asks for);
    group: at batch > 1, batch a dynamic entry's images by similar token counts (else in bench order);
    trust_checkpoint: unpickle the manifest's checkpoint completely (see `load_segmenter`);
    wait: wait for another run that holds the folder instead of stopping (`algm_export.core.lock`)."""
    import torch

    from algm_export.runtimes.registry import available_backends, make_runner, parse_backends

    folder = ExportFolder.load(export_dir, verify=True)
    export_dir = folder.path
    man = folder.data
    entries = folder.entries
    # one timed slot per (entry, threshold): a threshold-input entry has one per threshold
    slots = [(i, t) for i, ts in enumerate(folder.runs(thresholds)) for t in ts]
    if model is None:
        model = folder.model(trust_checkpoint)
    cfg = model.cfg
    threads = threads or min(os.cpu_count() or 1, 16)
    have = available_backends()
    backends = parse_backends(backends or [b for b in have if precision == "fp32" or b != "torch"], served=True)
    if "triton" in backends:
        from algm_export.runtimes.triton.server import check_serving_available

        check_serving_available()
        have = have + ["triton"]
    missing = [b for b in backends if b not in have]
    if missing:
        raise BackendUnavailable(f"backend(s) {missing} not available here (available: {have}); "
                                 "tensorrt needs a CUDA GPU with TensorRT")
    xs = [x for _, x in folder.inputs(images, model=model)]
    base_macs = model_macs(model)["total"]
    n_patches = cfg.grid[0] * cfg.grid[1]
    results = []
    for backend in backends:
        if backend == "triton":
            results += bench_served(folder, model, xs, slots, concurrency, requests, repeats, warmup, threads,
                                    precision, triton_backend, base_macs, n_patches, answer)
            continue
        for bs in batches:
            def batch_of(r: int):
                return torch.cat([xs[(r * bs + i) % len(xs)] for i in range(bs)])

            first = batch_of(0)
            # dynamic slots: the batches they run in turn (indices into xs), every image once
            # (a folder for one image per run computes each image alone: nothing to group)
            grouping = group and folder.batch is None
            cycles = [_dynamic_batches(model, entries[i], t, xs, bs, grouping) if entries[i].is_dynamic
                      else None for i, t in slots]
            stacked: dict = {}

            def stack(idx):
                if tuple(idx) not in stacked:
                    stacked[tuple(idx)] = torch.cat([xs[j] for j in idx])
                return stacked[tuple(idx)]
            runners = [make_runner(backend, e, precision, model=model, threads=threads) for e in entries]
            kws = [{} if t is None else {"threshold": t} for _, t in slots]
            for (i, _), kw in zip(slots, kws):
                for _ in range(warmup):
                    runners[i].infer(first, **kw)
            times = [[] for _ in slots]
            tokens = [[] for _ in slots]   # dynamic slots: the real counts of every image they ran
            with progress_bar(total=repeats * len(slots), desc=f"bench {backend} b{bs}", unit="run") as bar:
                for rnd in range(repeats):
                    for k, ((i, _), kw) in enumerate(zip(slots, kws)):
                        dynamic = entries[i].is_dynamic
                        batch = stack(cycles[k][rnd % len(cycles[k])]) if dynamic else first
                        if settle_s:
                            # let the runtime that just ran go idle first: ONNX Runtime's intra-op threads
                            # busy-wait after a run, and on a small CPU they take the cores of the next
                            # model (2 cores: +27 ms on every run of every model, docs/performance.md)
                            time.sleep(settle_s)
                        t0 = time.perf_counter()
                        out = runners[i].infer(batch, **kw)
                        times[k].append(time.perf_counter() - t0)
                        if dynamic:
                            tokens[k].append(np.asarray(out.tokens))
                        bar.update(1)
            base_med = float(np.median(times[0]))
            for k, ((i, t), ts, toks) in enumerate(zip(slots, times, tokens)):
                e = entries[i]
                runs = cycles[k] or [list(range(bs))]
                row = _result(model, e, t, ts, toks, backend, bs, base_med, base_macs, n_patches,
                              [r % len(runs) for r in range(len(ts))], [len(b) for b in runs],
                              per_run=runners[i].max_batch)
                if e.is_dynamic and bs > 1:
                    row["grouped"] = bool(grouping)
                    row["batches"] = cycles[k]             # indices into the bench images, in run order
                results.append(row)
            for r in runners:
                r.close()
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "threads": threads},
        "model": man["model"]["source"], "backbone": cfg.backbone, "image_size": list(cfg.image_size),
        "precision": precision, "repeats": repeats, "warmup": warmup, "settle_s": settle_s, "results": results,
        **({"served": {"concurrency": list(concurrency), "requests_per_client": requests,
                       "runs_on": triton_backend, "answer": answer}} if "triton" in backends else {}),
        "published": PUBLISHED.get(cfg.backbone),
    }
    out = folder.resolve("bench", "bench folder")
    folder.write_json("bench/bench.json", report, "bench report")
    try:
        report["plot"] = str(plot(report, folder, folder.resolve("bench/bench.png", "bench plot"))
                             .relative_to(out.parent))
        folder.write_json("bench/bench.json", report, "bench report")
    except Exception as e:  # a plot must never lose the numbers
        status(f"plot skipped: {e}")
    return report


def _dynamic_batches(model, entry, threshold, xs, bs: int, group: bool) -> list[list[int]]:
    """The batches (indices into `xs`) a dynamic entry runs in turn, every image once: with `group` (and
    batch > 1) formed by the images' CLAP counts (`group_by_tokens`: similar counts together, the one
    short batch where it costs least), else in bench order (the last one short). Fewer images than
    `bs`: one batch of the images cycled, as the other entries run."""
    from algm_export.merging.driver import clap_counts
    from algm_export.runtimes.batching import group_by_tokens

    n = len(xs)
    if bs > n:
        return [[j % n for j in range(bs)]]
    if bs == 1 or not group:
        return [list(range(s, min(s + bs, n))) for s in range(0, n, bs)]
    setting = entry.setting() if threshold is None else entry.setting().with_threshold(threshold)
    return group_by_tokens([clap_counts(model, setting, x)[0] for x in xs], bs)


def bench_served(folder, model, xs, slots, concurrency, requests, repeats, warmup, threads, precision,
                 triton_backend, base_macs, n_patches, answer: str = "logits") -> list[dict]:
    """The served measurement (see the module doc): rows with backend "triton" and `concurrency`."""
    from concurrent.futures import ThreadPoolExecutor

    from algm_export.runtimes.registry import normalize_backend, token_geometry
    from algm_export.runtimes.triton.client import TritonRunner
    from algm_export.runtimes.triton.server import FolderServer

    concurrency = sorted({int(c) for c in concurrency})
    if answer not in ANSWERS:
        from algm_export.core.errors import ConfigError

        raise ConfigError(f"--answer {answer!r}: use one of {', '.join(ANSWERS)}")
    if not concurrency or concurrency[0] < 1 or requests < 1:
        from algm_export.core.errors import ConfigError

        raise ConfigError(f"--concurrency {','.join(map(str, concurrency))} / --requests {requests}: give "
                          "concurrencies >= 1 and at least one request per client")
    entries = folder.entries
    images = [np.ascontiguousarray(x.numpy(), np.float32) for x in xs]
    server = FolderServer(folder.path, backend=normalize_backend(triton_backend), precision=precision,
                          max_batch=max(concurrency), max_queue_delay_us=500, instances=1, threads=threads,
                          http_port=0, grpc_port=0, metrics_port=0,
                          on_progress=lambda text: status(f"serve: {text}"))
    rows = []
    with server:
        names = {m.entry: m for m in server.models}
        for c in concurrency:
            pools = []          # per client: one runner per slot (its own connection)
            for _ in range(c):
                pool = []
                for i, _ in slots:
                    served = names[entries[i].name]
                    r = TritonRunner(server.urls["grpc"], served.name, takes_threshold=entries[i].takes_threshold,
                                     outputs=[t.name for t in served.outputs
                                              if t.name in (answer, "merge_stats")])
                    r.token_geometry = token_geometry(entries[i])
                    pool.append(r)
                pools.append(pool)
            lat = [[] for _ in slots]
            walls = [[] for _ in slots]
            toks = [[] for _ in slots]
            groups = [[] for _ in slots]

            def block(k: int, t, timed: bool, start: int):
                def client(j: int):
                    r = pools[j][k]
                    out = []
                    for q in range(requests):
                        n = start + j * requests + q
                        img = n % len(images)
                        t0 = time.perf_counter()
                        res = r.infer(images[img], **({} if t is None else {"threshold": t}))
                        out.append((time.perf_counter() - t0, img, res.tokens))
                    return out

                with ThreadPoolExecutor(c) as pool:
                    t0 = time.perf_counter()
                    done = list(pool.map(client, range(c)))
                    wall = time.perf_counter() - t0
                if timed:
                    walls[k].append(wall)
                    for res in done:
                        for dt, img, tk in res:
                            lat[k].append(dt)
                            groups[k].append(img)
                            if tk is not None:
                                toks[k].append(np.asarray(tk))

            for k, (_, t) in enumerate(slots):
                for _ in range(warmup):
                    block(k, t, False, 0)
            with progress_bar(total=repeats * len(slots), desc=f"bench triton c{c}", unit="block") as bar:
                for rnd in range(repeats):
                    for k, (_, t) in enumerate(slots):
                        block(k, t, True, rnd * c * requests)
                        bar.update(1)
            base_tput = c * requests * len(walls[0]) / sum(walls[0])
            for k, (i, t) in enumerate(slots):
                e = entries[i]
                row = _result(model, e, t, lat[k], toks[k] if e.is_dynamic else [], "triton", 1,
                              float(np.median(lat[0])), base_macs, n_patches, groups[k])
                tput = c * requests * len(walls[k]) / sum(walls[k])
                row.update({"batch": 1, "concurrency": c, "requests": len(lat[k]), "runs_on": triton_backend,
                            "answer": answer,
                            "images_per_s": tput, "speedup": tput / base_tput,
                            "speedup_vs_flop_ratio": (tput / base_tput) / row["flop_ratio"],
                            "wall_s": float(sum(walls[k]))})
                rows.append(row)
            for pool in pools:
                for r in pool:
                    r.close()
    return rows


def _result(model, e, threshold, times, tokens, backend, bs, base_med, base_macs, n_patches, groups,
            sizes=None, per_run=None) -> dict:
    """One row of the benchmark: latency figures, GMACs and FLOP ratio, tokens per image.

    A dynamic entry ran a different batch per round (`groups`: the batch of each run, `sizes`: the
    images in each batch): its latency is the time of `bs` images at the rate of those batches (the
    sum of each batch's median over the images they hold), and its MACs the mean over the same images,
    so that speed-up and FLOP ratio average the same images (a median over runs of different images
    would pick one middle image instead). per_run: the most images one run of the graph takes
    (`Runner.max_batch`): a batch ran in slices of that size, each at its own largest counts."""
    med = float(np.median(times))
    caps = e.capacities
    row = {"backend": backend, "batch": bs, "setting": e.name,
           "threshold": e.threshold if threshold is None else threshold, "capacities": caps}
    if e.is_dynamic:
        by_batch: dict = {}
        for g, t, tk in zip(groups, times, tokens):
            by_batch.setdefault(g, ([], tk))[0].append(t)
        ran = sum(sizes[g] for g in by_batch) if sizes else len(by_batch)
        med = bs * sum(float(np.median(ts)) for ts, _ in by_batch.values()) / ran
        tokens = [tk for _, tk in by_batch.values()]          # one token record per distinct batch
        counts = np.concatenate(tokens)                      # [images run, steps]: real counts
        macs = mean_macs(model, e.layers, counts.tolist())["total"]
        from algm_export.runtimes.batching import padded_counts, runs_of

        # what the batches computed: each image at its run's largest counts (the batch, or its slices)
        at_max = sum(model_macs(model, e.layers, list(top))["total"]
                     for b in tokens for top in padded_counts(b, runs_of(len(b), per_run))) / len(counts)
        row.update({"token_mode": "dynamic", "gmacs_at_batch_max": at_max,
                    "flop_ratio_at_batch_max": base_macs / at_max,
                    "tokens": {"mean": counts.mean(0).round(1).tolist(), "min": counts.min(0).tolist(),
                               "max": counts.max(0).tolist(), "images": int(counts.shape[0])},
                    "tokens_kept": (counts.mean(0) / n_patches).tolist()})
        if e.takes_threshold:
            row["threshold_input"] = True
    else:
        macs = base_macs if not caps else model_macs(model, e.layers, caps)["total"]
        row.update({"token_mode": None if e.is_baseline else "static",
                    "tokens": None if not caps else {"mean": list(caps), "min": list(caps), "max": list(caps)},
                    "tokens_kept": None if not caps else [c / n_patches for c in caps]})
    row.update({"latency_ms": 1e3 * med, "p10_ms": 1e3 * float(np.percentile(times, 10)),
                "p90_ms": 1e3 * float(np.percentile(times, 90)), "images_per_s": bs / med, "gmacs": macs,
                "flop_ratio": base_macs / macs, "speedup": base_med / med,
                "speedup_vs_flop_ratio": (base_med / med) / (base_macs / macs)})
    return row


def tokens_cell(r: dict) -> str:
    """The tokens processed per image after each step: static `C1/C2`, dynamic `mean (min-max)`."""
    from algm_export.core.tables import tokens_text

    return tokens_text(r.get("tokens"), r.get("token_mode") == "dynamic")


def plot(report: dict, folder: ExportFolder, path: Path) -> Path:
    """bench.png: speed-up against tokens kept, per backend and batch size, with the ideal (the FLOP
    ratio); the same chart as the report's (`tasks.visualize.speed_chart`)."""
    from algm_export.tasks.visualize import speed_chart

    return speed_chart(report["results"], path,
                       f"{report['backbone']} {report['image_size'][0]}x{report['image_size'][1]}")


def _setting_cell(r: dict) -> str:
    return f"{r['setting']} @{r['threshold']:.3f}" if r.get("threshold_input") else r["setting"]


def format_bench(report: dict) -> str:
    from algm_export.core.tables import format_table

    rows = [[r["backend"], f"c{r['concurrency']}" if r.get("concurrency") else r["batch"], _setting_cell(r),
             f"{r['latency_ms']:.1f}",
             f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}", f"{r['images_per_s']:.2f}", tokens_cell(r), f"{r['gmacs']:.1f}",
             f"{r['flop_ratio']:.2f}", f"{r['speedup']:.2f}", f"{r['speedup_vs_flop_ratio']:.2f}"]
            for r in report["results"]]
    head = ["backend", "batch", "setting", "median ms", "p10-p90", "img/s", "tokens/img", "GMACs", "FLOP ratio",
            "speed-up", "speed-up/FLOP"]
    batched = [r for r in report["results"] if r.get("token_mode") == "dynamic" and r["batch"] > 1]
    if batched:   # dynamic at batch > 1: the FLOP ratio of what the batches computed, beside the per-image one
        head.insert(9, "batch FLOP")
        for row, r in zip(rows, report["results"]):
            row.insert(9, f"{r['flop_ratio_at_batch_max']:.2f}" if r in batched else "")
    m = report["machine"]
    return (format_table(head, rows) + f"\n  {m['cpus']} CPUs, {m['threads']} threads, {report['repeats']} interleaved "
            f"repeats, {1e3 * report.get('settle_s', 0):.0f} ms idle before each timed run"
            + ("\n  dynamic rows: a different batch of the images each round; ms = a batch at the rate of those "
               "batches (the sum of their medians over the images they hold, times the batch size), GMACs the mean "
               "over the same images"
               if any(r.get("token_mode") == "dynamic" for r in report["results"]) else "")
            + ("\n  batch FLOP: baseline MACs / MACs of every image at its batch's largest token counts (what a "
               "dynamic graph computes at batch > 1); batches " + ("grouped by CLAP token count"
                                                                  if all(r.get("grouped") for r in batched)
                                                                  else "in image order")
               if batched else "")
            + ("\n  triton rows: served by Triton, cN = N concurrent clients of one image per request; img/s = served "
               "throughput, speed-up = its ratio to the baseline's at the same concurrency, ms = request latency; "
               f"answers: {(report.get('served') or {}).get('answer', 'logits')} (and merge_stats)"
               if any(r.get("concurrency") for r in report["results"]) else ""))
