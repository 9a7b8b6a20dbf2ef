"""Build, find and load the native libraries of ``plugins/`` (see plugins/README.md).

* ``libalgm_kernels.so``  -- the CUDA kernels of AlgmClap / AlgmGbm behind a small C API
  (``plugins/common/algmKernels.h``); needs only the CUDA toolkit (nvcc).
* ``libalgm_plugins.so``  -- the TensorRT ``IPluginV3`` plugins ``algm::AlgmClap`` and
  ``algm::AlgmGbm``, version "1" (static token mode) and version "2" (dynamic token mode: the
  token slots of the batch as a size-tensor output), registered through ``getCreators``; needs TensorRT headers
  at build time, links no TensorRT library, loads into TensorRT >= 10 and TensorRT-RTX.
* ``libalgm_kernels_emu.so`` (optional) -- the same kernel sources compiled for the CPU, used by
  the tests on machines without a GPU.

    from algm_export.plugins import build_plugins, find_plugin_library, load_plugin_library
    paths = build_plugins(tensorrt_include="/opt/TensorRT/include")
    import tensorrt_rtx as trt
    load_plugin_library(trt, paths["plugins"])
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

from algm_export.errors import BackendUnavailable, ConfigError

PLUGIN_NAMESPACE = "algm"
PLUGIN_VERSION = "1"            # static token mode
PLUGIN_DYNAMIC_VERSION = "2"    # dynamic token mode (size-tensor outputs)
PLUGIN_VERSIONS = (PLUGIN_VERSION, PLUGIN_DYNAMIC_VERSION)
PLUGIN_NAMES = ("AlgmClap", "AlgmGbm")

KERNEL_LIBRARY = "libalgm_kernels.so"
PLUGIN_LIBRARY = "libalgm_plugins.so"
EMULATION_LIBRARY = "libalgm_kernels_emu.so"

# Default CUDA architectures (CMake picks them when `archs` is None): Turing .. Blackwell and
# Jetson Orin, restricted to what the installed nvcc supports.
DEFAULT_ARCHS = (75, 80, 86, 87, 89, 90, 100, 120)

_TRT_INCLUDE_CANDIDATES = (
    "/usr/include/x86_64-linux-gnu",
    "/usr/include/aarch64-linux-gnu",
    "/usr/local/tensorrt/include",
    "/usr/local/TensorRT/include",
    "/opt/tensorrt/include",
)


class PluginBuildError(BackendUnavailable):
    """cmake / nvcc failed, or a tool is missing. The message holds the tail of the build log."""


# --------------------------------------------------------------------------- locations

def plugin_source_dir() -> Path:
    """The plugin source tree: env ALGM_PLUGINS_SRC, else the copy a wheel ships inside the package
    (``algm_export/plugin_src``, see setup.py), else ``plugins/`` of the checkout."""
    env = os.environ.get("ALGM_PLUGINS_SRC")
    if env:
        return Path(env).expanduser().resolve()
    shipped = Path(__file__).resolve().parent / "plugin_src"
    if (shipped / "CMakeLists.txt").is_file():
        return shipped
    return Path(__file__).resolve().parent.parent / "plugins"


def default_build_dir() -> Path:
    """``plugins/build`` in a checkout; for an installed wheel (whose package folder may be
    read-only) ``$XDG_CACHE_HOME/algm-export/plugins-build`` (env ALGM_PLUGINS_BUILD overrides)."""
    env = os.environ.get("ALGM_PLUGINS_BUILD")
    if env:
        return Path(env).expanduser().resolve()
    src = plugin_source_dir()
    if src.name == "plugin_src":
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "algm-export" / "plugins-build"
    return src / "build"


def find_tensorrt_include(explicit: str | os.PathLike | None = None) -> Path | None:
    """A directory holding ``NvInferRuntime.h``: `explicit`, env ALGM_TENSORRT_INCLUDE,
    TENSORRT_INCLUDE_DIR, TENSORRT_ROOT/include, then standard install locations."""
    cands: list[Path] = []
    if explicit:
        p = Path(explicit).expanduser()
        cands += [p, p / "include"]
    for var in ("ALGM_TENSORRT_INCLUDE", "TENSORRT_INCLUDE_DIR"):
        if os.environ.get(var):
            p = Path(os.environ[var]).expanduser()
            cands += [p, p / "include"]
    if os.environ.get("TENSORRT_ROOT"):
        cands.append(Path(os.environ["TENSORRT_ROOT"]).expanduser() / "include")
    if explicit:
        cands = cands[:2]  # an explicit path is not silently replaced by another install
    else:
        cands += [Path(c) for c in _TRT_INCLUDE_CANDIDATES]
    for c in cands:
        if (c / "NvInferRuntime.h").is_file():
            return c.resolve()
    return None


def _find_library(name: str, build_dir: str | os.PathLike | None, env_var: str) -> Path:
    if os.environ.get(env_var):
        p = Path(os.environ[env_var]).expanduser()
        if p.is_file():
            return p.resolve()
        raise BackendUnavailable(f"{env_var}={p} does not exist; unset it or build the library "
                                 "(`algm-export plugins build`).")
    d = Path(build_dir).expanduser() if build_dir else default_build_dir()
    p = d / name
    if p.is_file():
        return p.resolve()
    raise BackendUnavailable(
        f"{name} not found in {d}; build it with `algm-export plugins build` "
        f"(algm_export.plugins.build_plugins) or point {env_var} at it."
    )


def find_plugin_library(build_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``libalgm_plugins.so`` (env ALGM_PLUGIN_LIBRARY, else `build_dir` or plugins/build)."""
    return _find_library(PLUGIN_LIBRARY, build_dir, "ALGM_PLUGIN_LIBRARY")


def find_kernel_library(build_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``libalgm_kernels.so`` (env ALGM_KERNEL_LIBRARY, else `build_dir` or plugins/build)."""
    return _find_library(KERNEL_LIBRARY, build_dir, "ALGM_KERNEL_LIBRARY")


# --------------------------------------------------------------------------- build

def _tail(text: str, n: int = 40) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[-n:])


def _run(cmd: Sequence[str], log: list[str], verbose: bool, cwd: str | None = None) -> None:
    log.append("$ " + " ".join(cmd))
    proc = subprocess.run(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.append(proc.stdout)
    if verbose:
        print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise PluginBuildError(
            f"{' '.join(cmd[:2])} ... failed (exit {proc.returncode}):\n{_tail(proc.stdout)}"
        )


def _arch_list(archs: Iterable[int | str] | int | str | None) -> str | None:
    if archs is None:
        return None
    if isinstance(archs, (int, str)):
        archs = [archs] if isinstance(archs, int) else [a for a in str(archs).replace(",", ";").split(";") if a]
    out = []
    for a in archs:
        s = str(a).strip().lower().removeprefix("sm_").removeprefix("sm").removeprefix("compute_")
        if not s:
            continue
        base = s.split("-")[0]
        if not base.isdigit():
            raise ConfigError(f"bad CUDA architecture {a!r}: use numbers like 86 or 90 (optionally 86-real)")
        out.append(s)
    if not out:
        raise ConfigError("archs is empty; pass e.g. [86, 90] or None for the default list")
    return ";".join(out)


def build_plugins(build_dir: str | os.PathLike | None = None, tensorrt_include: str | os.PathLike | None = None,
                  archs: Iterable[int | str] | int | str | None = None, jobs: int = 2, *,
                  plugins: bool = True, require_plugins: bool = False, emulation: bool = False,
                  build_type: str = "Release", cmake_args: Sequence[str] = (),
                  verbose: bool = False) -> dict[str, Any]:
    """Configure and build ``plugins/`` with CMake. Returns a dict of paths (str or None):

    ``build_dir``, ``kernels`` (libalgm_kernels.so), ``plugins`` (libalgm_plugins.so, None
    when no TensorRT headers were found or `plugins` is False), ``emulation``
    (libalgm_kernels_emu.so when `emulation`), ``tensorrt_include``, ``archs``.

    `tensorrt_include`: directory with NvInferRuntime.h (a TensorRT or TensorRT-RTX install's
    ``include/``); default: env ALGM_TENSORRT_INCLUDE / TENSORRT_INCLUDE_DIR / TENSORRT_ROOT,
    then standard locations. `archs`: CUDA architectures, e.g. ``[86, 90]``; default: 75 80 86
    87 89 90 100 120 (those nvcc supports). `require_plugins`: raise when the plugin library
    cannot be built (no headers) instead of building the kernels only.
    """
    src = plugin_source_dir()
    if not (src / "CMakeLists.txt").is_file():
        raise PluginBuildError(f"plugin sources not found at {src} (set ALGM_PLUGINS_SRC to the plugins/ folder "
                               "of an algm-export checkout)")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginBuildError("cmake not found on PATH; install CMake >= 3.18 (e.g. `pip install cmake`).")
    if shutil.which("nvcc") is None and not os.environ.get("CUDACXX") and not Path("/usr/local/cuda/bin/nvcc").exists():
        raise PluginBuildError("nvcc (CUDA toolkit) not found: put it on PATH or set CUDACXX.")
    bdir = Path(build_dir).expanduser().resolve() if build_dir else default_build_dir()
    bdir.mkdir(parents=True, exist_ok=True)

    trt_inc = None
    if plugins:
        trt_inc = find_tensorrt_include(tensorrt_include)
        if tensorrt_include and trt_inc is None:
            raise ConfigError(f"no NvInferRuntime.h in {tensorrt_include} (or its include/): pass the include/ "
                              "folder of a TensorRT or TensorRT-RTX install.")
        if trt_inc is None and require_plugins:
            raise PluginBuildError("TensorRT headers not found: pass tensorrt_include=... (a TensorRT or "
                                   "TensorRT-RTX install's include/ folder; headers ship in no pip wheel) "
                                   "or set TENSORRT_INCLUDE_DIR.")

    cfg = [cmake, "-S", str(src), "-B", str(bdir), f"-DCMAKE_BUILD_TYPE={build_type}",
           f"-DALGM_BUILD_PLUGINS={'ON' if plugins and trt_inc else 'OFF'}",
           f"-DALGM_BUILD_EMULATION={'ON' if emulation else 'OFF'}"]
    # a fresh value every time, so that a cached header path or arch list never lingers
    cfg.append(f"-DTENSORRT_INCLUDE_DIR={trt_inc or ''}")
    arch = _arch_list(archs)
    if arch is not None:
        cfg.append(f"-DCMAKE_CUDA_ARCHITECTURES={arch}")
    else:  # forget an arch list cached by an earlier configure of this build dir: back to the default
        cfg.append("-UCMAKE_CUDA_ARCHITECTURES")
    if os.environ.get("CUDACXX") is None and shutil.which("nvcc") is None:
        cfg.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
    cfg += list(cmake_args)
    log: list[str] = []
    _run(cfg, log, verbose)
    _run([cmake, "--build", str(bdir), "-j", str(max(1, int(jobs)))], log, verbose)

    def _lib(name: str, wanted: bool) -> str | None:
        p = bdir / name
        return str(p) if wanted and p.is_file() else None

    out = {
        "build_dir": str(bdir),
        "kernels": _lib(KERNEL_LIBRARY, True),
        "plugins": _lib(PLUGIN_LIBRARY, bool(plugins and trt_inc)),
        "emulation": _lib(EMULATION_LIBRARY, emulation),
        "tensorrt_include": str(trt_inc) if trt_inc else None,
        "archs": arch or "default (" + " ".join(str(a) for a in DEFAULT_ARCHS) + ", as supported by nvcc)",
    }
    if out["kernels"] is None:
        raise PluginBuildError(f"the build finished but {bdir / KERNEL_LIBRARY} is missing:\n{_tail(''.join(log))}")
    if plugins and trt_inc and out["plugins"] is None:
        raise PluginBuildError(f"the build finished but {bdir / PLUGIN_LIBRARY} is missing:\n{_tail(''.join(log))}")
    return out


# --------------------------------------------------------------------------- loading

def _creators(registry) -> set[tuple[str, str, str]]:
    out = set()
    for c in registry.all_creators:
        try:
            out.add((str(c.plugin_namespace), str(c.name), str(c.plugin_version)))
        except Exception:  # an exotic creator type
            continue
    return out


def _algm_registered(registry) -> bool:
    have = _creators(registry)
    return all((PLUGIN_NAMESPACE, n, v) in have for n in PLUGIN_NAMES for v in PLUGIN_VERSIONS)


_LOADED: dict[str, Any] = {}


def load_plugin_library(trt_module, path: str | os.PathLike | None = None) -> list[str]:
    """Register ``libalgm_plugins.so`` in `trt_module`'s plugin registry (``tensorrt`` or
    ``tensorrt_rtx``) through ``get_plugin_registry().load_library(path)``, i.e. ``getCreators``.

    `path` default: `find_plugin_library()`. Loading the same path again is a no-op (the
    registry refuses to register a creator twice). Returns the algm creators now registered, as
    ``"algm::AlgmClap/1"``, ``"algm::AlgmGbm/1"``, ``"algm::AlgmClap/2"``, ``"algm::AlgmGbm/2"``. Raises BackendUnavailable naming the path and
    the fix when the library cannot be registered.
    """
    p = Path(path).expanduser().resolve() if path else find_plugin_library()
    if not p.is_file():
        raise BackendUnavailable(f"plugin library {p} does not exist; build it with `algm-export plugins build` "
                                 "(algm_export.plugins.build_plugins) and pass its path.")
    names = [f"{PLUGIN_NAMESPACE}::{n}/{v}" for v in PLUGIN_VERSIONS for n in PLUGIN_NAMES]
    key = f"{trt_module.__name__}:{p}"
    if key in _LOADED:
        return names
    registry = trt_module.get_plugin_registry()
    failure = (
        f"{trt_module.__name__}'s plugin registry could not register {p}: it failed to load (missing symbols, "
        "or built for another platform), exports no getCreators, or another library already registered "
        "algm plugins of the same name. Rebuild it (`algm-export plugins build --tensorrt-include "
        "<TensorRT include/>`) and check the TensorRT log above."
    )
    try:  # share the runtime loader's bookkeeping, so that no path is registered twice
        from algm_export.runtimes.tensorrt.loader import load_plugin_library as _runtime_load  # noqa: PLC0415
    except ImportError:  # the runtime package is optional here
        _runtime_load = None
    if _runtime_load is not None:
        try:
            _runtime_load(trt_module, p)
        except BackendUnavailable:
            if not _algm_registered(registry):
                raise BackendUnavailable(failure) from None
    elif not _algm_registered(registry):
        handle = registry.load_library(str(p))
        if handle is None:
            raise BackendUnavailable(failure)
        _LOADED[key + ":handle"] = handle  # keep the library registered for the process
    if not _algm_registered(registry):
        raise BackendUnavailable(
            f"{p} loaded, but the creators {', '.join(names)} are not in the registry: it is not an "
            "algm-export plugin library of this version. Rebuild it (`algm-export plugins build`)."
        )
    _LOADED[key] = True
    return names


# --------------------------------------------------------------------------- ctypes access to the kernels

class KernelLibrary:
    """ctypes binding of the kernel C API (``libalgm_kernels.so`` or the emulator build).

    ``clap`` / ``gbm`` take torch tensors (CUDA tensors for the CUDA library, CPU tensors for
    the emulator) and return ``(y, size, assign, stats)`` like ``algm_export.merging.static``.
    """

    def __init__(self, path: str | os.PathLike, emulated: bool = False):
        self.path = str(path)
        self.emulated = emulated
        lib = ctypes.CDLL(self.path)
        P, I32, F32, SZ = ctypes.c_void_p, ctypes.c_int32, ctypes.c_float, ctypes.c_size_t
        lib.algmKernelsVersion.restype = I32
        lib.algmStatusString.restype = ctypes.c_char_p
        lib.algmStatusString.argtypes = [I32]
        lib.algmClapWorkspaceSize.restype = SZ
        lib.algmClapWorkspaceSize.argtypes = [I32] * 7
        lib.algmClapCheckAttributes.restype = I32
        lib.algmClapCheckAttributes.argtypes = [I32] * 6
        lib.algmClapForward.restype = I32
        lib.algmClapForward.argtypes = [P] * 5 + [I32] * 8 + [F32, I32, P, SZ, P]
        lib.algmGbmWorkspaceSize.restype = SZ
        lib.algmGbmWorkspaceSize.argtypes = [I32] * 5
        lib.algmGbmCheckAttributes.restype = I32
        lib.algmGbmCheckAttributes.argtypes = [I32] * 4
        lib.algmGbmForward.restype = I32
        lib.algmGbmForward.argtypes = [P] * 7 + [I32] * 6 + [F32, I32, P, SZ, P]
        lib.algmClapDynamicWorkspaceSize.restype = SZ
        lib.algmClapDynamicWorkspaceSize.argtypes = [I32] * 6
        lib.algmClapDynamicForward.restype = I32
        lib.algmClapDynamicForward.argtypes = [P] * 7 + [I32] * 8 + [P, SZ, P]
        lib.algmGbmDynamicWorkspaceSize.restype = SZ
        lib.algmGbmDynamicWorkspaceSize.argtypes = [I32] * 4
        lib.algmGbmDynamicForward.restype = I32
        lib.algmGbmDynamicForward.argtypes = [P] * 8 + [I32] * 5 + [F32, I32, P, SZ, P]
        if emulated:
            lib.algmEmuSetOrder.restype = None
            lib.algmEmuSetOrder.argtypes = [I32]
            lib.algmEmuSetGbmTile.restype = None
            lib.algmEmuSetGbmTile.argtypes = [I32]
        self.lib = lib

    def version(self) -> int:
        return int(self.lib.algmKernelsVersion())

    def set_emulation_order(self, order: int) -> None:
        """Emulator only: 0 forward, 1 reverse, 2 interleaved thread order inside barrier phases."""
        self.lib.algmEmuSetOrder(int(order))

    def set_emulation_gbm_tile(self, tile: int) -> None:
        """Emulator only: force the GBM similarity tile (16, 32, 64; 0 = automatic)."""
        self.lib.algmEmuSetGbmTile(int(tile))

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} failed: {self.lib.algmStatusString(status).decode()} (status {status})")

    def _stream(self, device):
        if self.emulated:
            return None
        import torch

        return torch.cuda.current_stream(device).cuda_stream

    @staticmethod
    def _dtype(x) -> int:
        import torch

        if x.dtype == torch.float32:
            return 0
        if x.dtype == torch.float16:
            return 1
        raise ConfigError(f"tokens must be float32 or float16, got {x.dtype}")

    def clap_workspace_size(self, batch, grid_h, grid_w, window_h, window_w, num_prefix, capacity) -> int:
        return int(self.lib.algmClapWorkspaceSize(batch, grid_h, grid_w, window_h, window_w, num_prefix, capacity))

    def gbm_workspace_size(self, batch, num_tokens, num_patches, num_prefix, capacity) -> int:
        return int(self.lib.algmGbmWorkspaceSize(batch, num_tokens, num_patches, num_prefix, capacity))

    def clap_dynamic(self, x, threshold, grid_h: int, grid_w: int, window_h: int, window_w: int, num_prefix: int,
                     workspace=None):
        """Dynamic token mode: like `merging.static.clap_dynamic` (threshold: float or [B] tensor);
        returns (y [B, P+K, D], size, assign, stats) cut to the K the kernels wrote."""
        import torch

        x = x.contiguous()
        B, T, D = x.shape
        P, N = num_prefix, grid_h * grid_w
        dev = x.device
        thr = torch.as_tensor(threshold, dtype=torch.float32, device=dev).reshape(-1).expand(B).contiguous()
        y = torch.empty(B * (P + N) * D, dtype=x.dtype, device=dev)        # upper bound, written [B, P+K, D]
        size = torch.empty(B * (P + N), dtype=torch.float32, device=dev)
        assign = torch.empty(B, N, dtype=torch.int32, device=dev)
        stats = torch.empty(B, 2, dtype=torch.int32, device=dev)
        slots = torch.full((1,), -1, dtype=torch.int32, device=dev)
        need = int(self.lib.algmClapDynamicWorkspaceSize(B, grid_h, grid_w, window_h, window_w, P))
        if workspace is None:
            workspace = torch.empty(max(need, 1), dtype=torch.uint8, device=dev)
        status = self.lib.algmClapDynamicForward(
            x.data_ptr(), thr.data_ptr(), y.data_ptr(), size.data_ptr(), assign.data_ptr(), stats.data_ptr(),
            slots.data_ptr(), B, D, grid_h, grid_w, window_h, window_w, P, self._dtype(x), workspace.data_ptr(),
            workspace.numel(), self._stream(dev))
        self._check(status, "algmClapDynamicForward")
        t = int(slots.item())  # P + K
        return y[: B * t * D].view(B, t, D), size[: B * t].view(B, t), assign, stats

    def gbm_dynamic(self, x, size, assign, num_prefix: int, divisor: float, workspace=None):
        """Dynamic token mode: like `merging.static.gbm_dynamic`, cut to the K2 the kernels wrote."""
        import torch

        x = x.contiguous()
        size = size.contiguous().float()
        assign = assign.contiguous().to(torch.int32)
        B, T, D = x.shape
        N = assign.shape[1]
        P = num_prefix
        dev = x.device
        y = torch.empty(B * T * D, dtype=x.dtype, device=dev)
        osize = torch.empty(B * T, dtype=torch.float32, device=dev)
        oassign = torch.empty(B, N, dtype=torch.int32, device=dev)
        stats = torch.empty(B, 2, dtype=torch.int32, device=dev)
        slots = torch.full((1,), -1, dtype=torch.int32, device=dev)
        need = int(self.lib.algmGbmDynamicWorkspaceSize(B, T, N, P))
        if workspace is None:
            workspace = torch.empty(max(need, 1), dtype=torch.uint8, device=dev)
        status = self.lib.algmGbmDynamicForward(
            x.data_ptr(), size.data_ptr(), assign.data_ptr(), y.data_ptr(), osize.data_ptr(), oassign.data_ptr(),
            stats.data_ptr(), slots.data_ptr(), B, T, N, D, P, float(divisor), self._dtype(x), workspace.data_ptr(),
            workspace.numel(), self._stream(dev))
        self._check(status, "algmGbmDynamicForward")
        t = int(slots.item())  # P + K2
        return y[: B * t * D].view(B, t, D), osize[: B * t].view(B, t), oassign, stats

    def clap(self, x, grid_h: int, grid_w: int, window_h: int, window_w: int, num_prefix: int,
             capacity: int, threshold: float, workspace=None):
        import torch

        x = x.contiguous()
        B, T, D = x.shape
        P, C, N = num_prefix, capacity, grid_h * grid_w
        dev = x.device
        y = torch.empty(B, P + C, D, dtype=x.dtype, device=dev)
        size = torch.empty(B, P + C, dtype=torch.float32, device=dev)
        assign = torch.empty(B, N, dtype=torch.int32, device=dev)
        stats = torch.empty(B, 2, dtype=torch.int32, device=dev)
        need = self.clap_workspace_size(B, grid_h, grid_w, window_h, window_w, P, C)
        if workspace is None:
            workspace = torch.empty(max(need, 1), dtype=torch.uint8, device=dev)
        status = self.lib.algmClapForward(
            x.data_ptr(), y.data_ptr(), size.data_ptr(), assign.data_ptr(), stats.data_ptr(), B, D, grid_h, grid_w,
            window_h, window_w, P, C, float(threshold), self._dtype(x), workspace.data_ptr(), workspace.numel(),
            self._stream(dev))
        self._check(status, "algmClapForward")
        return y, size, assign, stats

    def gbm(self, x, size, assign, num_prefix: int, capacity: int, divisor: float, workspace=None):
        import torch

        x = x.contiguous()
        size = size.contiguous().float()
        assign = assign.contiguous().to(torch.int32)
        B, T, D = x.shape
        N = assign.shape[1]
        P, C = num_prefix, capacity
        dev = x.device
        y = torch.empty(B, P + C, D, dtype=x.dtype, device=dev)
        osize = torch.empty(B, P + C, dtype=torch.float32, device=dev)
        oassign = torch.empty(B, N, dtype=torch.int32, device=dev)
        stats = torch.empty(B, 2, dtype=torch.int32, device=dev)
        need = self.gbm_workspace_size(B, T, N, P, C)
        if workspace is None:
            workspace = torch.empty(max(need, 1), dtype=torch.uint8, device=dev)
        status = self.lib.algmGbmForward(
            x.data_ptr(), size.data_ptr(), assign.data_ptr(), y.data_ptr(), osize.data_ptr(), oassign.data_ptr(),
            stats.data_ptr(), B, T, N, D, P, C, float(divisor), self._dtype(x), workspace.data_ptr(),
            workspace.numel(), self._stream(dev))
        self._check(status, "algmGbmForward")
        return y, osize, oassign, stats


__all__ = [
    "DEFAULT_ARCHS", "EMULATION_LIBRARY", "KERNEL_LIBRARY", "KernelLibrary", "PLUGIN_DYNAMIC_VERSION",
    "PLUGIN_LIBRARY", "PLUGIN_NAMES", "PLUGIN_VERSIONS",
    "PLUGIN_NAMESPACE", "PLUGIN_VERSION", "PluginBuildError", "build_plugins", "default_build_dir",
    "find_kernel_library", "find_plugin_library", "find_tensorrt_include", "load_plugin_library",
    "plugin_source_dir",
]
