"""Host an export folder's entries on one Triton Inference Server, through PyTriton.

    with FolderServer("out/vit_s", backend="onnxruntime", http_port=8000) as srv:
        srv.models            # [ServedModel]: entry name, Triton model name, inputs, outputs
        srv.urls              # {"http": "http://127.0.0.1:8000", "grpc": ..., "metrics": ...}
        ...                   # answers until stop() (the context exit calls it)

One Triton model per entry (`baseline`, then each setting), named by `names.triton_name`. Every
model takes `image` FP32 [3, H, W] with a batch dimension (dynamic batching up to `max_batch`,
waiting at most `max_queue_delay_us` for a batch to fill; `instances` model instances, each with
its own runner) and answers `logits` FP32 [n_cls, H, W], `labels` [H, W] (each pixel's class,
the first of equal maxima: UINT8 up to 256 classes, INT32 above) and, for ALGM entries,
`merge_stats` INT32 [steps, 2] (merges and forced merges per ALGM step; the baseline merges nothing
and has no `merge_stats`, like its file). A request gets the outputs it asks for (all when it names
none): a client that needs only the segmentation asks for `labels`, and the logits the runner
computes are then neither kept nor sent (157 MB per 512 x 512 image at 150 classes, against
0.26 MB). A threshold-input entry also takes `threshold` FP32 [1] (optional: default its first
exported threshold). A dynamic-token entry on a CPU runner answers a Triton
batch one image per forward (`ServedModel.per_image`: a batch would compute every image at its
largest image's token count, and a CPU gains nothing from batching; docs/decisions.md item 57);
every other model runs the batch whole. Each model instance runs on a runner of the registry
(`make_runner`): onnxruntime with the entry's ONNX, tensorrt / tensorrt-rtx with its engine and,
when the engine was built with them, the plugin library; every file is sha256-checked by the
artifact layer before it is loaded, with the folder's lock held while the runners are made.

Requests that Triton's own checks refuse (a wrong shape, dtype, byte size, unknown input) never
reach a runner; an image with NaN/Inf or a threshold outside [-1, 1] is refused by the model with
the same message as everywhere else (a dynamic batch is answered as a whole, so requests batched
with it get that error too). The server stays up either way.

The Triton process: PyTriton ships `tritonserver` (2.51) with its Python backend, whose stub
process embeds the Python of this interpreter; it must load this interpreter's libpython, so
the server is started with `sysconfig`'s LIBDIR first on LD_LIBRARY_PATH (`server_environment`).
PyTriton's Python backend needs numpy < 2 (with numpy 2 it answers empty tensors), which the
`serve` extra pins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from algm_export.core.errors import AlgmError, ArtifactError, BackendUnavailable, ConfigError, InputError
from algm_export.runtimes.base import label_dtype
from algm_export.runtimes.triton.names import triton_names

log = logging.getLogger("algm_export.serve")

SERVE_EXTRA = "pip install 'algm-export[serve]' (bash scripts/bootstrap.sh installs it)"
#: backends a served model can run on (the registry's names)
SERVED_BACKENDS = ("onnxruntime", "tensorrt", "tensorrt-rtx")


def check_serving_available() -> None:
    """BackendUnavailable unless PyTriton, tritonclient, numpy < 2 and a shared libpython are here."""
    missing = []
    for mod in ("pytriton", "tritonclient.grpc", "tritonclient.http"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod.split(".")[0])
        except Exception as e:  # noqa: BLE001  (a broken install: protobuf / grpc versions)
            raise BackendUnavailable(f"{mod} cannot be imported ({type(e).__name__}: {e}); reinstall the serving "
                                     f"extra: {SERVE_EXTRA}") from None
    if missing:
        raise BackendUnavailable(f"serving on Triton needs {' and '.join(sorted(set(missing)))}, which "
                                 f"{'is' if len(set(missing)) == 1 else 'are'} not installed: {SERVE_EXTRA}")
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise BackendUnavailable(f"PyTriton's Triton Python backend needs numpy < 2 (this environment has numpy "
                                 f"{np.__version__}, with which it answers empty tensors); install the serving extra, "
                                 f"which pins it: {SERVE_EXTRA}")
    if not _libpython_dir():
        raise BackendUnavailable(f"this Python ({sys.executable}) has no shared libpython, which Triton's Python "
                                 "backend loads; serve from a Python built with a shared libpython (distribution Pythons are; for pyenv "
                                 "set PYTHON_CONFIGURE_OPTS to the enable-shared configure option and reinstall)")


def _libpython_dir() -> Optional[str]:
    """The folder holding this interpreter's shared libpython (sysconfig LIBDIR), None without one."""
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not name:
        return None
    return libdir if (Path(libdir) / name).exists() else None


@contextlib.contextmanager
def server_environment():
    """The environment the Triton process starts with: this interpreter's LIBDIR first on
    LD_LIBRARY_PATH, so that the Python backend's stub loads this libpython and not another one
    of the same version (which fails with "'_thread.RLock' object has no attribute
    '_recursion_count'"). Our own process is unaffected (the loader reads the variable at start)."""
    libdir = _libpython_dir()
    old = os.environ.get("LD_LIBRARY_PATH")
    if libdir:
        parts = [p for p in (old or "").split(":") if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + parts)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on at `host` now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(host: str, port: int, option: str) -> int:
    """`port` (0: a free one) once it can be bound at `host`; ConfigError naming `option` otherwise."""
    if port == 0:
        return free_port(host)
    if not 0 < port < 65536:
        raise ConfigError(f"{option} {port}: give a TCP port in 1-65535 (or 0 for a free one)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ConfigError(f"{option} {port}: cannot listen on {host}:{port} ({e.strerror or e}); another server "
                          f"uses it: pick another port ({option} 0 picks a free one)") from None
    return port


@dataclass
class TensorSpec:
    """One model input or output as Triton sees it: shape without the batch dimension."""

    name: str
    dtype: type
    shape: tuple
    optional: bool = False

    @property
    def triton_type(self) -> str:
        return {np.float32: "FP32", np.int32: "INT32", np.int64: "INT64", np.float16: "FP16",
                np.uint8: "UINT8"}[self.dtype]


@dataclass
class ServedModel:
    """One entry of the folder as a Triton model."""

    entry: str
    name: str
    backend: str
    inputs: list
    outputs: list
    instances: int
    default_threshold: Optional[float] = None
    load_seconds: float = 0.0
    per_image: bool = False     # run a Triton batch one image per forward (dynamic token mode on a CPU)
    runners: list = field(default_factory=list, repr=False)

    @property
    def takes_threshold(self) -> bool:
        return any(t.name == "threshold" for t in self.inputs)


def model_io(folder, entry) -> tuple[list, list]:
    """The inputs and outputs of an entry's served model, from the manifest's model record (the
    runner's answer to a first image is checked against them when the model is loaded)."""
    info = folder.model_info
    h, w = (int(v) for v in info["image_size"])
    inputs = [TensorSpec("image", np.float32, (3, h, w))]
    if entry.takes_threshold:
        inputs.append(TensorSpec("threshold", np.float32, (1,), optional=True))
    n_cls = int(info["n_cls"])
    outputs = [TensorSpec("logits", np.float32, (n_cls, h, w)),
               TensorSpec("labels", label_dtype(n_cls), (h, w))]
    if not entry.is_baseline:
        outputs.append(TensorSpec("merge_stats", np.int32, (len(entry.layers or ()), 2)))
    return inputs, outputs


def request_threshold(req, n: int, default: Optional[float], k: int) -> np.ndarray:
    """The threshold of each of the `n` images of request `k` (its `threshold` input, else `default`)."""
    t = req.get("threshold") if hasattr(req, "get") else None
    if t is None:
        return np.full(n, default, np.float32)
    t = np.asarray(t, np.float32).reshape(-1)
    if t.size == 1:
        t = np.full(n, t[0], np.float32)
    if t.size != n or not np.isfinite(t).all() or (np.abs(t) > 1).any():
        raise InputError(f"request {k}: threshold {t.tolist()[:8]}: give one value per image ({n}), finite and "
                         "within [-1, 1]")
    return t


class _Refused(Exception):
    """An AlgmError as the client sees it: PyTriton sends a failed batch's exception formatted with its
    traceback; this one has none to show (the C-level traceback of `raise` is untouched), so the
    answer reads `error: <message>`, as on the command line."""

    __traceback__ = property(lambda self: None, lambda self, value: None)


_Refused.__qualname__ = _Refused.__name__ = "error"
_Refused.__module__ = "builtins"


def make_infer_fn(runner, model: ServedModel) -> Callable:
    """PyTriton's callable for one model instance: the requests of one dynamic batch in, one answer
    dict each out. All requests run as one batch on `runner` (the images of every request, in
    order), or, with `model.per_image` (a dynamic-token entry on a CPU runner: a batch would compute
    every image at its largest image's token count, and a CPU gains nothing from the batch;
    docs/decisions.md item 57), one image per forward, the answers stacked in the same order; an
    AlgmError (NaN/Inf in an image, a threshold out of range) answers the batch with its message."""
    lock = threading.Lock()
    out_names = [t.name for t in model.outputs]
    dtypes = {t.name: t.dtype for t in model.outputs}

    def asked(req) -> list:
        names = getattr(req, "requested_output_names", None)
        return [n for n in out_names if not names or n in names]

    def answer_of(o, need) -> dict:
        """The outputs in `need` of one runner answer (labels from the logits: the first of equal maxima)."""
        got = {}
        if "logits" in need:
            got["logits"] = np.asarray(o.logits, np.float32)
        if "labels" in need:
            got["labels"] = labels_of(o.logits, dtypes["labels"])
        if "merge_stats" in need and o.merge_stats is not None:
            got["merge_stats"] = np.asarray(o.merge_stats, np.int32)
        return got

    def infer(requests):
        images = [np.asarray(req["image"], dtype=np.float32) for req in requests]
        sizes = [x.shape[0] for x in images]
        batch = images[0] if len(images) == 1 else np.concatenate(images)
        kw = {}
        try:
            if model.takes_threshold:
                kw = {"threshold": np.concatenate([request_threshold(r, n, model.default_threshold, k)
                                                   for k, (r, n) in enumerate(zip(requests, sizes))])}
            need = set().union(*(asked(r) for r in requests))
            with lock:
                if model.per_image and batch.shape[0] > 1:
                    answer = {}
                    for i in range(batch.shape[0]):       # each image's rows written into one answer array
                        o = runner.infer(batch[i:i + 1], **{k: v[i:i + 1] for k, v in kw.items()})
                        for name, v in answer_of(o, need).items():
                            if name not in answer:
                                answer[name] = np.empty((batch.shape[0],) + v.shape[1:], v.dtype)
                            answer[name][i] = v[0]
                else:
                    answer = answer_of(runner.infer(batch, **kw), need)
        except AlgmError as e:
            log.warning("%s: refused a batch of %d request(s): %s", model.name, len(requests), e)
            raise _Refused(f"{model.name}: {e}") from None
        res, start = [], 0
        for req, n in zip(requests, sizes):
            res.append({k: answer[k][start:start + n] for k in asked(req) if k in answer})
            start += n
        return res

    return infer


def labels_of(logits, dtype=np.uint8) -> np.ndarray:
    """Logits [B, C, H, W] -> each pixel's class [B, H, W] in `dtype`: the first of equal maxima
    (numpy's argmax rule; a NaN never wins). A running maximum over the class planes (a class
    replaces the best so far only when strictly greater), each plane read once in memory order: at
    150 x 512 x 512, 27 ms per image on two threads where an argmax over the strided class axis
    takes 81 (torch) or 144 ms (numpy)."""
    import torch

    t = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(logits))
    tdtype = {np.uint8: torch.uint8, np.int32: torch.int32}[np.dtype(dtype).type]
    best = t[:, 0].clone()
    idx = torch.zeros(best.shape, dtype=tdtype)
    for c in range(1, t.shape[1]):
        plane = t[:, c]
        idx.masked_fill_(plane > best, c)
        torch.maximum(best, plane, out=best)
    return idx.numpy()


def _warm_up(runner, model: ServedModel) -> None:
    """Run one image through a new runner and check its answer against the declared outputs."""
    shape = (1,) + model.inputs[0].shape
    kw = {"threshold": model.default_threshold} if model.takes_threshold else {}
    out = runner.infer(np.zeros(shape, np.float32), **kw)
    got = {"logits": np.asarray(out.logits).shape[1:], "labels": np.asarray(out.logits).shape[2:]}
    if out.merge_stats is not None:
        got["merge_stats"] = np.asarray(out.merge_stats).shape[1:]
    want = {t.name: tuple(t.shape) for t in model.outputs}
    if {k: tuple(v) for k, v in got.items()} != want:
        raise ArtifactError(f"{model.entry}: its {model.backend} runner answers {got} but the manifest's model "
                            f"declares {want}; re-export the folder")


class FolderServer:
    """The entries of one export folder as models of one Triton server (see the module doc)."""

    def __init__(self, export_dir, backend: str = "onnxruntime", precision: str = "fp32", max_batch: int = 8,
                 max_queue_delay_us: int = 500, instances: int = 1, threads: Optional[int] = None,
                 host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 plugins=None, only: Optional[Sequence[str]] = None, wait: bool = False,
                 exit_timeout_s: int = 5, verbose: bool = False,
                 on_progress: Optional[Callable[[str], None]] = None):
        from algm_export.runtimes.registry import normalize_backend

        self.export_dir = Path(export_dir)
        self.backend = normalize_backend(backend)
        if self.backend not in SERVED_BACKENDS:
            raise ConfigError(f"--backend {self.backend}: served models run on {', '.join(SERVED_BACKENDS)}; use one "
                              "of them (torch is for validate and bench)")
        if max_batch < 1:
            raise ConfigError(f"--max-batch {max_batch}: give at least 1")
        if max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us {max_queue_delay_us}: give 0 or more microseconds")
        if instances < 1:
            raise ConfigError(f"--instances {instances}: give at least 1")
        self.precision, self.max_batch, self.max_queue_delay_us = precision, max_batch, max_queue_delay_us
        self.instances, self.threads, self.host, self.plugins = instances, threads, host, plugins
        self.ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.only, self.wait, self.exit_timeout_s, self.verbose = only, wait, exit_timeout_s, verbose
        self.on_progress = on_progress or (lambda text: None)
        self.models: list[ServedModel] = []
        self._triton = None
        self._stopped = False

    # ---------------------------------------------------------------- addresses
    @property
    def urls(self) -> dict:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {"http": f"http://{host}:{self.ports['http']}", "grpc": f"grpc://{host}:{self.ports['grpc']}",
                "metrics": f"http://{host}:{self.ports['metrics']}/metrics"}

    # ---------------------------------------------------------------- life cycle
    def __enter__(self) -> "FolderServer":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> "FolderServer":
        """Check the folder, start Triton and load every model (one line per step to `on_progress`)."""
        from algm_export.artifacts import ExportFolder, folder_lock

        check_serving_available()
        folder = ExportFolder.load(self.export_dir)
        #: the input normalisation clients must apply (the manifest's model.normalization)
        self.normalization = folder.model_info.get("normalization", "vit")
        entries = folder.select(self.only)
        names = triton_names([e.name for e in entries])
        for key, option in (("http", "--http-port"), ("grpc", "--grpc-port"), ("metrics", "--metrics-port")):
            self.ports[key] = check_port(self.host, int(self.ports[key]), option)
        if len(set(self.ports.values())) < 3:
            raise ConfigError(f"--http-port, --grpc-port and --metrics-port must differ (got {self.ports})")
        pending: list[ServedModel] = []
        try:
            with folder_lock(folder.path, "serve", self.wait):
                # the runners read (and sha256-check) every file with the folder held: one consistent snapshot
                for i, e in enumerate(entries):
                    m = ServedModel(e.name, names[e.name], self.backend, *model_io(folder, e), self.instances,
                                    default_threshold=e.thresholds[0] if e.takes_threshold else None)
                    pending.append(m)
                    self._load_runners(e, m)
                    self.on_progress(f"[{i + 1}/{len(entries)}] {e.name}: {self.backend} {self.precision}, "
                                     f"{self.instances} instance(s) loaded and checked ({m.load_seconds:.1f} s)")
            t0 = time.perf_counter()
            self.on_progress(f"starting Triton on {self.host} (HTTP {self.ports['http']}, gRPC {self.ports['grpc']}, "
                             f"metrics {self.ports['metrics']})")
            self._start_triton()
            self.on_progress(f"Triton started ({time.perf_counter() - t0:.1f} s)")
            for i, model in enumerate(pending):
                t0 = time.perf_counter()
                self._bind(model)
                model.load_seconds += time.perf_counter() - t0
                self.models.append(model)
                self.on_progress(f"[{i + 1}/{len(pending)}] model {model.name} ready "
                                 f"({time.perf_counter() - t0:.1f} s)")
        except BaseException:
            self.stop()
            for m in pending:
                if m not in self.models:
                    for r in m.runners:
                        with contextlib.suppress(Exception):
                            r.close()
            raise
        return self

    def _load_runners(self, entry, model: ServedModel) -> None:
        """`model.runners`: one runner per instance, each checked on a first image."""
        from algm_export.runtimes.base import check_input_size
        from algm_export.runtimes.batching import runs_dynamic, runs_on_gpu
        from algm_export.runtimes.registry import make_runner

        t0 = time.perf_counter()
        for _ in range(self.instances):
            r = make_runner(self.backend, entry, self.precision, threads=self.threads, plugins=self.plugins)
            model.runners.append(r)
            check_input_size(r, model.inputs[0].shape[1:], entry.name)
            _warm_up(r, model)
        model.per_image = runs_dynamic(model.runners[0]) and not runs_on_gpu(model.runners[0])
        model.load_seconds = time.perf_counter() - t0

    def _start_triton(self) -> None:
        from pytriton.triton import Triton, TritonConfig

        if not self.verbose:
            logging.getLogger("pytriton").setLevel(logging.ERROR)
        config = TritonConfig(http_address=self.host, http_port=self.ports["http"], grpc_address=self.host,
                              grpc_port=self.ports["grpc"], metrics_address=self.host,
                              metrics_port=self.ports["metrics"], allow_metrics=True, allow_gpu_metrics=False,
                              exit_timeout_secs=self.exit_timeout_s, log_verbose=1 if self.verbose else 0)
        verbose = self.verbose

        class _Triton(Triton):
            # PyTriton echoes every tritonserver log line on stdout; keep them (for errors) unless verbose
            def _initialize_server(self):
                super()._initialize_server()
                if getattr(self, "_triton_server", None) is not None and hasattr(self._triton_server, "_verbose"):
                    self._triton_server._verbose = verbose

        import tempfile

        # our own workspace (model store, sockets; PyTriton creates the folder), removed by stop()
        self._workspace = tempfile.mkdtemp(prefix="algm-serve-")
        self._triton = _Triton(config=config, workspace=os.path.join(self._workspace, "w"))
        try:
            with server_environment():
                self._triton.run()
        except AlgmError:
            raise
        except Exception as e:  # noqa: BLE001  (PyTriton raises plain exceptions of many kinds)
            raise BackendUnavailable(f"the Triton server did not start ({type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:300]}){self._log_tail()}") from None

    def _bind(self, model: ServedModel) -> None:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

        def tensors(specs):
            return [Tensor(name=t.name, dtype=t.dtype, shape=t.shape, optional=t.optional) for t in specs]

        config = ModelConfig(batching=True, max_batch_size=self.max_batch,
                             batcher=DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_us))
        fns = [make_infer_fn(r, model) for r in model.runners]
        try:
            with server_environment():
                self._triton.bind(model_name=model.name, infer_func=fns if len(fns) > 1 else fns[0],
                                  inputs=tensors(model.inputs), outputs=tensors(model.outputs), config=config,
                                  strict=False)
        except Exception as e:  # noqa: BLE001
            raise BackendUnavailable(f"Triton did not load model {model.name} ({type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:300]}){self._log_tail()}") from None

    def _log_tail(self, lines: int = 8) -> str:
        srv = getattr(self._triton, "_triton_server", None) if self._triton is not None else None
        try:
            text = srv.logs() if srv is not None else ""
        except Exception:  # noqa: BLE001
            text = ""
        tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
        return ("; the server said:\n  " + "\n  ".join(tail)) if tail else ""

    def is_alive(self) -> bool:
        return self._triton is not None and not self._stopped and self._triton.is_alive()

    def serve_until(self, stop: threading.Event, period_s: float = 0.5) -> None:
        """Block until `stop` is set (signal handlers set it) or the server dies (BackendUnavailable)."""
        while not stop.wait(period_s):
            if not self.is_alive():
                raise BackendUnavailable(f"the Triton server stopped unexpectedly{self._log_tail()}")

    def stop(self) -> None:
        """Stop the server (in-flight requests get `exit_timeout_s` to finish) and close the runners."""
        if self._stopped:
            return
        self._stopped = True
        if self._triton is not None:
            with contextlib.suppress(Exception):
                self._triton.stop()
        for m in self.models:
            for r in m.runners:
                with contextlib.suppress(Exception):
                    r.close()
        ws = getattr(self, "_workspace", None)
        if ws:
            import shutil

            shutil.rmtree(ws, ignore_errors=True)
