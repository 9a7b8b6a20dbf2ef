"""Building the native libraries of ``plugins/`` with CMake and nvcc (``algm-export plugins build``).

What they are and how they are found and loaded at run time: `algm_export.runtimes.plugins`.

    from algm_export.tasks.plugins import build_plugins
    paths = build_plugins(tensorrt_include="/opt/TensorRT/include")
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Sequence

from algm_export.core.errors import BackendUnavailable, ConfigError
from algm_export.runtimes.plugins import (EMULATION_LIBRARY, KERNEL_LIBRARY, PLUGIN_LIBRARY, default_build_dir,
                                          plugin_source_dir)

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



__all__ = ["DEFAULT_ARCHS", "PluginBuildError", "build_plugins", "find_tensorrt_include"]
