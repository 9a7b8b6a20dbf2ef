"""Run a TensorRT / TensorRT-RTX engine on a CUDA GPU with torch tensors.

    runner = TrtRunner.from_manifest("out/vit_s", setting="t0.880", precision="fp16")
    out = runner.infer(image)          # image: float32 CUDA tensor [B, 3, H, W]
    out["logits"], out.get("merge_stats")

Dynamic batch through ``set_input_shape`` within the engine's profile; outputs are allocated
as torch tensors on the image's device and the engine runs on torch's current stream.

Dynamic token mode engines (``algm`` version 2): the token axis inside the engine is
data-dependent, the graph outputs are not (``logits`` [B, n_cls, H, W], ``merge_stats``
[B, steps, 2]), so they are preallocated as usual. An output whose shape TensorRT cannot know
before running (a -1 left after the input shapes are set) goes through an ``IOutputAllocator``
(`make_output_allocator`): TensorRT asks for its memory during ``execute_async_v3`` and reports
its shape, and the returned tensor is that shape. A threshold-input engine takes the CLAP
threshold as a second input (``infer(image, threshold=0.88)`` or a [B] tensor).
Before deserialising, the engine's manifest record is checked against what is installed
(backend, version, compute capability, sha256), so a mismatch is an ArtifactError that says
why, not a TensorRT failure. TensorRT-RTX compiles kernels for the GPU on first use: the
first `infer` of a new shape is slow, time after a warm-up.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from algm_export.core.errors import ArtifactError, BackendUnavailable, ConfigError, InputError
from algm_export.runtimes.base import RunOutput, Runner
from algm_export.runtimes.tensorrt import loader


def _torch_dtype(trt, torch, dt):
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
             trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64,
             trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8, trt.DataType.UINT8: torch.uint8}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dt not in table:
        raise ConfigError(f"engine tensor dtype {dt} is not supported by TrtRunner.")
    return table[dt]


def make_output_allocator(trt, torch, device):
    """A TensorRT ``IOutputAllocator`` for outputs with data-dependent shapes: TensorRT asks for
    their memory during ``execute_async_v3`` (a torch CUDA byte buffer, reused while it is large
    enough) and reports their shape; `tensor(name, dtype)` then returns the output. Built on call,
    because the TensorRT base class exists only once a backend is imported."""

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self):
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict = {}   # name -> (byte buffer, offset of the aligned start)
            self.shapes: dict = {}

        def reallocate_output(self, tensor_name, memory, size, alignment):
            return self._alloc(tensor_name, int(size), max(int(alignment), 1))

        def reallocate_output_async(self, tensor_name, memory, size, alignment, stream):
            return self._alloc(tensor_name, int(size), max(int(alignment), 1))

        def _alloc(self, name, size, alignment):
            have = self.buffers.get(name)
            if have is None or have[0].numel() - have[1] < size:
                buf = torch.empty(max(size, 1) + alignment, dtype=torch.uint8, device=device)
                ptr = buf.data_ptr()
                have = (buf, (-ptr) % alignment)
                self.buffers[name] = have
            return have[0].data_ptr() + have[1]

        def notify_shape(self, tensor_name, shape):
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def tensor(self, name, dtype):
            """Output `name` with its notified shape (a copy: the buffer serves the next run)."""
            shape = self.shapes[name]
            n = 1
            for d in shape:
                n *= d
            buf, off = self.buffers[name]
            nbytes = n * torch.empty((), dtype=dtype).element_size()
            return buf[off: off + nbytes].view(dtype).reshape(shape).clone()

    return TorchOutputAllocator()


class TrtRunner:
    """One engine, one execution context. `infer(image) -> {output name: tensor}`."""

    def __init__(self, engine_path: str | os.PathLike, backend: str | None = None,
                 record: dict | None = None, plugins: str | os.PathLike | None = None,
                 verify_sha256: bool = True):
        record = dict(record or {})
        self.path = Path(engine_path)
        if backend is None:
            backend = record.get("backend")
        self.backend = loader.resolve_backend(backend)
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable("TrtRunner needs torch (with CUDA) to hold its tensors.") from e
        self.torch = torch
        device = loader.cuda_device()
        if not device.get("available"):
            raise BackendUnavailable(
                f"no CUDA GPU / TensorRT runtime present ({device.get('reason')}): engines can be "
                "built here (TensorRT-RTX) but only run on a machine with a supported GPU.")
        self.trt = trt = loader.import_backend(self.backend)
        if not self.path.is_file():
            raise ArtifactError(f"engine {self.path} does not exist; build it (`algm-export build DIR`).")
        record.setdefault("file", str(self.path))
        targets = loader.rtx_targets(trt) if self.backend == "tensorrt-rtx" else None
        loader.check_engine_record(record, self.backend, str(trt.__version__), device, targets)
        from algm_export.artifacts import sha256_file

        data = self.path.read_bytes()  # checked and deserialised from the same bytes
        if verify_sha256 and record.get("sha256"):
            import hashlib

            if hashlib.sha256(data).hexdigest() != record["sha256"]:
                raise ArtifactError(f"{self.path}: sha256 does not match the manifest (file changed "
                                    "or corrupted); rebuild the engine.")
        if plugins is None and record.get("plugin_library"):
            # a library named by the record is loaded only when it is the one the engine was built with
            plugins = record["plugin_library"]
            if not (Path(plugins).is_file() and record.get("plugin_sha256")
                    and sha256_file(plugins) == record["plugin_sha256"]):
                raise ArtifactError(f"plugin library {plugins} does not match the engine's record (sha256); "
                                    "rebuild the engines (`algm-export build DIR --plugins LIB`).")
        if plugins:
            if self.backend == "tensorrt-rtx" and not loader.rtx_env_active():
                warnings.warn("TensorRT-RTX with plugins: libtensorrt_rtx.so is not on LD_LIBRARY_PATH; "
                              "if loading aborts, start Python with the environment of "
                              "algm_export.runtimes.tensorrt.rtx_env().", RuntimeWarning, stacklevel=2)
            loader.load_plugin_library(trt, plugins)
        self.logger = loader.make_logger(trt, "error")
        self.runtime = trt.Runtime(self.logger)
        self.engine = loader.deserialize_engine(trt, self.runtime, data, str(self.path), self.logger)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailable(f"TensorRT could not create an execution context for {self.path} "
                                     "(out of GPU memory?).")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.record = record
        self._allocator = None

    @classmethod
    def from_manifest(cls, export_dir: str | os.PathLike, setting: str = "baseline",
                      precision: str = "fp32", backend: str | None = None,
                      plugins: str | os.PathLike | bool | None = None) -> "TrtRunner":
        """The engine of `setting` listed in DIR's manifest (plugins=True/False selects by plugin use).

        The engine file and its plugin library are resolved inside DIR and sha256-checked against
        the record before TensorRT reads them."""
        from algm_export.artifacts import EngineRecord, ExportFolder, find_engine_record

        folder = ExportFolder.load(export_dir)
        if backend is None:
            backend = loader.resolve_backend(None)
        backend = loader.normalize_backend(backend)
        want_plugins = None if plugins is None else bool(plugins)
        rec = EngineRecord(folder, find_engine_record(folder.data, setting, precision, backend, want_plugins))
        return cls.from_record(rec, plugins)

    @classmethod
    def from_record(cls, rec, plugins: str | os.PathLike | bool | None = None) -> "TrtRunner":
        """The engine of an `artifacts.EngineRecord`: file and plugin library resolved inside the folder and
        sha256-checked against the record before TensorRT reads them."""
        lib = plugins if isinstance(plugins, (str, os.PathLike)) else None
        engine = rec.engine_path()
        if lib is None:
            lib = rec.plugin_path()
        return cls(engine, backend=rec.backend, record=rec.raw, plugins=lib)

    def profile(self, name: str = "image") -> tuple:
        """(min, opt, max) shapes of input `name`; a fixed-shape input (an engine of a graph for one
        image, `export --batch 1`) has no profile: its shape three times."""
        shape = tuple(self.engine.get_tensor_shape(name))
        if shape and all(d >= 0 for d in shape):
            return (shape, shape, shape)
        return tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))

    @property
    def threshold_input(self) -> bool:
        """Whether the engine takes the CLAP threshold as an input (a threshold-input export)."""
        return "threshold" in self.inputs

    def _threshold(self, threshold, image):
        """The engine's `threshold` input: float32 [B] on the image's device."""
        torch = self.torch
        B = image.shape[0]
        if threshold is None:
            raise InputError("this engine takes the CLAP threshold as an input: pass threshold=<float> or a "
                             f"tensor of shape [{B}] (one per image)")
        t = torch.as_tensor(threshold, dtype=torch.float32, device=image.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(B)
        if t.numel() != B:
            raise InputError(f"threshold has {t.numel()} values for a batch of {B}; give one, or one per image")
        if not bool(torch.isfinite(t).all()) or bool((t.abs() > 1).any()):
            raise InputError("thresholds must be finite and within [-1, 1] (cosine similarities)")
        return t.contiguous()

    def infer(self, image, stream=None, threshold=None) -> dict:
        """Run the engine on `image` ([B, 3, H, W] CUDA tensor); returns new output tensors.

        threshold: the CLAP threshold(s) of a threshold-input engine (float or [B]); refused by
        other engines, whose threshold is built in."""
        torch = self.torch
        extra = [n for n in self.inputs if n not in ("image", "threshold")]
        if extra or ("image" not in self.inputs and len(self.inputs) != 1):
            raise ConfigError(f"engine has inputs {self.inputs}; TrtRunner.infer takes an image (and a threshold).")
        name = "image" if "image" in self.inputs else self.inputs[0]
        if threshold is not None and not self.threshold_input:
            raise ConfigError(f"{self.path.name} has its threshold built in (inputs {self.inputs}); build a "
                              "threshold-input export to choose it at run time")
        if not isinstance(image, torch.Tensor) or not image.is_cuda:
            raise InputError("TrtRunner.infer needs a CUDA torch tensor (image.cuda()).")
        want = _torch_dtype(self.trt, torch, self.engine.get_tensor_dtype(name))
        image = image.to(want).contiguous()
        lo, _opt, hi = self.profile(name)
        shape = tuple(image.shape)
        if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
            raise InputError(f"input shape {shape} is outside the engine's profile {lo}..{hi}; "
                             "rebuild with a larger batch range or use the export's image size.")
        if not self.context.set_input_shape(name, shape):
            raise InputError(f"TensorRT rejected input shape {shape} for {name}.")
        self.context.set_tensor_address(name, image.data_ptr())
        keep = [image]
        if self.threshold_input:
            thr = self._threshold(threshold, image)
            if not self.context.set_input_shape("threshold", tuple(thr.shape)):
                raise InputError(f"TensorRT rejected threshold shape {tuple(thr.shape)}.")
            self.context.set_tensor_address("threshold", thr.data_ptr())
            keep.append(thr)
        out, deferred = {}, []
        for o in self.outputs:
            oshape = tuple(self.context.get_tensor_shape(o))
            dtype = _torch_dtype(self.trt, torch, self.engine.get_tensor_dtype(o))
            if any(d < 0 for d in oshape):
                # data-dependent shape: TensorRT allocates through the output allocator while it runs
                if self._allocator is None:
                    self._allocator = make_output_allocator(self.trt, torch, image.device)
                self.context.set_output_allocator(o, self._allocator)
                deferred.append((o, dtype))
                continue
            t = torch.empty(oshape, dtype=dtype, device=image.device)
            self.context.set_tensor_address(o, t.data_ptr())
            out[o] = t
        if stream is None:
            stream = torch.cuda.current_stream(image.device)
        else:  # keep the caching allocator from reusing these buffers before the stream is done
            for t in [*keep, *out.values()]:
                t.record_stream(stream)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise BackendUnavailable(f"TensorRT failed to run {self.path}: "
                                     + "; ".join(self.logger.errors()[-3:]))
        if deferred:
            stream.synchronize()  # the shapes are known once the engine has run
            for o, dtype in deferred:
                out[o] = self._allocator.tensor(o, dtype)
        return out

    __call__ = infer


class HostTrtRunner(Runner):
    """`TrtRunner` through the `Runner` interface: numpy / CPU tensors in, `RunOutput` (numpy) out."""

    def __init__(self, runner: "TrtRunner", name: str):
        self.runner = runner
        self.name = name
        self.backend = runner.backend
        try:   # the profile's largest batch: `infer` runs larger batches in slices (runtimes.base)
            self.max_batch = int(runner.profile("image")[2][0])
        except Exception:  # noqa: BLE001  (an engine without an `image` profile: no slicing)
            self.max_batch = None

    @property
    def takes_threshold(self) -> bool:
        return self.runner.threshold_input

    def _infer(self, image, threshold=None) -> RunOutput:
        import numpy as np
        import torch

        from algm_export.merging.driver import check_finite_array

        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        check_finite_array(image.detach().cpu().numpy())
        out = self.runner.infer(image.float().cuda(), threshold=threshold)
        ms = out.get("merge_stats")
        return RunOutput(out["logits"].float().cpu().numpy(), None if ms is None else ms.cpu().numpy())

    def close(self):
        r, self.runner = getattr(self, "runner", None), None
        if r is not None:
            r.context = r.engine = r.runtime = None
