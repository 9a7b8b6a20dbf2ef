#!/usr/bin/env python3
"""Every GPU check of docs/gpu-validation.md in one run, with one JSON and one Markdown report.

    bash scripts/gpu_check.sh [--out DIR] [--budget-s 480] [--only STEP,...] [--skip STEP,...]
    bash scripts/gpu_check.sh --dry-run        # on a CPU machine: list the steps, run the CPU-able ones
    bash scripts/gpu_check.sh --list

Made for a bare CUDA machine (nvcc, PyTorch, onnxruntime and the usual Python packages; no
TensorRT, no network): the checkout is used in place (`PYTHONPATH`), the native libraries are
built into the output folder, and a step whose tools or packages are missing is skipped with the
reason (the report names them). Steps, in order:

  environment          versions: GPU, driver, CUDA, nvcc, torch, onnxruntime, TensorRT, packages
  build                libalgm_kernels.so for this GPU (nvcc) and the host emulator libalgm_kernels_emu.so
  emulator             the emulator against the torch ops (merging.static) for every P and both token modes
  kernels-vs-emulator  CUDA kernels == emulator, every output bit, for every P (0..5, 9, 16) and both token
                       modes, float32 and float16, at ViT-S size (32x32 grid, D = 384)
  gpu-tests            pytest tests/test_plugins_gpu.py (kernels vs the torch reference, ties, determinism)
  kernel-time          CLAP + GBM kernels (static and dynamic) vs one ViT block at ViT-S, ViT-B, ViT-L sizes;
                       budget: the two merge steps cost <= 3 % of the encoder (depth x one block)
  torch-throughput     PyTorch, batch 32: baseline vs ALGM dynamic token mode (per-image merges, batches
                       grouped by CLAP count) for Segmenter ViT-S/B 512 and ViT-L 640, beside the paper
  token-counts         dynamic token counts of ViT-S/16 512 on the photos: CUDA vs CPU
  plugin-selftest      algm_plugin_selftest --gpu (plugin enqueue vs the kernel C API; TensorRT headers)
  tensorrt             export + build + validate + bench with TensorRT (skipped when TensorRT is absent)

Exit status: 0 when no step failed, 1 when one did, 2 for a usage error. The reports are written
after every step, so a run cut short still leaves them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

P_LIST = (0, 1, 2, 3, 4, 5, 9, 16)          # prefix-token counts the kernels are checked at
PUBLISHED_GAIN = {"vit_small": 43, "vit_base": 43, "vit_large": 60}   # paper, images/s at batch 32
BUDGET_SHARE = 0.03                          # CLAP + GBM kernels: at most 3 % of the encoder
# the throughput models: (backbone, image size, ALGM layers), the paper's settings (thresholds per backbone)
THROUGHPUT_MODELS = [("vit_small", 512, (1, 5)), ("vit_base", 512, (1, 5)), ("vit_large", 640, (1, 7))]
DEVICE = "cuda"                              # where the GPU steps put tensors (tests run them on "cpu")
KERNEL_SHAPE = (2, 32, 384)                  # kernels-vs-emulator: batch, grid side, width (ViT-S/16 at 512)
TOKEN_COUNT_MODEL = "builtin:vit_s16_512"    # token-counts: the model and how many photos
TOKEN_COUNT_IMAGES = 11


def _sync():
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Skip(Exception):
    """The step cannot run here; the message says why."""


class Fail(Exception):
    """The step ran and a check failed; the message says which."""


# ----------------------------------------------------------------------------- steps

STEPS: list[dict] = []


def step(name: str, title: str, needs=(), cpu: bool = False, budget_s: float = 60.0):
    """Register a step. needs: "gpu", "nvcc", "cmake", "tensorrt", "trt-headers" or Python module names;
    cpu: runs (in a reduced form) without a GPU, so --dry-run runs it."""
    def wrap(fn):
        STEPS.append({"name": name, "title": title, "needs": tuple(needs), "cpu": cpu, "budget_s": budget_s,
                      "fn": fn})
        return fn
    return wrap


def missing_needs(needs, ctx) -> list[str]:
    out = []
    for n in needs:
        if n == "gpu":
            if not ctx.gpu:
                out.append("a CUDA GPU visible to torch")
        elif n == "nvcc":
            if not ctx.tools.get("nvcc"):
                out.append("nvcc (CUDA toolkit) on PATH or CUDACXX")
        elif n == "cmake":
            if not ctx.tools.get("cmake"):
                out.append("cmake")
        elif n == "tensorrt":
            if not (have("tensorrt") or have("tensorrt_rtx")):
                out.append("TensorRT (python module tensorrt or tensorrt_rtx; not on this image)")
        elif n == "trt-headers":
            if ctx.trt_include is None:
                out.append("TensorRT headers (--tensorrt-include DIR or ALGM_TENSORRT_INCLUDE)")
        elif not have(n):
            out.append(f"the Python package {n} (carry it as a wheel: --wheels DIR of gpu_check.sh)")
    return out


class Context:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.out = Path(args.out).resolve()
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        import torch

        self.torch = torch
        self.gpu = (not self.dry) and torch.cuda.is_available()
        self.tools = {"nvcc": _nvcc(), "cmake": shutil.which("cmake"), "c++": shutil.which("g++") or shutil.which("c++")}
        inc = args.tensorrt_include or os.environ.get("ALGM_TENSORRT_INCLUDE")
        self.trt_include = inc if inc and (Path(inc) / "NvInferRuntime.h").is_file() else None
        self.libs: dict = {}
        self.deadline = time.monotonic() + args.budget_s
        self.p_list = tuple(int(p) for p in args.prefix.split(",") if p != "")

    def arch(self) -> int:
        major, minor = self.torch.cuda.get_device_capability()
        return major * 10 + minor


def _nvcc():
    if os.environ.get("CUDACXX"):
        return os.environ["CUDACXX"]
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)


def _run(cmd, timeout=600, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _version(cmd) -> str | None:
    try:
        p = _run(cmd, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[-1] if p.returncode == 0 else None
    except Exception:  # noqa: BLE001
        return None


@step("environment", "Machine, toolchain and package versions", cpu=True, budget_s=10)
def s_environment(ctx):
    torch = ctx.torch
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "nvcc": _version([ctx.tools["nvcc"], "--version"]) if ctx.tools["nvcc"] else None,
            "cmake": _version([ctx.tools["cmake"], "--version"]) if ctx.tools["cmake"] else None,
            "tensorrt_headers": ctx.trt_include}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["driver"] = _version(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    from importlib import metadata

    dists = {"numpy": "numpy", "onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime",
             "timm": "timm", "skimage": "scikit-image", "PIL": "pillow", "yaml": "PyYAML", "pytest": "pytest",
             "tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx", "polygraphy": "polygraphy"}
    for mod, dist in dists.items():     # versions from the package metadata: importing them all takes long
        if not have(mod):
            info[mod] = None
            continue
        try:
            info[mod] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[mod] = "present"
    return {"summary": f"{info.get('gpu', 'no GPU')}, torch {info['torch']}, "
                       f"nvcc {'yes' if info['nvcc'] else 'no'}, TensorRT {'yes' if info['tensorrt'] or info['tensorrt_rtx'] else 'no'}",
            "details": info}


@step("build", "Build the kernel library (nvcc) and the host emulator", cpu=True, budget_s=150)
def s_build(ctx):
    from algm_export.runtimes.plugins import EMULATION_LIBRARY, KERNEL_LIBRARY, plugin_source_dir

    src = plugin_source_dir()
    bdir = ctx.work / "plugins-build"
    bdir.mkdir(parents=True, exist_ok=True)
    details = {"source": str(src), "build_dir": str(bdir)}
    t0 = time.monotonic()
    if ctx.gpu and ctx.tools["nvcc"] and ctx.tools["cmake"]:
        from algm_export.tasks.plugins import build_plugins

        paths = build_plugins(build_dir=bdir, archs=[ctx.arch()], plugins=False, emulation=True,
                              jobs=os.cpu_count() or 4)
        details.update(method="cmake", arch=ctx.arch(), **{k: paths[k] for k in ("kernels", "emulation")})
    else:
        # no cmake (or a dry run): the same sources and flags as plugins/CMakeLists.txt, compiled directly
        cxx = ctx.tools["c++"]
        if cxx is None:
            raise Skip("no C++ compiler (g++) for the emulator")
        emu = bdir / EMULATION_LIBRARY
        cmd = [cxx, "-O3", "-DNDEBUG", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden", "-ffp-contract=off",
               f"-I{src / 'common'}", str(src / "common/emu/algmKernelsEmu.cpp"), str(src / "common/emu/algmEmu.cpp"),
               "-o", str(emu)]
        p = _run(cmd)
        if p.returncode != 0:
            raise Fail(f"emulator build failed: {p.stderr[-2000:]}")
        details.update(method="direct", emulation=str(emu))
        if ctx.gpu:
            if not ctx.tools["nvcc"]:
                raise Fail("nvcc not found: the CUDA kernels cannot be built")
            ker = bdir / KERNEL_LIBRARY
            cmd = [ctx.tools["nvcc"], "-O3", "-DNDEBUG", "-std=c++17", "-shared", "-fmad=false",
                   f"-gencode=arch=compute_{ctx.arch()},code=sm_{ctx.arch()}", "-Xcompiler", "-fPIC,-fvisibility=hidden",
                   "-cudart", "static", f"-I{src / 'common'}", str(src / "algmClap/algmClapKernel.cu"),
                   str(src / "algmGbm/algmGbmKernel.cu"), str(src / "common/algmKernelsApi.cpp"), "-o", str(ker)]
            p = _run(cmd)
            if p.returncode != 0:
                raise Fail(f"nvcc build failed: {p.stderr[-2000:]}")
            details.update(kernels=str(ker), arch=ctx.arch())
    from algm_export.runtimes.plugins import KernelLibrary

    ctx.libs["emu"] = KernelLibrary(details["emulation"], emulated=True)
    if details.get("kernels"):
        ctx.libs["cuda"] = KernelLibrary(details["kernels"])
    details["seconds"] = round(time.monotonic() - t0, 1)
    details["max_prefix"] = _max_prefix(ctx.libs["emu"])
    built = "kernels + emulator" if "cuda" in ctx.libs else "emulator only (no GPU)"
    return {"summary": f"{built} ({details['method']}, {details['seconds']} s); kernels accept P <= {details['max_prefix']}",
            "details": details}


def _max_prefix(lib) -> int:
    """The largest prefix-token count the library accepts (`max_prefix()` where the C API has it)."""
    if hasattr(lib, "max_prefix"):
        return int(lib.max_prefix())
    import torch

    best = -1
    for p in range(0, 65):
        try:
            lib.clap(torch.zeros(1, p + 16, 8), 4, 4, 2, 2, p, 16, 0.5)
        except RuntimeError:
            break
        best = p
    return best


def smooth_tokens(B, gh, gw, P, D, seed, noise=0.4, dtype=None):
    """[B, P+N, D]: a smooth random field plus noise (windows and tokens look alike, so merges happen)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, D, gh // 2 + 1, gw // 2 + 1, generator=g)
    f = torch.nn.functional.interpolate(base, size=(gh, gw), mode="bilinear", align_corners=True)
    f = f + noise * torch.randn(B, D, gh, gw, generator=g)
    x = torch.cat([torch.randn(B, P, D, generator=g), f.flatten(2).transpose(1, 2)], 1)
    return x.to(dtype or torch.float32)


def _kernel_cases(ctx):
    """(P, supported) for every P of the list."""
    mp = _max_prefix(ctx.libs["emu"])
    return [(p, p <= mp) for p in ctx.p_list], mp


@step("emulator", "Emulator vs the torch ops (merging.static), every P, both token modes", cpu=True, budget_s=60)
def s_emulator(ctx):
    import torch

    from algm_export.merging import static as S

    if "emu" not in ctx.libs:
        raise Skip("the emulator was not built (step build)")
    emu = ctx.libs["emu"]
    cases, mp = _kernel_cases(ctx)
    rows, failed = [], []
    gh = gw = 8
    for P, ok in cases:
        if not ok:
            rows.append({"P": P, "status": "skipped", "reason": f"this kernel library accepts P <= {mp}"})
            continue
        x = smooth_tokens(2, gh, gw, P, 64, seed=10 + P)
        N = gh * gw
        C1 = 40
        C2 = max(28, S.gbm_capacity_min(C1, P))
        # static: decisions compared where torch and the kernels sum in different orders -> assignments
        # agree on all but near-ties; tokens conserved (sizes sum to P + N), capacities respected
        e = emu.clap(x, gh, gw, 2, 2, P, C1, 0.6)
        r = S.clap_static(x, gh, gw, 2, 2, P, C1, 0.6)
        eg = emu.gbm(*e[:3], P, C2, 5.0)
        rg = S.gbm_static(*r[:3], P, C2, 5.0)
        ed = emu.clap_dynamic(x, torch.tensor([0.5, 0.8]), gh, gw, 2, 2, P)
        rd = S.clap_dynamic(x, torch.tensor([0.5, 0.8]), gh, gw, 2, 2, P)
        edg = emu.gbm_dynamic(*ed[:3], P, 5.0)
        rdg = S.gbm_dynamic(*rd[:3], P, 5.0)
        checks = {
            "static sizes sum": bool(torch.allclose(e[1].sum(1), torch.full((2,), float(P + N)))
                                     and torch.allclose(eg[1].sum(1), torch.full((2,), float(P + N)))),
            "static shapes": e[0].shape == r[0].shape and eg[0].shape == rg[0].shape,
            "static assign agree >= 0.9": float((e[2] == r[2]).float().mean()) >= 0.9
                                          and float((eg[2] == rg[2]).float().mean()) >= 0.9,
            "dynamic sizes sum": bool(torch.allclose(ed[1].sum(1), torch.full((2,), float(P + N)))
                                      and torch.allclose(edg[1].sum(1), torch.full((2,), float(P + N)))),
            "dynamic cut = torch's": ed[0].shape == rd[0].shape and edg[0].shape == rdg[0].shape,
            "deterministic": all(torch.equal(a, b) for a, b in zip(emu.clap(x, gh, gw, 2, 2, P, C1, 0.6), e)),
        }
        bad = [k for k, v in checks.items() if not v]
        rows.append({"P": P, "status": "failed" if bad else "passed", "checks": checks})
        if bad:
            failed.append(f"P={P}: {', '.join(bad)}")
    if failed:
        raise Fail("; ".join(failed))
    done = [r["P"] for r in rows if r["status"] == "passed"]
    return {"summary": f"P = {done} passed" + (f"; P > {mp} skipped (library limit)" if len(done) < len(rows) else ""),
            "details": {"rows": rows, "shape": f"B=2, grid {gh}x{gw}, D=64"}}


@step("kernels-vs-emulator", "CUDA kernels == emulator, bit for bit, every P, both token modes", needs=("gpu",),
      budget_s=120)
def s_kernels_vs_emulator(ctx):
    import torch

    from algm_export.merging.static import gbm_capacity_min

    if "cuda" not in ctx.libs:
        raise Skip("the CUDA kernel library was not built (step build)")
    cuda, emu = ctx.libs["cuda"], ctx.libs["emu"]
    cases, mp = _kernel_cases(ctx)
    B, gh, D = KERNEL_SHAPE
    gw = gh
    rows, failed = [], []
    for P, ok in cases:
        if not ok:
            rows.append({"P": P, "status": "skipped", "reason": f"this kernel library accepts P <= {mp}"})
            continue
        for dtype in (torch.float32, torch.float16):
            x = smooth_tokens(B, gh, gw, P, D, seed=5 + P, dtype=dtype)
            N = gh * gw
            C1 = (3 * N) // 5
            C2 = max((2 * N) // 5, gbm_capacity_min(C1, P))
            outs = {}
            c_gpu = [t.cpu() for t in cuda.clap(x.to(DEVICE), gh, gw, 2, 2, P, C1, 0.9)]
            c_emu = emu.clap(x, gh, gw, 2, 2, P, C1, 0.9)
            outs["static clap"] = all(torch.equal(a, b) for a, b in zip(c_gpu, c_emu))
            g_gpu = [t.cpu() for t in cuda.gbm(*(t.to(DEVICE) for t in c_emu[:3]), P, C2, 5.0)]
            g_emu = emu.gbm(*c_emu[:3], P, C2, 5.0)
            outs["static gbm"] = all(torch.equal(a, b) for a, b in zip(g_gpu, g_emu))
            thr = torch.tensor([0.6, 0.9] * B)[:B]              # one threshold per image
            d_gpu = [t.cpu() for t in cuda.clap_dynamic(x.to(DEVICE), thr.to(DEVICE), gh, gw, 2, 2, P)]
            d_emu = emu.clap_dynamic(x, thr, gh, gw, 2, 2, P)
            outs["dynamic clap"] = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(d_gpu, d_emu))
            dg_gpu = [t.cpu() for t in cuda.gbm_dynamic(*(t.to(DEVICE) for t in d_emu[:3]), P, 5.0)]
            dg_emu = emu.gbm_dynamic(*d_emu[:3], P, 5.0)
            outs["dynamic gbm"] = all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(dg_gpu, dg_emu))
            name = "fp32" if dtype == torch.float32 else "fp16"
            bad = [k for k, v in outs.items() if not v]
            rows.append({"P": P, "dtype": name, "status": "failed" if bad else "passed", "checks": outs,
                         "merged_static": c_emu[3][:, 0].tolist(), "dynamic_slots": int(d_emu[0].shape[1] - P)})
            if bad:
                failed.append(f"P={P} {name}: {', '.join(bad)} differ")
    if failed:
        raise Fail("; ".join(failed))
    done = sorted({r["P"] for r in rows if r["status"] == "passed"})
    return {"summary": f"bitwise equal for P = {done} (fp32 and fp16, static and dynamic)"
                       + (f"; P > {mp} skipped (library limit)" if any(r["status"] == "skipped" for r in rows) else ""),
            "details": {"rows": rows, "shape": f"B={B}, grid {gh}x{gw}, D={D}"}}


@step("gpu-tests", "pytest tests/test_plugins_gpu.py", needs=("gpu", "pytest", "cmake", "nvcc"), budget_s=240)
def s_gpu_tests(ctx):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--basetemp", str(ctx.work / "pytest"),
           "-rs", str(ROOT / "tests" / "test_plugins_gpu.py")]
    left = max(30, int(ctx.deadline - time.monotonic()))
    try:
        p = _run(cmd, timeout=min(left, 300), env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        raise Fail(f"pytest did not finish within {min(left, 300)} s")
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-15:])
    (ctx.out / "gpu-tests.log").write_text(p.stdout + p.stderr)
    last = (p.stdout.strip().splitlines() or ["?"])[-1]
    if p.returncode not in (0, 5):
        raise Fail(f"pytest exit {p.returncode}: {last}\n{tail}")
    return {"summary": last, "details": {"command": " ".join(cmd), "tail": tail}}


def _cuda_time_ms(fn, iters=50, warmup=10) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


VIT_SIZES = {  # name: (D, heads, depth, grid) -- Segmenter ViT-S/B at 512, ViT-L at 640
    "ViT-S/16 512": (384, 6, 12, 32),
    "ViT-B/16 512": (768, 12, 12, 32),
    "ViT-L/16 640": (1024, 16, 24, 40),
}


def _vit_block(D, heads):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        """A pre-norm ViT block (timm's layout), attention through scaled_dot_product_attention."""

        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.fc1, self.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(B, T, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
            x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    return Block().cuda().eval()


@step("kernel-time", "CLAP + GBM kernels vs one ViT block (ViT-S, ViT-B, ViT-L sizes)", needs=("gpu",), budget_s=90)
def s_kernel_time(ctx):
    import torch

    if "cuda" not in ctx.libs:
        raise Skip("the CUDA kernel library was not built (step build)")
    lib = ctx.libs["cuda"]
    rows, over = [], []
    P = 1
    for name, (D, heads, depth, g) in VIT_SIZES.items():
        N = g * g
        C1, C2 = (3 * N) // 4, (11 * N) // 20                 # typical capacities at the published thresholds
        for dtype in (torch.float32, torch.float16):
            for B in (1, 8):
                x = smooth_tokens(B, g, g, P, D, seed=1, dtype=dtype).cuda()
                block = _vit_block(D, heads).to(dtype)
                ws_c = torch.empty(lib.clap_workspace_size(B, g, g, 2, 2, P, C1), dtype=torch.uint8, device="cuda")
                ws_g = torch.empty(lib.gbm_workspace_size(B, P + C1, N, P, C2), dtype=torch.uint8, device="cuda")
                y, size, assign, _ = lib.clap(x, g, g, 2, 2, P, C1, 0.88, workspace=ws_c)
                thr = torch.full((B,), 0.88, device="cuda")
                yd, sd, ad, _ = lib.clap_dynamic(x, thr, g, g, 2, 2, P)
                with torch.inference_mode():
                    t_block = _cuda_time_ms(lambda: block(x))
                t = {
                    "clap": _cuda_time_ms(lambda: lib.clap(x, g, g, 2, 2, P, C1, 0.88, workspace=ws_c)),
                    "gbm": _cuda_time_ms(lambda: lib.gbm(y, size, assign, P, C2, 5.0, workspace=ws_g)),
                    "clap_dynamic": _cuda_time_ms(lambda: lib.clap_dynamic(x, thr, g, g, 2, 2, P)),
                    "gbm_dynamic": _cuda_time_ms(lambda: lib.gbm_dynamic(yd, sd, ad, P, 5.0)),
                }
                static, dynamic = t["clap"] + t["gbm"], t["clap_dynamic"] + t["gbm_dynamic"]
                row = {"model": name, "dtype": str(dtype).split(".")[-1], "batch": B, "block_ms": t_block,
                       "encoder_ms": depth * t_block, **{f"{k}_ms": v for k, v in t.items()},
                       "static_vs_block": static / t_block, "dynamic_vs_block": dynamic / t_block,
                       "static_vs_encoder": static / (depth * t_block),
                       "dynamic_vs_encoder": dynamic / (depth * t_block)}
                rows.append(row)
                for mode in ("static", "dynamic"):
                    if row[f"{mode}_vs_encoder"] > BUDGET_SHARE:
                        over.append(f"{name} {row['dtype']} b{B} {mode}: {100 * row[f'{mode}_vs_encoder']:.1f} %")
    worst = max(max(r["static_vs_encoder"], r["dynamic_vs_encoder"]) for r in rows)
    res = {"summary": f"worst (CLAP + GBM) / encoder {100 * worst:.2f} % (budget {100 * BUDGET_SHARE:.0f} %)",
           "details": {"rows": rows, "note": "encoder = depth x one block (pre-norm ViT block with "
                                             "scaled_dot_product_attention); kernels timed with CUDA events, "
                                             "median of 50 calls each, launch overhead included"}}
    if over:
        raise Fail("over the 3 % budget: " + "; ".join(over), res)
    return res


def _photos(size, n, normalization="vit"):
    """n model inputs [1, 3, H, W]: the bundled photos (scikit-image), cycled, every other cycle mirrored;
    seeded smooth synthetic images where scikit-image is missing."""
    import torch

    from algm_export.models.images import to_model_input

    if have("skimage"):
        from algm_export.models.images import sample_images

        imgs = [to_model_input(img, size, normalization) for _, img in sample_images()]
        source = "scikit-image sample photos"
    else:
        g = torch.Generator().manual_seed(0)
        imgs = [torch.nn.functional.interpolate(torch.randn(1, 3, 6, 6, generator=g), size=tuple(size), mode="bicubic")
                for _ in range(11)]
        source = "seeded smooth synthetic images (scikit-image missing)"
    out = []
    for i in range(n):
        x = imgs[i % len(imgs)]
        out.append(x.flip(-1) if (i // len(imgs)) % 2 else x)
    return out, source


@step("torch-throughput", "PyTorch throughput at batch 32: baseline vs ALGM (dynamic token mode), Segmenter "
      "ViT-S/B 512 and ViT-L 640", needs=("gpu", "timm"), budget_s=180)
def s_torch_throughput(ctx):
    import numpy as np
    import torch

    from algm_export import AlgmSetting, apply_algm
    from algm_export.merging.driver import clap_counts
    from algm_export.models.families.segmenter import PUBLISHED_THRESHOLDS, create_segmenter
    from algm_export.models.flops import mean_macs, model_macs
    from algm_export.runtimes.batching import group_by_tokens

    bs, n_img = ctx.args.throughput_batch, 2 * ctx.args.throughput_batch
    rows = []
    for backbone, size, layers in THROUGHPUT_MODELS:
        if time.monotonic() > ctx.deadline - 20:
            rows.append({"model": f"{backbone} {size}", "status": "skipped", "reason": "time budget"})
            continue
        model = create_segmenter(backbone, "mask_transformer", size).to(DEVICE).eval()
        cfg = model.cfg
        setting = AlgmSetting(PUBLISHED_THRESHOLDS[cfg.backbone], (2, 2), layers)
        xs, source = _photos(cfg.image_size, n_img, cfg.normalization)
        dyn = apply_algm(model, setting, token_mode="dynamic")
        with torch.no_grad():
            x_all = torch.cat(xs).to(DEVICE)
            t0 = time.perf_counter()
            counts = []
            for s in range(0, n_img, bs):
                counts += clap_counts(model, setting, x_all[s:s + bs])
            _sync()
            t_probe = time.perf_counter() - t0
            groups = group_by_tokens(counts, bs)
            base_batches = [x_all[s:s + bs] for s in range(0, n_img, bs)]
            algm_batches = [x_all[torch.tensor(g, device=DEVICE)] for g in groups]
            real, padded = [], []

            def run(m, batches, record=False):
                for b in batches:
                    m(b)
                    if record:
                        tok = m.merge_stats["tokens"].cpu().numpy()
                        real.extend(tok.tolist())
                        padded.extend([tok.max(0).tolist()] * tok.shape[0])

            run(model, base_batches[:1])
            run(dyn, algm_batches[:1])                         # warm-up
            t_base, t_algm = [], []
            for rep in range(3):
                for m, batches, ts in ((model, base_batches, t_base), (dyn, algm_batches, t_algm)):
                    _sync()
                    t0 = time.perf_counter()
                    run(m, batches, record=(m is dyn and rep == 0))
                    _sync()
                    ts.append(time.perf_counter() - t0)
        base_ips = n_img / statistics.median(t_base)
        algm_ips = n_img / statistics.median(t_algm)
        algm_ips_probe = n_img / (statistics.median(t_algm) + t_probe)
        g0 = model_macs(model)["total"]
        flop = g0 / mean_macs(model, setting.layers, real)["total"]
        flop_batch = g0 / float(np.mean([model_macs(model, setting.layers, p)["total"] for p in padded]))
        rows.append({"model": f"Segmenter {cfg.backbone} {size} (mask transformer)", "setting": setting.name,
                     "images": n_img, "batch": bs, "image_source": source, "baseline_img_s": base_ips,
                     "algm_img_s": algm_ips, "algm_with_probe_img_s": algm_ips_probe,
                     "gain_pct": 100 * (algm_ips / base_ips - 1), "gain_with_probe_pct": 100 * (algm_ips_probe / base_ips - 1),
                     "published_gain_pct": PUBLISHED_GAIN.get(backbone), "flop_ratio": flop, "batch_flop_ratio": flop_batch,
                     "speedup_vs_flop_ratio": (algm_ips / base_ips) / flop,
                     "tokens_mean": np.mean(real, 0).round(1).tolist(), "status": "measured"})
        del model, dyn, x_all
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    done = [r for r in rows if r["status"] == "measured"]
    return {"summary": "; ".join(f"{r['model'].split(' (')[0]}: {r['gain_pct']:+.0f} % (paper {r['published_gain_pct']:+d} %)"
                                 for r in done if r["published_gain_pct"] is not None) or "nothing measured",
            "details": {"rows": rows, "note": f"{n_img} images in batches of {bs}; seeded random weights (the paper: "
                                              "trained ADE20K models), float32 eager PyTorch; ALGM = dynamic token "
                                              "mode, batches grouped by the CLAP probe's counts; 'with probe' adds "
                                              "the probe's time"}}


@step("token-counts", "Dynamic token counts, ViT-S/16 512, CUDA vs CPU", needs=("gpu", "timm"), budget_s=60)
def s_token_counts(ctx):
    import torch

    from algm_export import AlgmSetting, apply_algm
    from algm_export.models.registry import resolve_model

    model = resolve_model(TOKEN_COUNT_MODEL)
    setting = AlgmSetting(0.88, (2, 2), (1, 5))
    xs, source = _photos(model.cfg.image_size, TOKEN_COUNT_IMAGES, model.cfg.normalization)
    counts = {}
    for dev in ("cpu", DEVICE):
        m = apply_algm(model.to(dev), setting, token_mode="dynamic")
        c = []
        with torch.no_grad():
            for x in xs:
                m(x.to(dev))
                c.append(m.merge_stats["tokens"][0].tolist())
        counts[dev] = c
    diff = [i for i, (a, b) in enumerate(zip(counts["cpu"], counts[DEVICE])) if a != b]
    res = {"summary": f"equal on {len(xs) - len(diff)} of {len(xs)} images",
           "details": {"cpu": counts["cpu"], "cuda": counts[DEVICE], "images": source}}
    if len(diff) > 1:   # one near-tie image is allowed (docs/decisions.md item 35)
        raise Fail(f"token counts differ on images {diff}", res)
    return res


@step("plugin-selftest", "algm_plugin_selftest --gpu (plugin enqueue vs the kernel C API)",
      needs=("gpu", "cmake", "nvcc", "trt-headers"), budget_s=150)
def s_plugin_selftest(ctx):
    from algm_export.tasks.plugins import build_plugins

    paths = build_plugins(build_dir=ctx.work / "plugins-trt", archs=[ctx.arch()], tensorrt_include=ctx.trt_include,
                          require_plugins=True, jobs=os.cpu_count() or 4)
    exe = Path(paths["build_dir"]) / "algm_plugin_selftest"
    p = _run([str(exe), paths["plugins"], "--gpu"], timeout=300)
    last = (p.stdout.strip().splitlines() or ["?"])[-1]
    if p.returncode != 0 or " 0 failed" not in p.stdout:
        raise Fail(f"self-test: {last}")
    return {"summary": last, "details": {"tail": p.stdout[-3000:]}}


@step("tensorrt", "TensorRT: export, build engines, validate, bench (ViT-Ti/16 512, static and dynamic 0.88)",
      needs=("gpu", "tensorrt", "onnx", "onnxscript", "timm"), budget_s=300)
def s_tensorrt(ctx):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    folder = ctx.work / "trt-export"
    cmds = [
        ["export", "builtin:vit_ti16_512", "--out", str(folder), "--thresholds", "0.88", "--dynamic-thresholds", "0.88",
         "--force"],
        ["build", str(folder), "--backend", "tensorrt"],
        ["validate", str(folder), "--backend", "tensorrt"],
        ["bench", str(folder), "--backend", "tensorrt,onnxruntime,torch", "--batch", "1,8", "--repeats", "5"],
    ]
    logs = []
    for c in cmds:
        left = int(ctx.deadline - time.monotonic())
        if left < 20:
            raise Fail(f"time budget spent before `algm-export {c[0]}`")
        p = _run([sys.executable, "-m", "algm_export", *c], timeout=left, env=env, cwd=str(ROOT))
        logs.append({"command": "algm-export " + " ".join(c), "exit": p.returncode, "tail": (p.stdout + p.stderr)[-2000:]})
        if p.returncode != 0:
            raise Fail(f"`algm-export {' '.join(c)}` exited {p.returncode}", {"details": {"commands": logs}})
    return {"summary": "export, build, validate and bench ran", "details": {"commands": logs}}


# ----------------------------------------------------------------------------- reports

def write_reports(ctx, results: list[dict], started: float) -> None:
    info = next((r.get("details") for r in results if r["name"] == "environment"), {}) or {}
    doc = {"tool": "scripts/gpu_check.sh", "dry_run": ctx.dry, "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                                                          time.gmtime(started)),
           "seconds": round(time.time() - started, 1), "budget_s": ctx.args.budget_s, "prefix_counts": list(ctx.p_list),
           "environment": info,
           "counts": {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "skipped")},
           "steps": results}
    (ctx.out / "gpu_check.json").write_text(json.dumps(doc, indent=1, default=str))
    md = [f"# GPU check ({'dry run, ' if ctx.dry else ''}{doc['started_utc']})", "",
          f"{info.get('gpu', 'no GPU')}; torch {info.get('torch')}, CUDA {info.get('torch_cuda')}, "
          f"nvcc: {info.get('nvcc') or 'none'}, onnxruntime {info.get('onnxruntime')}, "
          f"TensorRT: {info.get('tensorrt') or info.get('tensorrt_rtx') or 'none'}. "
          f"{doc['seconds']} s (budget {ctx.args.budget_s:.0f} s).", "",
          f"**{doc['counts']['passed']} passed, {doc['counts']['failed']} failed, {doc['counts']['skipped']} skipped**", "",
          "| step | status | s | result |", "|---|---|---|---|"]
    for r in results:
        text = (r.get("summary") or r.get("reason") or "").replace("|", "/").replace("\n", " ")
        md.append(f"| {r['name']} | {r['status']} | {r.get('seconds', 0):.1f} | {text} |")
    for r in results:
        det = r.get("details") or {}
        if r["name"] == "torch-throughput" and det.get("rows"):
            bs = next((row["batch"] for row in det["rows"] if "batch" in row), 32)
            md += ["", f"## PyTorch throughput, batch {bs} (images/s)", "",
                   "| model | baseline | ALGM | gain | with probe | paper | FLOP ratio | batch FLOP ratio | speed-up / FLOP ratio |",
                   "|---|---|---|---|---|---|---|---|---|"]
            for row in det["rows"]:
                if row.get("status") != "measured":
                    md.append(f"| {row['model']} | {row.get('reason', '')} | | | | | | | |")
                    continue
                paper = "-" if row["published_gain_pct"] is None else f"{row['published_gain_pct']:+d} %"
                md.append(f"| {row['model']} | {row['baseline_img_s']:.1f} | {row['algm_img_s']:.1f} | "
                          f"{row['gain_pct']:+.0f} % | {row['gain_with_probe_pct']:+.0f} % | {paper} | "
                          f"{row['flop_ratio']:.2f} | {row['batch_flop_ratio']:.2f} | {row['speedup_vs_flop_ratio']:.2f} |")
            md += ["", det.get("note", "")]
        if r["name"] == "kernel-time" and det.get("rows"):
            md += ["", "## Merge kernels vs one ViT block (ms)", "",
                   "| model | dtype | batch | block | CLAP | GBM | static / encoder | dynamic / encoder |", "|---|---|---|---|---|---|---|---|"]
            for row in det["rows"]:
                md.append(f"| {row['model']} | {row['dtype']} | {row['batch']} | {row['block_ms']:.3f} | {row['clap_ms']:.3f} | "
                          f"{row['gbm_ms']:.3f} | {100 * row['static_vs_encoder']:.2f} % | {100 * row['dynamic_vs_encoder']:.2f} % |")
            md += ["", det.get("note", "")]
        if r["status"] in ("failed", "error") and r.get("message"):
            md += ["", f"## {r['name']}: {r['status']}", "", "```", r["message"][-3000:], "```"]
    (ctx.out / "gpu_check.md").write_text("\n".join(md) + "\n")


def run_steps(ctx, selected: list[dict]) -> list[dict]:
    results = []
    started = time.time()
    for s in selected:
        r = {"name": s["name"], "title": s["title"]}
        miss = missing_needs(s["needs"], ctx)
        t0 = time.monotonic()
        if ctx.dry and not s["cpu"]:
            r.update(status="skipped", reason="dry run: needs " + (", ".join(miss) if miss else "a GPU machine"))
        elif miss:
            r.update(status="skipped", reason="needs " + "; ".join(miss))
        elif time.monotonic() + min(s["budget_s"], 30) > ctx.deadline:
            r.update(status="skipped", reason=f"time budget ({ctx.args.budget_s:.0f} s) spent")
        else:
            print(f"[gpu_check] {s['name']}: {s['title']} ...", flush=True)
            try:
                out = s["fn"](ctx) or {}
                r.update(status="passed", **out)
            except Skip as e:
                r.update(status="skipped", reason=str(e))
            except Fail as e:
                extra = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], dict) else {}
                r.update(status="failed", message=str(e.args[0]), summary=str(e.args[0])[:300], **{
                    k: v for k, v in extra.items() if k != "summary"})
            except Exception as e:  # noqa: BLE001  (a broken step must not lose the others' results)
                r.update(status="failed", message=traceback.format_exc(), summary=f"{type(e).__name__}: {e}"[:300])
        r["seconds"] = round(time.monotonic() - t0, 1)
        print(f"[gpu_check] {s['name']}: {r['status']}: {r.get('summary') or r.get('reason', '')}", flush=True)
        results.append(r)
        write_reports(ctx, results, started)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-check", help="folder for gpu_check.json, gpu_check.md and the builds")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and run those that need no GPU")
    ap.add_argument("--list", action="store_true", help="list the steps and exit")
    ap.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated step names to leave out")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; later steps are skipped "
                                                                   "once it is spent (default: %(default)s)")
    ap.add_argument("--prefix", default=",".join(map(str, P_LIST)), help="prefix-token counts for the kernel "
                                                                         "checks (default: %(default)s)")
    ap.add_argument("--tensorrt-include", default=None, help="TensorRT include/ folder (for plugin-selftest)")
    ap.add_argument("--throughput-batch", type=int, default=32, help="batch size of torch-throughput (default: "
                                                                     "%(default)s, the paper's); it runs 2 batches")
    args = ap.parse_args(argv)
    names = [s["name"] for s in STEPS]
    for opt in ("only", "skip"):
        bad = [n for n in getattr(args, opt).split(",") if n and n not in names]
        if bad:
            ap.error(f"--{opt}: unknown step(s) {bad}; steps: {', '.join(names)}")
    try:
        p_list = [int(p) for p in args.prefix.split(",") if p != ""]
    except ValueError:
        ap.error(f"--prefix {args.prefix!r}: give comma-separated integers, e.g. 0,1,2,5")
    if not p_list or min(p_list) < 0:
        ap.error("--prefix: give at least one prefix-token count >= 0")
    if args.budget_s <= 0:
        ap.error("--budget-s must be positive")
    if args.throughput_batch < 1:
        ap.error("--throughput-batch must be >= 1")
    if args.list:
        for s in STEPS:
            print(f"{s['name']:20s} {'cpu+gpu' if s['cpu'] else 'gpu    '}  {s['title']}"
                  + (f"  [needs {', '.join(s['needs'])}]" if s["needs"] else ""))
        return 0
    if not have("torch"):
        print("error: PyTorch is not importable with this python; run gpu_check.sh with the python that holds torch "
              "(PYTHON=/path/to/python)", file=sys.stderr)
        return 2
    ctx = Context(args)
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    selected = [s for s in STEPS if (not only or s["name"] in only or s["name"] in ("environment",))
                and s["name"] not in skip]
    if only and "build" not in only and any(s["name"] in ("emulator", "kernels-vs-emulator", "kernel-time")
                                            for s in selected):
        selected.insert(1, next(s for s in STEPS if s["name"] == "build"))
    print(f"[gpu_check] {'dry run: ' if ctx.dry else ''}{len(selected)} steps, reports in {ctx.out}", flush=True)
    for s in selected:
        runs = s["cpu"] or not ctx.dry
        print(f"  {s['name']:20s} {'runs' if runs else 'listed (needs a GPU)'}: {s['title']}")
    results = run_steps(ctx, selected)
    failed = [r["name"] for r in results if r["status"] == "failed"]
    print(f"[gpu_check] {len(results) - len(failed)} of {len(results)} steps passed or skipped; "
          f"reports: {ctx.out / 'gpu_check.json'}, {ctx.out / 'gpu_check.md'}", flush=True)
    if failed:
        print(f"[gpu_check] failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
