"""Loading TensorRT / TensorRT-RTX: lazy imports, the RTX library quirk, plugins, engines.

Two backends share one code path:

* ``"tensorrt"``     -- full TensorRT >= 10 (``import tensorrt``): data-centre and Jetson GPUs;
  builds for the GPU present; weakly typed networks allowed.
* ``"tensorrt-rtx"`` -- TensorRT-RTX (``import tensorrt_rtx``): RTX GPUs; builds ahead of time
  on a machine without a GPU for the compute capabilities asked for; networks are always
  strongly typed.

Nothing here imports a backend at module import time.

The RTX quirk: when the ONNX parser of the TensorRT-RTX 1.7 wheel turns a node into a plugin
layer, it ``dlopen``s the unversioned ``libtensorrt_rtx.so`` (to record which library provides
the plugin). The wheel ships only ``libtensorrt_rtx.so.1``, so the process aborts
("terminate called without an active exception"). `rtx_env` returns an environment whose
``LD_LIBRARY_PATH`` holds a cached symlink ``libtensorrt_rtx.so -> .../libtensorrt_rtx.so.1``;
the engine builder runs in a child process started with it (see ``worker.py``), because the
dynamic loader reads ``LD_LIBRARY_PATH`` only when a process starts.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

from algm_export.core.errors import ArtifactError, BackendUnavailable, ConfigError
from algm_export.runtimes import base
from algm_export.runtimes.plugins import creator_names, load_plugin_library  # noqa: F401  (re-exported)

BACKENDS = ("tensorrt", "tensorrt-rtx")
_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_INSTALL = {"tensorrt": "pip install tensorrt (needs a CUDA GPU with a driver to build and run)",
            "tensorrt-rtx": "pip install tensorrt-rtx-cu13 (or `pip install algm-export[rtx]`)"}
_PRETTY = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}

RTX_LIB = "libtensorrt_rtx.so"


# --------------------------------------------------------------------------- backends

def normalize_backend(backend: str) -> str:
    """The canonical name of a TensorRT backend (`runtimes.base.normalize_backend`, then refused
    unless it is one of this package's `BACKENDS`)."""
    try:
        key = base.normalize_backend(backend)
    except ConfigError:
        key = None
    if key not in BACKENDS:
        raise ConfigError(f"unknown TensorRT backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    return key


def pretty(backend: str) -> str:
    return _PRETTY[normalize_backend(backend)]


def is_available(backend: str) -> bool:
    return importlib.util.find_spec(_MODULES[normalize_backend(backend)]) is not None


def import_backend(backend: str):
    """Import and return the backend's Python module, or raise BackendUnavailable."""
    backend = normalize_backend(backend)
    name = _MODULES[backend]
    try:
        return importlib.import_module(name)
    except ImportError as e:  # includes a missing or broken shared library
        raise BackendUnavailable(
            f"{_PRETTY[backend]} is not usable here (import {name} failed: {e}). Install it: "
            f"{_INSTALL[backend]}."
        ) from e
    except OSError as e:
        raise BackendUnavailable(f"{_PRETTY[backend]} failed to load its libraries: {e}") from e


def resolve_backend(backend: str | None = None) -> str:
    """`backend` normalised; None -> "tensorrt" when importable, else "tensorrt-rtx"."""
    if backend is not None:
        backend = normalize_backend(backend)
        if not is_available(backend):
            raise BackendUnavailable(
                f"{_PRETTY[backend]} is not installed (no module {_MODULES[backend]}). "
                f"Install it: {_INSTALL[backend]}."
            )
        return backend
    for b in BACKENDS:
        if is_available(b):
            return b
    raise BackendUnavailable(
        "neither TensorRT nor TensorRT-RTX is installed. Install one: "
        + "; or ".join(_INSTALL[b] for b in BACKENDS) + "."
    )


def backend_version(backend: str) -> str:
    return str(import_backend(backend).__version__)


def supports_weak_typing(backend: str) -> bool:
    """Whether the backend can build weakly typed networks (an FP16 builder flag): full TensorRT
    10 only. TensorRT-RTX and TensorRT >= 11 are always strongly typed."""
    backend = normalize_backend(backend)
    return backend == "tensorrt" and hasattr(import_backend(backend).BuilderFlag, "FP16")


def make_logger(trt, level: str = "warning"):
    """A trt logger that keeps every message (for error reports) and prints those >= level
    ("internal_error", "error", "warning", "info", "verbose"; "none" prints nothing)."""
    order = ["internal_error", "error", "warning", "info", "verbose"]
    threshold = order.index(level) if level in order else -1

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            name = str(severity).rsplit(".", 1)[-1].lower()
            sev = {"kinternal_error": "internal_error", "kerror": "error", "kwarning": "warning",
                   "kinfo": "info", "kverbose": "verbose"}.get(name, name)
            self.messages.append((sev, msg))
            if sev in order and order.index(sev) <= threshold:
                import sys
                print(f"[TRT] [{sev[0].upper()}] {msg}", file=sys.stderr, flush=True)

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("internal_error", "error")]

    return _Logger()


# --------------------------------------------------------------------------- RTX quirk

def _cache_dir() -> Path:
    root = os.environ.get("ALGM_EXPORT_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "algm-export"


def find_rtx_library() -> Path | None:
    """The versioned ``libtensorrt_rtx.so.N`` the ``tensorrt_rtx`` module will load, if found."""
    dirs: list[Path] = []
    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is not None:
        dirs += [Path(p) for p in (spec.submodule_search_locations or [])]
    dirs += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    for d in dirs:
        hits = sorted(d.glob(RTX_LIB + ".[0-9]*"))
        if hits:
            return hits[0]
    return None


def rtx_link_dir() -> Path | None:
    """A directory holding ``libtensorrt_rtx.so`` (creating a cached symlink when needed)."""
    real = find_rtx_library()
    if real is None:
        return None
    if (real.parent / RTX_LIB).exists():  # tarball installs ship the unversioned name
        return real.parent
    real = real.resolve()
    key = hashlib.sha256(str(real).encode()).hexdigest()[:16]
    for root in (_cache_dir(), Path(tempfile.gettempdir()) / f"algm-export-{os.getuid()}"):
        d = root / "trt-rtx-lib" / key
        link = d / RTX_LIB
        try:
            if link.is_symlink() and Path(os.readlink(link)) == real:
                return d
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / f".{RTX_LIB}.{os.getpid()}"
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            os.symlink(real, tmp)
            os.replace(tmp, link)  # atomic: concurrent builds never see a half-made link
            return d
        except OSError:
            continue
    return None


def rtx_env(base: dict | None = None) -> dict:
    """`base` (default: os.environ) with the RTX symlink directory first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    d = rtx_link_dir()
    if d is None:
        return env
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != str(d)]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(d)] + parts)
    return env


def rtx_env_active() -> bool:
    """Whether this process started with ``libtensorrt_rtx.so`` findable (the quirk is avoided)."""
    for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if p and (Path(p) / RTX_LIB).exists():
            return True
    return False


# --------------------------------------------------------------------------- plugins

# The one plugin-library loader is `algm_export.runtimes.plugins.load_plugin_library` (re-exported here).


# --------------------------------------------------------------------------- environment

def cuda_device() -> dict:
    """The current CUDA GPU as seen by torch: {"available", "name", "compute_capability"}."""
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "torch is not installed"}
    try:
        if not torch.cuda.is_available():
            return {"available": False, "reason": "no CUDA GPU visible to torch"}
        major, minor = torch.cuda.get_device_capability()
        return {"available": True, "name": torch.cuda.get_device_name(),
                "compute_capability": major * 10 + minor, "count": torch.cuda.device_count()}
    except Exception as e:  # a broken driver reports here
        return {"available": False, "reason": f"CUDA error: {e}"}


def describe_environment() -> dict:
    """Backend availability, versions and the GPU, for the CLI and reports."""
    out: dict[str, Any] = {}
    for b in BACKENDS:
        info: dict[str, Any] = {"installed": is_available(b), "version": None}
        if info["installed"]:
            try:
                info["version"] = backend_version(b)
            except BackendUnavailable as e:
                info["installed"] = False
                info["error"] = str(e)
        out[b] = info
    try:
        out["default_backend"] = resolve_backend(None)
    except BackendUnavailable:
        out["default_backend"] = None
    if out["tensorrt-rtx"]["installed"]:
        rtx = import_backend("tensorrt-rtx")
        out["tensorrt-rtx"]["targets"] = rtx_targets(rtx)
        lib = find_rtx_library()
        out["tensorrt-rtx"]["library"] = str(lib) if lib else None
    out["cuda"] = cuda_device()
    return out


# --------------------------------------------------------------------------- engines

def rtx_targets(trt) -> list[int]:
    """Compute capabilities a TensorRT-RTX module can build for (e.g. [75, 80, 86, 89, 120])."""
    return sorted(int(k[2:]) for k in trt.ComputeCapability.__members__ if k.startswith("SM"))


def check_engine_record(record: dict, backend: str, installed_version: str, device: dict,
                        targets: list[int] | None = None) -> None:
    """Raise ArtifactError when an engine (its manifest record) cannot run here, with the reason.

    `device`: `cuda_device()`; `targets`: for TensorRT-RTX, the compute capabilities it supports.
    """
    backend = normalize_backend(backend)
    file = record.get("file", "engine")
    built_with = record.get("backend")
    if built_with and normalize_backend(built_with) != backend:
        raise ArtifactError(
            f"{file} was built with {pretty(built_with)}; load it with backend {built_with!r} "
            f"or rebuild it for {pretty(backend)}."
        )
    v = record.get("backend_version")
    if v and v != installed_version:
        raise ArtifactError(
            f"{file} was built with {pretty(backend)} {v}, but {installed_version} is installed; "
            "TensorRT engines only load in the version that built them. Rebuild the engines "
            "(`algm-export build DIR`) or install that version."
        )
    if not device.get("available"):
        return  # the runner reports the missing GPU itself
    cc = int(device["compute_capability"])
    if backend == "tensorrt-rtx" and targets and cc not in targets:
        raise BackendUnavailable(
            f"TensorRT-RTX does not run on this GPU ({device.get('name')}, SM{cc}; it supports "
            f"{', '.join(f'SM{t}' for t in targets)}); use full TensorRT (--backend tensorrt) here.")
    ccs = [int(c) for c in (record.get("compute_capabilities") or [])]
    if ccs and cc not in ccs:
        how = (f"rebuild with --compute-capability {cc}" if backend == "tensorrt-rtx"
               else "rebuild the engine on this GPU")
        raise ArtifactError(
            f"{file} was built for compute capability {', '.join(f'SM{c}' for c in ccs)}, but this "
            f"GPU ({device.get('name')}) is SM{cc}; {how}."
        )


def deserialize_engine(trt, runtime, data: bytes, file: str, logger=None):
    """Deserialise `data`; on failure raise ArtifactError with TensorRT's reason."""
    engine = runtime.deserialize_cuda_engine(data)
    if engine is not None:
        return engine
    reasons = []
    if hasattr(runtime, "get_engine_validity"):  # TensorRT-RTX explains why
        try:
            _validity, diag = runtime.get_engine_validity(data)
            for name, member in trt.EngineInvalidityDiagnostics.__members__.items():
                if int(diag) & int(member):
                    reasons.append(name.lower().replace("_", " "))
        except Exception:
            pass
    if logger is not None:
        reasons += logger.errors()[-5:]
    raise ArtifactError(
        f"TensorRT could not load {file}"
        + (": " + "; ".join(reasons) if reasons else "")
        + ". It may be built for another TensorRT version or GPU, or be corrupted; rebuild it."
    )


def gpu_runtime_available() -> bool:
    """A CUDA GPU and a TensorRT that can run engines on it (for `bench`/`validate` defaults)."""
    try:
        env = describe_environment()
    except Exception:  # noqa: BLE001
        return False
    return bool(env.get("cuda", {}).get("available")) and bool(env.get("default_backend"))
