"""The CUDA kernels of plugins/ on a GPU, called from torch through ctypes (libalgm_kernels.so).

Skipped without CUDA. Checks:
* against the torch reference `algm_export.merging.static`: assign and stats bit for bit, tokens
  within 1e-5 (float32) / 1e-3 (float16), on inputs whose decisions have a float64 margin
  (random, smooth and near-duplicate tokens; 0 to 5 and 9 prefix tokens; many capacities/thresholds);
* against the host emulator build of the same sources: every output bit for bit (both builds
  spell out every fma and use IEEE division and square root), also at ViT sizes (N = 1024 and
  4096) where random inputs always hold near-ties and only the same arithmetic can be compared;
* determinism (garbage-filled workspaces, repeated runs, other streams) and batch independence;
* the dynamic token mode kernels (size tensor, cut, per-image thresholds) against the emulator
  bit for bit and against `merging.static.clap_dynamic` / `gbm_dynamic`.
"""

from __future__ import annotations

import pytest
import torch

from algm_export.merging.static import clap_static, gbm_capacity_min, gbm_static
from _helpers.plugins import (MARGIN, assert_same, build_once, clap_margin, duplicated_tokens, gbm_margin,
                                  smooth_tokens, tensorrt_include)

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch", allow_module_level=True)


@pytest.fixture(scope="session")
def libs(tmp_path_factory):
    from algm_export.runtimes.plugins import KernelLibrary

    arch = _arch()
    root = tmp_path_factory.getbasetemp() / "algm_plugins"
    paths = build_once(root, f"gpu{arch}", archs=[arch], plugins=False, emulation=True)
    return KernelLibrary(paths["kernels"]), KernelLibrary(paths["emulation"], emulated=True)


def _arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


@pytest.fixture(scope="session")
def cuda(libs):
    return libs[0]


@pytest.fixture(scope="session")
def emu(libs):
    return libs[1]


def _cuda(out):
    return tuple(t.cpu() for t in out)


def _robust(make, gh, gw, wh, ww, P, tau, seed):
    for s in range(seed, seed + 50):
        x = make(s)
        if clap_margin(x.float(), gh, gw, wh, ww, P, tau) > MARGIN:
            return x
    pytest.skip("no input with well-separated window scores found")


CASES = [  # gh, gw, wh, ww, P, D, B, kind
    (8, 8, 2, 2, 1, 64, 4, "smooth"),
    (8, 8, 2, 2, 2, 64, 3, "duplicated"),
    (6, 10, 2, 2, 1, 96, 2, "smooth"),
    (12, 12, 2, 2, 2, 128, 2, "duplicated"),
    (8, 12, 2, 3, 1, 48, 2, "smooth"),
    (4, 8, 1, 2, 2, 200, 5, "random"),
    (8, 8, 2, 2, 0, 64, 4, "smooth"),        # no prefix token (with_cls_token=False)
    (12, 12, 2, 2, 0, 128, 2, "duplicated"),
    (8, 8, 2, 2, 5, 64, 3, "smooth"),        # class token + 4 registers (DINOv2/v3, EoMT)
    (12, 12, 2, 2, 3, 128, 2, "duplicated"),
    (8, 12, 2, 3, 9, 48, 2, "smooth"),
]


def _make(kind, B, gh, gw, P, D, dtype):
    if kind == "smooth":
        return lambda s: smooth_tokens(B, gh, gw, P, D, seed=s, dtype=dtype)
    if kind == "duplicated":
        return lambda s: duplicated_tokens(B, gh, gw, P, D, seed=s, dtype=dtype)
    return lambda s: torch.randn(B, P + gh * gw, D, generator=torch.Generator().manual_seed(s)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "g{}x{}w{}x{}p{}-{}".format(*c[:5], c[7]))
def test_cuda_kernels_match_reference(cuda, case, dtype):
    gh, gw, wh, ww, P, D, B, kind = case
    N, k = gh * gw, wh * ww
    W = N // k
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    checked = 0
    for C1 in sorted({W, (W + N) // 2, (W + 3 * N) // 4, N}):
        for tau in (0.2, 0.6, 0.9, 0.99):
            x = _robust(_make(kind, B, gh, gw, P, D, dtype), gh, gw, wh, ww, P, tau, seed=C1 + int(100 * tau))
            ref = clap_static(x, gh, gw, wh, ww, P, C1, tau)
            out = _cuda(cuda.clap(x.cuda(), gh, gw, wh, ww, P, C1, tau))
            assert_same(out, ref, tol, f"CLAP C1={C1} tau={tau}")
            y, size, assign, _ = ref
            c2_min = gbm_capacity_min(C1, P)
            for C2 in sorted({c2_min, (c2_min + C1) // 2, C1}):
                for L in (1.0, 5.0, 12.0):
                    if gbm_margin(y, size, P, C2, L) <= MARGIN:
                        continue
                    g = _cuda(cuda.gbm(y.cuda(), size.cuda(), assign.cuda(), P, C2, L))
                    assert_same(g, gbm_static(y, size, assign, P, C2, L), tol, f"GBM C1={C1} tau={tau} C2={C2} L={L}")
                    checked += 1
    assert checked >= 10


@pytest.mark.parametrize("P", [0, 1, 2, 3, 4, 5, 9])
def test_cuda_exact_ties(cuda, P):
    for fill, D in ((1.0, 64), (0.0, 16)):
        x = torch.full((2, P + 64, D), fill)
        for C1 in (16, 40, 64):
            ref = clap_static(x, 8, 8, 2, 2, P, C1, 0.5)
            assert_same(_cuda(cuda.clap(x.cuda(), 8, 8, 2, 2, P, C1, 0.5)), ref, 0.0, f"CLAP fill={fill} C1={C1}")
            y, size, assign, _ = ref
            for C2 in (gbm_capacity_min(C1, P), C1):
                g = _cuda(cuda.gbm(y.cuda(), size.cuda(), assign.cuda(), P, C2, 5.0))
                assert_same(g, gbm_static(y, size, assign, P, C2, 5.0), 0.0, f"GBM fill={fill} C1={C1} C2={C2}")


BIG = [  # gh, gw, P, D, B, C1, C2, dtype
    (32, 32, 1, 384, 1, 600, 400, torch.float32),   # ViT-S/16 at 512
    (32, 32, 2, 192, 2, 700, 420, torch.float16),   # DeiT-Ti (distilled) at 512
    (40, 40, 1, 64, 1, 1000, 640, torch.float32),   # ViT-L/16 at 640, narrow
    (64, 64, 1, 64, 1, 2048, 1200, torch.float16),  # N = 4096 tokens
    (32, 32, 0, 384, 2, 600, 400, torch.float32),   # no prefix token (SETR-MLA / SegViT at 512)
    (32, 32, 5, 384, 2, 600, 400, torch.float16),   # class token + 4 registers (DINOv2/v3, EoMT)
    (64, 64, 64, 64, 1, 4096, 2048, torch.float32), # the most prefix tokens the kernels take (64)
]


@pytest.mark.parametrize("case", BIG, ids=lambda c: f"g{c[0]}x{c[1]}p{c[2]}d{c[3]}b{c[4]}")
def test_cuda_matches_emulator_bitwise(cuda, emu, case):
    """Same source, same arithmetic: the GPU and the host emulator agree on every bit."""
    gh, gw, P, D, B, C1, C2, dtype = case
    x = smooth_tokens(B, gh, gw, P, D, seed=5, noise=0.4, dtype=dtype)
    for tau in (0.2, 0.9):
        c_gpu = _cuda(cuda.clap(x.cuda(), gh, gw, 2, 2, P, C1, tau))
        c_emu = emu.clap(x, gh, gw, 2, 2, P, C1, tau)
        for a, b in zip(c_gpu, c_emu):
            assert torch.equal(a, b)
        y, size, assign, _ = c_emu
        g_gpu = _cuda(cuda.gbm(y.cuda(), size.cuda(), assign.cuda(), P, C2, 5.0))
        g_emu = emu.gbm(y, size, assign, P, C2, 5.0)
        for a, b in zip(g_gpu, g_emu):
            assert torch.equal(a, b)
        # and close to the torch reference (decisions may differ on near-ties: docs/algorithm.md: numerical sensitivity)
        ref = clap_static(x, gh, gw, 2, 2, P, C1, tau)
        assert (c_gpu[2] == ref[2]).float().mean() > 0.9


def test_cuda_deterministic_and_batch_independent(cuda):
    gh = gw = 32
    P, D, C1, C2 = 1, 384, 600, 400
    x = smooth_tokens(4, gh, gw, P, D, seed=9).cuda()
    ws_c = torch.empty(cuda.clap_workspace_size(4, gh, gw, 2, 2, P, C1), dtype=torch.uint8, device="cuda")
    runs = []
    for fill in (0, 255, 7):
        ws_c.fill_(fill)
        c = cuda.clap(x, gh, gw, 2, 2, P, C1, 0.88, workspace=ws_c)
        ws_g = torch.full((cuda.gbm_workspace_size(4, P + C1, gh * gw, P, C2),), fill, dtype=torch.uint8, device="cuda")
        g = cuda.gbm(c[0], c[1], c[2], P, C2, 5.0, workspace=ws_g)
        runs.append(_cuda(c + g))
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        c = cuda.clap(x, gh, gw, 2, 2, P, C1, 0.88)
        g = cuda.gbm(c[0], c[1], c[2], P, C2, 5.0)
    s.synchronize()
    runs.append(_cuda(c + g))
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)
    for i in range(4):
        c = cuda.clap(x[i:i + 1], gh, gw, 2, 2, P, C1, 0.88)
        g = cuda.gbm(c[0], c[1], c[2], P, C2, 5.0)
        for a, b in zip(_cuda(c + g), runs[0]):
            assert torch.equal(a[0], b[i])


def test_cuda_fp16_and_fp32_agree_on_exact_fp16_inputs(cuda):
    """Float16 tokens are cast up on entry: the same values in float32 give the same decisions."""
    x16 = smooth_tokens(2, 16, 16, 1, 64, seed=1, dtype=torch.float16)
    x32 = x16.float()
    a = _cuda(cuda.clap(x16.cuda(), 16, 16, 2, 2, 1, 150, 0.6))
    b = _cuda(cuda.clap(x32.cuda(), 16, 16, 2, 2, 1, 150, 0.6))
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], b[0].half())


@pytest.mark.parametrize("P", [0, 1, 2, 3, 5, 9])
def test_cuda_dynamic_kernels_match_emulator_and_reference(cuda, emu, P):
    """Dynamic token mode on the GPU: the size tensor P + K, the cut and every output bit equal the
    emulator's (same source); the cut and decisions equal the torch dynamic ops on inputs with a
    margin; per-image thresholds; ViT-S size (N = 1024, D = 384) for the bitwise part."""
    from algm_export.merging.static import clap_dynamic, gbm_dynamic

    x = smooth_tokens(3, 32, 32, P, 384, seed=3 + P, noise=0.4)
    thr = torch.tensor([0.3, 0.6, 0.9])
    c_gpu = _cuda(cuda.clap_dynamic(x.cuda(), thr.cuda(), 32, 32, 2, 2, P))
    c_emu = emu.clap_dynamic(x, thr, 32, 32, 2, 2, P)
    for a, b in zip(c_gpu, c_emu):
        assert a.shape == b.shape and torch.equal(a, b)
    y, size, assign, _ = c_emu
    g_gpu = _cuda(cuda.gbm_dynamic(y.cuda(), size.cuda(), assign.cuda(), P, 5.0))
    g_emu = emu.gbm_dynamic(y, size, assign, P, 5.0)
    for a, b in zip(g_gpu, g_emu):
        assert a.shape == b.shape and torch.equal(a, b)
    for tau in (0.3, 0.7):
        xs = _robust(lambda s: smooth_tokens(2, 8, 8, P, 64, seed=s), 8, 8, 2, 2, P, tau, seed=40 + P)
        t = torch.full((2,), tau)
        ref = clap_dynamic(xs, t, 8, 8, 2, 2, P)
        got = _cuda(cuda.clap_dynamic(xs.cuda(), t.cuda(), 8, 8, 2, 2, P))
        assert got[0].shape == ref[0].shape
        assert_same(got, ref, 1e-5, f"dynamic CLAP tau={tau}")
        if gbm_margin(ref[0], ref[1], P, ref[0].shape[1] - P, 5.0) > MARGIN:
            r2 = gbm_dynamic(*ref[:3], P, 5.0)
            g2 = _cuda(cuda.gbm_dynamic(*(v.cuda() for v in ref[:3]), P, 5.0))
            assert g2[0].shape == r2[0].shape
            assert_same(g2, r2, 1e-5, f"dynamic GBM tau={tau}")


def test_plugin_enqueue_matches_kernel_api(tmp_path_factory):
    """The plugins' enqueue (through the IPluginV3 runtime interface, no TensorRT runtime) writes
    the same bytes as the kernel C API: plugins/tests/algmPluginSelfTest.cpp --gpu."""
    import subprocess
    from pathlib import Path

    inc = tensorrt_include()
    if inc is None:
        pytest.skip("no TensorRT headers (set ALGM_TENSORRT_INCLUDE)")
    root = tmp_path_factory.getbasetemp() / "algm_plugins"
    paths = build_once(root, f"gpu{_arch()}-plugins", archs=[_arch()], tensorrt_include=inc, require_plugins=True)
    exe = Path(paths["build_dir"]) / "algm_plugin_selftest"
    proc = subprocess.run([str(exe), paths["plugins"], "--gpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and " 0 failed" in proc.stdout, proc.stdout + proc.stderr
