"""The native libraries of plugins/: CUDA kernels, TensorRT plugins, host emulation.

* CI (no GPU, no TensorRT headers): the kernel library compiles with nvcc (sm_86, sm_90), and
  the same kernel sources, compiled for the CPU by the emulator build, reproduce the torch
  reference `algm_export.merging.static` (decisions exactly, tokens within float rounding).
* With TensorRT headers (env ALGM_TENSORRT_INCLUDE; `.ci/run` sets it when they are there) and the
  tensorrt_rtx wheel: the plugin library compiles, registers through getCreators, every algm
  ONNX node becomes a PLUGIN_V3 layer with the reference's output shapes, and TensorRT-RTX
  builds engines ahead of time for SM86 (in a child process: see `rtx_env`).
GPU checks of the CUDA kernels are in test_plugins_gpu.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from algm_export.merging.static import clap_static, gbm_capacity_min, gbm_static
from _helpers.plugins import (MARGIN, NODE_MAX_VALUES, assert_same, build_once, clap_margin, duplicated_tokens,
                                  expected_gbm_sources, gbm_margin, gbm_sources, near_tie_tokens, node_max_tokens,
                                  smooth_tokens, tensorrt_include)

pytestmark = pytest.mark.slow  # native builds (nvcc kernel library, TensorRT plugin library) and TensorRT-RTX builds

TEST_ARCHS = (86, 90)

# prefix tokens: none (with_cls_token=False), class, class + distillation, ..., class + 4 registers
# (DINOv2/v3 with registers, EoMT), and a larger count
PREFIX_COUNTS = (0, 1, 2, 3, 4, 5, 9)


@pytest.fixture(scope="session")
def plugin_build_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "algm_plugins"


@pytest.fixture(scope="session")
def kernel_build(plugin_build_root):
    """Kernels (nvcc, sm_86 + sm_90) and the host emulator; no TensorRT headers involved."""
    return build_once(plugin_build_root, "kernels", archs=TEST_ARCHS, plugins=False, emulation=True)


@pytest.fixture(scope="session")
def emu(kernel_build):
    from algm_export.runtimes.plugins import KernelLibrary

    return KernelLibrary(kernel_build["emulation"], emulated=True)


# ----------------------------------------------------------------------------------- kernel build

def test_kernel_library_compiles_with_nvcc(kernel_build):
    lib = Path(kernel_build["kernels"])
    assert lib.is_file() and lib.name == "libalgm_kernels.so"
    assert kernel_build["plugins"] is None  # built without TensorRT headers
    assert kernel_build["archs"] == "86;90"
    # one object per kernel file per architecture: the fat binary holds SASS for both
    data = lib.read_bytes()
    for arch in TEST_ARCHS:
        assert f"sm_{arch}".encode() in data, f"no sm_{arch} code in {lib}"
    # the C API loads and answers without a GPU (cudart is linked statically, used lazily)
    c = ctypes.CDLL(str(lib))
    c.algmKernelsVersion.restype = ctypes.c_int32
    assert c.algmKernelsVersion() == 3                               # 3: any number of prefix tokens
    c.algmMaxPrefix.restype = ctypes.c_int32
    max_p = c.algmMaxPrefix()
    assert max_p >= 16
    c.algmClapWorkspaceSize.restype = ctypes.c_size_t
    assert c.algmClapWorkspaceSize(4, 32, 32, 2, 2, 1, 600) > 0
    assert c.algmClapWorkspaceSize(4, 32, 32, 2, 2, 1, 100) == 0   # capacity below W = 256
    assert c.algmClapWorkspaceSize(4, 32, 32, 2, 2, 0, 600) > 0     # no prefix token
    assert c.algmClapWorkspaceSize(4, 32, 32, 2, 2, 5, 600) > 0     # class token + 4 registers
    assert c.algmClapWorkspaceSize(4, 32, 32, 2, 2, max_p, 600) > 0
    assert c.algmClapWorkspaceSize(4, 32, 32, 2, 2, max_p + 1, 600) == 0
    c.algmGbmWorkspaceSize.restype = ctypes.c_size_t
    assert c.algmGbmWorkspaceSize(4, 601, 1024, 1, 400) > 0
    assert c.algmGbmWorkspaceSize(4, 601, 1024, 1, 700) == 0       # capacity above C1
    assert c.algmGbmWorkspaceSize(4, 600, 1024, 0, 300) > 0        # no prefix token
    assert c.algmGbmWorkspaceSize(4, 600, 1024, 0, 601) == 0
    assert c.algmGbmWorkspaceSize(4, 605, 1024, 5, 400) > 0
    assert c.algmGbmWorkspaceSize(4, 600 + max_p, 1024, max_p, 600) > 0
    assert c.algmGbmWorkspaceSize(4, 601 + max_p, 1024, max_p + 1, 600) == 0


def test_workspace_grows_with_batch(emu):
    one = emu.clap_workspace_size(1, 32, 32, 2, 2, 1, 600)
    eight = emu.clap_workspace_size(8, 32, 32, 2, 2, 1, 600)
    assert 0 < one < eight <= 8 * one
    assert emu.gbm_workspace_size(1, 601, 1024, 1, 400) < emu.gbm_workspace_size(8, 601, 1024, 1, 400)
    assert emu.gbm_workspace_size(2, 4098, 4096, 2, 2000) > 0      # N = 4096 tokens is supported
    P = emu.max_prefix()                                            # the largest input: 8192 + P tokens
    assert emu.gbm_workspace_size(1, 8192 + P, 8192, P, 8192) > 0
    assert emu.gbm_workspace_size(1, 8193 + P, 8192, P, 8192) == 0


def test_kernel_errors_are_status_codes(emu):
    x = torch.randn(1, 17, 8)
    with pytest.raises(RuntimeError, match="workspace"):
        emu.clap(x, 4, 4, 2, 2, 1, 8, 0.5, workspace=torch.empty(16, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="invalid argument"):
        emu.clap(x, 4, 4, 2, 2, 1, 3, 0.5)                          # capacity < W
    max_p = emu.max_prefix()
    with pytest.raises(RuntimeError, match="invalid argument"):
        emu.clap(torch.randn(1, 16 + max_p + 1, 8), 4, 4, 2, 2, max_p + 1, 8, 0.5)   # num_prefix above the limit
    with pytest.raises(RuntimeError, match="invalid argument"):
        emu.clap(x, 4, 4, 2, 2, -1, 8, 0.5)
    with pytest.raises(RuntimeError, match="invalid argument"):
        xp = torch.randn(1, 16 + max_p + 1, 8)
        emu.gbm(xp, torch.ones(1, xp.shape[1]), torch.zeros(1, 16, dtype=torch.int32), max_p + 1, 8, 5.0)
    with pytest.raises(RuntimeError, match="invalid argument"):
        emu.gbm(x, torch.ones(1, 17), torch.zeros(1, 16, dtype=torch.int32), 1, 17, 5.0)  # C2 > C1


def _installed_copy(root: Path, name: str) -> Path:
    """A copy of plugins/ where an installed wheel keeps it (<site-packages>/algm_export/plugin_src)."""
    from algm_export.runtimes.plugins import plugin_source_dir

    dst = root / name / "algm_export" / "plugin_src"
    shutil.copytree(plugin_source_dir(), dst, ignore=shutil.ignore_patterns("build", "build-*"))
    return dst


def test_default_build_dir_is_keyed_by_source_and_version(tmp_path, monkeypatch):
    """An installed package builds in the user cache, in a folder of its own per source folder and
    package version: a second installation never meets the first one's CMake cache."""
    import algm_export
    from algm_export.runtimes.plugins import default_build_dir

    monkeypatch.delenv("ALGM_PLUGINS_BUILD", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dirs = []
    for name in ("venv-a", "venv-b"):
        src = tmp_path / name / "algm_export" / "plugin_src"
        src.mkdir(parents=True)
        monkeypatch.setenv("ALGM_PLUGINS_SRC", str(src))
        dirs.append(default_build_dir())
        assert default_build_dir() == dirs[-1]                               # stable
    assert dirs[0] != dirs[1]
    for d in dirs:
        assert d.parent == tmp_path / "cache" / "algm-export" / "plugins-build"
        assert d.name.startswith(algm_export.__version__ + "-")
    monkeypatch.setattr(algm_export, "__version__", "99.0.0")                 # an upgrade in place
    assert default_build_dir() not in dirs
    monkeypatch.setenv("ALGM_PLUGINS_BUILD", str(tmp_path / "mine"))
    assert default_build_dir() == tmp_path / "mine"
    monkeypatch.setenv("ALGM_PLUGINS_SRC", str(Path(__file__).resolve().parent.parent / "plugins"))
    monkeypatch.delenv("ALGM_PLUGINS_BUILD")
    assert default_build_dir() == Path(__file__).resolve().parent.parent / "plugins" / "build"   # a checkout


@pytest.mark.slow
def test_two_installations_configure_in_their_own_build_dirs(tmp_path, monkeypatch):
    """CMake configures two installed copies of the sources, each in its default build folder; the same
    configure into one shared folder (the old default) fails on CMake's cache of the other source."""
    from algm_export.runtimes.plugins import default_build_dir
    from _helpers.plugins import toolchain_missing

    missing = toolchain_missing()
    if missing:
        pytest.skip(missing)
    monkeypatch.delenv("ALGM_PLUGINS_BUILD", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    nvcc = "nvcc" if shutil.which("nvcc") else os.environ.get("CUDACXX", "/usr/local/cuda/bin/nvcc")

    def configure(src: Path, bdir: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["cmake", "-S", str(src), "-B", str(bdir), "-DALGM_BUILD_PLUGINS=OFF",
                               "-DCMAKE_CUDA_ARCHITECTURES=86", f"-DCMAKE_CUDA_COMPILER={shutil.which(nvcc) or nvcc}"],
                              capture_output=True, text=True, timeout=300)

    srcs = [_installed_copy(tmp_path, name) for name in ("venv-a", "venv-b")]
    bdirs = []
    for src in srcs:
        monkeypatch.setenv("ALGM_PLUGINS_SRC", str(src))
        bdirs.append(default_build_dir())
        proc = configure(src, bdirs[-1])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert f"CMAKE_HOME_DIRECTORY:INTERNAL={src}" in (bdirs[-1] / "CMakeCache.txt").read_text()
    assert bdirs[0] != bdirs[1]
    clash = configure(srcs[1], bdirs[0])                                      # one folder for both
    assert clash.returncode != 0 and "does not match the source" in clash.stdout + clash.stderr


# ----------------------------------------------------------------------------------- emulated kernels

def _robust_clap_input(make, gh, gw, wh, ww, P, tau, seed):
    for s in range(seed, seed + 50):
        x = make(s)
        if clap_margin(x.float(), gh, gw, wh, ww, P, tau) > MARGIN:
            return x
    pytest.fail("no input with well-separated window scores found")


CLAP_CASES = [  # gh, gw, wh, ww, P, D, B
    (8, 8, 2, 2, 1, 32, 2),
    (6, 10, 2, 2, 2, 24, 3),
    (8, 6, 2, 3, 1, 16, 1),
    (4, 8, 1, 2, 1, 40, 2),
    (9, 9, 3, 3, 2, 24, 2),
    (8, 8, 2, 2, 0, 32, 2),   # no prefix token (with_cls_token=False)
    (8, 6, 2, 3, 0, 16, 1),
    (8, 8, 2, 2, 3, 24, 2),   # any number of prefix tokens: odd P leaves a prefix token in B
    (8, 8, 2, 2, 5, 32, 2),   # class token + 4 registers
    (8, 6, 2, 3, 9, 16, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CLAP_CASES, ids=lambda c: "g{}x{}w{}x{}p{}".format(*c[:5]))
def test_emulated_kernels_match_reference(emu, case, dtype):
    """CLAP then GBM, through the capacity range and thresholds that merge nothing, some, all."""
    gh, gw, wh, ww, P, D, B = case
    N, k = gh * gw, wh * ww
    W = N // k
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    checked = 0
    for ci, C1 in enumerate((W, (W + N) // 2, N)):
        for tau in (0.3, 0.7, 1.5):
            x = _robust_clap_input(lambda s: smooth_tokens(B, gh, gw, P, D, seed=s, dtype=dtype),
                                   gh, gw, wh, ww, P, tau, seed=100 * ci + int(10 * tau))
            ref = clap_static(x, gh, gw, wh, ww, P, C1, tau)
            out = emu.clap(x, gh, gw, wh, ww, P, C1, tau)
            assert_same(out, ref, tol, f"CLAP C1={C1} tau={tau}")
            y, size, assign, _ = ref
            c2_min = gbm_capacity_min(C1, P)
            for C2 in sorted({c2_min, (c2_min + C1) // 2, C1}):
                for L in (1.0, 5.0):
                    if gbm_margin(y, size, P, C2, L) <= MARGIN:
                        continue
                    assert_same(emu.gbm(y, size, assign, P, C2, L), gbm_static(y, size, assign, P, C2, L), tol,
                                f"GBM C1={C1} tau={tau} C2={C2} L={L}")
                    checked += 1
    assert checked >= 12


@pytest.mark.parametrize("D", [100, 102, 384, 1280])
def test_emulated_clap_orders_near_ties_like_torch(emu, D):
    """The kernel sums the window score in torch's CPU order (2x2 windows): windows whose scores are
    equal in exact arithmetic are ranked as the reference ranks them, bit for bit. D = 102 has a
    remainder after the 4 interleaved partial sums, D = 1280 a second cascade level."""
    from algm_export.merging.reference import window_scores

    P, grid, B = 1, (8, 12), 2
    N, W = grid[0] * grid[1], grid[0] * grid[1] // 4
    x = near_tie_tokens(B, P, grid, D, seed=D)
    score = window_scores(x[:, P:], grid, (2, 2))
    assert all(len(torch.unique(s)) >= 3 for s in score)                # rounding alone orders them
    ref = clap_static(x, grid[0], grid[1], 2, 2, P, N, -1.0)           # every window merges, in rank order
    out = emu.clap(x, grid[0], grid[1], 2, 2, P, N, -1.0)
    assert (ref[3][:, 0] == W).all()
    assert torch.equal(out[2], ref[2]) and torch.equal(out[3], ref[3])
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("P", PREFIX_COUNTS)
def test_emulated_kernels_duplicated_tokens(emu, P):
    """Windows of identical tokens (merge certainly), forced merges, padding in GBM's input."""
    gh = gw = 8
    x = _robust_clap_input(lambda s: duplicated_tokens(2, gh, gw, P, 32, seed=s), gh, gw, 2, 2, P, 0.95, 3)
    forced = padded = 0
    for C1 in (20, 58):
        ref = clap_static(x, gh, gw, 2, 2, P, C1, 0.95)
        assert_same(emu.clap(x, gh, gw, 2, 2, P, C1, 0.95), ref, 1e-5, f"CLAP C1={C1}")
        assert int(ref[3][:, 0].min()) > 0
        forced += int(ref[3][:, 1].sum())
        y, size, assign, _ = ref
        padded += int((size == 0).sum())
        for C2 in (gbm_capacity_min(C1, P), C1 - 2):
            if gbm_margin(y, size, P, C2, 5.0) > MARGIN:
                g = gbm_static(y, size, assign, P, C2, 5.0)
                assert_same(emu.gbm(y, size, assign, P, C2, 5.0), g, 1e-5, f"GBM C1={C1} C2={C2}")
    assert forced > 0 and padded > 0  # forced merges (C1=20) and padding slots into GBM (C1=58)


@pytest.mark.parametrize("P", PREFIX_COUNTS)
def test_emulated_kernels_exact_ties(emu, P):
    """Constant and zero tokens: every score ties exactly (exact arithmetic in any order), so
    ranks fall back to the lower index, and zero-norm clamps are exercised."""
    for fill, D in ((1.0, 64), (0.0, 16)):
        x = torch.full((2, P + 64, D), fill)
        for C1 in (16, 40, 64):
            ref = clap_static(x, 8, 8, 2, 2, P, C1, 0.5)
            assert_same(emu.clap(x, 8, 8, 2, 2, P, C1, 0.5), ref, 0.0, f"CLAP fill={fill} C1={C1}")
            y, size, assign, _ = ref
            for C2 in (gbm_capacity_min(C1, P), C1):
                assert_same(emu.gbm(y, size, assign, P, C2, 5.0), gbm_static(y, size, assign, P, C2, 5.0), 0.0,
                            f"GBM fill={fill} C1={C1} C2={C2}")


def test_emulated_gbm_noop_and_tiny_inputs(emu):
    """Fewer than two real tokens besides the protected ones: GBM copies through."""
    for P in PREFIX_COUNTS:
        T = P + 6
        x = torch.randn(2, T, 8)
        size = torch.zeros(2, T)
        size[0, :P + 1] = 1
        size[1, :P] = 1
        x[size == 0] = 0
        assign = torch.zeros(2, 6, dtype=torch.int32)
        for C2 in (1, 3, 6):
            assert_same(emu.gbm(x, size, assign, P, C2, 5.0), gbm_static(x, size, assign, P, C2, 5.0), 0.0,
                        f"noop P={P} C2={C2}")
        # a single slot besides the prefix (P = 0: no B token at all)
        x1 = torch.randn(2, P + 1, 8)
        s1 = torch.ones(2, P + 1)
        assert_same(emu.gbm(x1, s1, assign, P, 1, 5.0), gbm_static(x1, s1, assign, P, 1, 5.0), 0.0, f"one slot P={P}")


@pytest.mark.parametrize("P", PREFIX_COUNTS)
def test_emulated_gbm_threshold_statistics(emu, P):
    """The threshold statistics run over the A rows past the prefix only. P = 0: all of A, position 0
    included (it is the best match and moves the threshold past another token)."""
    x, size, assign = node_max_tokens(P=P, B=2)
    want = expected_gbm_sources(NODE_MAX_VALUES, P, 1.0)
    C2 = x.shape[1] - P
    out = emu.gbm(x, size, assign, P, C2, 1.0)
    assert out[3][:, 0].tolist() == [len(want)] * 2
    assert [gbm_sources(a, P, len(NODE_MAX_VALUES)) for a in out[2]] == [want] * 2
    assert_same(out, gbm_static(x, size, assign, P, C2, 1.0), 1e-6, f"threshold statistics P={P}")


@pytest.mark.parametrize("P, dtype", [(P, torch.float32) for P in PREFIX_COUNTS + (16, "max")]
                         + [(5, torch.float16), ("max", torch.float16)], ids=str)
def test_emulated_prefix_tokens_never_merge(emu, P, dtype):
    """Any number of prefix tokens, checked without the torch reference: CLAP's result on the patches
    is bit for bit the result with no prefix token (the windows cover the patches only) with the
    prefix copied in front; GBM gives the prefix back unchanged in front, never points a patch at it,
    and merges only A tokens past the prefix (static and dynamic token mode)."""
    P = emu.max_prefix() if P == "max" else P
    gh = gw = 8
    N = gh * gw
    x = smooth_tokens(3, gh, gw, P, 24, seed=50 + P, dtype=dtype)
    patches = x[:, P:].contiguous()
    thr = torch.tensor([0.5, 0.7, 0.9])
    for C1, run, run0 in ((40, lambda: emu.clap(x, gh, gw, 2, 2, P, 40, 0.7),
                           lambda: emu.clap(patches, gh, gw, 2, 2, 0, 40, 0.7)),
                          (None, lambda: emu.clap_dynamic(x, thr, gh, gw, 2, 2, P),
                           lambda: emu.clap_dynamic(patches, thr, gh, gw, 2, 2, 0))):
        y, size, assign, stats = run()
        y0, size0, assign0, stats0 = run0()
        assert torch.equal(y[:, :P], x[:, :P]) and (size[:, :P] == 1).all()
        assert torch.equal(y[:, P:], y0) and torch.equal(size[:, P:], size0)
        assert torch.equal(assign, assign0) and torch.equal(stats, stats0)
        assert int(stats[:, 0].max()) > 0                                    # something merged
        T = y.shape[1]
        for C2, gbm in ((T - P - 6, lambda: emu.gbm(y, size, assign, P, T - P - 6, 5.0)),
                        (None, lambda: emu.gbm_dynamic(y, size, assign, P, 5.0))):
            gy, gsize, gassign, gstats = gbm()
            assert torch.equal(gy[:, :P], y[:, :P]) and torch.equal(gsize[:, :P], size[:, :P])
            n_real = (size > 0).sum(dim=1)
            candidates = (n_real + 1) // 2 - (P + 1) // 2                   # A rows past the prefix
            assert (gstats[:, 0] > 0).all() and (gstats[:, 0] <= candidates).all()
            assert (gassign >= 0).all() and (gassign < gy.shape[1] - P).all()
            # every patch still has one token: the sizes of the real tokens add up to N
            assert torch.equal(gsize[:, P:].sum(dim=1), torch.full((3,), float(N)))


def test_emulated_kernels_larger_grid(emu):
    """A 16x16 grid (W = 64 windows, multi-tile GBM similarity, 128-token GBM input)."""
    gh = gw = 16
    x = _robust_clap_input(lambda s: smooth_tokens(1, gh, gw, 1, 48, seed=s, noise=0.5), gh, gw, 2, 2, 1, 0.6, 7)
    ref = clap_static(x, gh, gw, 2, 2, 1, 160, 0.6)
    assert_same(emu.clap(x, gh, gw, 2, 2, 1, 160, 0.6), ref, 1e-5, "CLAP 16x16")
    y, size, assign, _ = ref
    for seed_shift, C2 in enumerate((90, 120)):
        if gbm_margin(y, size, 1, C2, 5.0) > MARGIN:
            assert_same(emu.gbm(y, size, assign, 1, C2, 5.0), gbm_static(y, size, assign, 1, C2, 5.0), 1e-5,
                        f"GBM 16x16 C2={C2}")


def test_emulated_kernels_ignore_thread_order_and_batch(emu):
    """No race: the thread order inside barrier phases never changes a bit. No batch coupling:
    an image gives the same bits alone and inside a batch."""
    x = smooth_tokens(3, 8, 8, 1, 32, seed=11)
    runs = []
    try:
        for order in (0, 1, 2):
            emu.set_emulation_order(order)
            c = emu.clap(x, 8, 8, 2, 2, 1, 30, 0.5)
            g = emu.gbm(c[0], c[1], c[2], 1, 18, 5.0)
            runs.append(c + g)
    finally:
        emu.set_emulation_order(0)
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)
    c1 = emu.clap(x[1:2], 8, 8, 2, 2, 1, 30, 0.5)
    g1 = emu.gbm(c1[0], c1[1], c1[2], 1, 18, 5.0)
    for a, b in zip(c1 + g1, runs[0]):
        assert torch.equal(a[0], b[1])


def test_emulated_gbm_tile_size_never_changes_a_value(emu):
    """The similarity kernel's tile (16, 32 or 64, picked by size) changes no output bit: every
    S[a, b] is one sequential fma chain over d and the norms do not depend on the tile."""
    B, T, P, D, C2 = 3, 300, 2, 40, 200
    g = torch.Generator().manual_seed(4)
    x = torch.randn(B, T, D, generator=g)
    size = torch.randint(1, 5, (B, T), generator=g).float()
    size[:, 250:] = 0  # padding
    x[size == 0] = 0
    assign = torch.randint(0, 250 - P, (B, 400), generator=g, dtype=torch.int32)
    runs = []
    try:
        for tile in (16, 32, 64):
            emu.set_emulation_gbm_tile(tile)
            runs.append(emu.gbm(x, size, assign, P, C2, 5.0))
    finally:
        emu.set_emulation_gbm_tile(0)
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            assert torch.equal(a, b)
    # batch independence: one image alone gives the same bits
    one = emu.gbm(x[1:2], size[1:2], assign[1:2], P, C2, 5.0)
    for a, b in zip(one, runs[0]):
        assert torch.equal(a[0], b[1])


# ----------------------------------------------------------------------------------- dynamic token mode

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("P", PREFIX_COUNTS)
def test_emulated_dynamic_kernels_match_reference(emu, P, dtype):
    """The dynamic kernels (capacity every slot, per-image thresholds, the slots of the batch
    written by the kernels) = `merging.static.clap_dynamic` / `gbm_dynamic`: the same cut, the same
    decisions, tokens within float rounding."""
    from algm_export.merging.reference import window_scores
    from algm_export.merging.static import clap_dynamic, gbm_dynamic

    gh = gw = 8
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    cuts = set()
    for quantiles in ((2.0,) * 3, (0.5, 0.7, 0.9), (-1.0,) * 3):   # nothing merges, some, every window
        for s in range(50):
            x = smooth_tokens(3, gh, gw, P, 32, seed=7 * s + P, noise=0.3, dtype=dtype)
            score = window_scores(x[:, P:].float(), (gh, gw), (2, 2))
            thr = [q if abs(q) >= 1 else float(score[b].quantile(q)) + 1e-4 for b, q in enumerate(quantiles)]
            if all(clap_margin(x[b:b + 1].float(), gh, gw, 2, 2, P, t) > MARGIN for b, t in enumerate(thr)):
                break
        t = torch.tensor(thr)
        ref = clap_dynamic(x, t, gh, gw, 2, 2, P)
        out = emu.clap_dynamic(x, t, gh, gw, 2, 2, P)
        assert out[0].shape == ref[0].shape, f"CLAP cut {out[0].shape} != {ref[0].shape} (thresholds {thr})"
        assert_same(out, ref, tol, f"dynamic CLAP thresholds {thr}")
        assert (out[3][:, 1] == 0).all()                              # never a forced merge
        cuts.add(ref[0].shape[1] - P)
        y, size, assign, _ = ref
        if gbm_margin(y, size, P, y.shape[1] - P, 5.0) <= MARGIN:
            continue
        r2 = gbm_dynamic(y, size, assign, P, 5.0)
        o2 = emu.gbm_dynamic(y, size, assign, P, 5.0)
        assert o2[0].shape == r2[0].shape and r2[0].shape[1] < y.shape[1]
        assert_same(o2, r2, tol, f"dynamic GBM thresholds {thr}")
    assert len(cuts) == 3 and max(cuts) == 64 and min(cuts) == 16     # no merge, some, every window


def test_emulated_dynamic_gbm_workspace_covers_every_token_count(emu):
    """A dynamic GBM input's token count is only bounded at build time: the workspace sized for the
    bound covers every smaller count (the similarity tile, hence the layout, changes with it)."""
    lib = emu.lib
    for P, n in ((1, 1024), (0, 256), (2, 4096), (5, 1024)):
        bound = lib.algmGbmDynamicWorkspaceSize(4, P + n, n, P)
        assert bound > 0
        assert all(lib.algmGbmDynamicWorkspaceSize(4, t, n, P) <= bound for t in range(P + 1, P + n + 1, 7))


# ----------------------------------------------------------------------------------- TensorRT plugins

def _need_trt_headers() -> Path:
    inc = tensorrt_include()
    if inc is None:
        pytest.skip("no TensorRT headers (set ALGM_TENSORRT_INCLUDE to a TensorRT include/ folder; "
                    "TensorRT headers ship in no pip wheel)")
    return inc


@pytest.fixture(scope="session")
def plugin_build(plugin_build_root):
    inc = _need_trt_headers()
    return build_once(plugin_build_root, "plugins", archs=[86], tensorrt_include=inc, require_plugins=True)


def test_plugin_library_compiles(plugin_build):
    lib = Path(plugin_build["plugins"])
    assert lib.is_file()
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
    assert " getCreators" in exported and " setLoggerFinder" in exported
    # no TensorRT library is linked: the same file loads into TensorRT and TensorRT-RTX
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
    assert "nvinfer" not in needed and "tensorrt" not in needed and "libcudart" not in needed
    # no static self-registration: nothing refers to the registry
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True).stdout
    assert "getPluginRegistry" not in undefined


def test_plugin_selftest(plugin_build):
    """plugins/tests/algmPluginSelfTest.cpp: creators, fields, serialisation round trip, output
    types and shapes, formats, workspace, configure/onShapeChange, clone, rejected fields."""
    exe = Path(plugin_build["build_dir"]) / "algm_plugin_selftest"
    proc = subprocess.run([str(exe), plugin_build["plugins"]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # any number of prefix tokens up to the library's limit; above it the creators say so
    from algm_export.runtimes.plugins import KernelLibrary

    max_p = KernelLibrary(plugin_build["plugins"]).max_prefix()
    assert max_p >= 16
    for op in ("AlgmClap", "AlgmGbm"):
        assert f"{op} 'selftest': num_prefix={max_p + 1} is not supported: this plugin library takes 0 to {max_p} " \
               "prefix tokens" in proc.stderr, proc.stderr
    assert " 0 failed" in proc.stdout


def _rtx_env() -> dict:
    """Environment for a TensorRT-RTX child process whose parser may dlopen libtensorrt_rtx.so."""
    try:
        from algm_export.runtimes.tensorrt.loader import rtx_env
        return rtx_env()
    except ImportError:
        pass
    import tempfile

    import tensorrt_rtx_libs  # noqa: F401

    libdir = Path(list(tensorrt_rtx_libs.__path__)[0])
    link_dir = Path(tempfile.mkdtemp(prefix="algm-rtx-"))
    real = sorted(libdir.glob("libtensorrt_rtx.so.[0-9]*"))[0]
    (link_dir / "libtensorrt_rtx.so").symlink_to(real)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(link_dir)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    return env


RTX_DYNAMIC_CASES = [  # name, grid, P, D, dtype, profile: version-2 plugins, data-dependent token axes
    ("dyn-g8p1-fp32", (8, 8), 1, 32, "float32", (1, 2, 8)),
    ("dyn-g32p1-fp16", (32, 32), 1, 384, "float16", (1, 1, 2)),
    ("dyn-g8p0-fp32", (8, 8), 0, 32, "float32", (1, 2, 4)),
    ("dyn-g6x10p2-fp32", (6, 10), 2, 16, "float32", (2, 2, 2)),
    ("dyn-g8p5-fp16", (8, 8), 5, 32, "float16", (1, 2, 4)),           # class token + 4 registers
]

RTX_CASES = [  # name, grid, P, D, C1, C2, dtype, profile (min, opt, max)
    ("g8p1-fp32-dyn", (8, 8), 1, 32, 40, 28, "float32", (1, 2, 8)),
    ("g8p2-fp16-dyn", (8, 8), 2, 32, 24, 16, "float16", (1, 4, 4)),
    ("g6x10p1-fp32-static", (6, 10), 1, 16, 30, 20, "float32", (3, 3, 3)),
    ("g32p1-fp16-dyn", (32, 32), 1, 384, 600, 400, "float16", (1, 1, 2)),
    ("g8p0-fp32-dyn", (8, 8), 0, 32, 40, 26, "float32", (1, 2, 8)),   # no prefix token
    ("g8p5-fp16-dyn", (8, 8), 5, 32, 40, 24, "float16", (1, 2, 4)),   # class token + 4 registers
    ("g8p9-fp32-static", (8, 8), 9, 32, 30, 20, "float32", (2, 2, 2)),
]


def _rtx_worker(lib: str, out: str) -> int:
    """Child process: build the cases with TensorRT-RTX and write a JSON report."""
    from onnx import TensorProto, helper

    import tensorrt_rtx as trt
    from algm_export.runtimes.plugins import load_plugin_library

    report: dict = {"version": trt.__version__, "cases": {}}
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    load_plugin_library(trt, lib)
    reg = trt.get_plugin_registry()
    report["creators"] = sorted(f"{c.plugin_namespace}::{c.name}/{c.plugin_version}" for c in reg.all_creators
                                if c.plugin_namespace == "algm")
    for name, (gh, gw), P, D, C1, C2, dt, prof in RTX_CASES:
        N = gh * gw
        et = TensorProto.FLOAT if dt == "float32" else TensorProto.FLOAT16
        nodes = [
            helper.make_node("Relu", ["x"], ["xr"], name="pre"),
            helper.make_node("AlgmClap", ["xr"], ["y1", "s1", "a1", "st1"], domain="algm", name="algm_clap",
                             grid_h=gh, grid_w=gw, window_h=2, window_w=2, num_prefix=P, capacity=C1,
                             threshold=0.9, plugin_version="1", plugin_namespace="algm"),
            helper.make_node("AlgmGbm", ["y1", "s1", "a1"], ["y2", "s2", "a2", "st2"], domain="algm", name="algm_gbm",
                             num_prefix=P, capacity=C2, divisor=5.0, plugin_version="1", plugin_namespace="algm"),
            helper.make_node("Identity", ["y2"], ["y"], name="post"),
            helper.make_node("Concat", ["st1", "st2"], ["stats"], axis=1, name="stats"),
        ]
        batch = "B" if prof[0] != prof[2] else prof[0]
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", et, [batch, P + N, D])], [
            helper.make_tensor_value_info("y", et, None), helper.make_tensor_value_info("s2", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("a2", TensorProto.INT32, None),
            helper.make_tensor_value_info("stats", TensorProto.INT32, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("algm", 1)])
        net = builder.create_network(0)  # TensorRT-RTX networks are always strongly typed
        parser = trt.OnnxParser(net, logger)
        ok = parser.parse(model.SerializeToString())
        res: dict = {"parsed": bool(ok), "errors": [str(parser.get_error(i)) for i in range(parser.num_errors)]}
        if ok:
            res["layers"] = {}
            for i in range(net.num_layers):
                layer = net.get_layer(i)
                res["layers"][layer.name] = {
                    "type": str(layer.type).rsplit(".", 1)[-1],
                    "outputs": [[list(layer.get_output(j).shape), str(layer.get_output(j).dtype).rsplit(".", 1)[-1]]
                                for j in range(layer.num_outputs)]}
            cfg = builder.create_builder_config()
            p = builder.create_optimization_profile()
            p.set_shape("x", (prof[0], P + N, D), (prof[1], P + N, D), (prof[2], P + N, D))
            cfg.add_optimization_profile(p)
            cfg.num_compute_capabilities = 1
            cfg.set_compute_capability(trt.ComputeCapability.SM86, 0)
            engine = builder.build_serialized_network(net, cfg)
            res["engine_bytes"] = 0 if engine is None else int(engine.nbytes)
        report["cases"][name] = res
    for name, (gh, gw), P, D, dt, prof in RTX_DYNAMIC_CASES:
        N = gh * gw
        et = TensorProto.FLOAT if dt == "float32" else TensorProto.FLOAT16
        nodes = [
            helper.make_node("Relu", ["x"], ["xr"], name="pre"),
            helper.make_node("AlgmClap", ["xr", "thr"], ["y1", "s1", "a1", "st1", "k1"], domain="algm",
                             name="algm_clap", grid_h=gh, grid_w=gw, window_h=2, window_w=2, num_prefix=P,
                             plugin_version="2", plugin_namespace="algm"),
            helper.make_node("AlgmGbm", ["y1", "s1", "a1"], ["y2", "s2", "a2", "st2", "k2"], domain="algm",
                             name="algm_gbm", num_prefix=P, divisor=5.0, plugin_version="2", plugin_namespace="algm"),
            # downstream of the data-dependent axis: attention-like scores, a reduction over tokens
            helper.make_node("Transpose", ["y2"], ["y2t"], perm=[0, 2, 1], name="post_t"),
            helper.make_node("MatMul", ["y2", "y2t"], ["sc"], name="post_mm"),
            helper.make_node("Softmax", ["sc"], ["pr"], axis=-1, name="post_sm"),
            helper.make_node("MatMul", ["pr", "y2"], ["att"], name="post_av"),
            helper.make_node("ReduceMean", ["att"], ["y"], axes=[1], keepdims=0, name="post_mean"),
            helper.make_node("Concat", ["st1", "st2"], ["stats"], axis=1, name="stats"),
        ]
        batch = "B" if prof[0] != prof[2] else prof[0]
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", et, [batch, P + N, D]),
                                                helper.make_tensor_value_info("thr", TensorProto.FLOAT, [batch])], [
            helper.make_tensor_value_info("y", et, None), helper.make_tensor_value_info("a2", TensorProto.INT32, None),
            helper.make_tensor_value_info("stats", TensorProto.INT32, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("algm", 2)])
        net = builder.create_network(0)
        parser = trt.OnnxParser(net, logger)
        ok = parser.parse(model.SerializeToString())
        res = {"parsed": bool(ok), "errors": [str(parser.get_error(i)) for i in range(parser.num_errors)]}
        if ok:
            res["layers"] = {}
            for i in range(net.num_layers):
                layer = net.get_layer(i)
                res["layers"][layer.name] = {
                    "type": str(layer.type).rsplit(".", 1)[-1],
                    "outputs": [[list(layer.get_output(j).shape), str(layer.get_output(j).dtype).rsplit(".", 1)[-1]]
                                for j in range(layer.num_outputs)]}
            res["outputs"] = {net.get_output(i).name: list(net.get_output(i).shape) for i in range(net.num_outputs)}
            cfg = builder.create_builder_config()
            p = builder.create_optimization_profile()
            p.set_shape("x", (prof[0], P + N, D), (prof[1], P + N, D), (prof[2], P + N, D))
            p.set_shape("thr", (prof[0],), (prof[1],), (prof[2],))
            cfg.add_optimization_profile(p)
            cfg.num_compute_capabilities = 1
            cfg.set_compute_capability(trt.ComputeCapability.SM86, 0)
            engine = builder.build_serialized_network(net, cfg)
            res["engine_bytes"] = 0 if engine is None else int(engine.nbytes)
        report["cases"][name] = res
    Path(out).write_text(json.dumps(report))
    return 0


@pytest.fixture(scope="session")
def rtx_report(plugin_build, tmp_path_factory):
    pytest.importorskip("tensorrt_rtx", reason="the tensorrt_rtx wheel is not installed")
    out = tmp_path_factory.mktemp("rtx") / "report.json"
    proc = subprocess.run([sys.executable, __file__, "--rtx-worker", plugin_build["plugins"], str(out)],
                          env=_rtx_env(), capture_output=True, text=True, timeout=900,
                          cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.returncode == 0 and out.exists(), f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


def test_rtx_registers_both_creators(rtx_report):
    assert rtx_report["creators"] == ["algm::AlgmClap/1", "algm::AlgmClap/2", "algm::AlgmGbm/1", "algm::AlgmGbm/2"]


@pytest.mark.parametrize("case", RTX_CASES, ids=[c[0] for c in RTX_CASES])
def test_rtx_algm_nodes_become_plugin_layers_with_reference_shapes(rtx_report, case):
    name, (gh, gw), P, D, C1, C2, dt, prof = case
    res = rtx_report["cases"][name]
    assert res["parsed"], res["errors"]
    layers = res["layers"]
    assert layers["algm_clap"]["type"] == "PLUGIN_V3" and layers["algm_gbm"]["type"] == "PLUGIN_V3"
    assert sum(v["type"].startswith("PLUGIN") for v in layers.values()) == 2
    # shapes and dtypes from the torch reference on a concrete batch
    dtype = torch.float32 if dt == "float32" else torch.float16
    B = prof[1]
    x = smooth_tokens(B, gh, gw, P, D, seed=0, dtype=dtype)
    r1 = clap_static(x, gh, gw, 2, 2, P, C1, 0.9)
    r2 = gbm_static(*r1[:3], P, C2, 5.0)
    batch = -1 if prof[0] != prof[2] else B
    names = {torch.float32: "FLOAT", torch.float16: "HALF", torch.int32: "INT32"}
    for layer, ref in (("algm_clap", r1), ("algm_gbm", r2)):
        got = layers[layer]["outputs"]
        want = [[[batch] + list(t.shape[1:]), names[t.dtype]] for t in ref]
        assert got == want, f"{layer}: {got} != {want}"
    assert res["engine_bytes"] > 0, "TensorRT-RTX did not build an engine for SM86"


@pytest.mark.parametrize("case", RTX_DYNAMIC_CASES, ids=[c[0] for c in RTX_DYNAMIC_CASES])
def test_rtx_dynamic_plugins_declare_size_tensors(rtx_report, case):
    """Version-2 nodes become PLUGIN_V3 layers whose token axis is data-dependent (a size tensor,
    -1 in the network) while the rest of each shape is fixed; layers downstream of that axis build,
    and TensorRT-RTX serialises an SM86 engine."""
    name, (gh, gw), P, D, dt, prof = case
    res = rtx_report["cases"][name]
    assert res["parsed"], res["errors"]
    layers = res["layers"]
    assert layers["algm_clap"]["type"] == "PLUGIN_V3" and layers["algm_gbm"]["type"] == "PLUGIN_V3"
    batch = -1 if prof[0] != prof[2] else prof[0]
    half = "FLOAT" if dt == "float32" else "HALF"
    for layer in ("algm_clap", "algm_gbm"):
        got = layers[layer]["outputs"]
        assert got == [[[batch, -1, D], half], [[batch, -1], "FLOAT"], [[batch, gh * gw], "INT32"],
                       [[batch, 2], "INT32"], [[], "INT32"]], f"{layer}: {got}"
    assert res["outputs"]["y"] == [batch, D] and res["outputs"]["a2"] == [batch, gh * gw]
    assert res["engine_bytes"] > 0, "TensorRT-RTX did not build an engine for SM86"


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--rtx-worker":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(_rtx_worker(sys.argv[2], sys.argv[3]))
