"""The native libraries of ``plugins/`` at run time: where they are, the one loader that registers
the TensorRT plugin library, and ctypes access to the CUDA kernels (see plugins/README.md).

* ``libalgm_kernels.so``  -- the CUDA kernels of AlgmClap / AlgmGbm behind a small C API
  (``plugins/common/algmKernels.h``).
* ``libalgm_plugins.so``  -- the TensorRT ``IPluginV3`` plugins ``algm::AlgmClap`` and
  ``algm::AlgmGbm``, version "1" (static token mode) and "2" (dynamic token mode), registered
  through ``getCreators``; loads into TensorRT >= 10 and TensorRT-RTX.
* ``libalgm_kernels_emu.so`` (optional) -- the same kernel sources compiled for the CPU (tests).

Building them is `algm_export.tasks.plugins.build_plugins` (``algm-export plugins build``).

    from algm_export.runtimes.plugins import find_plugin_library, load_plugin_library
    import tensorrt_rtx as trt
    load_plugin_library(trt, find_plugin_library())
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path
from typing import Any

from algm_export.core.errors import BackendUnavailable, ConfigError

PLUGIN_NAMESPACE = "algm"
PLUGIN_VERSION = "1"            # static token mode
PLUGIN_DYNAMIC_VERSION = "2"    # dynamic token mode (size-tensor outputs)
PLUGIN_VERSIONS = (PLUGIN_VERSION, PLUGIN_DYNAMIC_VERSION)
PLUGIN_NAMES = ("AlgmClap", "AlgmGbm")

KERNEL_LIBRARY = "libalgm_kernels.so"
PLUGIN_LIBRARY = "libalgm_plugins.so"
EMULATION_LIBRARY = "libalgm_kernels_emu.so"


# --------------------------------------------------------------------------- locations

def plugin_source_dir() -> Path:
    """The plugin source tree: env ALGM_PLUGINS_SRC, else the copy a wheel ships inside the package
    (``algm_export/plugin_src``, see setup.py), else ``plugins/`` of the checkout."""
    env = os.environ.get("ALGM_PLUGINS_SRC")
    if env:
        return Path(env).expanduser().resolve()
    shipped = Path(__file__).resolve().parents[1] / "plugin_src"
    if (shipped / "CMakeLists.txt").is_file():
        return shipped
    return Path(__file__).resolve().parents[2] / "plugins"


def default_build_dir() -> Path:
    """``plugins/build`` in a checkout; for an installed wheel (whose package folder may be
    read-only) ``$XDG_CACHE_HOME/algm-export/plugins-build/<version>-<key>`` (env ALGM_PLUGINS_BUILD
    overrides), `key` a short hash of the source folder and the package version: a CMake build
    folder belongs to one source tree, so two installations (two virtual environments, or an
    upgrade) each get their own instead of failing on the other's CMake cache."""
    env = os.environ.get("ALGM_PLUGINS_BUILD")
    if env:
        return Path(env).expanduser().resolve()
    src = plugin_source_dir()
    if src.name == "plugin_src":
        from algm_export import __version__

        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        key = hashlib.sha256(f"{src.resolve()}\n{__version__}".encode()).hexdigest()[:12]
        return cache / "algm-export" / "plugins-build" / f"{__version__}-{key}"
    return src / "build"


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
        f"(algm_export.tasks.plugins.build_plugins) or point {env_var} at it."
    )


def find_plugin_library(build_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``libalgm_plugins.so`` (env ALGM_PLUGIN_LIBRARY, else `build_dir` or plugins/build)."""
    return _find_library(PLUGIN_LIBRARY, build_dir, "ALGM_PLUGIN_LIBRARY")


def find_kernel_library(build_dir: str | os.PathLike | None = None) -> Path:
    """Path of ``libalgm_kernels.so`` (env ALGM_KERNEL_LIBRARY, else `build_dir` or plugins/build)."""
    return _find_library(KERNEL_LIBRARY, build_dir, "ALGM_KERNEL_LIBRARY")


# --------------------------------------------------------------------------- loading

def creator_names(registry) -> list[str]:
    """Every creator of a TensorRT plugin registry as ``"namespace::name/version"``."""
    out = []
    for c in registry.all_creators:
        try:
            out.append(f"{c.plugin_namespace}::{c.name}/{c.plugin_version}")
        except Exception:  # noqa: BLE001  (an exotic creator type: skip it in the listing)
            continue
    return out


def _algm_creators(registry) -> list[str]:
    return sorted(c for c in creator_names(registry) if c.startswith(f"{PLUGIN_NAMESPACE}::"))


_LOADED: dict[str, Any] = {}  # "module:path" -> the registry's library handle (kept: the library stays loaded)


def load_plugin_library(trt_module, path: str | os.PathLike | None = None) -> list[str]:
    """Register ``libalgm_plugins.so`` in `trt_module`'s plugin registry (``tensorrt`` or
    ``tensorrt_rtx``) through ``get_plugin_registry().load_library(path)``, i.e. ``getCreators``.
    The one loader of the package: the engine builder, the runners and the tests all call it.

    `path` default: `find_plugin_library()`. Loading the same path again in one process is a no-op.
    Returns the algm creators now registered (``"algm::AlgmClap/1"``, ...); whoever needs particular
    ones checks them (the builder names the missing versions). (``polygraphy --plugins`` only dlopens
    a library, which does not register ``getCreators`` plugins, hence this function.)
    """
    p = Path(path).expanduser().resolve() if path else find_plugin_library()
    if not p.is_file():
        raise BackendUnavailable(f"plugin library {p} does not exist; build it with `algm-export plugins build` "
                                 "(algm_export.tasks.plugins.build_plugins) and pass its path, or drop --plugins.")
    key = f"{trt_module.__name__}:{p}"
    registry = trt_module.get_plugin_registry()
    if key not in _LOADED:
        handle = registry.load_library(str(p))
        if handle is None:
            raise BackendUnavailable(
                f"{trt_module.__name__}'s plugin registry refused {p}: it failed to load (missing symbols, built "
                "for another platform or TensorRT), exports no getCreators, or its plugins are already registered "
                "by another library. Rebuild it (`algm-export plugins build --tensorrt-include <TensorRT "
                "include/>`) and check the TensorRT log above.")
        _LOADED[key] = handle
    return _algm_creators(registry)


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

    def max_prefix(self) -> int:
        """The largest ``num_prefix`` the library accepts (2 for a library older than API version 3)."""
        fn = getattr(self.lib, "algmMaxPrefix", None)
        if fn is None:
            return 2
        fn.restype = ctypes.c_int32
        return int(fn())

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
    "EMULATION_LIBRARY", "KERNEL_LIBRARY", "KernelLibrary", "PLUGIN_LIBRARY", "PLUGIN_NAMES", "PLUGIN_NAMESPACE",
    "PLUGIN_VERSIONS", "creator_names", "default_build_dir", "find_kernel_library", "find_plugin_library",
    "load_plugin_library", "plugin_source_dir",
]
