"""One backend vocabulary for every command: the name -> runner table.

    torch          PyTorch: an entry's own token mode (static with its capacities, or dynamic; a
                   threshold-input entry takes `threshold=`), or `mode="reference"`: the published
                   per-image reference (docs/algorithm.md: the published method)
    onnxruntime    the entry's ONNX in ONNX Runtime (alias: ort)
    tensorrt       the entry's engine built with TensorRT (alias: trt; needs a CUDA GPU)
    tensorrt-rtx   the entry's engine built with TensorRT-RTX (needs a CUDA GPU)

Optional runtimes are imported only when a runner is made. A new runtime: a `Runner` subclass
under `runtimes/<name>/` and one `_factory` entry below (docs/architecture.md).
"""

from __future__ import annotations

from typing import Optional

from algm_export.core.errors import ConfigError
from algm_export.runtimes.base import Runner, check_input_size
from algm_export.core.names import PRECISIONS
from algm_export.runtimes.base import ALIASES, BACKENDS, SERVED, normalize_backend  # noqa: F401  (re-exported)

def parse_backends(text, served: bool = False) -> list[str]:
    """`torch,ort` or a list -> canonical names, duplicates removed (`served`: `triton` too)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for b in items:
        if str(b).strip():
            n = normalize_backend(b, served)
            if n not in out:
                out.append(n)
    return out


def available_backends() -> list[str]:
    """The backends that can run on this machine (TensorRT ones only with a CUDA GPU)."""
    out = ["torch", "onnxruntime"]
    try:
        from algm_export.runtimes.tensorrt.loader import gpu_runtime_available

        if gpu_runtime_available():
            out.append("tensorrt")
    except Exception:  # noqa: BLE001  (a broken TensorRT install means: not available)
        pass
    return out


def token_geometry(entry) -> Optional[tuple]:
    """(patches, CLAP window area) of an ALGM entry, for `tokens_from_merge_stats`; None for the baseline."""
    info = entry.folder.model_info
    grid, win = info.get("grid"), entry.window
    if entry.is_baseline or not grid or not win:
        return None
    return grid[0] * grid[1], win[0] * win[1]


TORCH_MODES = ("static", "dynamic", "reference")


def torch_runner(model, setting=None, capacities=None, token_mode: Optional[str] = None, device="cpu",
                 assignments: bool = False, takes_threshold: bool = False, name: Optional[str] = None,
                 merge_inputs: bool = False) -> Runner:
    """The PyTorch runner of `model` with ALGM `setting` (None: the model itself): `apply_algm(model,
    setting, capacities, token_mode)`; `assignments`: RunOutput.assignments per call (merge pictures);
    `takes_threshold` (dynamic mode): `infer(x, threshold=t)` sets the CLAP threshold per call."""
    from algm_export.merging.driver import apply_algm
    from algm_export.runtimes.torch import TorchRunner

    if setting is None:
        return TorchRunner(model, name or "torch", device=device)
    net = apply_algm(model, setting, capacities, token_mode)
    return TorchRunner(net, name or f"torch-{net.token_mode}", device=device, assignments=assignments,
                       takes_threshold=takes_threshold, merge_inputs=merge_inputs)


def make_runner(backend: str, entry, precision: str = "fp32", model=None, mode: Optional[str] = None,
                threads: Optional[int] = None, device: str = "cpu", plugins=None, decisions: bool = False) -> Runner:
    """The runner of `backend` for one `artifacts.Entry` (ONNX and engine files sha256-checked first).

    torch: `model` is the folder's model (`ExportFolder.model()`). `mode` None runs the entry as
    exported: a static entry with its capacities, a dynamic one in dynamic token mode (per-image
    exact counts; a threshold-input entry takes `infer(x, threshold=t)`, the reference of its
    graph at each threshold). `mode="reference"`: the published per-image reference (docs/algorithm.md: the published method).
    decisions: the runner also returns every merge step's assignment map and the tokens entering it
    (`RunOutput.assignments`, `merge_inputs`; torch and onnxruntime; for `merging.margins`)."""
    backend = normalize_backend(backend)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} unknown; use one of {', '.join(PRECISIONS)}")
    if backend == "torch":
        import torch

        if precision != "fp32":
            raise ConfigError("the torch backend runs fp32 only; use --precision fp32 with --backend torch")
        if model is None:
            raise ConfigError("the torch backend needs the model (ExportFolder.model())")
        if mode is not None and mode not in TORCH_MODES:
            raise ConfigError(f"torch mode {mode!r} unknown; use one of {', '.join(TORCH_MODES)}")
        if threads:
            torch.set_num_threads(threads)
        s = None if entry.is_baseline else entry.setting()
        mode = mode or entry.token_mode
        kw = {"assignments": True, "merge_inputs": True} if decisions else {}
        if s is None:
            r = torch_runner(model, device=device)
        elif mode == "reference":
            r = torch_runner(model, s, device=device, name="torch-reference", **kw)
        elif mode == "dynamic":
            r = torch_runner(model, s, token_mode="dynamic", device=device, takes_threshold=entry.takes_threshold, **kw)
        elif not entry.capacities and entry.is_dynamic:
            raise ConfigError(f"{entry.name} was exported in dynamic token mode: it has no capacities, so no static "
                              "PyTorch counterpart; run it with mode None (as exported) or 'reference'")
        elif not entry.capacities:
            raise ConfigError(f"manifest.json: setting {entry.name} has no capacities but is not marked "
                              "\"token_mode\": \"dynamic\", so it has no static PyTorch counterpart; re-export the folder")
        else:
            r = torch_runner(model, s, entry.capacities, device=device, name="torch-static", **kw)
        r.entry = entry
        return _one_image_per_run(r, entry)
    if backend == "onnxruntime":
        from algm_export.runtimes.onnxruntime import OrtRunner

        path = entry.onnx_path(precision)
        r = OrtRunner(path, threads=threads, name=f"onnxrt:{entry.name}",
                      decisions=decisions and not entry.is_baseline)
    else:
        from algm_export.runtimes.tensorrt.runner import HostTrtRunner, TrtRunner

        rec = entry.engine(precision, backend, None if plugins is None else bool(plugins))
        r = HostTrtRunner(TrtRunner.from_record(rec, plugins), f"trt:{entry.name}")
    r.token_geometry = token_geometry(entry)
    r.entry = entry
    if model is not None:
        check_input_size(r, model.cfg.image_size, entry.name)
    return _one_image_per_run(r, entry)


def _one_image_per_run(runner, entry):
    """`runner` with `max_batch` 1 when its entry's folder was exported for one image per run (`export
    --batch 1`): every backend then runs larger batches image by image, as the folder's graphs do."""
    if getattr(entry.folder, "batch", None) is not None:
        runner.max_batch = entry.folder.batch
    return runner


def backend_for_file(path) -> str:
    """The backend that runs a file: .onnx -> onnxruntime, anything else (an engine) -> tensorrt."""
    from pathlib import Path

    return "onnxruntime" if Path(path).suffix == ".onnx" else "tensorrt"


def runner_for_file(path, backend: Optional[str] = None, n_patches: Optional[int] = None,
                    window: Optional[int] = None, threads: Optional[int] = None) -> Runner:
    """The runner of one exported .onnx or built engine file outside a folder walk (predict --engine).

    A file that an export folder's manifest lists is sha256-checked against it first (and an
    engine's plugin library with it); the runner's `entry` is then that manifest entry (else None).
    `n_patches`, `window`: for the token counts (`tokens_from_merge_stats`)."""
    from pathlib import Path

    from algm_export.artifacts import ExportFolder

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--engine {path}: no such file; give an exported .onnx or a built .engine")
    backend = normalize_backend(backend or backend_for_file(path))
    onnx_file = path.suffix == ".onnx"
    if backend == "torch" or onnx_file != (backend == "onnxruntime"):
        raise ConfigError(f"--engine {path.name} cannot run on --backend {backend}: .onnx files run on onnxruntime, "
                          "engines on tensorrt or tensorrt-rtx")
    listing = ExportFolder.of_file(path)  # a file of an export folder: sha256-checked against its manifest
    entry = listing[1] if listing else None
    if listing is None and onnx_file:
        from algm_export.artifacts.external import check_graph_file

        # a loose file: its external data (if any) must stay inside its own folder
        check_graph_file(path, path.parent, None, path.name)
    if backend == "onnxruntime":
        from algm_export.runtimes.onnxruntime import OrtRunner

        r = OrtRunner(path, threads=threads)
    else:
        from algm_export.runtimes.tensorrt.runner import HostTrtRunner, TrtRunner

        rec = listing[2] if listing else None
        lib = rec.plugin_path() if rec is not None else None
        r = HostTrtRunner(TrtRunner(path, backend=None if rec else backend, record=rec.raw if rec else None,
                                    plugins=lib), f"trt:{path.name}")
    r.entry = entry
    if entry is not None and token_geometry(entry):
        r.token_geometry = token_geometry(entry)
    elif n_patches and window:
        r.token_geometry = (n_patches, window)
    return r
