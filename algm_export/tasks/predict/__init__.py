"""`algm-export predict`: segment images or whole collections with a Segmenter (+ ALGM).

Per image NAME, into the output folder (the collection rules, safe writes, resume and the run
log: `tasks/predict/collection.py`; on a Ray cluster: `tasks/predict/cluster.py`):

* `NAME_labels.png` the class id of every pixel (8-bit up to 256 classes, 16-bit above);
* `NAME_seg.png`    colour-coded segmentation at the image's own size;
* `NAME_merge.png`  the model input with the token groups after every merge step (CLAP
  windows, then GBM groups); for sliding-window runs, the first window;
* `NAME_tokens.json` token counts per merge step, merges, forced merges, threshold, layers
  (with `--no-algm`: just the patch count N), the input's sha256, milliseconds, the run key;
* and for the run: `results.jsonl` (a line per image) and `run.json` (counts, images/s).

How an image is run: if it fits the model input (both sides <= the model size) and
`sliding` is off, it is resized to the model size, run once, and the logits resized back.
Otherwise the published evaluation runs (`models.inference`): short side resized to
`inference_kwargs.im_size`, sliding windows of `window_size` every `window_stride`, logits
averaged, then resized to the image size. Every image runs on its own (one forward, or its
windows `batch_size` at a time), in one process or on a Ray actor alike, so both give the same
label maps. A family with its own evaluation windows
(`SegModel.own_windows`, EoMT) runs them for every image not at the model size.

Dynamic token mode (a dynamic-token exported file, or a ready torch runner of `apply_algm(...,
token_mode="dynamic")`) at `batch_size` > 1 with `group` "on", or "auto" (the default) on a GPU
(TensorRT, CUDA; on a CPU one image per forward is cheaper, docs/decisions.md item 56): the images
that run at the model size go `batch_size` to a forward, the batches formed of images of similar
CLAP token counts (`tasks/predict/grouping.py`); each image keeps its own outputs and real counts,
and NAME_tokens.json adds `batch_images` and `batch_tokens` (the counts its batch computed at);
`run.json`'s `grouping` gives the FLOP ratio as computed beside the image-by-image one. The run key
leaves the batching out: the label maps of a batch equal the image's own up to float32 rounding.

Backends: `make_runner(model, setting, backend)` returns a `runtimes.registry` runner
(`Runner.infer(batch) -> RunOutput`: logits, merge_stats, tokens, and from the torch runner
the assignment maps for the merge picture). `PredictOptions.backend` takes the registry's
names (torch, onnxruntime/ort, tensorrt/trt, tensorrt-rtx; CLI `--backend`): torch runs the
checkpoint (the per-image reference), the others an exported file (`--engine FILE`; without
`--model`, the model of the export folder that lists the file). A file an export folder lists
runs the setting its entry records; a threshold-input file (dynamic token mode, `export
--threshold-input`) runs at `--threshold` (default its first operating point), and a file with
its threshold built in refuses another one. A runner with a fixed input shape sets
`input_size = (h, w)`; predict then feeds it only that size.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from algm_export.core.errors import ConfigError, InputError
from algm_export.models.images import from_model_input, model_input
from algm_export.core.setting import AlgmSetting, default_setting, parse_layers  # noqa: F401
from algm_export.models.registry import DEFAULT_MODEL, resolve_model
from algm_export.models.inference import sliding_window_logits, window_plan
from algm_export.models.base import SegModel
from algm_export.models.layers import interp_matrix
from algm_export.runtimes.batching import padded_counts, runs_of
from algm_export.tasks.predict.grouping import groups_images, plan_pool, pools, run_group

SAMPLE_PREFIX = "sample:"
FAILED_EXIT = 4   # the CLI's exit code when some images failed (each recorded in results.jsonl)


# ----------------------------------------------------------------------------- options, settings

@dataclass
class PredictOptions:
    model: Union[str, SegModel, None] = None    # None: the export folder's model of `--engine`, else the default
    config: Optional[str] = None  # the model's config file, for formats that keep one (mmsegmentation)
    threshold: Optional[float] = None           # None: the checkpoint's (variant.yml) or the default
    layers: Optional[Sequence[int]] = None      # None: the checkpoint's or (1, 5) / (1, 7) for ViT-L
    algm: bool = True
    out: Union[str, Path] = "predictions"
    sliding: bool = False                       # force the sliding-window evaluation
    batch_size: int = 4                         # windows per forward; dynamic token mode: images per forward
    group: Union[str, bool] = "auto"            # dynamic token mode: images of similar token counts per forward:
                                                # "on", "off", "auto" (on where the runner is on a GPU)
    device: str = "cpu"
    backend: str = "torch"
    backend_options: dict = field(default_factory=dict)
    merge_png: bool = True
    seg_png: bool = True
    trust_checkpoint: bool = False              # full unpickling of the checkpoint (--trust-checkpoint)
    list_file: Optional[Union[str, Path]] = None  # a text file naming one image per line (--list)
    overwrite: bool = False                     # redo images whose outputs are complete (no resume)
    wait: Union[bool, float] = False            # wait for another run that writes to `out`
    ray: Optional[str] = None                   # None: this process; "local", "auto", "ray://HOST:PORT"
    actors: Optional[int] = None                # Ray: actors (default: one per CPU, or per GPU)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0


def algm_setting_for(model: SegModel, threshold: Optional[float] = None,
                     layers: Optional[Sequence[int]] = None) -> AlgmSetting:
    """The ALGM setting to run: the checkpoint's (variant.yml), else the published default,
    with `threshold` / `layers` overriding. Checked against the model (layers, grid)."""
    cfg = model.cfg
    if cfg.algm:
        base = AlgmSetting.from_variant({"dataset_kwargs": cfg.algm})
    else:
        base = default_setting(None, cfg.n_layers)
    setting = AlgmSetting(base.threshold if threshold is None else float(threshold), base.window,
                          base.layers if layers is None else tuple(layers), base.policy)
    model.check_setting(setting)
    return setting


def resolve_device(name: str) -> torch.device:
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device {name!r} is not a device ({e}); use cpu, cuda or cuda:N") from None


# ----------------------------------------------------------------------------- backends

def make_runner(model: SegModel, setting: Optional[AlgmSetting], backend: str = "torch", engine=None,
                device: str = "cpu", threads: Optional[int] = None):
    """The predict runner, a `runtimes.registry` runner: torch runs `model` with `setting` (the
    published per-image reference, with the assignment maps for the merge picture; None: no
    merging); the other backends run an exported file (`engine=FILE`, .onnx or a built engine).
    threads: CPU threads of torch / ONNX Runtime (None: their default)."""
    from algm_export.runtimes.registry import normalize_backend, runner_for_file, torch_runner

    name = normalize_backend(backend)
    if name == "torch":
        if engine:
            raise ConfigError("--engine runs an exported file: give --backend onnxruntime, tensorrt or tensorrt-rtx "
                              "(or leave --backend out)")
        if threads:
            torch.set_num_threads(int(threads))
        return torch_runner(model, setting, device=str(resolve_device(device)), assignments=True)
    if not engine:
        raise ConfigError(f"--backend {name} runs an exported file: give --engine FILE (.onnx or .engine)")
    window = setting.window if setting is not None else (2, 2)
    n = model.cfg.grid[0] * model.cfg.grid[1]
    runner = runner_for_file(engine, name, n_patches=n, window=window[0] * window[1], threads=threads)
    runner.input_size = tuple(model.cfg.image_size)
    runner.path = Path(engine)
    return runner


def runner_info(runner) -> dict:
    """What NAME_tokens.json records about the runner."""
    if getattr(runner, "path", None) is not None:
        return {"backend": runner.backend, "engine": str(runner.path)}
    return {"backend": runner.backend, "device": str(getattr(runner, "device", "cpu"))}


def file_setting(runner, setting: Optional[AlgmSetting], threshold: Optional[float],
                 layers: Optional[Sequence[int]]) -> Optional[AlgmSetting]:
    """The setting an exported file runs, for a file an export folder lists (`runner.entry`): the entry's
    own (a threshold-input file at `threshold`, default its first operating point); ConfigError when
    --threshold / --layers ask for something the file does not run. Else `setting` unchanged."""
    entry = getattr(runner, "entry", None)
    if entry is None:
        return _unlisted_file_setting(runner, setting, threshold)
    if entry.is_baseline:
        return None
    own = entry.setting()
    if layers is not None and tuple(layers) != tuple(own.layers):
        raise ConfigError(f"--layers {','.join(map(str, layers))}: {runner.path.name} merges at layers "
                          f"{','.join(map(str, own.layers))}; drop --layers or export those layers")
    if entry.takes_threshold:
        return own if threshold is None else own.with_threshold(float(threshold))
    if threshold is not None and abs(float(threshold) - float(own.threshold)) > 1e-9:
        raise ConfigError(f"--threshold {threshold}: {runner.path.name} has its threshold {own.threshold} built in "
                          "(the graph takes no threshold input); drop --threshold, or export with --token-mode "
                          "dynamic --threshold-input to choose it at run time")
    return own


def _unlisted_file_setting(runner, setting: Optional[AlgmSetting], threshold: Optional[float]):
    """A file no export folder lists: a threshold-input graph runs at `setting`'s threshold; an ONNX
    with its threshold built in runs (and is recorded) at the threshold its AlgmClap node carries, and
    refuses another --threshold; an engine's built-in threshold cannot be read, so --threshold is
    refused there (run it from its export folder, whose manifest says what it runs)."""
    if getattr(runner, "path", None) is None or getattr(runner, "takes_threshold", False) or setting is None:
        return setting
    name = Path(str(runner.path)).name
    read = getattr(runner, "built_in_threshold", None)
    if read is None:
        if threshold is not None:
            raise ConfigError(f"--threshold {threshold}: {name} has its threshold built in, and no export folder's "
                              "manifest lists the file, so which one is not known; drop --threshold, or predict with "
                              "the engine inside its export folder")
        return setting
    own = read()
    if own is None:  # a baseline graph: nothing merges
        return None
    if threshold is not None and abs(float(threshold) - own) > 1e-6:
        raise ConfigError(f"--threshold {threshold}: {name} has its threshold {own:g} built in (the graph takes no "
                          "threshold input); drop --threshold, or export with --token-mode dynamic --threshold-input "
                          "to choose it at run time")
    return setting.with_threshold(own)


# ----------------------------------------------------------------------------- logits -> labels

def labels_at_size(logits: torch.Tensor, size: Sequence[int], max_bytes: int = 256 << 20) -> np.ndarray:
    """argmax over classes of `logits [1, C, h, w]` bilinearly resized to `size` (H, W).

    Small outputs: `F.interpolate` + argmax. Large images (C*H*W floats above `max_bytes`): the
    same separable bilinear weights applied in bands of rows, so memory stays bounded.
    """
    H, W = int(size[0]), int(size[1])
    C, h, w = logits.shape[1:]
    if C * H * W * 4 <= max_bytes:
        up = logits if (h, w) == (H, W) else F.interpolate(logits.float(), size=(H, W), mode="bilinear",
                                                           align_corners=False)
        return up[0].argmax(0).cpu().numpy().astype(np.int32)
    L = logits[0].float()
    ry = interp_matrix(h, H, L.device)
    rxt = interp_matrix(w, W, L.device).t().contiguous()
    rows = max(1, max_bytes // (C * W * 4))
    out = np.empty((H, W), dtype=np.int32)
    for r0 in range(0, H, rows):
        band = torch.einsum("yh,chw->cyw", ry[r0:r0 + rows], L) @ rxt        # [C, rows, W]
        out[r0:r0 + rows] = band.argmax(0).cpu().numpy()
    return out


# ----------------------------------------------------------------------------- one image

@dataclass
class Prediction:
    name: str
    labels: np.ndarray                 # [H, W] int32 class per pixel
    tokens: dict                       # what goes into NAME_tokens.json
    view: Optional[np.ndarray] = None  # uint8 image of the (first) model input, for the merge picture
    assignments: Optional[list] = None  # per step [N] of that input
    grid: Optional[tuple[int, int]] = None


def _model_size(model: SegModel, runner) -> tuple[int, int]:
    size = getattr(runner, "input_size", None)
    return tuple(int(v) for v in (size or model.cfg.image_size))


def _window_settings(model: SegModel, runner) -> tuple[tuple[int, int], tuple[int, int], int]:
    inf = model.cfg.inference or {}
    msize = _model_size(model, runner)

    def pair(v):
        return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))

    ws = pair(inf.get("window_size", msize))
    fixed = getattr(runner, "input_size", None)
    if fixed is not None and tuple(ws) != tuple(fixed):
        ws = tuple(fixed)  # a fixed-shape engine dictates the window
    stride = pair(inf.get("window_stride", ws))
    im_size = int(inf.get("im_size", min(ws)))
    return ws, stride, im_size


@contextlib.contextmanager
def one_torch_thread():
    """torch on one CPU thread for the block. PyTorch's bilinear resize of a 3-channel image differs in
    the last bit between one thread and several (how the rows are split), so predict resizes
    images and logits on one thread: the same label maps in one process with N threads as on a
    one-thread Ray actor."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def prepare_input(img: np.ndarray, model: SegModel, size) -> torch.Tensor:
    """`models.images.model_input` at `size`, the same bits whatever torch's thread count."""
    with one_torch_thread():
        return model_input(img, model, size)


def _mean(v: Sequence[int]):
    m = float(np.mean(v))
    return int(m) if m == int(m) else round(m, 2)


def runs_windowed(model: SegModel, size: Sequence[int], msize: Sequence[int], sliding: bool) -> bool:
    """Whether an image of `size` (H, W) runs windows (the family's own, or the published sliding
    windows) rather than one forward at the model size `msize`."""
    H, W = int(size[0]), int(size[1])
    if model.own_windows and (sliding or (H, W) != tuple(msize)):
        return True
    return sliding or H > msize[0] or W > msize[1]


def _window_record(out, j: int, anchor=None) -> dict:
    """The statistics of image `j` of a runner's batch output (`RunOutput`): its anchor and, where the
    runner reports them, tokens / merges / forced per merge step."""
    rec: dict = {"anchor": list(anchor) if anchor else [0, 0]}
    if out.merge_stats is not None and out.tokens is not None:
        rec.update({"tokens": [int(v) for v in out.tokens[j]],
                    "merges": [int(v) for v in out.merge_stats[j, :, 0]],
                    "forced": [int(v) for v in out.merge_stats[j, :, 1]]})
    return rec


def _first_view(batch: torch.Tensor, j: int, out, cfg) -> dict:
    """What the merge picture needs of input `j` of `batch` [B, 3, h, w]: the image, its patch grid and
    (from runners that return them) its assignment map after every step."""
    first = {"view": from_model_input(batch[j:j + 1], cfg.normalization),
             "grid": (batch.shape[-2] // cfg.patch_size, batch.shape[-1] // cfg.patch_size)}
    if out.assignments is not None:
        first["assign"] = [np.asarray(a[j]) for a in out.assignments]
    return first


def _prediction(model: SegModel, name: str, size, mode: str, per_window: list, extra: dict, first: dict,
                setting: Optional[AlgmSetting], labels: np.ndarray, seconds: float) -> Prediction:
    """The Prediction of one image from its windows' statistics (`_window_record`, one per forward
    input; several: their mean per step) and the first input's view (`_first_view`)."""
    cfg = model.cfg
    H, W = int(size[0]), int(size[1])
    grid = first.get("grid") or cfg.grid
    N = int(grid[0] * grid[1])
    tokens: dict = {"image": name, "size": [H, W], "mode": mode, "windows": len(per_window), **extra,
                    "grid": list(grid), "N": N, "algm": setting is not None}
    if setting is not None:
        steps = []
        kinds = ["clap"] + ["gbm"] * (len(setting.layers) - 1)
        for i, (layer, kind) in enumerate(zip(setting.layers, kinds)):
            vals = {k: [w[k][i] for w in per_window if k in w] for k in ("tokens", "merges", "forced")}
            if not vals["tokens"]:
                continue
            agg = {k: _mean(v) for k, v in vals.items()}   # one window: exact; several: mean
            steps.append({"layer": int(layer), "op": kind, **agg})
        tokens.update({
            "threshold": setting.threshold, "layers": list(setting.layers), "window": list(setting.window),
            "policy": setting.policy, "steps": steps,
            "tokens": [N] + [s["tokens"] for s in steps],
            "merges": [s["merges"] for s in steps], "forced": [s["forced"] for s in steps],
        })
        if len(per_window) > 1:
            tokens["per_window"] = per_window
    else:
        tokens["tokens"] = [N]
    tokens["seconds"] = round(seconds, 4)
    return Prediction(name=name, labels=labels, tokens=tokens, view=first.get("view"),
                      assignments=first.get("assign"), grid=tuple(grid))


def _threshold_kw(runner, setting: Optional[AlgmSetting]) -> dict:
    return {"threshold": setting.threshold} if getattr(runner, "takes_threshold", False) and setting else {}


def predict_image(model: SegModel, runner, img: np.ndarray, name: str = "image",
                  setting: Optional[AlgmSetting] = None, sliding: bool = False,
                  batch_size: int = 4) -> Prediction:
    """Segment one uint8 [H, W, 3] image with `runner`; collect the merge statistics."""
    H, W = img.shape[:2]
    msize = _model_size(model, runner)
    per_window: list[dict] = []
    first: dict = {}
    thr = _threshold_kw(runner, setting)

    def run(batch: torch.Tensor, anchors=None) -> torch.Tensor:
        out = runner.infer(batch, **thr)
        per_window.extend(_window_record(out, j, anchors[j] if anchors else None) for j in range(batch.shape[0]))
        if not first:
            first.update(_first_view(batch, 0, out, model.cfg))
        return torch.from_numpy(out.logits)

    t0 = time.perf_counter()
    if model.own_windows and runs_windowed(model, (H, W), msize, sliding):
        mode = "sliding"                # the family's own evaluation windows (e.g. EoMT's)
        x = model_input(img, model, (H, W))
        pending = []
        logits = model.inference(x, fn=lambda b: run(b, pending.pop(0)), batch_size=batch_size,
                                 on_batch=lambda anchors, crops: pending.append(anchors))
        extra = {"input_size": list(msize), "window_size": list(msize), "windowing": model.family}
    elif not runs_windowed(model, (H, W), msize, sliding):
        mode = "single"
        x = prepare_input(img, model, msize)
        logits = run(x)
        extra = {"input_size": list(msize)}
    else:
        mode = "sliding"
        ws, stride, im_size = _window_settings(model, runner)
        plan = window_plan((H, W), ws, stride, im_size)
        x = prepare_input(img, model, plan["resized"])
        pending: list = []
        logits = sliding_window_logits(lambda b: run(b, pending.pop(0)), x, ws, stride, None, batch_size,
                                       on_batch=lambda anchors, crops: pending.append(anchors))
        extra = {"input_size": list(ws), "resized": list(plan["resized"]), "window_size": list(ws),
                 "window_stride": list(stride), "im_size": im_size}
    with one_torch_thread():
        labels = labels_at_size(logits, (H, W))
    return _prediction(model, name, (H, W), mode, per_window, extra, first, setting, labels,
                       time.perf_counter() - t0)


def predict_batch(model: SegModel, runner, imgs: Sequence[np.ndarray], names: Sequence[str],
                  setting: Optional[AlgmSetting] = None) -> list[Prediction]:
    """Segment images that each run at the model size (`runs_windowed` False) in ONE forward of
    `runner` (dynamic token mode: every image computed at the batch's largest real token count).
    imgs: uint8 [H_i, W_i, 3]. Per image the Prediction `predict_image` gives (mode "single", its own
    real counts), plus in `tokens`: `batch_images` (images in the forward), `batch_tokens` (the
    batch's largest count after every step: what each image was computed at) and `seconds` (the
    forward's time shared evenly)."""
    msize = _model_size(model, runner)
    t0 = time.perf_counter()
    x = torch.cat([prepare_input(img, model, msize) for img in imgs])       # [B, 3, h, w]
    out = runner.infer(x, **_threshold_kw(runner, setting))
    logits = torch.from_numpy(out.logits)
    labels = []
    with one_torch_thread():
        for j, img in enumerate(imgs):
            labels.append(labels_at_size(logits[j:j + 1], img.shape[:2]))
    share = (time.perf_counter() - t0) / len(imgs)
    # what each image was computed at: its run's largest counts (a runner that takes fewer images per
    # run than the batch, `Runner.max_batch`, ran it in slices of that size)
    runs = runs_of(len(imgs), getattr(runner, "max_batch", None))
    run_of = {i: r for r in runs for i in r}
    tops = None if out.tokens is None else padded_counts(np.asarray(out.tokens), runs)
    preds = []
    for j, (img, name) in enumerate(zip(imgs, names)):
        p = _prediction(model, name, img.shape[:2], "single", [_window_record(out, j)], {"input_size": list(msize)},
                        _first_view(x, j, out, model.cfg), setting, labels[j], share)
        p.tokens["batch_images"] = len(run_of[j])
        if tops is not None and setting is not None:
            p.tokens["batch_tokens"] = list(tops[j])
        preds.append(p)
    return preds


def write_prediction(pred: Prediction, out_dir: Union[str, Path], setting: Optional[AlgmSetting],
                     patch_size: int, merge_png: bool = True, extra: Optional[dict] = None, seg_png: bool = True,
                     n_cls: Optional[int] = None) -> dict:
    """NAME_labels.png (given `n_cls`), NAME_seg.png, NAME_merge.png (ALGM with assignment maps), then
    NAME_tokens.json, last, as the mark of a finished image; each written atomically. Returns {kind: path}."""
    from algm_export.artifacts import write_json_atomic
    from algm_export.tasks.predict.collection import SUFFIXES, write_labels
    from algm_export.tasks.visualize import merge_png as write_merge, segmentation_png, step_titles

    out = Path(out_dir)
    paths = {}
    if n_cls is not None:
        paths["labels"] = write_labels(pred.labels, out / f"{pred.name}{SUFFIXES['labels']}", n_cls)
    if seg_png:
        paths["seg"] = segmentation_png(pred.labels, out / f"{pred.name}{SUFFIXES['seg']}")
    if merge_png and setting is not None and pred.assignments and pred.view is not None:
        paths["merge"] = write_merge(pred.view, pred.assignments, pred.grid, patch_size,
                                     out / f"{pred.name}{SUFFIXES['merge']}", titles=step_titles(setting.layers))
    paths["tokens"] = out / f"{pred.name}{SUFFIXES['tokens']}"
    data = dict(pred.tokens)
    if extra:
        data.update(extra)
    data["files"] = {k: Path(v).relative_to(out).as_posix() for k, v in paths.items()}
    write_json_atomic(paths["tokens"], data)
    return paths


# ----------------------------------------------------------------------------- many images

@dataclass
class Job:
    """What every worker (this process, or a Ray actor) needs besides its model and runner to turn
    an image into its output files; picklable."""
    out: str
    key: str                           # the run key (`collection.run_key`): resume compares it
    kinds: tuple                       # the files each image gets: labels, seg, merge, tokens
    setting: Optional[AlgmSetting]
    sliding: bool
    batch_size: int
    n_cls: int
    patch_size: int
    overwrite: bool
    run_info: dict                     # model, backbone, decoder, backend, engine or device


RECORD_KEYS = ("image", "size", "mode", "windows", "N", "algm", "tokens", "merges", "forced", "threshold", "ms",
               "seconds", "batch_images", "batch_tokens", "backend", "engine", "device")


def result_record(item, data: dict, status: str) -> dict:
    """The `results.jsonl` line of a finished image from its NAME_tokens.json content."""
    rec = {"index": item.index, "input": item.source, "name": item.name, "status": status,
           "sha256": data.get("input_sha256")}
    rec.update({k: data[k] for k in RECORD_KEYS if k in data})
    rec["outputs"] = data.get("files", {})
    return rec


def process_item(item, model: SegModel, runner, job: Job) -> dict:
    """Read, check (resume), segment and write one image of a collection; its `results.jsonl` record.
    Whatever goes wrong with this image (unreadable, undecodable, a failing forward) is recorded as
    `status: failed` with the error, so the run goes on."""
    from algm_export.tasks.predict.collection import decode_item, failure, finished, read_payload

    t0 = time.perf_counter()
    sha = None
    try:
        payload, sha = read_payload(item)
        if not job.overwrite:
            done = finished(job.out, item, sha, job.key, job.kinds)
            if done is not None:
                return result_record(item, done, "skipped")
        img = decode_item(item, payload)
        pred = predict_image(model, runner, img, item.name, job.setting, job.sliding, job.batch_size)
        return write_item(item, pred, sha, job, t0)
    except Exception as e:  # noqa: BLE001  (one image's failure is recorded; the run goes on)
        return failure(item, e, sha, job.run_info.get("backend"))


def write_item(item, pred: Prediction, sha: str, job: Job, t0: float) -> dict:
    """Write the output files of a segmented image of a collection; its `results.jsonl` record
    (`total_ms`: since `t0`, when its work began)."""
    from algm_export.tasks.predict.collection import worker_name

    extra = {"source": item.source, "input_sha256": sha, "ms": round(pred.tokens["seconds"] * 1000, 2),
             **job.run_info, "run_key": job.key}
    paths = write_prediction(pred, job.out, job.setting, job.patch_size, "merge" in job.kinds, extra,
                             "seg" in job.kinds, job.n_cls)
    rec = result_record(item, {**pred.tokens, **extra,
                               "files": {k: Path(v).relative_to(job.out).as_posix() for k, v in paths.items()}},
                        "done")
    rec["total_ms"] = round((time.perf_counter() - t0) * 1000, 2)
    rec["worker"] = worker_name()
    return rec


def open_model(opts: PredictOptions) -> SegModel:
    """The model of the run: `opts.model`; without one, the model of the export folder that lists
    `--engine` (sha256-checked, through `artifacts.ExportFolder`), else the default built-in."""
    if isinstance(opts.model, SegModel):
        return opts.model
    engine = opts.backend_options.get("engine")
    if opts.model is None and engine and Path(engine).is_file():
        from algm_export.artifacts import ExportFolder

        listing = ExportFolder.of_file(engine)
        if listing is not None:
            return listing[0].model(trust_checkpoint=opts.trust_checkpoint)
    return resolve_model(opts.model or DEFAULT_MODEL, config=opts.config, trust_checkpoint=opts.trust_checkpoint)


def _engine_stand_in(engine, backend: str):
    """What the driver of a Ray run knows of a TensorRT engine without opening it (the actors open it,
    on their GPUs): the export folder entry that lists it (sha256-checked), for `file_setting`."""
    from types import SimpleNamespace

    from algm_export.artifacts import ExportFolder
    from algm_export.runtimes.registry import runner_for_file

    if not Path(engine).is_file():
        runner_for_file(engine, backend)  # the usual error for a missing file or a wrong backend
    listing = ExportFolder.of_file(engine)
    return SimpleNamespace(entry=listing[1] if listing else None, path=Path(engine), takes_threshold=False,
                           backend=backend, max_batch=listing[0].batch if listing else None)


def run_predict(images: Sequence[Union[str, Path]], options: Optional[PredictOptions] = None,
                progress: bool = True, runner=None, order: Optional[Callable] = None,
                keep_records: Optional[int] = None, debug: bool = False) -> dict:
    """Segment every image of the collection; write the output files, `results.jsonl` and `run.json`.

    Returns the run summary (`run.json`: counts of done, skipped and failed images, seconds,
    images/s) with `records`: the `results.jsonl` records (the first `keep_records`; None: all).
    runner: a ready runner (this process only; else built from `options.backend`).
    order: a sort key over the collection's items (`collection.image_pixels`; default: input order).
    """
    from algm_export.artifacts import folder_lock, sha256_file
    from algm_export.runtimes.registry import normalize_backend
    from algm_export.tasks.predict.collection import (SUMMARY, Progress, ResultsLog, collect_items, model_identity,
                                                      now, remove_partials, run_key, write_summary)

    opts = options or PredictOptions()
    if not opts.algm and (opts.threshold is not None or opts.layers is not None):
        raise ConfigError("--threshold/--layers set ALGM, which --no-algm turns off; drop one of them")
    if opts.batch_size < 1:
        raise ConfigError(f"--batch-size {opts.batch_size} must be at least 1")
    groups_images(None, 1, opts.group)    # a ConfigError for an unknown --grouping
    if opts.ray is not None and runner is not None:
        raise ConfigError("a ready runner runs in this process; leave it out to run on Ray (each actor opens its own)")
    items = collect_items(images, opts.list_file, order)   # fails fast on bad paths, before the model loads
    if opts.ray is not None:
        from algm_export.tasks.predict.cluster import check_options

        check_options(opts)
    model = open_model(opts)
    setting = algm_setting_for(model, opts.threshold, opts.layers) if opts.algm else None
    backend = normalize_backend(opts.backend) if runner is None else runner.backend
    engine = opts.backend_options.get("engine")
    grouped = False
    if runner is None:
        check = None
        if opts.ray is None:
            runner = check = make_runner(model, setting, backend, device=opts.device, **opts.backend_options)
        elif backend == "onnxruntime" or (backend == "torch" and engine):
            # the file's checks and its setting, here, before any worker starts
            check = make_runner(model, setting, backend, device="cpu", threads=1, **opts.backend_options)
        elif backend != "torch":  # TensorRT: the engine opens on the actors' GPUs only
            check = _engine_stand_in(engine, backend)
        if check is not None and opts.algm:
            setting = file_setting(check, setting, opts.threshold, opts.layers)
        # Ray: the driver's check runs on the CPU; TensorRT's stand-in says tensorrt (the actors' GPUs)
        grouped = setting is not None and groups_images(check, opts.batch_size, opts.group)
        del check
    else:
        grouped = setting is not None and groups_images(runner, opts.batch_size, opts.group)
    if opts.ray is None:
        info = runner_info(runner)
    elif engine:
        info = {"backend": backend, "engine": str(engine)}
    else:
        from algm_export.tasks.predict.cluster import actor_device

        info = {"backend": backend, "device": actor_device(opts)}
    summary = model.describe()
    run_info = {"model": summary["source"], "backbone": summary["backbone"], "decoder": summary["decoder"], **info}
    merge = opts.merge_png and setting is not None and str(backend).startswith("torch")
    kinds = ("labels",) + (("seg",) if opts.seg_png else ()) + (("merge",) if merge else ()) + ("tokens",)
    key = run_key(model_identity(model), setting, backend, sha256_file(engine) if engine else None, opts.sliding)
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = Job(out=str(out_dir), key=key, kinds=kinds, setting=setting, sliding=opts.sliding,
              batch_size=opts.batch_size, n_cls=int(model.cfg.n_cls), patch_size=int(model.cfg.patch_size),
              overwrite=opts.overwrite, run_info=run_info)

    kept: list[dict] = []
    with folder_lock(out_dir, "predict", wait=opts.wait):
        remove_partials(out_dir)
        (out_dir / SUMMARY).unlink(missing_ok=True)     # written again when this run completes
        started, t0 = now(), time.perf_counter()
        log = ResultsLog(out_dir)
        bar = Progress(len(items), progress)

        batched: list = []          # (real counts, counts its batch computed at) of every image run in a batch

        def take(rec: dict) -> None:
            log.add(rec)
            if rec["status"] == "done" and rec.get("batch_tokens") is not None:
                batched.append((rec["tokens"][1:], rec["batch_tokens"]))
            bar.update(rec)
            if rec["status"] == "failed":
                warnings.warn(f"failed: {rec['error']} (recorded in {log.path.name})", ImageFailedWarning,
                              stacklevel=2)
            if keep_records is None or len(kept) < keep_records:
                kept.append(rec)

        try:
            size = _model_size(model, runner) if runner is not None else tuple(model.cfg.image_size)
            if opts.ray is None:
                executor = {"executor": "single-process"}
                if not grouped:
                    for item in items:
                        take(process_item(item, model, runner, job))
                else:
                    for pool in pools(items, opts.batch_size):
                        plan = plan_pool(pool, model, job, size)
                        for rec in plan.records:
                            take(rec)
                        for item in plan.windowed:
                            take(process_item(item, model, runner, job))
                        for group in plan.groups:
                            for rec in run_group(group, model, runner, job):
                                take(rec)
            else:
                from algm_export.tasks.predict.cluster import run_on_ray

                plans = None
                if grouped:   # planned here, where the model has its weights; each group one Ray row
                    plans = [plan_pool(pool, model, job, size) for pool in pools(items, opts.batch_size)]
                    for rec in (r for plan in plans for r in plan.records):
                        take(rec)
                executor = run_on_ray(items, job, opts, model, take, debug=debug, plans=plans)
        finally:
            bar.close()
            log.close()
        seconds = time.perf_counter() - t0
        counts = dict(log.counts)
        result = {"images": len(items), **counts, "seconds": round(seconds, 3),
                  "images_per_second": round(counts["done"] / seconds, 3) if seconds > 0 else None,
                  "started": started, "finished": now(), "out": str(out_dir), "run_key": key,
                  "outputs": list(kinds), **run_info, **executor, "batch_size": opts.batch_size,
                  "grouping": _grouping_summary(model, setting, grouped, opts.batch_size, batched)}
        write_summary(out_dir, result)
    result["records"] = kept
    return result


def _grouping_summary(model: SegModel, setting: Optional[AlgmSetting], grouped: bool, batch_size: int,
                      batched: list) -> dict:
    """What `run.json` says about image batching: whether images were batched by token count, the
    pool size, and over the images segmented in batches the FLOP ratio at their own counts beside
    the one of what their batches computed (`grouping.flop_ratios`)."""
    from algm_export.tasks.predict.grouping import POOL_BATCHES, flop_ratios

    if not grouped:
        return {"grouped": False}
    out = {"grouped": True, "pool": POOL_BATCHES * batch_size}
    ratios = flop_ratios(model, setting.layers, [r for r, _ in batched], [p for _, p in batched])
    return {**out, **(ratios or {})}


class ImageFailedWarning(UserWarning):
    """An image of a collection failed (unreadable, undecodable, a failing forward); the run goes on."""


def format_table(records: Sequence[dict]) -> str:
    """A readable table of `run_predict` records (images done or skipped; failed ones are left out)."""
    head = ["image", "size", "run", "N", "tokens per step", "reduction", "merges", "forced", "time"]
    rows = []
    for r in records:
        if r.get("status") == "failed":
            continue
        toks = r.get("tokens", [r.get("N")])
        fmt = [str(t) if isinstance(t, int) else f"{t:.1f}" for t in toks]
        red = f"{100 * (1 - toks[-1] / toks[0]):.1f}%" if r.get("algm") and toks[0] else "-"
        n_win = r["windows"]
        run = "1 forward" if r["mode"] == "single" else f"{n_win} window" + ("s" if n_win != 1 else "")
        merges = "/".join(str(m) if isinstance(m, int) else f"{m:.1f}" for m in r.get("merges", [])) or "-"
        forced = str(sum(r.get("forced", []))) if r.get("algm") else "-"
        when = "skipped" if r.get("status") == "skipped" else f"{r['seconds']:.2f}s"
        rows.append([r.get("name", r.get("image")), f"{r['size'][1]}x{r['size'][0]}", run, str(r["N"]),
                     " > ".join(fmt), red, merges, forced, when])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


__all__ = [
    "FAILED_EXIT", "ImageFailedWarning", "Job", "Prediction", "PredictOptions", "algm_setting_for", "file_setting",
    "format_table", "labels_at_size", "make_runner", "open_model", "parse_layers", "predict_batch", "predict_image",
    "process_item", "resolve_device", "runner_info", "run_predict", "runs_windowed", "write_item", "write_prediction",
]
