"""`predict --ray [ADDRESS]`: the same work as a Ray Data pipeline.

The collection (`collection.collect_items`, in the driver) becomes a dataset of image rows
(index, output name, source path); `map_batches` hands `--batch-size` of them at a time to a
fixed pool of `--actors` actors of `PredictWorker`, each holding one runner from the runtime
registry (`tasks.predict.make_runner`: torch, onnxruntime, tensorrt) with `--cpus-per-actor` /
`--gpus-per-actor` reserved. An actor reads each image, checks it against its finished outputs
(resume), segments it and writes its files exactly as the single-process run does
(`tasks.predict.process_item`); it returns one `results.jsonl` record per image, which the
driver logs and counts. In dynamic token mode (`tasks/predict/grouping.py`) the driver, which holds
the model's weights, reads, resume-checks and probes every image first (pools, then groups by
CLAP count, as the single process forms them); each group is one row, run by an actor as one
forward, so both executors form the same batches and write the same label maps.

Where the model and the exported file come from: the driver loads the model and checks the
file first (an export folder's file sha256-checked against its manifest, a TensorRT engine
without opening it), so bad input stops before any actor starts. Each actor then opens the file
again itself through the same artifact layer and checks (`runtimes.registry.runner_for_file`);
the torch backend loads the checkpoint in each actor (`models.registry.resolve_model`). Actors
of an exported file get the model from the driver without its weights (`weightless`).

Clusters: `local` starts a private cluster on this machine, on the loopback address, and stops
it at the end (also when the run fails or is interrupted). `auto` joins the cluster this machine
belongs to (`ray start`), `ray://HOST:10001` one through the Ray client; those stay up. On a
joined cluster every node must see the images, the exported file (or checkpoint) and the output
folder at the same paths (shared storage), and have algm-export installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from algm_export.core.errors import AlgmError, BackendUnavailable, ConfigError
from algm_export.tasks.predict.collection import SAMPLE_PREFIX

#: what `--ray local` sets for the cluster it starts: nodes on the loopback address, no tokens
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
_ADDRESS = re.compile(r"^(local|auto|ray://[^\s/]+(:\d+)?/?|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def check_options(opts) -> None:
    """ConfigError for Ray options that cannot work (before anything loads)."""
    if not _ADDRESS.match(str(opts.ray)):
        raise ConfigError(f"--ray {opts.ray!r} is not a Ray address; give local (a private cluster on this machine), "
                          "auto (the cluster this machine joined) or ray://HOST:PORT (put --ray after the images, "
                          "or give the address: --ray local)")
    if opts.actors is not None and opts.actors < 1:
        raise ConfigError(f"--actors {opts.actors} must be at least 1")
    if not opts.cpus_per_actor > 0:
        raise ConfigError(f"--cpus-per-actor {opts.cpus_per_actor:g} must be above 0")
    if opts.gpus_per_actor < 0:
        raise ConfigError(f"--gpus-per-actor {opts.gpus_per_actor:g} must be 0 or more")
    dev = str(opts.device or "auto")
    if dev.startswith("cuda") and not opts.gpus_per_actor:
        raise ConfigError(f"--device {dev} with --ray: give the actors GPUs with --gpus-per-actor (Ray picks the GPU)")


def actor_device(opts) -> str:
    """The torch device of an actor: its GPU when it has one, else the CPU."""
    return "cuda" if opts.gpus_per_actor else "cpu"


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"--ray needs Ray Data, which is not installed ({e}); pip install "
                                 "'algm-export[ray]' (or 'ray[data]>=2.40')") from None
    return ray


@contextlib.contextmanager
def _stderr_silenced(enabled: bool):
    """File descriptor 2 on /dev/null for the block (Ray's native code writes there directly; what
    goes wrong still comes back as an exception). The processes a local cluster starts send their
    output to the files of its session folder."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def ray_cluster(address: str, debug: bool = False, num_cpus: Optional[int] = None):
    """Connect to Ray for the `with` block: `local` starts a private cluster on 127.0.0.1 and shuts it
    down at the end; `auto` / `ray://...` / `HOST:PORT` join a running one (left running). Within an
    already connected process (an API caller who ran `ray.init`), that connection is used as is.
    The loopback setting (`LOCAL_ENV`) is read when Ray is imported: a process that imported Ray
    before gets Ray's own choice of address for a local cluster."""
    saved = {}
    if address == "local":
        for k, v in LOCAL_ENV.items():  # read when Ray is imported and by the processes it starts
            saved[k] = os.environ.get(k)
            os.environ[k] = v
    if not debug and "RAY_BACKEND_LOG_LEVEL" not in os.environ:
        saved["RAY_BACKEND_LOG_LEVEL"] = None
        os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"   # Ray's C++ notes about its own actors, on stderr
    started = False
    try:
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"logging_level": logging.INFO if debug else logging.WARNING,
                                      "log_to_driver": debug}
            if address == "local":
                kwargs.update(address="local", include_dashboard=False,
                              num_cpus=num_cpus or len(os.sched_getaffinity(0)))
            else:
                kwargs["address"] = address
            try:
                with _stderr_silenced(not debug):   # Ray's C++ start-up notes
                    ray.init(**kwargs)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
                msg = " ".join(str(e).split())[:300]
                if address == "local":
                    raise BackendUnavailable(f"cannot start a local Ray cluster ({type(e).__name__}: {msg}); run with "
                                             "--debug for Ray's own messages, or run without --ray") from None
                raise BackendUnavailable(f"cannot reach a Ray cluster at {address} ({type(e).__name__}: {msg}); start "
                                         "one (`ray start --head`) or run with --ray local") from None
            started = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False            # predict draws its own bar
        ctx.print_on_execution_start = False
        if not debug:
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        yield ray
    finally:
        if started:
            import ray

            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class WorkerConfig:
    """What each actor gets: the job (`tasks.predict.Job`), the model (a checkpoint or built-in name
    for torch; the model's configuration for an exported file), and how to open the runner."""
    job: Any
    model: Any
    backend: str
    engine: Optional[str]
    device: str
    threads: int
    config: Optional[str] = None
    trust_checkpoint: bool = False


def weightless(model):
    """A copy of `model` whose parameters and buffers live on the meta device (shapes, no data): what
    an actor of an exported file needs of the model (its configuration, its family's windowing),
    light to send."""
    import copy

    import torch

    memo = {}
    for prm in model.parameters():
        memo[id(prm)] = torch.nn.Parameter(torch.empty_like(prm, device="meta"), requires_grad=prm.requires_grad)
    for buf in model.buffers():
        memo[id(buf)] = torch.empty_like(buf, device="meta")
    return copy.deepcopy(model, memo)


class PredictWorker:
    """The Ray Data actor: one runner, many batches. `__call__` takes a batch of rows (index, name,
    source) and returns their records as JSON strings. An actor that cannot open its runner records
    that error for every image it gets, marked `worker_error`, and the driver stops the run."""

    def __init__(self, config: WorkerConfig):
        from algm_export.tasks.predict import make_runner
        from algm_export.models.registry import resolve_model

        self.config = config
        self.error: Optional[BaseException] = None
        try:
            model = config.model
            if isinstance(model, str):
                model = resolve_model(model, config=config.config, trust_checkpoint=config.trust_checkpoint)
            self.model = model
            self.runner = make_runner(model, config.job.setting, config.backend, engine=config.engine,
                                      device=config.device, threads=config.threads)
        except Exception as e:  # noqa: BLE001  (reported to the driver, which stops the run)
            self.error = e

    def __call__(self, batch: dict) -> dict:
        from algm_export.tasks.predict import process_item
        from algm_export.tasks.predict.collection import Item, failure
        from algm_export.tasks.predict.grouping import run_group

        if "items" in batch:   # planned rows (dynamic token mode): a group, one forward; or images one by one
            rows = [([Item(int(i), str(n), str(s)) for i, n, s in json.loads(text)], bool(g))
                    for text, g in zip(batch["items"], batch["grouped"])]
        else:
            rows = [([Item(int(i), str(n), str(s))], False)
                    for i, n, s in zip(batch["index"], batch["name"], batch["source"])]
        out = []
        for items, grouped in rows:
            if self.error is not None:
                recs = [failure(item, self.error, None, self.config.backend) | {"worker_error": type(self.error).__name__}
                        for item in items]
            elif grouped:
                recs = run_group(items, self.model, self.runner, self.config.job)
            else:
                recs = [process_item(item, self.model, self.runner, self.config.job) for item in items]
            out.extend(json.dumps(rec, default=str) for rec in recs)
        return {"record": np.asarray(out, dtype=object)}


def _worker_error(rec: dict) -> AlgmError:
    from algm_export.core import errors

    cls = getattr(errors, rec.get("worker_error") or "", None)
    cls = cls if isinstance(cls, type) and issubclass(cls, AlgmError) else BackendUnavailable
    return cls(f"a Ray actor ({rec.get('worker')}) could not open its runner: {rec.get('error')}")


def default_actors(resources: dict, cpus_per_actor: float, gpus_per_actor: float) -> int:
    """One actor per `gpus_per_actor` GPUs when actors take GPUs, else one per `cpus_per_actor` CPUs."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if gpus_per_actor:
        if gpus < gpus_per_actor:
            raise BackendUnavailable(f"--gpus-per-actor {gpus_per_actor:g}: the Ray cluster has {gpus:g} GPU(s); "
                                     "run the actors on CPUs (leave --gpus-per-actor out) or join a cluster with GPUs")
        return max(1, int(gpus // gpus_per_actor + 1e-9))
    if cpus < cpus_per_actor:
        raise BackendUnavailable(f"--cpus-per-actor {cpus_per_actor:g}: the Ray cluster has {cpus:g} CPU(s); "
                                 "ask for fewer")
    return max(1, int(cpus // cpus_per_actor + 1e-9))


def run_on_ray(items, job, opts, model, take: Callable[[dict], None], debug: bool = False, plans=None) -> dict:
    """Segment `items` on Ray (see the module docstring); `take(record)` gets each image's record as it
    comes back. Returns what `run.json` records about the execution.
    plans: in dynamic token mode, the driver's planned pools (`grouping.plan_pool`, their skipped and
    failed images already taken): each group becomes one row, run as one forward by an actor, so the
    batches are the single-process run's; the windowed images go `batch_size` to a row."""
    from algm_export.runtimes.registry import normalize_backend
    from algm_export.models.registry import DEFAULT_MODEL

    backend = normalize_backend(opts.backend)
    engine = opts.backend_options.get("engine")
    if backend == "torch":
        actor_model = opts.model if opts.model is not None else DEFAULT_MODEL
        if isinstance(actor_model, str) and os.path.exists(actor_model):
            actor_model = os.path.abspath(actor_model)
    else:
        actor_model = weightless(model)
    threads = max(1, int(opts.cpus_per_actor))
    # paths as every node sees them (shared storage), not relative to this process's folder
    job = dataclasses.replace(job, out=os.path.abspath(job.out))
    def shared(it):
        return it if it.source.startswith(SAMPLE_PREFIX) else dataclasses.replace(it, source=os.path.abspath(it.source))

    items = [shared(it) for it in items]
    rows = None
    if plans is not None:
        bs = opts.batch_size
        rows = []
        for plan in plans:
            rows += [{"items": _row_items(map(shared, plan.windowed[s:s + bs])), "grouped": False}
                     for s in range(0, len(plan.windowed), bs)]
            rows += [{"items": _row_items(map(shared, g)), "grouped": True} for g in plan.groups]
    config = WorkerConfig(job=job, model=actor_model, backend=backend,
                          engine=os.path.abspath(engine) if engine else None, device=actor_device(opts),
                          threads=threads, config=os.path.abspath(opts.config) if opts.config else None,
                          trust_checkpoint=opts.trust_checkpoint)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        if not debug:   # Ray's notes about its own deprecated settings
            warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        return _run(items, opts, config, take, debug, rows)


def _row_items(items) -> str:
    """A planned row's images, as JSON: [[index, name, source], ...]."""
    return json.dumps([[it.index, it.name, it.source] for it in items])


def _run(items, opts, config: WorkerConfig, take: Callable[[dict], None], debug: bool, rows=None) -> dict:
    t0 = time.perf_counter()
    with ray_cluster(opts.ray, debug=debug) as ray:
        start_seconds = time.perf_counter() - t0
        wanted = opts.actors or default_actors(ray.cluster_resources(), opts.cpus_per_actor, opts.gpus_per_actor)
        per_call = opts.batch_size if rows is None else 1        # planned rows: one group (or chunk) per call
        if rows is None:
            rows = [{"index": it.index, "name": it.name, "source": it.source} for it in items]
        n_batches = max(1, -(-len(rows) // per_call))
        actors = max(1, min(wanted, n_batches))
        ds = ray.data.from_items(rows, override_num_blocks=min(n_batches, 10_000))
        ds = ds.map_batches(PredictWorker, fn_constructor_kwargs={"config": config}, batch_size=per_call,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                            num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor or None)
        if rows:
            for row in ds.iter_rows():
                rec = json.loads(row["record"])
                if rec.get("worker_error"):
                    raise _worker_error(rec)
                take(rec)
        address = opts.ray if opts.ray != "local" else f"local ({socket.gethostname()}, 127.0.0.1)"
    return {"executor": "ray", "ray_address": address, "ray_start_seconds": round(start_seconds, 3), "actors": actors,
            "cpus_per_actor": opts.cpus_per_actor, "gpus_per_actor": opts.gpus_per_actor}


__all__ = ["LOCAL_ENV", "PredictWorker", "WorkerConfig", "actor_device", "check_options", "default_actors",
           "ray_cluster", "run_on_ray"]
